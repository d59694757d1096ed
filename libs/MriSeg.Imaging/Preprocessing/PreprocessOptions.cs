using System.Globalization;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>Choices for <see cref="Preprocessor"/>.</summary>
public sealed record PreprocessOptions
{
    /// <summary>The value of <see cref="Size"/> that keeps the input's own in-plane grid (no crop, no resize).</summary>
    public const int NativeSize = 0;

    /// <summary>The largest output side accepted.</summary>
    public const int MaxSize = 1024;

    /// <summary>
    /// The output slices' side in pixels (default 128): each case is cropped to its brain's bounding box (the same
    /// box for all of its slices), padded to a square and resized to Size x Size. <see cref="NativeSize"/> (0)
    /// keeps the input's in-plane grid instead, voxel for voxel (every case must then share it).
    /// </summary>
    public int Size { get; init; } = 128;

    /// <summary>The image channels, in order (default flair, t1, t1ce, t2). A case lacking one is skipped (or, strict, an error).</summary>
    public IReadOnlyList<Modality> Modalities { get; init; } = Brats.Modalities;

    /// <summary>The mask channels (default whole tumour).</summary>
    public LabelScheme Labels { get; init; } = LabelScheme.WholeTumour;

    /// <summary>
    /// The share of tumour-free brain slices kept besides every slice with tumour, 0..1 (default 0.25); 1 keeps
    /// every brain slice. Each tumour-free slice is kept when a number drawn from the patient's pseudonym and the
    /// slice's index is below the share, so the same slices are chosen in every run under the same key.
    /// </summary>
    public double TumourFreeShare { get; init; } = 0.25;

    /// <summary>The provider's pseudonymisation secret.</summary>
    public required PseudonymKey PseudonymKey { get; init; }

    /// <summary>A case that lacks a file or has an unreadable one is an error (<see cref="PreprocessException"/>), not skipped.</summary>
    public bool Strict { get; init; }

    /// <summary>Cases processed at once (default: processor count). Each worker holds one case's volumes (about 200 MB at 240x240x155 with four modalities).</summary>
    public int MaxDegreeOfParallelism { get; init; } = Environment.ProcessorCount;

    /// <summary>The most voxels a volume may declare (checked before anything is allocated; default 512^3).</summary>
    public long MaxVoxels { get; init; } = NiftiReadOptions.DefaultMaxVoxels;

    /// <summary>Intensities are clipped to these percentiles of the brain's voxels before the z-score (default 0.5 and 99.5).</summary>
    public double LowerPercentile { get; init; } = 0.5;

    /// <summary>The upper clipping percentile (default 99.5).</summary>
    public double UpperPercentile { get; init; } = 99.5;

    /// <summary>The normalisation as recorded in the shard, e.g. "zscore-brain-p0.5-p99.5".</summary>
    public string NormalisationName => string.Create(CultureInfo.InvariantCulture, $"zscore-brain-p{LowerPercentile:0.###}-p{UpperPercentile:0.###}");

    /// <summary>The slice selection as recorded in the shard: "all-brain", or "tumour+S" (S the tumour-free share), plus "@native" or "@crop-N".</summary>
    public string SliceSelectionName =>
        (TumourFreeShare >= 1 ? "all-brain" : string.Create(CultureInfo.InvariantCulture, $"tumour+{TumourFreeShare:0.###}"))
        + (Size == NativeSize ? "@native" : string.Create(CultureInfo.InvariantCulture, $"@crop-{Size}"));

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bad choice.</summary>
    public void Validate()
    {
        ArgumentNullException.ThrowIfNull(PseudonymKey);
        ArgumentNullException.ThrowIfNull(Modalities);
        if (Size != NativeSize && Size is < 8 or > MaxSize)
        {
            throw new ArgumentException($"size {Size}: must be 8..{MaxSize}, or {NativeSize} for the native grid");
        }

        if (Modalities.Count == 0)
        {
            throw new ArgumentException("at least one modality is needed");
        }

        if (Modalities.Distinct().Count() != Modalities.Count)
        {
            throw new ArgumentException($"modalities {string.Join(',', Modalities.Select(Brats.Suffix))} name one twice");
        }

        if (!(TumourFreeShare is >= 0 and <= 1))
        {
            throw new ArgumentException($"tumour-free share {TumourFreeShare.ToString(CultureInfo.InvariantCulture)}: must be 0..1");
        }

        if (MaxDegreeOfParallelism < 1)
        {
            throw new ArgumentException($"max degree of parallelism {MaxDegreeOfParallelism}: must be at least 1");
        }

        if (MaxVoxels < 1 || MaxVoxels > Array.MaxLength)
        {
            throw new ArgumentException($"voxel limit {MaxVoxels}: must be 1..{Array.MaxLength}");
        }

        if (!(LowerPercentile >= 0 && LowerPercentile < UpperPercentile && UpperPercentile <= 100))
        {
            throw new ArgumentException($"percentiles {LowerPercentile.ToString(CultureInfo.InvariantCulture)}..{UpperPercentile.ToString(CultureInfo.InvariantCulture)}: need 0 <= lower < upper <= 100");
        }
    }

    /// <summary>Parses a comma-separated modality list ("flair,t1,t1ce,t2"; case-insensitive; t1c/t1gd and t2f/t1n/t2w accepted).</summary>
    /// <exception cref="ArgumentException">An unknown or repeated name.</exception>
    public static IReadOnlyList<Modality> ParseModalities(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var list = new List<Modality>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var token = new string(part.Where(char.IsAsciiLetterOrDigit).Select(char.ToLowerInvariant).ToArray());
            Modality m = SourceLayouts.RoleOfToken(token) switch
            {
                CaseFileRole.Flair => Modality.Flair,
                CaseFileRole.T1 => Modality.T1,
                CaseFileRole.T1ce => Modality.T1ce,
                CaseFileRole.T2 => Modality.T2,
                _ => throw new ArgumentException($"unknown modality \"{part}\": use flair, t1, t1ce, t2"),
            };
            if (list.Contains(m))
            {
                throw new ArgumentException($"modality \"{part}\" is named twice");
            }

            list.Add(m);
        }

        return list.Count > 0 ? list : throw new ArgumentException("no modality named: use e.g. flair,t1,t1ce,t2");
    }
}

/// <summary>How far a run is.</summary>
/// <param name="CasesDone">Cases finished (processed or skipped).</param>
/// <param name="CasesTotal">Cases found.</param>
/// <param name="CurrentCase">The case that just finished (a local name, for the provider's own display).</param>
/// <param name="Slices">Slices extracted so far.</param>
/// <param name="Skipped">Cases skipped so far.</param>
public sealed record PreprocessProgress(int CasesDone, int CasesTotal, string? CurrentCase, long Slices, int Skipped);

/// <summary>A case left out of the dataset, and why.</summary>
/// <param name="CaseId">The case (a local name: reported to the provider, never written to the shard).</param>
/// <param name="Reason">One line: the missing or unreadable file and the problem.</param>
public sealed record SkippedCase(string CaseId, string Reason);

/// <summary>A case that made it into the dataset (the provider's own record: the shard holds only the pseudonym).</summary>
/// <param name="CaseId">The local case name.</param>
/// <param name="Pseudonym">Its pseudonymous id in the dataset.</param>
/// <param name="Slices">Slices extracted.</param>
/// <param name="TumourSlices">Of those, slices whose whole-tumour mask is not empty.</param>
public sealed record ProcessedCase(string CaseId, string Pseudonym, int Slices, int TumourSlices);

/// <summary>The counts of a run.</summary>
/// <param name="Patients">Patients in the dataset (cases with at least one slice).</param>
/// <param name="Slices">Slices N.</param>
/// <param name="TumourSlices">Slices whose whole-tumour mask is not empty.</param>
/// <param name="Channels">Image channels C.</param>
/// <param name="Height">Slice height.</param>
/// <param name="Width">Slice width.</param>
/// <param name="CasesFound">Cases found in the input.</param>
/// <param name="CasesWithoutSlices">Cases read without error that contributed no slice (e.g. one tumour-free PNG slice not drawn).</param>
/// <param name="Skipped">Cases skipped, with reasons.</param>
public sealed record PreprocessSummary(
    int Patients, int Slices, int TumourSlices, int Channels, int Height, int Width, int CasesFound, int CasesWithoutSlices, IReadOnlyList<SkippedCase> Skipped);

/// <summary>What a run produced.</summary>
/// <param name="Dataset">The slices, patients ordered by pseudonym (so the order depends neither on thread timing nor on the case names).</param>
/// <param name="Summary">The counts and skipped cases.</param>
/// <param name="Cases">The provider's own mapping from case to pseudonym, in dataset order (never written to the shard).</param>
public sealed record PreprocessResult(SliceDataset Dataset, PreprocessSummary Summary, IReadOnlyList<ProcessedCase> Cases);

/// <summary>A pre-processing failure: bad input, or (strict, or when no case is usable) a case that cannot be used.</summary>
public sealed class PreprocessException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PreprocessException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public PreprocessException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates the exception.</summary>
    public PreprocessException()
        : base("pre-processing failed")
    {
    }

    /// <summary>Creates an exception about one case; the message reads "case &lt;id&gt;: &lt;reason&gt;".</summary>
    public PreprocessException(string caseId, string reason, Exception? inner = null)
        : base($"case {caseId}: {reason}", inner)
    {
        CaseId = caseId;
    }

    /// <summary>The case concerned, when the failure is about one.</summary>
    public string? CaseId { get; }
}
