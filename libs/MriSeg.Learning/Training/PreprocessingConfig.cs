using System.Globalization;
using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Preprocessing;

namespace MriSeg.Learning.Training;

/// <summary>
/// How a recipe turns raw case folders into slices (the <c>preprocessing</c> section of a <see cref="TrainingConfig"/>,
/// and of the model.json a run writes): the <see cref="Preprocessor"/>'s choices. <c>mriseg train</c> and
/// <c>mriseg evaluate</c> apply it to every raw data folder they are given, so a model is scored on data prepared
/// exactly as its training data was; shards given instead must match it.
/// </summary>
public sealed record PreprocessingConfig
{
    /// <summary>Output side in pixels (crop to the brain, pad to a square, resize); 0 keeps the native grid.</summary>
    public int Size { get; init; } = 128;

    /// <summary>Image channels in order (flair, t1, t1ce, t2).</summary>
    public IReadOnlyList<string> Modalities { get; init; } = ["flair", "t1", "t1ce", "t2"];

    /// <summary>Mask channels: "wt" (whole tumour) or "brats" (WT, TC, ET).</summary>
    public string Labels { get; init; } = "wt";

    /// <summary>Normalisation: the z-score inside the brain after clipping to these percentiles of the brain's voxels.</summary>
    public double LowerPercentile { get; init; } = 0.5;

    /// <summary>The upper clipping percentile.</summary>
    public double UpperPercentile { get; init; } = 99.5;

    /// <summary>
    /// Slice selection: every tumour slice plus this share of the tumour-free brain slices (1 = every brain slice).
    /// With one slice per patient (the BraTS PNG layout) anything below 1 drops tumour-free patients at random.
    /// </summary>
    public double TumourFreeShare { get; init; } = 0.25;

    /// <summary>The pre-processor's defaults (<c>mriseg preprocess</c> without options).</summary>
    public static PreprocessingConfig Default { get; } = new();

    /// <summary>
    /// This pre-processing with every brain slice kept, for scoring a model: a training selection that drops
    /// tumour-free slices would drop the very slices (with one slice per patient, the very patients) on which a false
    /// positive costs Dice.
    /// </summary>
    public PreprocessingConfig ForScoring() => this with { TumourFreeShare = 1 };

    /// <summary>The modalities parsed.</summary>
    public IReadOnlyList<Modality> ParsedModalities() => PreprocessOptions.ParseModalities(string.Join(',', Modalities));

    /// <summary>The label scheme parsed.</summary>
    public LabelScheme ParsedLabels() => LabelSchemes.Parse(Labels);

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        try
        {
            ArgumentNullException.ThrowIfNull(Modalities);
            ToOptions(new PseudonymKey(new byte[PseudonymKey.MinimumLength]), 1).Validate();
            _ = ParsedLabels();
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException("invalid training configuration: preprocessing: " + e.Message, e);
        }
    }

    /// <summary>The pre-processor's options for this recipe.</summary>
    public PreprocessOptions ToOptions(PseudonymKey key, int parallelism) => new()
    {
        Size = Size,
        Modalities = ParsedModalities(),
        Labels = ParsedLabels(),
        TumourFreeShare = TumourFreeShare,
        LowerPercentile = LowerPercentile,
        UpperPercentile = UpperPercentile,
        PseudonymKey = key,
        MaxDegreeOfParallelism = parallelism,
    };

    /// <summary>The normalisation and slice-selection names a shard pre-processed this way records.</summary>
    public (string Normalisation, string SliceSelection) ProvenanceNames()
    {
        var o = ToOptions(new PseudonymKey(new byte[PseudonymKey.MinimumLength]), 1);
        return (o.NormalisationName, o.SliceSelectionName);
    }

    /// <summary>
    /// Null when <paramref name="data"/> (a shard) looks pre-processed this way: the same modalities, labels and size,
    /// and, where the shard records them, the same normalisation and (unless <paramref name="checkSliceSelection"/> is
    /// false) slice selection; otherwise the first difference.
    /// </summary>
    public string? Mismatch(SliceDataset data, bool checkSliceSelection = true)
    {
        ArgumentNullException.ThrowIfNull(data);
        var modalities = ParsedModalities().Select(Brats.Suffix).ToList();
        if (!data.Modalities.SequenceEqual(modalities, StringComparer.OrdinalIgnoreCase))
        {
            return $"modalities {string.Join(',', data.Modalities)}, the recipe {string.Join(',', modalities)}";
        }

        if (data.Labels != ParsedLabels())
        {
            return $"labels {data.Labels.Name()}, the recipe {ParsedLabels().Name()}";
        }

        if (Size != PreprocessOptions.NativeSize && (data.Height != Size || data.Width != Size))
        {
            return string.Create(CultureInfo.InvariantCulture, $"{data.Height}x{data.Width} slices, the recipe {Size}x{Size}");
        }

        var (normalisation, selection) = ProvenanceNames();
        if (data.Provenance.Normalisation != "unknown" && data.Provenance.Normalisation != normalisation)
        {
            return $"normalisation {data.Provenance.Normalisation}, the recipe {normalisation}";
        }

        if (checkSliceSelection && data.Provenance.SliceSelection != "unknown" && data.Provenance.SliceSelection != selection)
        {
            return $"slice selection {data.Provenance.SliceSelection}, the recipe {selection}";
        }

        return null;
    }

    /// <summary>
    /// The pre-processing a model trained on data of <paramref name="schema"/> expects: its size, modalities and labels,
    /// with the normalisation and slice selection read back from the recorded names where they follow the
    /// pre-processor's naming (else its defaults).
    /// </summary>
    public static PreprocessingConfig FromSchema(DatasetSchema schema)
    {
        ArgumentNullException.ThrowIfNull(schema);
        var config = new PreprocessingConfig
        {
            Size = schema.SliceSelection.EndsWith("@native", StringComparison.Ordinal) ? PreprocessOptions.NativeSize : schema.Height,
            Modalities = [.. schema.Modalities],
            Labels = schema.Labels,
        };
        var selection = schema.SliceSelection.Split('@')[0];
        if (selection == "all-brain")
        {
            config = config with { TumourFreeShare = 1 };
        }
        else if (selection.StartsWith("tumour+", StringComparison.Ordinal)
            && double.TryParse(selection["tumour+".Length..], NumberStyles.Float, CultureInfo.InvariantCulture, out var share))
        {
            config = config with { TumourFreeShare = share };
        }

        var parts = schema.Normalisation.Split('-');
        if (parts is ["zscore", "brain", var lower, var upper] && lower.StartsWith('p') && upper.StartsWith('p')
            && double.TryParse(lower[1..], NumberStyles.Float, CultureInfo.InvariantCulture, out var lo)
            && double.TryParse(upper[1..], NumberStyles.Float, CultureInfo.InvariantCulture, out var hi))
        {
            config = config with { LowerPercentile = lo, UpperPercentile = hi };
        }

        return config;
    }
}
