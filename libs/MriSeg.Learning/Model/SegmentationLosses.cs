using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MriSeg.Learning.Model;

/// <summary>
/// A loss with one value per sample: logits [N, C, H, W] and targets of the same shape → [N].
/// Per-sample gradients need this form; a batch-level loss (e.g. Dice over the whole batch) would
/// mix samples and void the per-patient sensitivity bound.
/// </summary>
public delegate Tensor PerSampleLoss(Tensor logits, Tensor targets);

/// <summary>Per-sample segmentation losses on logits.</summary>
public static class SegmentationLosses
{
    /// <summary>Binary cross-entropy on logits, averaged over each sample's channels and pixels.</summary>
    public static PerSampleLoss BinaryCrossEntropy { get; } = (logits, targets) =>
        F.binary_cross_entropy_with_logits(logits, targets, reduction: nn.Reduction.None).mean([1, 2, 3]);

    /// <summary>1 − soft Dice of sigmoid(logits) per channel, averaged over channels.</summary>
    /// <param name="smooth">Added to numerator and denominator so empty masks give a finite, small loss.</param>
    public static PerSampleLoss SoftDice(double smooth = 1.0) => (logits, targets) =>
    {
        var p = logits.sigmoid();
        var intersection = (p * targets).sum([2, 3]);
        var denominator = p.sum([2, 3]) + targets.sum([2, 3]);
        var dice = ((2 * intersection) + smooth) / (denominator + smooth);
        return 1 - dice.mean([1]);
    };

    /// <summary>
    /// 1 − soft Tversky index of sigmoid(logits) per channel, averaged over channels: TP / (TP + α·FP + β·FN) with
    /// soft counts (Salehi et al. 2017). β &gt; α makes a missed tumour pixel cost more than a false alarm; α = β = ½
    /// is soft Dice (with twice the smoothing).
    /// </summary>
    /// <param name="alpha">Weight of false positives.</param>
    /// <param name="beta">Weight of false negatives.</param>
    /// <param name="smooth">Added to numerator and denominator so empty masks give a finite, small loss.</param>
    public static PerSampleLoss SoftTversky(double alpha, double beta, double smooth = 1.0) => (logits, targets) =>
    {
        var p = logits.sigmoid();
        var truePositive = (p * targets).sum([2, 3]);
        var falsePositive = (p * (1 - targets)).sum([2, 3]);
        var falseNegative = ((1 - p) * targets).sum([2, 3]);
        var index = (truePositive + smooth) / (truePositive + (alpha * falsePositive) + (beta * falseNegative) + smooth);
        return 1 - index.mean([1]);
    };

    /// <summary>Binary cross-entropy plus soft Tversky with false negatives weighted <paramref name="beta"/> and false positives 1 − that.</summary>
    public static PerSampleLoss BceTversky(double beta, double smooth = 1.0)
    {
        var tversky = SoftTversky(1 - beta, beta, smooth);
        return (logits, targets) => BinaryCrossEntropy(logits, targets) + tversky(logits, targets);
    }

    /// <summary>Binary cross-entropy plus soft Dice.</summary>
    public static PerSampleLoss BceDice(double smooth = 1.0)
    {
        var dice = SoftDice(smooth);
        return (logits, targets) => BinaryCrossEntropy(logits, targets) + dice(logits, targets);
    }

    /// <summary>
    /// Soft Dice plus the mean absolute difference between sigmoid(logits) and the targets (the reference
    /// system's "Dice + L1" loss).
    /// </summary>
    /// <param name="smooth">Soft Dice smoothing.</param>
    public static PerSampleLoss DiceL1(double smooth = 1.0)
    {
        var dice = SoftDice(smooth);
        return (logits, targets) => dice(logits, targets) + (logits.sigmoid() - targets).abs().mean([1, 2, 3]);
    }
}
