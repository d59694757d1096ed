using MriSeg.Learning.Model;
using MriSeg.Learning.Noise;
using MriSeg.Learning.PerSample;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

/// <summary>The <c>trainable</c> recipe setting: fine-tuning a subset of the parameters, frozen ones untouched.</summary>
[Collection(TorchCollection.Name)]
public sealed class TrainableSubsetTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    private static readonly PerSampleLoss Loss = SegmentationLosses.BceDice();

    private static readonly string[] DecoderAndHead = ["up_samples.", "up_convs.", "out_conv."];

    private static readonly string[] NormsBiasesHead = ["*.conv.1.", "*.conv.4.", "*.bias", "out_conv."];

    private static (UNet2d Model, Tensor X, Tensor Y) Setup(UNetConfig config, int samples, int size, long seed) =>
        PerSampleGradientTests.Setup(config, samples, size, seed);

    [Fact]
    public void Patterns_select_by_prefix_and_wildcard_and_one_that_matches_nothing_is_an_error()
    {
        var layout = UNetLayout.For(UNetTests.Tiny);
        var names = layout.ParameterNames;
        string[] Chosen(params string[] patterns) => [.. names.Where((_, i) => layout.SelectTrainable(patterns)[i])];

        Assert.All(layout.SelectTrainable(null), b => Assert.True(b));
        Assert.Equal(names.Where(n => n.StartsWith("up_", StringComparison.Ordinal) || n.StartsWith("out_conv.", StringComparison.Ordinal)), Chosen(DecoderAndHead));
        Assert.Equal(names.Where(n => n.EndsWith(".bias", StringComparison.Ordinal)), Chosen("*.bias"));
        Assert.Equal(["out_conv.2.weight", "out_conv.2.bias"], Chosen("out_conv.2"));
        var norms = Chosen("*.conv.1.", "*.conv.4.");
        Assert.NotEmpty(norms);
        Assert.All(norms, n => Assert.Contains(layout.Layers, l => l.Kind == UNetLayerKind.GroupNorm && n.StartsWith(l.Name + ".", StringComparison.Ordinal)));
        Assert.Equal(layout.Layers.Count(l => l.Kind == UNetLayerKind.GroupNorm) * 2, norms.Length);

        var error = Assert.Throws<ArgumentException>(() => layout.SelectTrainable(["decoder.", "out_conv."]));
        Assert.Contains("\"decoder.\" matches no parameter", error.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => layout.SelectTrainable([""]));

        // The recipe is checked when it is read (the model is known) and again when a run starts.
        var json = """{ "model": { "in_channels": 1, "out_channels": 1, "depth": 2, "base_width": 2, "group_norm_groups": 1 }, "trainable": ["head."] }""";
        Assert.Contains("trainable: \"head.\"", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson(json)).Message, StringComparison.Ordinal);
        Assert.Contains("trainable", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "trainable": [] }""")).Message, StringComparison.Ordinal);
        var ok = TrainingConfig.FromJson(json.Replace("head.", "out_conv.", StringComparison.Ordinal));
        Assert.Equal(["out_conv."], ok.Trainable!);
        Assert.Equal(ok.ToJson(), TrainingConfig.FromJson(ok.ToJson()).ToJson());
        Assert.Null(TrainingConfig.FromJson("{}").Trainable);

        // A config without a model (the reference U-Net is chosen from the data) is checked at the start of the run.
        var data = TestSlices.Disks(patients: 6, slicesPerPatient: 1, size: 32);
        var late = new TrainingConfig { Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate }, Epochs = 1, Trainable = ["decoder."], Threads = 1 };
        Assert.Contains("\"decoder.\"", Assert.Throws<ArgumentException>(() => SegmentationTrainer.Train(data, null, late, new TrainingOptions())).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(2, 16, 0)]
    [InlineData(3, 16, 0)]
    [InlineData(2, 16, 1)]
    [InlineData(3, 16, 2)]
    public void Folded_gradients_of_the_trainable_subset_equal_micro_batching(int depth, int size, int selection)
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        string[] patterns = selection switch
        {
            0 => DecoderAndHead,
            1 => NormsBiasesHead,
            _ => ["bottleneck_conv.", "down_convs.0.conv.1."], // deep layers (shared-weight path) between frozen ones
        };
        var config = UNetTests.Tiny with { Depth = depth };
        var (model, x, y) = Setup(config, 5, size, 100 + depth + selection);
        using var _ = model;
        var grouping = SliceGrouping.Create([2, 0, 1, 0, 2], GroupReduction.Mean);
        using var all = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, Loss);

        var count = model.SetTrainable(patterns);
        var mask = model.Layout.SelectTrainable(patterns);
        var expectedNames = model.Layout.ParameterNames.Where((_, i) => mask[i]).ToArray();
        Assert.Equal(model.OrderedParameters().Where((_, i) => mask[i]).Sum(p => p.numel()), count);
        Assert.True(count < model.ParameterCount);
        using var folded = PerSampleGradients.Compute(model, x, y, grouping, Loss);
        using var micro = PerSampleGradients.ComputeByMicroBatching(model, x, y, grouping, Loss);
        Assert.Equal(expectedNames, folded.ParameterNames);
        Assert.Equal(expectedNames, micro.ParameterNames);

        var worst = 0.0;
        for (var i = 0; i < expectedNames.Length; i++)
        {
            var full = all.Gradient(expectedNames[i]);
            var scale = full.abs().max().item<double>();
            Assert.True(scale > 0, expectedNames[i]);
            worst = Math.Max(worst, (folded.Gradient(i) - full).abs().max().item<double>() / scale);
            worst = Math.Max(worst, (micro.Gradient(i) - full).abs().max().item<double>() / scale);
        }

        output.WriteLine($"{expectedNames.Length} of {model.Layout.ParameterNames.Count} tensors trainable ({count} values); worst relative difference {worst:E2}");
        Assert.True(worst <= 1e-10, $"worst relative difference {worst:E2}");
        Assert.True(folded.GroupLosses.allclose(all.GroupLosses, 1e-12, 0));
        Assert.True(folded.Norms().allclose(micro.Norms(), 1e-10, 0));
        Assert.All(model.OrderedParameters(), p => Assert.Null(p.grad));
    }

    [Fact]
    public void Clipping_norm_is_measured_over_the_trainable_parameters_only_and_frozen_ones_get_no_gradient_or_noise()
    {
        using var scope = NewDisposeScope();
        var (model, x, y) = Setup(UNetTests.Tiny, 4, 16, 17);
        using var _ = model;
        int[] groups = [0, 0, 1, 2];
        using var full = PerSampleGradients.Compute(model, x, y, groups, Loss);
        model.SetTrainable(DecoderAndHead);
        var mask = model.Layout.SelectTrainable(DecoderAndHead);
        using var subset = PerSampleGradients.Compute(model, x, y, groups, Loss);

        // ‖g‖ over the trainable tensors only, computed by hand from the all-parameter gradients.
        var squares = zeros(3, ScalarType.Float64);
        foreach (var name in subset.ParameterNames)
        {
            squares += full.Gradient(name).reshape(3, -1).square().sum(1);
        }

        var byHand = squares.sqrt();
        Assert.True(subset.Norms().allclose(byHand, 1e-12, 0));
        Assert.True((subset.Norms() < full.Norms() * 0.999).all().item<bool>(), "the frozen encoder carries gradient norm; it must not count");

        // C just above the second-largest subset norm: the subset norm clips one patient, the all-parameter norm would clip two.
        var sorted = subset.Norms().sort(descending: true).Values;
        var c = sorted[1].item<double>() * 1.0005;
        Assert.True(sorted[0].item<double>() > c);
        var factors = (c / (byHand + PerGroupGradients.NormFloor)).clamp_max(1.0);
        using var engine = new DpGradientEngine(model, Loss, new DpSgdSettings(c, 0, ExpectedBatchSize: 2.5));
        var stats = engine.ComputeGradients(x, y, groups);
        Assert.Equal(1, stats.ClippedGroups);
        Assert.True((full.Norms() > c).sum().item<long>() > 1, "the all-parameter norm would clip more patients");
        var parameters = model.OrderedParameters();
        var names = model.Layout.ParameterNames;
        for (var i = 0; i < parameters.Count; i++)
        {
            if (!mask[i])
            {
                Assert.Null(parameters[i].grad);
                continue;
            }

            var expected = factors.matmul(full.Gradient(names[i]).reshape(3, -1)).view(parameters[i].shape) / 2.5;
            Assert.True(parameters[i].grad!.allclose(expected, 1e-10, 1e-14), names[i]);
        }

        // With noise: the trainable gradients carry it at σC/E, the frozen parameters still get nothing.
        const double sigma = 3.0;
        using var generator = GaussianNoise.CreateInsecureSeeded(9);
        using var noisy = new DpGradientEngine(model, Loss, new DpSgdSettings(c, sigma, 2.5), generator);
        noisy.ComputeGradients(x, y, groups);
        var noise = cat([.. parameters.Where((_, i) => mask[i]).Select((p, k) =>
            (p.grad! - (factors.matmul(full.Gradient(subset.ParameterNames[k]).reshape(3, -1)).view(p.shape) / 2.5)).flatten())]);
        Assert.Equal(model.TrainableParameters().Sum(p => p.numel()), noise.numel());
        Assert.InRange(noise.std().item<double>(), sigma * c / 2.5 * 0.95, sigma * c / 2.5 * 1.05);
        Assert.All(parameters.Where((_, i) => !mask[i]), p => Assert.Null(p.grad));
    }

    [Theory]
    [InlineData(PrivacyMode.Dp, OptimizerKind.Adam)]
    [InlineData(PrivacyMode.Dp, OptimizerKind.AdamW)]
    [InlineData(PrivacyMode.NonPrivate, OptimizerKind.Sgd)]
    public void Frozen_parameters_stay_bit_identical_through_training_with_optimiser_state_and_ema(PrivacyMode mode, OptimizerKind optimizer)
    {
        Assert.NotNull(fixture.Info);
        var small = new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 };
        var data = TestSlices.Disks(patients: 30, slicesPerPatient: 2, seed: 8);
        using var initial = new UNet2d(small, generator: new Generator(99));
        var config = new TrainingConfig
        {
            Model = small,
            Trainable = NormsBiasesHead,
            Privacy = new PrivacyConfig { Mode = mode, Epsilon = 8, Delta = 1e-3, ClipNorm = 0.5 },
            Epochs = 2,
            BatchSize = 10,
            Optimizer = new OptimizerConfig { Kind = optimizer, LearningRate = 0.01, WeightDecay = 0.01 },
            Augmentation = new AugmentationConfig { Multiplicity = 2 },
            EmaDecay = 0.9,
            Validation = new ValidationConfig { EveryEpochs = 1, KeepBest = false },
            Threads = 1,
        };
        using var result = SegmentationTrainer.Train(data, null, config, new TrainingOptions { InitialModel = initial, InsecureDeterministicPrivacySeed = 5 });
        Assert.True(result.Steps > 0);
        var mask = initial.Layout.SelectTrainable(NormsBiasesHead);
        var names = initial.Layout.ParameterNames;
        int same = 0, changed = 0;
        foreach (var (i, trained, start) in result.Model.OrderedParameters().Zip(initial.OrderedParameters()).Select((p, i) => (i, p.First, p.Second)))
        {
            var equal = trained.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits)
                .SequenceEqual(start.data<float>().ToArray().Select(BitConverter.SingleToInt32Bits));
            if (!mask[i])
            {
                Assert.True(equal, $"frozen {names[i]} changed");
                same++;
            }
            else
            {
                Assert.False(equal, $"trainable {names[i]} did not change");
                changed++;
            }
        }

        output.WriteLine($"{mode}/{optimizer}: {same} frozen tensors bit-identical, {changed} trained");
        Assert.True(same > 0 && changed > 0);
    }
}
