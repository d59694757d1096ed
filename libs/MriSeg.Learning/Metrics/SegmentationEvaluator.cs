using System.Text.Json.Serialization;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Model;
using static TorchSharp.torch;

namespace MriSeg.Learning.Metrics;

/// <summary>How <see cref="SegmentationEvaluator"/> predicts and scores.</summary>
public sealed record EvaluationOptions
{
    /// <summary>A pixel is foreground when the model's probability exceeds this (0.5, as BraTS evaluations use).</summary>
    public double Threshold { get; init; } = 0.5;

    /// <summary>Slices per forward pass.</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>Compute HD95 (the surface distances cost more than the overlaps; validation during training may skip them).</summary>
    public bool ComputeHd95 { get; init; } = true;

    /// <summary>Test-time augmentation: average the probabilities of the slice and its left-right mirror.</summary>
    public bool MirrorAveraging { get; init; }

    /// <summary>
    /// Post-processing: foreground regions (8-connected in a slice, per label channel) with fewer pixels than this are
    /// removed (<see cref="SmallRegions"/>); 0 keeps every region.
    /// </summary>
    public int MinRegionPixels { get; init; }
}

/// <summary>One patient's scores, per label channel. Stays inside the clean room: only means leave it.</summary>
/// <param name="PatientId">The pseudonymous id.</param>
/// <param name="Slices">Slices scored.</param>
/// <param name="HasTumour">Whether the truth has foreground in the first channel.</param>
/// <param name="Dice">Dice per channel.</param>
/// <param name="IoU">IoU per channel.</param>
/// <param name="Hd95">HD95 per channel in pixels (NaN when not computed).</param>
/// <param name="TumourPixels">Foreground pixels of the truth's first channel (whole tumour), all slices.</param>
/// <param name="PredictedPixels">Foreground pixels of the prediction's first channel, all slices.</param>
public sealed record PatientScores(
    string PatientId, int Slices, bool HasTumour, IReadOnlyList<double> Dice, IReadOnlyList<double> IoU, IReadOnlyList<double> Hd95,
    long TumourPixels, long PredictedPixels);

/// <summary>Means over patients (every patient weighs the same, as in BraTS).</summary>
/// <remarks>
/// <see cref="Dice"/>, <see cref="IoU"/> and <see cref="Hd95"/> are the whole-tumour channel's (WT, the first
/// channel of both label schemes), each patient scored over all of its slices stacked, with the BraTS convention:
/// a patient without tumour scores Dice 1 when nothing is predicted and 0 otherwise. With the one-channel
/// <c>wt</c> labels this is what these numbers always were; with <c>brats</c> labels (WT, TC, ET) they used to be
/// means over the three channels, which <see cref="MeanChannelDice"/> and the per-channel lists still give.
/// </remarks>
/// <param name="Dice">Mean whole-tumour Dice over patients (BraTS convention).</param>
/// <param name="IoU">Mean whole-tumour IoU.</param>
/// <param name="Hd95">Mean whole-tumour HD95 in pixels (NaN when not computed).</param>
/// <param name="Patients">Patients scored.</param>
/// <param name="Slices">Slices scored.</param>
/// <param name="Channels">The label channel names.</param>
/// <param name="DicePerChannel">Mean Dice of each channel.</param>
/// <param name="IoUPerChannel">Mean IoU of each channel.</param>
/// <param name="Hd95PerChannel">Mean HD95 of each channel.</param>
/// <param name="MeanChannelDice">Mean Dice over patients and all label channels (equal to <paramref name="Dice"/> with one channel).</param>
/// <param name="DiceStd">Standard deviation of the patients' whole-tumour Dice (population).</param>
public sealed record MetricSummary(
    double Dice,
    [property: JsonPropertyName("iou")] double IoU,
    double Hd95,
    int Patients,
    int Slices,
    IReadOnlyList<string> Channels,
    IReadOnlyList<double> DicePerChannel,
    [property: JsonPropertyName("iou_per_channel")] IReadOnlyList<double> IoUPerChannel,
    IReadOnlyList<double> Hd95PerChannel,
    double MeanChannelDice,
    double DiceStd)
{
    /// <summary>The whole-tumour channel among <paramref name="channels"/>: "WT" when named so, else the first.</summary>
    public static int WholeTumourChannel(IReadOnlyList<string> channels)
    {
        ArgumentNullException.ThrowIfNull(channels);
        for (var c = 0; c < channels.Count; c++)
        {
            if (string.Equals(channels[c], "WT", StringComparison.OrdinalIgnoreCase))
            {
                return c;
            }
        }

        return 0;
    }

    /// <summary>Means of per-patient scores.</summary>
    public static MetricSummary From(IReadOnlyList<PatientScores> patients, IReadOnlyList<string> channels)
    {
        ArgumentNullException.ThrowIfNull(patients);
        ArgumentNullException.ThrowIfNull(channels);
        if (patients.Count == 0)
        {
            throw new ArgumentException("no patients to summarise", nameof(patients));
        }

        var k = channels.Count;
        double[] Mean(Func<PatientScores, IReadOnlyList<double>> pick) =>
            [.. Enumerable.Range(0, k).Select(c => patients.Average(p => pick(p)[c]))];
        var dice = Mean(p => p.Dice);
        var iou = Mean(p => p.IoU);
        var hd = Mean(p => p.Hd95);
        var wt = WholeTumourChannel(channels);
        var mean = dice[wt];
        var std = Math.Sqrt(patients.Average(p => (p.Dice[wt] - mean) * (p.Dice[wt] - mean)));
        return new MetricSummary(dice[wt], iou[wt], hd[wt], patients.Count, patients.Sum(p => p.Slices), [.. channels], dice, iou, hd, dice.Average(), std);
    }
}

/// <summary>Per-patient scores and their means.</summary>
/// <param name="Summary">The means.</param>
/// <param name="Patients">Each patient's scores (never to leave the clean room).</param>
public sealed record EvaluationResult(MetricSummary Summary, IReadOnlyList<PatientScores> Patients);

/// <summary>
/// Runs a model over every slice of a dataset and scores each patient over all of its slices stacked
/// (<see cref="SegmentationMetrics"/>: Dice, IoU, HD95 per label channel, BraTS conventions for empty masks).
/// </summary>
public static class SegmentationEvaluator
{
    /// <summary>Predicts binary masks [N, K, H, W] (0/1) for every slice of <paramref name="data"/>.</summary>
    public static byte[] Predict(UNet2d model, SliceDataset data, EvaluationOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        options ??= new EvaluationOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(options.BatchSize, 1);
        if (!(options.Threshold > 0 && options.Threshold < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.Threshold, "the threshold must be in (0, 1).");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(options.MinRegionPixels);

        if (data.Channels != model.Config.InChannels || data.LabelChannels != model.Config.OutChannels)
        {
            throw new ArgumentException(
                $"the data has {data.Channels} image and {data.LabelChannels} label channels; the model takes {model.Config.InChannels} and predicts {model.Config.OutChannels}.");
        }

        var masks = new byte[data.Masks.Length];
        var maskValues = data.LabelChannels * data.Plane;
        var device = model.ParameterDevice;
        var dtype = model.ParameterDType;
        using var _ = no_grad();
        for (var start = 0; start < data.Count; start += options.BatchSize)
        {
            using var scope = NewDisposeScope();
            var n = Math.Min(options.BatchSize, data.Count - start);
            var x = Training.SliceTensors.Images(data, Enumerable.Range(start, n).ToList()).to(dtype, device);
            var probabilities = Probabilities(model, x, options.MirrorAveraging).to(ScalarType.Float32).cpu();
            var values = probabilities.data<float>().ToArray();
            SmallRegions.SuppressEach(values, data.Height, data.Width, options.Threshold, options.MinRegionPixels);
            var batch = masks.AsSpan(start * maskValues, n * maskValues);
            for (var i = 0; i < values.Length; i++)
            {
                batch[i] = values[i] > options.Threshold ? (byte)1 : (byte)0;
            }
        }

        return masks;
    }

    /// <summary>Predicts and scores every patient of <paramref name="data"/>.</summary>
    public static EvaluationResult Evaluate(UNet2d model, SliceDataset data, EvaluationOptions? options = null)
    {
        options ??= new EvaluationOptions();
        var predicted = Predict(model, data, options);
        return Score(predicted, data, options.ComputeHd95);
    }

    /// <summary>Scores predicted masks [N, K, H, W] against the dataset's masks, per patient.</summary>
    public static EvaluationResult Score(byte[] predicted, SliceDataset data, bool computeHd95 = true)
    {
        ArgumentNullException.ThrowIfNull(predicted);
        ArgumentNullException.ThrowIfNull(data);
        if (predicted.Length != data.Masks.Length)
        {
            throw new ArgumentException($"{predicted.Length} predicted values for {data.Masks.Length} mask values.", nameof(predicted));
        }

        var byPatient = data.SlicesByPatient();
        var channels = data.LabelChannels;
        var plane = data.Plane;
        var scores = new PatientScores?[byPatient.Length];
        Parallel.For(0, byPatient.Length, p =>
        {
            var slices = byPatient[p];
            if (slices.Length == 0)
            {
                return;
            }

            var n = slices.Length * plane;
            var prediction = new byte[n];
            var truth = new byte[n];
            var dice = new double[channels];
            var iou = new double[channels];
            var hd = new double[channels];
            long tumourPixels = 0, predictedPixels = 0;
            for (var c = 0; c < channels; c++)
            {
                for (var s = 0; s < slices.Length; s++)
                {
                    var offset = ((slices[s] * channels) + c) * plane;
                    predicted.AsSpan(offset, plane).CopyTo(prediction.AsSpan(s * plane));
                    data.Masks.AsSpan(offset, plane).CopyTo(truth.AsSpan(s * plane));
                }

                if (c == 0)
                {
                    tumourPixels = n - truth.AsSpan().Count((byte)0);
                    predictedPixels = n - prediction.AsSpan().Count((byte)0);
                }

                dice[c] = SegmentationMetrics.Dice(prediction, truth);
                iou[c] = SegmentationMetrics.IoU(prediction, truth);
                hd[c] = computeHd95 ? SegmentationMetrics.Hd95(prediction, truth, slices.Length, data.Height, data.Width) : double.NaN;
            }

            scores[p] = new PatientScores(data.PatientIds[p], slices.Length, tumourPixels > 0, dice, iou, hd, tumourPixels, predictedPixels);
        });

        var patients = scores.OfType<PatientScores>().ToList();
        return new EvaluationResult(MetricSummary.From(patients, data.Labels.Channels()), patients);
    }

    /// <summary>
    /// The model's probabilities [N, K, H, W] for images <paramref name="x"/> [N, C, H, W]; with
    /// <paramref name="mirrorAveraging"/>, averaged with those of the left-right mirrored images (mirrored back).
    /// </summary>
    public static Tensor Probabilities(UNet2d model, Tensor x, bool mirrorAveraging)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(x);
        var probabilities = Probabilities(model, x);
        return mirrorAveraging ? (probabilities + Probabilities(model, x.flip(3)).flip(3)) / 2 : probabilities;
    }

    private static Tensor Probabilities(UNet2d model, Tensor x) => model.Config.FinalActivation switch
    {
        UNetOutput.Logits => model.ForwardLogits(x).sigmoid(),
        _ => model.forward(x),
    };
}
