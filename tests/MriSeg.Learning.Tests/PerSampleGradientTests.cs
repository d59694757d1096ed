using MriSeg.Learning.Model;
using MriSeg.Learning.Noise;
using MriSeg.Learning.PerSample;
using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class PerSampleGradientTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    private static readonly PerSampleLoss Loss = SegmentationLosses.BceDice();

    /// <summary>A float64 model with non-trivial GroupNorm affines and a random batch (also used by <see cref="TrainableSubsetTests"/>).</summary>
    internal static (UNet2d Model, Tensor X, Tensor Y) Setup(UNetConfig config, int samples, int size, long seed)
    {
        var generator = new Generator((ulong)seed);
        var model = new UNet2d(config, ScalarType.Float64, generator: generator);
        using (no_grad())
        {
            // Non-trivial GroupNorm affines so their gradients and the folded repeat are exercised too.
            foreach (var (name, p) in model.named_parameters().Where(p => p.name.Contains(".conv.1.", StringComparison.Ordinal) || p.name.Contains(".conv.4.", StringComparison.Ordinal)))
            {
                p.add_(randn(p.shape, ScalarType.Float64, generator: generator) * 0.1);
            }
        }

        var x = randn([samples, config.InChannels, size, size], ScalarType.Float64, generator: generator).DetachFromDisposeScope();
        var y = rand([samples, config.OutChannels, size, size], ScalarType.Float64, generator: generator).gt(0.6).to(ScalarType.Float64).DetachFromDisposeScope();
        return (model, x, y);
    }

    private static double WorstRelativeError(PerGroupGradients a, PerGroupGradients b, out string worstName)
    {
        var worst = 0.0;
        worstName = "";
        for (var i = 0; i < a.ParameterNames.Count; i++)
        {
            using var scope = NewDisposeScope();
            var scale = b.Gradient(i).abs().max().to(ScalarType.Float64).item<double>();
            Assert.True(scale > 0, $"{a.ParameterNames[i]} has a zero gradient; the test would prove nothing");
            var error = (a.Gradient(i) - b.Gradient(i)).abs().max().to(ScalarType.Float64).item<double>() / scale;
            if (error > worst)
            {
                (worst, worstName) = (error, a.ParameterNames[i]);
            }
        }

        return worst;
    }

    [Theory]
    [InlineData(2, 16, GroupReduction.Sum, LossKind.BceDice)]
    [InlineData(3, 32, GroupReduction.Sum, LossKind.BceDice)]
    [InlineData(2, 16, GroupReduction.Mean, LossKind.BceDice)]
    [InlineData(2, 16, GroupReduction.Sum, LossKind.BceLovasz)] // sorts each sample's pixels: the fold must keep the sort within a sample
    public void Folded_gradients_equal_micro_batching_for_every_parameter(int depth, int size, GroupReduction reduction, LossKind lossKind)
    {
        var loss = SegmentationTrainer.Loss(new TrainingConfig { Loss = lossKind });
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        var config = UNetTests.Tiny with { Depth = depth };
        var (model, x, y) = Setup(config, 5, size, 42 + depth);
        using var _ = model;

        // Three patients with 2, 1 and 2 slices, interleaved in the batch.
        var grouping = SliceGrouping.Create([2, 0, 1, 0, 2], reduction);
        using var folded = PerSampleGradients.Compute(model, x, y, grouping, loss);
        using var micro = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, loss);

        Assert.Equal(3, folded.GroupCount);
        Assert.Equal([2, 1, 2], grouping.SlicesPerGroup);
        Assert.Equal(2, grouping.SlotsPerGroup);
        var worst = WorstRelativeError(folded, micro, out var name);
        output.WriteLine($"worst relative difference {worst:E2} at {name}");
        Assert.True(worst <= 1e-10, $"worst relative difference {worst:E2} at {name}");
        Assert.True(folded.GroupLosses.allclose(micro.GroupLosses, 1e-12, 0));
        Assert.True(folded.Norms().allclose(micro.Norms(), 1e-10, 0));

        // The parameters themselves got no gradient from the folded pass.
        Assert.All(model.OrderedParameters(), p => Assert.True(p.grad is null || p.grad.eq(0).all().item<bool>()));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Deepest_layers_take_the_shared_weight_path_and_still_match(bool weightStandardisation)
    {
        using var scope = NewDisposeScope();
        var config = UNetTests.Tiny with { Depth = 3, WeightStandardisation = weightStandardisation };

        // 16x16 input, two slots per group: the bottleneck runs at 2x2 with 64 channels, level 0 at 16x16 with 8.
        Assert.True(SharedWeightConv.Pays(zeros(2, 1, 2, 2), config.Widths[^1]));
        Assert.False(SharedWeightConv.Pays(zeros(2, 1, 16, 16), config.Widths[1]));
        var (model, x, y) = Setup(config, 5, 16, 37);
        using var _ = model;
        var grouping = SliceGrouping.Create([1, 0, 2, 2, 1]);
        using var micro = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, Loss);
        using var shared = PerSampleGradients.Compute(model, x, y, grouping, Loss);
        PerGroupGradients grouped;
        SharedWeightConv.Enabled = false;
        try
        {
            grouped = PerSampleGradients.Compute(model, x, y, grouping, Loss);
        }
        finally
        {
            SharedWeightConv.Enabled = true;
        }

        using (grouped)
        {
            var worstShared = WorstRelativeError(shared, micro, out var sharedName);
            var worstGrouped = WorstRelativeError(grouped, micro, out var groupedName);
            output.WriteLine($"shared path {worstShared:E2} at {sharedName}; grouped only {worstGrouped:E2} at {groupedName}");
            Assert.True(worstShared <= 1e-10, sharedName);
            Assert.True(worstGrouped <= 1e-10, groupedName);
        }
    }

    [Fact]
    public void One_sample_per_group_takes_the_gather_free_path_and_still_matches()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 3, 16, 3);
        using var _ = model;
        var grouping = SliceGrouping.OnePerSample(3);
        using var folded = PerSampleGradients.Compute(model, x, y, grouping, Loss);
        using var micro = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, Loss);
        Assert.True(WorstRelativeError(folded, micro, out var name) <= 1e-10, name);
    }

    [Fact]
    public void Group_gradients_sum_to_the_batch_gradient()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 4, 16, 5);
        using var _ = model;
        using var folded = PerSampleGradients.Compute(model, x, y, [0, 1, 1, 0], Loss);
        var parameters = model.OrderedParameters();
        var batch = autograd.grad([Loss(model.ForwardLogits(x), y).sum()], [.. parameters.Cast<Tensor>()]);
        for (var i = 0; i < parameters.Count; i++)
        {
            Assert.True(folded.Gradient(i).sum(dim: 0).allclose(batch[i], 1e-10, 1e-13), folded.ParameterNames[i]);
        }
    }

    [Fact]
    public void Removing_one_group_moves_the_clipped_sum_by_exactly_its_clipped_gradient_and_at_most_c()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 5, 16, 9);
        using var _ = model;
        int[] all = [0, 1, 2, 2, 1];
        using var with = PerSampleGradients.Compute(model, x, y, all, Loss);
        var withoutRows = tensor(new long[] { 0, 1, 4 });
        using var without = PerSampleGradients.Compute(model, x.index_select(0, withoutRows), y.index_select(0, withoutRows), [0, 1, 1], Loss);

        var norms = with.Norms().data<double>().ToArray();
        Assert.All(norms, n => Assert.True(n > 0));
        foreach (var c in new[] { norms.Min() / 2, norms.Max() * 2 })
        {
            var sumWith = with.ClippedSum(c);
            var sumWithout = without.ClippedSum(c);
            var factor = Math.Min(1, c / (norms[2] + PerGroupGradients.NormFloor));
            double squared = 0;
            for (var i = 0; i < sumWith.Count; i++)
            {
                var difference = sumWith[i] - sumWithout[i];
                Assert.True(difference.allclose(with.Gradient(i)[2] * factor, 1e-9, 1e-13), $"C={c}: {with.ParameterNames[i]}");
                squared += difference.square().sum().item<double>();
            }

            var moved = Math.Sqrt(squared);
            Assert.True(moved <= c * (1 + 1e-12), $"C={c}: the sum moved by {moved}");
            Assert.Equal(norms[2] * factor, moved, 1e-9 * c);
            Assert.True(moved >= Math.Min(c, norms[2]) * (1 - 1e-4));
        }
    }

    [Fact]
    public void Clip_factors_leave_small_gradients_alone_and_scale_large_ones_below_c()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 3, 16, 13);
        using var _ = model;
        using var grads = PerSampleGradients.Compute(model, x, y, [0, 1, 2], Loss);
        var norms = grads.Norms().data<double>().ToArray();
        var c = norms.Order().ElementAt(1);
        var factors = grads.ClipFactors(c).data<double>().ToArray();
        for (var g = 0; g < 3; g++)
        {
            var clippedNorm = norms[g] * factors[g];
            Assert.True(clippedNorm < c || (norms[g] <= c && factors[g] == 1), $"group {g}: {norms[g]} → {clippedNorm}");
        }

        Assert.Throws<ArgumentOutOfRangeException>(() => grads.ClipFactors(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => grads.ClipFactors(double.NaN));
    }

    [Fact]
    public void Dp_engine_writes_the_clipped_sum_over_the_expected_batch_size_without_noise()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 4, 16, 17);
        using var _ = model;
        int[] groups = [0, 0, 1, 2];
        using var grads = PerSampleGradients.Compute(model, x, y, groups, Loss);
        var c = grads.Norms().min().item<double>();
        var expected = grads.ClippedSum(c);

        using var engine = new DpGradientEngine(model, Loss, new DpSgdSettings(c, 0, ExpectedBatchSize: 2.5));
        var stats = engine.ComputeGradients(x, y, groups);
        Assert.Equal(3, stats.Groups);
        Assert.Equal(4, stats.Slices);
        Assert.Equal(2, stats.ClippedGroups);
        Assert.Equal(grads.GroupLosses.sum().item<double>(), stats.LossSum, 1e-12);
        var parameters = model.OrderedParameters();
        for (var i = 0; i < parameters.Count; i++)
        {
            Assert.True(parameters[i].grad!.allclose(expected[i] / 2.5, 1e-10, 1e-14), grads.ParameterNames[i]);
        }
    }

    [Fact]
    public void Dp_engine_noise_has_the_calibrated_spread_and_a_seed_reproduces_it()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 3, 16, 19);
        using var _ = model;
        const double c = 0.5, sigma = 2.0, expectedBatch = 4.0;
        int[] groups = [0, 1, 2];
        using var grads = PerSampleGradients.Compute(model, x, y, groups, Loss);
        var clean = grads.ClippedSum(c);
        var parameters = model.OrderedParameters();

        Tensor Noise(ulong? seed)
        {
            using var generator = seed is { } s ? GaussianNoise.CreateInsecureSeeded(s) : GaussianNoise.CreateSecure();
            using var engine = new DpGradientEngine(model, Loss, new DpSgdSettings(c, sigma, expectedBatch), generator);
            engine.ComputeGradients(x, y, groups);
            return cat([.. parameters.Select((p, i) => (p.grad! - (clean[i] / expectedBatch)).flatten())]);
        }

        var a = Noise(123);
        var b = Noise(123);
        var secure = Noise(null);
        Assert.True(a.equal(b).all().item<bool>());
        Assert.False(a.equal(secure).all().item<bool>());

        // About 10^4 draws: the sample std is within 5% of σC/E, the mean near 0.
        var target = sigma * c / expectedBatch;
        foreach (var noise in new[] { a, secure })
        {
            Assert.True(noise.numel() > 5000);
            Assert.InRange(noise.std().item<double>(), target * 0.95, target * 1.05);
            Assert.InRange(noise.mean().item<double>(), -target * 0.05, target * 0.05);
        }
    }

    [Fact]
    public void An_empty_poisson_batch_gives_noise_only()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 1, 16, 23);
        using var _ = model;
        var none = tensor(Array.Empty<long>());
        using var noise = GaussianNoise.CreateInsecureSeeded(5);
        using var engine = new DpGradientEngine(model, Loss, new DpSgdSettings(1.0, 1.0, 10), noise);
        var stats = engine.ComputeGradients(x.index_select(0, none), y.index_select(0, none), []);
        Assert.Equal(new DpStepStats(0, 0, 0, 0), stats);
        var all = cat([.. model.OrderedParameters().Select(p => p.grad!.flatten())]);
        Assert.InRange(all.std().item<double>(), 0.09, 0.11);
    }

    [Fact]
    public void Bad_groupings_and_losses_are_refused()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 3, 16, 29);
        using var _ = model;
        Assert.Contains("group 1 has no samples", Assert.Throws<ArgumentException>(() => SliceGrouping.Create([0, 2, 2])).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => SliceGrouping.Create([0, -1]));
        Assert.Contains("limit of 1", Assert.Throws<ArgumentException>(() => SliceGrouping.Create([0, 0, 1], maxSlicesPerGroup: 1)).Message, StringComparison.Ordinal);
        Assert.Contains("covers 2 samples", Assert.Throws<ArgumentException>(() => PerSampleGradients.Compute(model, x, y, [0, 1], Loss)).Message, StringComparison.Ordinal);
        Assert.Contains("one value per sample", Assert.Throws<ArgumentException>(
            () => PerSampleGradients.Compute(model, x, y, [0, 1, 1], (l, t) => (l - t).square().mean())).Message, StringComparison.Ordinal);
        Assert.Contains("targets must be", Assert.Throws<ArgumentException>(
            () => PerSampleGradients.Compute(model, x, y[.., ..1], [0, 1, 2], Loss)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Float32_folded_gradients_agree_with_micro_batching_to_float_precision()
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(31);
        using var model = new UNet2d(UNetTests.Tiny, generator: generator);
        var x = randn([4, 2, 16, 16], generator: generator);
        var y = rand([4, 2, 16, 16], generator: generator).gt(0.5).to(ScalarType.Float32);
        var grouping = SliceGrouping.Create([1, 0, 1, 2]);
        using var folded = PerSampleGradients.Compute(model, x, y, grouping, Loss);
        using var micro = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, Loss);
        Assert.True(WorstRelativeError(folded, micro, out var name) <= 1e-4, name);
    }
}
