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

    [Fact]
    public void Lovasz_hinge_at_hard_predictions_with_margin_one_is_twice_each_samples_jaccard_loss()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(17);
        var targets = (rand([6, 2, 9, 11], generator: generator) > 0.7).to(ScalarType.Float32);
        var predicted = (rand([6, 2, 9, 11], generator: generator) > 0.6).to(ScalarType.Float32);
        targets[0, 0] = 0; // no tumour, some predicted: IoU 0
        targets[1, 1] = 0; // no tumour, none predicted: nothing to lose
        predicted[1, 1] = 0;
        predicted[2, 0] = targets[2, 0]; // exact: IoU 1
        var logits = (2 * predicted) - 1;

        var loss = SegmentationLosses.LovaszHinge(logits, targets);

        Assert.Equal([6L], loss.shape);
        var intersection = (predicted * targets).sum([2, 3]);
        var union = (predicted + targets).clamp_max(1).sum([2, 3]);
        var jaccardLoss = 1 - (intersection / union.clamp_min(1)).where(union > 0, ones_like(union));
        var expected = (2 * jaccardLoss).mean([1]);
        Assert.True(loss.allclose(expected, 1e-5, 1e-5), $"{loss.str()} vs {expected.str()}");
        Assert.Equal((2 + (2 * jaccardLoss[0, 1].item<float>())) / 2, loss[0].item<float>(), 4); // channel 0: IoU 0, the full 2
        Assert.Equal(jaccardLoss[1, 0].item<float>(), loss[1].item<float>(), 4);                  // channel 1: nothing to lose
    }

    [Fact]
    public void Lovasz_hinge_is_per_sample_and_shrinks_when_a_missed_pixel_is_found()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(3);
        var logits = randn([4, 1, 8, 8], generator: generator);
        var targets = (rand([4, 1, 8, 8], generator: generator) > 0.5).to(ScalarType.Float32);
        var batch = SegmentationLosses.LovaszHinge(logits, targets);
        for (var i = 0; i < 4; i++)
        {
            Assert.Equal(batch[i].item<float>(), SegmentationLosses.LovaszHinge(logits[i..(i + 1)], targets[i..(i + 1)]).item<float>(), 5);
        }

        // Raising the logit of a tumour pixel (a smaller hinge error) never raises the loss, and strictly lowers it here.
        var (missed, target) = Hard((i, j) => i is >= 2 and < 6 && j is >= 2 and < 5);
        var found = missed.clone();
        found[0, 0, 3, 5] = 30f;
        Assert.True(SegmentationLosses.LovaszHinge(found, target).item<float>() < SegmentationLosses.LovaszHinge(missed, target).item<float>());

        var config = TrainingConfig.FromJson("""{ "loss": "bce_lovasz" }""");
        var expected = SegmentationLosses.BinaryCrossEntropy(logits, targets) + batch;
        Assert.True(SegmentationTrainer.Loss(config)(logits, targets).allclose(expected, 1e-6, 1e-6));
    }
}
