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
    /// The Lovász hinge per sample and channel, averaged over channels (Berman et al. 2018, "The Lovász-Softmax loss"):
    /// the convex Lovász extension of the Jaccard loss 1 − IoU, evaluated at the hinge errors max(0, 1 − logit·sign),
    /// sign +1 on tumour and −1 elsewhere. Unlike soft Dice it is exact at hard predictions with margin 1 (logits ±1:
    /// the loss is 2·(1 − IoU)) and, per image, it weighs each patient's IoU alike, as the per-patient metric does.
    /// Targets are binarised at ½ (soft deep-supervision targets become their majority). A sample without tumour has a
    /// loss only through its worst pixel; the BCE beside it does the rest.
    /// </summary>
    public static PerSampleLoss LovaszHinge { get; } = (logits, targets) =>
    {
        var samples = logits.shape[0];
        var channels = logits.shape[1];
        var flatLogits = logits.reshape(samples * channels, -1);
        var truth = (targets.reshape(samples * channels, -1) > 0.5).to(flatLogits.dtype);
        var errors = 1 - (flatLogits * ((2 * truth) - 1));
        var (sortedErrors, order) = errors.sort(dim: 1, descending: true);
        var sortedTruth = truth.gather(1, order);
        // The Lovász extension's gradient: the Jaccard loss of the k worst pixels minus that of the k − 1 worst.
        var positives = sortedTruth.sum(1, keepdim: true);
        var intersection = positives - sortedTruth.cumsum(1);
        var union = positives + (1 - sortedTruth).cumsum(1);
        var jaccard = 1 - (intersection / union);
        var weights = cat([jaccard[.., ..1], jaccard[.., 1..] - jaccard[.., ..^1]], 1).detach();
        return (sortedErrors.relu() * weights).sum(1).reshape(samples, channels).mean([1]);
    };

    /// <summary>Binary cross-entropy plus the Lovász hinge.</summary>
    public static PerSampleLoss BceLovasz { get; } = (logits, targets) => BinaryCrossEntropy(logits, targets) + LovaszHinge(logits, targets);

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

    /// <summary>
    /// The deep-supervision loss per sample: <paramref name="loss"/> of each output (full resolution first, then
    /// 1/2, 1/4, … of it) against the targets average-pooled to its grid (a soft target: the tumour share of each
    /// coarse pixel), weighted 1, ½, ¼, … and normalised to sum to 1, as nnU-Net weights its decoder outputs.
    /// </summary>
    /// <exception cref="ArgumentException">An output's grid is not the target's divided by 2^i.</exception>
    public static Tensor DeepSupervised(PerSampleLoss loss, IReadOnlyList<Tensor> outputs, Tensor targets)
    {
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(outputs);
        ArgumentNullException.ThrowIfNull(targets);
        Tensor? total = null;
        double weightSum = 0;
        for (var i = 0; i < outputs.Count; i++)
        {
            var factor = 1L << i;
            if (outputs[i].shape[2] * factor != targets.shape[2] || outputs[i].shape[3] * factor != targets.shape[3])
            {
                throw new ArgumentException(
                    $"deep-supervision output {i} is {outputs[i].shape[2]}x{outputs[i].shape[3]}; expected the target's " +
                    $"{targets.shape[2]}x{targets.shape[3]} divided by {factor}.", nameof(outputs));
            }

            var target = i == 0 ? targets : F.avg_pool2d(targets, factor, factor);
            var weight = 1.0 / factor;
            var term = loss(outputs[i], target) * weight;
            total = total is null ? term : total + term;
            weightSum += weight;
        }

        return total is null ? throw new ArgumentException("no output to score.", nameof(outputs)) : total / weightSum;
    }
}
