using MriSeg.Learning.Model;
using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

/// <summary>The per-sample losses, the Tversky loss against soft Dice and its false-negative weighting.</summary>
[Collection(TorchCollection.Name)]
public sealed class SegmentationLossTests(TorchRuntimeFixture fixture)
{
    /// <summary>A [1, 1, 8, 8] target with a 4x4 tumour, and near-hard logits that predict <paramref name="predicted"/>.</summary>
    private static (Tensor Logits, Tensor Target) Hard(Func<int, int, bool> predicted)
    {
        var target = zeros([1, 1, 8, 8]);
        target[.., .., 2..6, 2..6] = 1;
        var logits = full([1, 1, 8, 8], -30f);
        for (var i = 0; i < 8; i++)
        {
            for (var j = 0; j < 8; j++)
            {
                if (predicted(i, j))
                {
                    logits[0, 0, i, j] = 30f;
                }
            }
        }

        return (logits, target);
    }

    [Fact]
    public void Tversky_with_equal_weights_is_soft_dice_with_twice_the_smoothing()
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        using var generator = new Generator(11);
        var logits = randn([5, 2, 12, 12], generator: generator) * 3;
        var targets = (rand([5, 2, 12, 12], generator: generator) > 0.6).to(ScalarType.Float32);
        targets[0] = 0; // a sample without tumour
        var tversky = SegmentationLosses.SoftTversky(0.5, 0.5, smooth: 1)(logits, targets);
        var dice = SegmentationLosses.SoftDice(smooth: 2)(logits, targets);
        Assert.Equal([5L], tversky.shape);
        Assert.True(tversky.allclose(dice, 1e-6, 1e-6), $"{tversky.str()} vs {dice.str()}");
    }

    [Fact]
    public void Tversky_beta_above_a_half_makes_a_miss_cost_more_than_a_false_alarm_of_the_same_size()
    {
        using var scope = NewDisposeScope();
        var (missed, target) = Hard((i, j) => i is >= 2 and < 6 && j is >= 2 and < 4);             // half the tumour: 8 FN
        var (overshot, _) = Hard((i, j) => i is >= 2 and < 6 && j is >= 0 and < 6);               // all of it + 8 FP
        double Loss(PerSampleLoss loss, Tensor logits) => loss(logits, target).item<float>();

        var recall = SegmentationLosses.SoftTversky(0.3, 0.7, smooth: 0);
        Assert.Equal(1 - (8 / (8 + (0.7 * 8))), Loss(recall, missed), 4);
        Assert.Equal(1 - (16 / (16 + (0.3 * 8))), Loss(recall, overshot), 4);
        Assert.True(Loss(recall, missed) > Loss(recall, overshot));

        var precision = SegmentationLosses.SoftTversky(0.7, 0.3, smooth: 0);
        Assert.True(Loss(precision, missed) < Loss(precision, overshot));
    }

    [Fact]
    public void The_recipe_loss_bce_tversky_is_bce_plus_tversky_with_the_configured_beta()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(5);
        var logits = randn([3, 1, 10, 10], generator: generator);
        var targets = (rand([3, 1, 10, 10], generator: generator) > 0.7).to(ScalarType.Float32);
        var config = TrainingConfig.FromJson("""{ "loss": "bce_tversky", "tversky_beta": 0.8 }""");
        var expected = SegmentationLosses.BinaryCrossEntropy(logits, targets) + SegmentationLosses.SoftTversky(0.2, 0.8)(logits, targets);
        Assert.True(SegmentationTrainer.Loss(config)(logits, targets).allclose(expected, 1e-6, 1e-6));
        Assert.False(SegmentationTrainer.Loss(config with { TverskyBeta = 0.5 })(logits, targets).allclose(expected, 1e-6, 1e-6));
        Assert.Contains("tversky_beta", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "tversky_beta": 1 }""")).Message, StringComparison.Ordinal);
    }
}
