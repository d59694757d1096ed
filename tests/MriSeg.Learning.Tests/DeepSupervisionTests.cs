using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MriSeg.Learning.Tests;

/// <summary><c>model.deep_supervision</c>: extra heads on coarse decoder levels, their loss, training and refusals.</summary>
[Collection(TorchCollection.Name)]
public sealed class DeepSupervisionTests(TorchRuntimeFixture fixture)
{
    private static readonly UNetConfig Plain = new() { InChannels = 2, OutChannels = 1, Depth = 3, BaseWidth = 2 };

    private static readonly UNetConfig WithHeads = Plain with { DeepSupervision = 2 };

    [Fact]
    public void Heads_follow_the_reference_layers_and_leave_the_full_resolution_output_unchanged()
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        var plainNames = UNetLayout.For(Plain).ParameterNames;
        var names = UNetLayout.For(WithHeads).ParameterNames;
        Assert.Equal(plainNames, names.Take(plainNames.Count));
        Assert.Equal(["ds_heads.0.weight", "ds_heads.0.bias", "ds_heads.1.weight", "ds_heads.1.bias"], names.Skip(plainNames.Count));

        using var model = new UNet2d(WithHeads, generator: new Generator(3));
        Assert.Equal([1L, 8, 3, 3], model.OrderedParameters()[^4].shape);   // decoder level 1: 2·w·2 channels
        Assert.Equal([1L, 16, 3, 3], model.OrderedParameters()[^2].shape);  // level 2
        var x = randn([3, 2, 32, 32], generator: new Generator(4));
        var outputs = model.ForwardLogitsWithDeepSupervision(x);
        Assert.Equal(3, outputs.Length);
        Assert.Equal([3L, 1, 32, 32], outputs[0].shape);
        Assert.Equal([3L, 1, 16, 16], outputs[1].shape);
        Assert.Equal([3L, 1, 8, 8], outputs[2].shape);
        Assert.True(outputs[0].equal(model.ForwardLogits(x)).all().item<bool>());

        // The same weights without the heads predict the same: prediction never uses them.
        using var plain = model.WithoutDeepSupervision();
        Assert.Equal(Plain, plain.Config);
        Assert.Equal(plainNames, plain.Layout.ParameterNames);
        Assert.True(plain.ForwardLogits(x).equal(outputs[0]).all().item<bool>());

        // And a model with heads starts from one without them: the shared layers are copied, the heads keep their values.
        using var again = new UNet2d(WithHeads, generator: new Generator(5));
        var heads = again.OrderedParameters().TakeLast(4).Select(p => p.clone()).ToList();
        again.LoadWeightsFrom(plain);
        Assert.True(again.ForwardLogits(x).equal(outputs[0]).all().item<bool>());
        Assert.All(heads.Zip(again.OrderedParameters().TakeLast(4)), h => Assert.True(h.First.equal(h.Second).all().item<bool>()));
        Assert.Throws<ArgumentException>(() => again.LoadWeightsFrom(new UNet2d(Plain with { BaseWidth = 4 })));
    }

    [Fact]
    public void Config_json_names_it_only_when_on_and_refuses_a_level_that_does_not_exist_or_dp()
    {
        Assert.DoesNotContain("deep_supervision", Plain.ToJson(), StringComparison.Ordinal);
        Assert.Equal(WithHeads, UNetConfig.FromJson(WithHeads.ToJson()));
        var tooDeep = Assert.Throws<ArgumentException>(() => (Plain with { DeepSupervision = 3 }).Validate());
        Assert.Contains("deep_supervision must be 0..depth-1 = 2", tooDeep.Message, StringComparison.Ordinal);

        const string Model = """ "model": { "in_channels": 2, "depth": 3, "base_width": 2, "deep_supervision": 1 } """;
        var dp = Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("{" + Model + "}"));
        Assert.Contains("deep_supervision", dp.Message, StringComparison.Ordinal);
        var plain = TrainingConfig.FromJson("{" + Model + """, "privacy": { "mode": "non_private" } }""");
        Assert.Equal(1, plain.Model!.DeepSupervision);
    }

    [Fact]
    public void The_loss_weights_each_output_against_the_pooled_target_by_a_half_per_level()
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        using var generator = new Generator(5);
        var targets = (rand([4, 1, 16, 16], generator: generator) > 0.7).to(ScalarType.Float32);
        Tensor[] outputs = [randn([4, 1, 16, 16], generator: generator), randn([4, 1, 8, 8], generator: generator), randn([4, 1, 4, 4], generator: generator)];
        var loss = SegmentationLosses.BceDice();

        var combined = SegmentationLosses.DeepSupervised(loss, outputs, targets);
        var expected = (loss(outputs[0], targets) + (0.5 * loss(outputs[1], F.avg_pool2d(targets, 2, 2)))
            + (0.25 * loss(outputs[2], F.avg_pool2d(targets, 4, 4)))) / 1.75;
        Assert.Equal([4L], combined.shape);
        Assert.True(combined.allclose(expected, 1e-6, 1e-6), $"{combined.str()} vs {expected.str()}");
        Assert.True(SegmentationLosses.DeepSupervised(loss, outputs[..1], targets).allclose(loss(outputs[0], targets)));

        var misplaced = Assert.Throws<ArgumentException>(() => SegmentationLosses.DeepSupervised(loss, [outputs[0], outputs[2]], targets));
        Assert.Contains("divided by 2", misplaced.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Non_private_training_trains_the_heads()
    {
        Assert.NotNull(fixture.Info);
        var config = new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, DeepSupervision = 1 };
        var data = TestSlices.Disks(patients: 12, slicesPerPatient: 1, seed: 8);
        using var initial = new UNet2d(config, generator: new Generator(99));
        var training = new TrainingConfig
        {
            Model = config,
            Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate },
            Epochs = 1,
            BatchSize = 4,
            Optimizer = new OptimizerConfig { Kind = OptimizerKind.Adam, LearningRate = 0.01 },
            Augmentation = AugmentationConfig.None,
            Validation = new ValidationConfig { EveryEpochs = 1, KeepBest = false },
            Threads = 1,
        };
        TrainingCheckpoint? last = null;
        using var result = SegmentationTrainer.Train(data, null, training, new TrainingOptions { InitialModel = initial, Checkpoint = c => last = c });
        var head = last!.Weights.Single(w => w.Name == "ds_heads.0.weight");
        using var trained = Formats.TorchSafeTensors.ToTensor(head);
        Assert.False(trained.equal(initial.OrderedParameters()[^2]).all().item<bool>(), "the deep-supervision head did not change");

        // The checkpoint keeps the heads (a resumed run needs them); the trained model is the one that predicts, without them.
        Assert.Equal(config.WithoutDeepSupervision(), result.Model.Config);
        Assert.DoesNotContain(result.Model.Layout.ParameterNames, n => n.StartsWith("ds_heads", StringComparison.Ordinal));
    }
}
