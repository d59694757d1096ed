namespace MriSeg.Imaging.Datasets;

/// <summary>What the label channels of a dataset mean.</summary>
public enum LabelScheme
{
    /// <summary>One channel: whole tumour (every BraTS label &gt; 0).</summary>
    WholeTumour,

    /// <summary>Three overlapping channels in BraTS region order: WT {1,2,4}, TC {1,4}, ET {4}.</summary>
    BratsRegions,
}

/// <summary>Names and channel lists of <see cref="LabelScheme"/>.</summary>
public static class LabelSchemes
{
    /// <summary>The short name used on the command line and in shard metadata ("wt" or "brats").</summary>
    public static string Name(this LabelScheme scheme) => scheme switch
    {
        LabelScheme.WholeTumour => "wt",
        LabelScheme.BratsRegions => "brats",
        _ => throw new ArgumentOutOfRangeException(nameof(scheme)),
    };

    /// <summary>The label channel names, in order.</summary>
    public static IReadOnlyList<string> Channels(this LabelScheme scheme) => scheme switch
    {
        LabelScheme.WholeTumour => ["WT"],
        LabelScheme.BratsRegions => ["WT", "TC", "ET"],
        _ => throw new ArgumentOutOfRangeException(nameof(scheme)),
    };

    /// <summary>Parses "wt" or "brats" (case-insensitive).</summary>
    /// <exception cref="ArgumentException">Any other text.</exception>
    public static LabelScheme Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "wt" or "whole-tumour" or "whole-tumor" => LabelScheme.WholeTumour,
        "brats" or "wt,tc,et" => LabelScheme.BratsRegions,
        _ => throw new ArgumentException($"unknown label scheme \"{text}\": use wt or brats"),
    };
}

/// <summary>
/// A 2-D slice dataset in memory, the unit that pre-processing produces, a shard stores and training consumes:
/// images [N, C, H, W] (normalised intensities), masks [N, K, H, W] (0/1) and, per slice, the index of its
/// patient in <see cref="PatientIds"/> (pseudonymous ids; the privacy unit is the patient).
/// </summary>
public sealed class SliceDataset
{
    /// <summary>Creates a dataset over the given arrays (not copied) and checks their shapes.</summary>
    public SliceDataset(
        float[] images,
        byte[] masks,
        int[] patientIndex,
        int height,
        int width,
        IReadOnlyList<string> modalities,
        LabelScheme labels,
        IReadOnlyList<string> patientIds,
        DatasetProvenance? provenance = null)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(masks);
        ArgumentNullException.ThrowIfNull(patientIndex);
        ArgumentNullException.ThrowIfNull(modalities);
        ArgumentNullException.ThrowIfNull(patientIds);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        if (modalities.Count == 0)
        {
            throw new ArgumentException("a dataset needs at least one modality", nameof(modalities));
        }

        var n = patientIndex.Length;
        var k = labels.Channels().Count;
        var plane = (long)height * width;
        if (images.LongLength != n * modalities.Count * plane)
        {
            throw new ArgumentException($"images hold {images.LongLength} values; [{n}, {modalities.Count}, {height}, {width}] needs {n * modalities.Count * plane}", nameof(images));
        }

        if (masks.LongLength != n * k * plane)
        {
            throw new ArgumentException($"masks hold {masks.LongLength} values; [{n}, {k}, {height}, {width}] needs {n * k * plane}", nameof(masks));
        }

        foreach (var p in patientIndex)
        {
            if ((uint)p >= (uint)patientIds.Count)
            {
                throw new ArgumentException($"patient index {p} is outside the {patientIds.Count} patient ids", nameof(patientIndex));
            }
        }

        Images = images;
        Masks = masks;
        PatientIndex = patientIndex;
        Height = height;
        Width = width;
        Modalities = [.. modalities];
        Labels = labels;
        PatientIds = [.. patientIds];
        Provenance = provenance ?? DatasetProvenance.Unknown;
    }

    /// <summary>Normalised intensities, [N, C, H, W] row-major.</summary>
    public float[] Images { get; }

    /// <summary>Label masks (0 or 1), [N, K, H, W] row-major.</summary>
    public byte[] Masks { get; }

    /// <summary>For each slice, the index of its patient in <see cref="PatientIds"/>.</summary>
    public int[] PatientIndex { get; }

    /// <summary>Slice height in pixels.</summary>
    public int Height { get; }

    /// <summary>Slice width in pixels.</summary>
    public int Width { get; }

    /// <summary>The image channels, in order (e.g. flair, t1, t1ce, t2).</summary>
    public IReadOnlyList<string> Modalities { get; }

    /// <summary>What the mask channels mean.</summary>
    public LabelScheme Labels { get; }

    /// <summary>Pseudonymous patient ids.</summary>
    public IReadOnlyList<string> PatientIds { get; }

    /// <summary>How the data was produced (layout, normalisation); no identifying content.</summary>
    public DatasetProvenance Provenance { get; }

    /// <summary>Number of slices N.</summary>
    public int Count => PatientIndex.Length;

    /// <summary>Image channels C.</summary>
    public int Channels => Modalities.Count;

    /// <summary>Mask channels K.</summary>
    public int LabelChannels => Labels.Channels().Count;

    /// <summary>Pixels per slice and channel.</summary>
    public int Plane => Height * Width;

    /// <summary>The image values of slice <paramref name="slice"/>, [C, H, W].</summary>
    public ReadOnlySpan<float> Image(int slice) => Images.AsSpan(slice * Channels * Plane, Channels * Plane);

    /// <summary>The mask values of slice <paramref name="slice"/>, [K, H, W].</summary>
    public ReadOnlySpan<byte> Mask(int slice) => Masks.AsSpan(slice * LabelChannels * Plane, LabelChannels * Plane);

    /// <summary>True when the slice's first label channel (whole tumour) has a foreground pixel.</summary>
    public bool HasTumour(int slice) => Masks.AsSpan(slice * LabelChannels * Plane, Plane).ContainsAnyExcept((byte)0);

    /// <summary>Number of slices with tumour.</summary>
    public int TumourSlices
    {
        get
        {
            var count = 0;
            for (var i = 0; i < Count; i++)
            {
                count += HasTumour(i) ? 1 : 0;
            }

            return count;
        }
    }

    /// <summary>The slice indices of each patient, indexed like <see cref="PatientIds"/>.</summary>
    public int[][] SlicesByPatient()
    {
        var lists = Enumerable.Range(0, PatientIds.Count).Select(_ => new List<int>()).ToArray();
        for (var i = 0; i < Count; i++)
        {
            lists[PatientIndex[i]].Add(i);
        }

        return [.. lists.Select(l => l.ToArray())];
    }

    /// <summary>A new dataset holding only the given patients (indices into <see cref="PatientIds"/>), in that order.</summary>
    public SliceDataset SelectPatients(IReadOnlyList<int> patients)
    {
        ArgumentNullException.ThrowIfNull(patients);
        var byPatient = SlicesByPatient();
        var slices = patients.SelectMany(p => byPatient[p]).ToArray();
        var newIndex = new Dictionary<int, int>();
        for (var i = 0; i < patients.Count; i++)
        {
            newIndex.Add(patients[i], i);
        }

        var ic = Channels * Plane;
        var mc = LabelChannels * Plane;
        var images = new float[(long)slices.Length * ic];
        var masks = new byte[(long)slices.Length * mc];
        var index = new int[slices.Length];
        for (var j = 0; j < slices.Length; j++)
        {
            Images.AsSpan(slices[j] * ic, ic).CopyTo(images.AsSpan(j * ic, ic));
            Masks.AsSpan(slices[j] * mc, mc).CopyTo(masks.AsSpan(j * mc, mc));
            index[j] = newIndex[PatientIndex[slices[j]]];
        }

        return new SliceDataset(images, masks, index, Height, Width, Modalities, Labels, [.. patients.Select(p => PatientIds[p])], Provenance);
    }

    /// <summary>
    /// Joins datasets of one schema (same modalities, label scheme and size) into one; patients keep their ids,
    /// and a patient id that occurs in two parts is an error (pseudonyms of different providers never collide).
    /// </summary>
    /// <exception cref="DatasetSchemaException">The parts differ in schema, or share a patient id.</exception>
    public static SliceDataset Concat(IReadOnlyList<SliceDataset> parts)
    {
        ArgumentNullException.ThrowIfNull(parts);
        if (parts.Count == 0)
        {
            throw new ArgumentException("nothing to join", nameof(parts));
        }

        var first = parts[0];
        for (var i = 1; i < parts.Count; i++)
        {
            var p = parts[i];
            if (!p.Modalities.SequenceEqual(first.Modalities) || p.Labels != first.Labels || p.Height != first.Height || p.Width != first.Width)
            {
                throw new DatasetSchemaException(
                    $"part {i + 1} is {p.Describe()}, part 1 is {first.Describe()}: shards of one run must share modalities, labels and size");
            }
        }

        var ids = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var index = new List<int>();
        var images = new float[parts.Sum(p => p.Images.LongLength)];
        var masks = new byte[parts.Sum(p => p.Masks.LongLength)];
        long io = 0, mo = 0;
        foreach (var p in parts)
        {
            var offset = ids.Count;
            foreach (var id in p.PatientIds)
            {
                if (!seen.Add(id))
                {
                    throw new DatasetSchemaException($"patient {id} occurs in two shards");
                }

                ids.Add(id);
            }

            index.AddRange(p.PatientIndex.Select(x => x + offset));
            p.Images.CopyTo(images, io);
            p.Masks.CopyTo(masks, mo);
            io += p.Images.LongLength;
            mo += p.Masks.LongLength;
        }

        return new SliceDataset(images, masks, [.. index], first.Height, first.Width, first.Modalities, first.Labels, ids, first.Provenance);
    }

    /// <summary>A one-line schema description, e.g. "4 x 128x128 (flair,t1,t1ce,t2), labels wt".</summary>
    public string Describe() => $"{Channels} x {Height}x{Width} ({string.Join(',', Modalities)}), labels {Labels.Name()}";
}

/// <summary>How a dataset was produced; carried in the shard's metadata. Holds nothing that identifies a patient.</summary>
/// <param name="SourceLayout">The ingestion layout, e.g. "brats-volumes", "named-volumes", "brats-png-slices", "phantoms".</param>
/// <param name="Normalisation">The intensity normalisation, e.g. "zscore-brain-p0.5-p99.5".</param>
/// <param name="SliceSelection">How slices were chosen, e.g. "tumour+0.25".</param>
public sealed record DatasetProvenance(string SourceLayout, string Normalisation, string SliceSelection)
{
    /// <summary>Provenance not recorded.</summary>
    public static DatasetProvenance Unknown { get; } = new("unknown", "unknown", "unknown");
}

/// <summary>Datasets that cannot be joined or a shard whose content contradicts its schema.</summary>
public sealed class DatasetSchemaException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DatasetSchemaException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception.</summary>
    public DatasetSchemaException(string message, Exception inner)
        : base(message, inner)
    {
    }

    /// <summary>Creates the exception.</summary>
    public DatasetSchemaException()
        : base("invalid dataset")
    {
    }
}
