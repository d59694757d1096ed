using System.Security.Cryptography;
using MriSeg.Learning.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.PerSample;

/// <summary>DP-SGD gradient settings.</summary>
/// <param name="ClipNorm">C: each group's (patient's) gradient is clipped to this L2 norm over all parameters.</param>
/// <param name="NoiseMultiplier">σ: Gaussian noise of standard deviation σ·C is added to the clipped sum.</param>
/// <param name="ExpectedBatchSize">The sum is divided by this: q·N for Poisson sampling at rate q over N patients (not the realised batch size, which is private).</param>
/// <param name="Reduction">How a patient's slice losses combine.</param>
/// <param name="MaxSlicesPerGroup">Refuse a group with more slices (0: no limit).</param>
public sealed record DpSgdSettings(
    double ClipNorm, double NoiseMultiplier, double ExpectedBatchSize, GroupReduction Reduction = GroupReduction.Sum, int MaxSlicesPerGroup = 0)
{
    /// <summary>Throws when a setting is out of range.</summary>
    public void Validate()
    {
        PerGroupGradients.CheckClipNorm(ClipNorm);
        if (!(NoiseMultiplier >= 0) || !double.IsFinite(NoiseMultiplier))
        {
            throw new ArgumentOutOfRangeException(nameof(NoiseMultiplier), NoiseMultiplier, "the noise multiplier must be finite and not negative.");
        }

        if (!(ExpectedBatchSize > 0) || !double.IsFinite(ExpectedBatchSize))
        {
            throw new ArgumentOutOfRangeException(nameof(ExpectedBatchSize), ExpectedBatchSize, "the expected batch size must be positive.");
        }
    }
}

/// <summary>
/// What one step saw. Computed from the clear per-group values, so NOT differentially private:
/// fine for logs inside the clean room, never for anything that leaves it.
/// </summary>
/// <param name="Groups">Groups (patients) in the batch.</param>
/// <param name="Slices">Slices in the batch.</param>
/// <param name="LossSum">Σ of the groups' losses.</param>
/// <param name="ClippedGroups">Groups whose gradient norm was above the clip norm.</param>
public sealed record DpStepStats(int Groups, int Slices, double LossSum, int ClippedGroups);

/// <summary>
/// One DP-SGD gradient: folded per-group gradients, clipped to C, summed, Gaussian noise N(0, σ²C²)
/// added, divided by the expected batch size, written to each parameter's .grad for any optimizer.
/// </summary>
/// <remarks>
/// Per parameter the clipped sum is one fused GEMV (addmv) of the [G, n] view of the folded gradient
/// with the clip factors, added onto noise already drawn into a kept buffer; no per-group gradient is
/// copied out. Noise comes from <see cref="NoiseStreams"/> torch generators, each seeded from the OS
/// CSPRNG unless a seed is given, filling their share of the buffer in parallel on the CPU.
/// </remarks>
public sealed class DpGradientEngine : IDisposable
{
    /// <summary>Independent generators the noise is drawn from (fixed, so a seeded run is reproducible anywhere).</summary>
    public const int NoiseStreams = 4;

    private readonly UNet2d _model;
    private readonly PerSampleLoss _loss;
    private readonly Generator[] _generators;
    private readonly FoldedLeafBuffers _leaves = new();
    private Tensor? _gradients;
    private Tensor[] _gradientViews = [];

    /// <summary>Creates the engine for <paramref name="model"/>; place the model on its device first (the noise generators live there).</summary>
    /// <param name="model">The model whose parameters receive the noisy gradient.</param>
    /// <param name="loss">Per-sample loss on logits.</param>
    /// <param name="settings">C, σ, expected batch size.</param>
    /// <param name="noiseSeed">A fixed seed for reproducible tests and benchmarks; null (default) seeds every stream from the OS CSPRNG.</param>
    public DpGradientEngine(UNet2d model, PerSampleLoss loss, DpSgdSettings settings, ulong? noiseSeed = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(settings);
        settings.Validate();
        _model = model;
        _loss = loss;
        Settings = settings;
        var device = model.ParameterDevice;
        _generators = [.. Enumerable.Range(0, NoiseStreams).Select(i =>
            new Generator(noiseSeed is { } seed ? seed + (ulong)i : BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(8)), device))];
    }

    /// <summary>The settings.</summary>
    public DpSgdSettings Settings { get; }

    /// <summary>
    /// Computes the noisy DP gradient for one batch and stores it in every parameter's .grad
    /// (replacing what was there; the engine owns that memory and reuses it next step). A batch may
    /// be empty (Poisson sampling): the gradient is then noise only.
    /// </summary>
    /// <param name="inputs">[N, in, H, W].</param>
    /// <param name="targets">[N, out, H, W].</param>
    /// <param name="groupIndex">Group (patient, 0..G-1) of each sample.</param>
    public DpStepStats ComputeGradients(Tensor inputs, Tensor targets, IReadOnlyList<int> groupIndex)
    {
        var grouping = SliceGrouping.Create(groupIndex, Settings.Reduction, Settings.MaxSlicesPerGroup);
        var parameters = _model.OrderedParameters();
        using var scope = NewDisposeScope();
        using var grads = PerSampleGradients.Compute(_model, inputs, targets, grouping, _loss, _leaves);
        using var _ = no_grad();
        var c = Settings.ClipNorm;
        var views = GradientViews(parameters);
        DrawNoise(Settings.NoiseMultiplier * c / Settings.ExpectedBatchSize);
        if (grouping.GroupCount > 0)
        {
            // Σ_g (f_g / E)·grad_g, added onto the noise in place.
            var weights = (grads.ClipFactors(c) / Settings.ExpectedBatchSize).to(parameters[0].dtype);
            for (var i = 0; i < parameters.Count; i++)
            {
                views[i].view(-1).addmv_(grads.FoldedGradient(i).view(grouping.GroupCount, -1).t(), weights);
            }
        }

        for (var i = 0; i < parameters.Count; i++)
        {
            parameters[i].grad = views[i];
        }

        var clipped = grouping.GroupCount == 0 ? 0 : (int)(grads.Norms() > c).sum().item<long>();
        var lossSum = grouping.GroupCount == 0 ? 0 : grads.GroupLosses.sum().item<double>();
        return new DpStepStats(grouping.GroupCount, grouping.SampleCount, lossSum, clipped);
    }

    private Tensor[] GradientViews(IReadOnlyList<Tensor> parameters)
    {
        var total = parameters.Sum(p => p.numel());
        if (_gradients is null || _gradients.numel() != total || !FoldedLeafBuffers.SameKind(_gradients, parameters[0]))
        {
            _gradients?.Dispose();
            foreach (var v in _gradientViews)
            {
                v.Dispose();
            }

            _gradients = empty(total, parameters[0].dtype, parameters[0].device).DetachFromDisposeScope();
            long offset = 0;
            _gradientViews = new Tensor[parameters.Count];
            for (var i = 0; i < parameters.Count; i++)
            {
                var n = parameters[i].numel();
                _gradientViews[i] = _gradients.narrow(0, offset, n).view(parameters[i].shape).DetachFromDisposeScope();
                offset += n;
            }
        }

        return _gradientViews;
    }

    private void DrawNoise(double std)
    {
        var buffer = _gradients!;
        if (std == 0)
        {
            buffer.zero_();
            return;
        }

        // normal_ on a CPU generator is serial; independent streams over disjoint chunks run in parallel.
        var total = buffer.numel();
        var chunk = (total + NoiseStreams - 1) / NoiseStreams;
        void Fill(int s)
        {
            var start = Math.Min(total, s * chunk);
            var length = Math.Min(chunk, total - start);
            if (length > 0)
            {
                using var part = buffer.narrow(0, start, length);
                part.normal_(0, std, _generators[s]);
            }
        }

        if (buffer.device_type == DeviceType.CPU)
        {
            Parallel.For(0, NoiseStreams, Fill);
        }
        else
        {
            for (var s = 0; s < NoiseStreams; s++)
            {
                Fill(s);
            }
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var g in _generators)
        {
            g.Dispose();
        }

        _leaves.Dispose();
        foreach (var v in _gradientViews)
        {
            v.Dispose();
        }

        _gradients?.Dispose();
    }
}
