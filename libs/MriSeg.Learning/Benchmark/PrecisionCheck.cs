using MriSeg.Learning.Model;
using MriSeg.Learning.PerSample;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Benchmark;

/// <summary>
/// How far one way of computing per-patient gradients is from another, over all groups: the clipping of DP-SGD sees
/// each group's gradient norm, so the norm's error is reported beside the vector's.
/// </summary>
/// <param name="Comparison">What was compared with what.</param>
/// <param name="Device">Device of the computation under test.</param>
/// <param name="MaxRelativeError">max over groups of ‖a_g − b_g‖ / ‖b_g‖.</param>
/// <param name="MaxNormRelativeError">max over groups of |‖a_g‖ − ‖b_g‖| / ‖b_g‖.</param>
/// <param name="MinCosine">min over groups of the cosine between a_g and b_g.</param>
/// <param name="Tolerance">The bar on <paramref name="MaxRelativeError"/>; null where the row is a measurement only.</param>
public sealed record GradientAgreement(
    string Comparison, string Device, double MaxRelativeError, double MaxNormRelativeError, double MinCosine, double? Tolerance)
{
    /// <summary>Whether the error is within the tolerance (always, for a measurement only).</summary>
    public bool Passed => Tolerance is not { } bar || MaxRelativeError <= bar;
}

/// <summary>Median step times of the reduced-precision speed check.</summary>
/// <param name="Precision">float32 (TF32 as libtorch defaults it) or bfloat16 (parameters and activations).</param>
/// <param name="NonPrivateStepMs">Forward, loss, backward and SGD step on the batch.</param>
/// <param name="PerPatientGradientsMs">The folded per-patient gradient pass of the DP step (its dominant part).</param>
public sealed record PrecisionTiming(string Precision, double NonPrivateStepMs, double PerPatientGradientsMs);

/// <summary>
/// Numerical checks of the per-patient gradients on a device: the folded pass against micro-batching and against the
/// CPU in float64 (exactness), float32 with and without TF32 and bfloat16 against the float64 CPU reference (rounding),
/// and the speed of bfloat16 against float32. TorchSharp 0.107 has no autocast, so "bfloat16" here means the whole model
/// in bfloat16, the most a TorchSharp trainer could use; the accuracy rows say what that would cost.
/// </summary>
public static class PrecisionCheck
{
    /// <summary>float64 paths must agree to rounding of the summation order.</summary>
    public const double Float64Tolerance = 1e-9;

    /// <summary>
    /// float32 without TF32: 2^-24 per operation, grown over 23 convolutions and their normalisations; the reference
    /// U-Net at 64x64 measured 3e-4 on the CPU (a first bar of 1e-4 was too tight), so 1e-3.
    /// </summary>
    public const double Float32Tolerance = 1e-3;

    /// <summary>
    /// TF32 rounds convolution inputs to a 10-bit mantissa (2^-11 ≈ 5e-4 per product, summed over 9·C_in terms): the
    /// least bar of the folded TF32 row, which is otherwise twice TF32's error on the ordinary per-patient backward pass
    /// (measured in the same run: 3.5e-2 was seen for the folded pass on an H200, beyond a first a-priori bar of 1e-2).
    /// </summary>
    public const double Tf32Tolerance = 1e-2;

    /// <summary>Runs the agreement checks for <paramref name="device"/>. Call <see cref="Torch.TorchRuntime.Initialize"/> first.</summary>
    /// <param name="device">The device under test (CPU works too: then the rows against the CPU are left out).</param>
    /// <param name="size">Image side.</param>
    /// <param name="groupSizes">Slices of each group (patient); unequal sizes exercise the padded slots.</param>
    /// <param name="model">Architecture; the reference U-Net by default.</param>
    /// <param name="seed">Seed of weights and data.</param>
    public static IReadOnlyList<GradientAgreement> Agreement(
        Device device, int size = 64, IReadOnlyList<int>? groupSizes = null, UNetConfig? model = null, ulong seed = 20240611)
    {
        ArgumentNullException.ThrowIfNull(device);
        model ??= UNetConfig.Reference;
        groupSizes ??= [1, 2, 3, 2];
        var groupIndex = groupSizes.SelectMany((count, g) => Enumerable.Repeat(g, count)).ToArray();
        var loss = SegmentationLosses.BceDice();
        using var scope = NewDisposeScope();
        using var generator = new Generator(seed);
        using var reference = new UNet2d(model, ScalarType.Float64, CPU, generator);
        var x = randn([groupIndex.Length, model.InChannels, size, size], ScalarType.Float64, generator: generator);
        var y = rand([groupIndex.Length, model.OutChannels, size, size], ScalarType.Float64, generator: generator).gt(0.5).to(ScalarType.Float64);
        var cpuReference = Flatten(PerSampleGradients.Compute(reference, x, y, groupIndex, loss));

        var rows = new List<GradientAgreement>();
        var name = device.ToString();
        using (var onDevice = reference.Clone(ScalarType.Float64, device))
        {
            var (dx, dy) = (x.to(device), y.to(device));
            var folded = Flatten(PerSampleGradients.Compute(onDevice, dx, dy, groupIndex, loss));
            var micro = Flatten(PerSampleGradients.ComputeByMicroBatching(onDevice, dx, dy, SliceGrouping.Create(groupIndex, GroupReduction.Sum), loss));
            rows.Add(Compare("float64 folded vs float64 micro-batching", name, folded, micro, Float64Tolerance));
            if (device.type != DeviceType.CPU)
            {
                rows.Add(Compare("float64 folded vs float64 folded on the CPU", name, folded, cpuReference, Float64Tolerance));
                // The whole DP gradient with the same seeded noise: covers the device's own noise path (drawn on the
                // host during the pass, copied from pinned memory) and the clipping.
                rows.Add(Compare("float64 DP step (clip, sum, seeded noise) vs the same on the CPU", name,
                    DpGradient(onDevice, dx, dy), DpGradient(reference, x, y), Float64Tolerance));
            }
        }

        var isCuda = device.type == DeviceType.CUDA;
        var (cudnnTf32, matmulTf32) = isCuda ? (backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32) : (false, false);
        try
        {
            foreach (var tf32 in isCuda ? new[] { false, true } : [false])
            {
                if (isCuda)
                {
                    backends.cudnn.allow_tf32 = tf32;
                    backends.cuda.matmul.allow_tf32 = tf32;
                }

                var label = isCuda ? (tf32 ? "float32 (TF32 on)" : "float32 (TF32 off)") : "float32";
                if (tf32)
                {
                    // TF32's own error on the ordinary backward pass (one patient at a time) sets the folded pass's bar:
                    // twice that error, and at least Tf32Tolerance.
                    var plain = Reduced(label, ScalarType.Float32, null, microBatching: true);
                    rows.Add(plain);
                    rows.Add(Reduced(label, ScalarType.Float32, Math.Max(Tf32Tolerance, 2 * plain.MaxRelativeError)));
                }
                else
                {
                    rows.Add(Reduced(label, ScalarType.Float32, Float32Tolerance));
                }
            }
        }
        finally
        {
            if (isCuda)
            {
                backends.cudnn.allow_tf32 = cudnnTf32;
                backends.cuda.matmul.allow_tf32 = matmulTf32;
            }
        }

        // bfloat16 keeps 8 mantissa bits (2^-8 ≈ 4e-3 per operation and in every stored activation): no bar, a measurement.
        rows.Add(Reduced("bfloat16", ScalarType.BFloat16, null));
        return rows;

        Tensor DpGradient(UNet2d on, Tensor inputs, Tensor targets)
        {
            // A small clip norm, so that groups are clipped, and noise of about the clipped gradients' size.
            using var noise = Noise.GaussianNoise.CreateInsecureSeeded(seed);
            using var engine = new DpGradientEngine(on, loss, new DpSgdSettings(0.01, 1.0, groupSizes.Count), noise);
            engine.ComputeGradients(inputs, targets, groupIndex);
            return cat([.. on.TrainableParameters().Select(p => p.grad!.flatten())]).to(ScalarType.Float64, CPU).unsqueeze(0);
        }

        GradientAgreement Reduced(string label, ScalarType dtype, double? tolerance, bool microBatching = false)
        {
            using var inner = NewDisposeScope();
            using var copy = reference.Clone(dtype, device);
            var (dx, dy) = (x.to(dtype, device), y.to(dtype, device));
            var gradients = Flatten(microBatching
                ? PerSampleGradients.ComputeByMicroBatching(copy, dx, dy, SliceGrouping.Create(groupIndex, GroupReduction.Sum), loss)
                : PerSampleGradients.Compute(copy, dx, dy, groupIndex, loss));
            return Compare(label + (microBatching ? " micro-batching" : " folded") + " vs float64 on the CPU", name, gradients, cpuReference, tolerance);
        }
    }

    /// <summary>
    /// Median times of the non-private step and the folded per-patient gradient pass in float32 and in bfloat16, on
    /// one batch of <paramref name="batch"/> patients with one slice each (steps alternate between the precisions).
    /// </summary>
    public static IReadOnlyList<PrecisionTiming> Speed(Device device, int size, int batch, int iterations = 10, UNetConfig? model = null, ulong seed = 20240611)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        model ??= UNetConfig.Reference;
        var loss = SegmentationLosses.BceDice();
        var groupIndex = Enumerable.Range(0, batch).ToArray();
        using var scope = NewDisposeScope();
        using var generator = new Generator(seed);
        using var source = new UNet2d(model, ScalarType.Float32, CPU, generator);
        var x = randn([batch, model.InChannels, size, size], generator: generator);
        var y = rand([batch, model.OutChannels, size, size], generator: generator).gt(0.5).to(ScalarType.Float32);
        var precisions = new[] { ScalarType.Float32, ScalarType.BFloat16 }.Select(dtype =>
        {
            var copy = source.Clone(dtype, device);
            var optimizer = optim.SGD(copy.parameters(), 1e-3, momentum: 0.9);
            return (Dtype: dtype, Model: copy, Optimizer: optimizer, X: x.to(dtype, device), Y: y.to(dtype, device),
                Plain: new List<double>(), Folded: new List<double>());
        }).ToList();
        try
        {
            for (var i = -1; i < iterations; i++)
            {
                foreach (var p in i % 2 == 0 ? precisions : Enumerable.Reverse(precisions))
                {
                    var plain = Time(device, () =>
                    {
                        p.Optimizer.zero_grad();
                        loss(p.Model.ForwardLogits(p.X), p.Y).mean().backward();
                        p.Optimizer.step();
                    });
                    var folded = Time(device, () => PerSampleGradients.Compute(p.Model, p.X, p.Y, groupIndex, loss).Dispose());
                    if (i >= 0)
                    {
                        // i = -1 is the warm-up (cuDNN algorithm choice, allocator growth).
                        p.Plain.Add(plain);
                        p.Folded.Add(folded);
                    }
                }
            }

            return [.. precisions.Select(p => new PrecisionTiming(
                p.Dtype == ScalarType.BFloat16 ? "bfloat16" : "float32", DpBenchmark.Median(p.Plain), DpBenchmark.Median(p.Folded)))];
        }
        finally
        {
            foreach (var p in precisions)
            {
                p.Optimizer.Dispose();
                p.Model.Dispose();
            }
        }
    }

    private static double Time(Device device, Action step)
    {
        using var scope = NewDisposeScope();
        return DeviceTiming.Measure(device, step).WallMs;
    }

    /// <summary>[G, P]: each group's gradient over all trainable parameters, as float64 on the CPU.</summary>
    private static Tensor Flatten(PerGroupGradients gradients)
    {
        using (gradients)
        {
            var g = gradients.GroupCount;
            return cat([.. Enumerable.Range(0, gradients.ParameterNames.Count).Select(i => gradients.Gradient(i).reshape(g, -1))], 1)
                .to(ScalarType.Float64, CPU);
        }
    }

    private static GradientAgreement Compare(string comparison, string device, Tensor actual, Tensor expected, double? tolerance)
    {
        var expectedNorm = expected.norm(1);
        var actualNorm = actual.norm(1);
        var relative = ((actual - expected).norm(1) / expectedNorm).max().item<double>();
        var normRelative = ((actualNorm - expectedNorm).abs() / expectedNorm).max().item<double>();
        var cosine = ((actual * expected).sum(1) / (actualNorm * expectedNorm)).min().item<double>();
        return new GradientAgreement(comparison, device, relative, normRelative, cosine, tolerance);
    }
}
