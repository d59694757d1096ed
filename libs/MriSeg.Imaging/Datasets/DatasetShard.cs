using System.Globalization;
using System.Text.Json;
using MriSeg.Imaging.Formats;

namespace MriSeg.Imaging.Datasets;

/// <summary>
/// The dataset shard: one safetensors file, readable by Python's safetensors too. Tensors: <c>images</c> F16
/// [N, C, H, W], <c>masks</c> U8 [N, K, H, W], <c>patient</c> I32 [N]; string metadata: <c>format</c>
/// ("mriseg.dataset"), <c>version</c> ("1"), <c>patients</c> (JSON array of pseudonymous ids, indexed by
/// <c>patient</c>), <c>modalities</c> and <c>label_channels</c> (comma-separated), <c>labels</c> ("wt"/"brats"),
/// <c>size</c> ("HxW"), <c>source_layout</c>, <c>normalisation</c>, <c>slice_selection</c>, and counts
/// (<c>patient_count</c>, <c>slice_count</c>, <c>tumour_slices</c>).
/// </summary>
public static class DatasetShard
{
    /// <summary>The value of the <c>format</c> metadata key.</summary>
    public const string Format = "mriseg.dataset";

    /// <summary>The shard format version this code writes and reads.</summary>
    public const string Version = "1";

    /// <summary>Writes a shard (images rounded to float16).</summary>
    public static void Write(Stream destination, SliceDataset dataset)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(dataset);
        var half = new Half[dataset.Images.Length];
        for (var i = 0; i < half.Length; i++)
        {
            half[i] = (Half)dataset.Images[i];
        }

        long n = dataset.Count;
        var tensors = new[]
        {
            SafeTensor.Create<Half>("images", half, n, dataset.Channels, dataset.Height, dataset.Width),
            SafeTensor.Create<byte>("masks", dataset.Masks, n, dataset.LabelChannels, dataset.Height, dataset.Width),
            SafeTensor.Create<int>("patient", dataset.PatientIndex, n),
        };
        SafeTensors.Write(destination, tensors, Metadata(dataset));
    }

    /// <summary>Writes a shard to a file (replacing it).</summary>
    public static void Save(string path, SliceDataset dataset)
    {
        using var file = File.Create(path);
        Write(file, dataset);
    }

    /// <summary>Serialises a shard to bytes (for sealing in memory).</summary>
    public static byte[] ToBytes(SliceDataset dataset)
    {
        using var buffer = new MemoryStream();
        Write(buffer, dataset);
        return buffer.ToArray();
    }

    /// <summary>Reads a shard file.</summary>
    /// <exception cref="DatasetSchemaException">The file is not a valid dataset shard; the message names the file and the problem.</exception>
    public static SliceDataset Load(string path) => Read(File.ReadAllBytes(path), path);

    /// <summary>Reads a shard from bytes (e.g. a package opened in memory).</summary>
    /// <param name="shard">The whole shard.</param>
    /// <param name="name">A name for error messages.</param>
    /// <exception cref="DatasetSchemaException">Not a valid dataset shard.</exception>
    public static SliceDataset Read(ReadOnlyMemory<byte> shard, string name = "shard")
    {
        SafeTensorsFile file;
        try
        {
            file = SafeTensors.Parse(shard);
        }
        catch (SafeTensorsFormatException e)
        {
            throw new DatasetSchemaException($"{name}: {e.Message}", e);
        }

        var meta = file.Metadata;
        string Meta(string key) => meta.TryGetValue(key, out var v) ? v : throw new DatasetSchemaException($"{name}: metadata \"{key}\" is missing");
        if (Meta("format") != Format)
        {
            throw new DatasetSchemaException($"{name}: format is \"{Meta("format")}\", not a {Format} shard");
        }

        if (Meta("version") != Version)
        {
            throw new DatasetSchemaException($"{name}: shard version {Meta("version")} is not supported (this build reads {Version})");
        }

        SafeTensor Tensor(string key, SafeTensorDType type, int rank)
        {
            if (!file.TryGet(key, out var t))
            {
                throw new DatasetSchemaException($"{name}: tensor \"{key}\" is missing");
            }

            if (t.DType != type || t.Shape.Count != rank)
            {
                throw new DatasetSchemaException($"{name}: tensor \"{key}\" is {t.DType.Code()} of rank {t.Shape.Count}, expected {type.Code()} of rank {rank}");
            }

            return t;
        }

        var images = Tensor("images", SafeTensorDType.Float16, 4);
        var masks = Tensor("masks", SafeTensorDType.UInt8, 4);
        var patient = Tensor("patient", SafeTensorDType.Int32, 1);
        try
        {
            var modalities = Meta("modalities").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var labels = LabelSchemes.Parse(Meta("labels"));
            var ids = JsonSerializer.Deserialize<string[]>(Meta("patients")) ?? throw new DatasetSchemaException($"{name}: patients is null");
            var (n, c, h, w) = (images.Shape[0], images.Shape[1], images.Shape[2], images.Shape[3]);
            if (c != modalities.Length || masks.Shape[0] != n || masks.Shape[1] != labels.Channels().Count || masks.Shape[2] != h
                || masks.Shape[3] != w || patient.Shape[0] != n)
            {
                throw new DatasetSchemaException(
                    $"{name}: shapes disagree: images [{string.Join(',', images.Shape)}], masks [{string.Join(',', masks.Shape)}], patient [{patient.Shape[0]}] for {modalities.Length} modalities and labels {labels.Name()}");
            }

            var half = images.ToArray<Half>();
            var values = new float[half.Length];
            for (var i = 0; i < half.Length; i++)
            {
                values[i] = (float)half[i];
                if (!float.IsFinite(values[i]))
                {
                    throw new DatasetSchemaException($"{name}: image value {i} is not finite");
                }
            }

            var maskValues = masks.ToArray<byte>();
            if (maskValues.AsSpan().IndexOfAnyExcept((byte)0, (byte)1) is var bad and >= 0)
            {
                throw new DatasetSchemaException($"{name}: mask value {bad} is {maskValues[bad]}, not 0 or 1");
            }

            var provenance = new DatasetProvenance(
                meta.GetValueOrDefault("source_layout", "unknown"),
                meta.GetValueOrDefault("normalisation", "unknown"),
                meta.GetValueOrDefault("slice_selection", "unknown"));
            return new SliceDataset(values, maskValues, patient.ToArray<int>(), (int)h, (int)w, modalities, labels, ids, provenance);
        }
        catch (Exception e) when (e is ArgumentException or JsonException or OverflowException)
        {
            throw new DatasetSchemaException($"{name}: {e.Message}", e);
        }
    }

    /// <summary>The shard's string metadata for a dataset.</summary>
    public static Dictionary<string, string> Metadata(SliceDataset dataset)
    {
        ArgumentNullException.ThrowIfNull(dataset);
        var inv = CultureInfo.InvariantCulture;
        return new Dictionary<string, string>
        {
            ["format"] = Format,
            ["version"] = Version,
            ["modalities"] = string.Join(',', dataset.Modalities),
            ["labels"] = dataset.Labels.Name(),
            ["label_channels"] = string.Join(',', dataset.Labels.Channels()),
            ["size"] = $"{dataset.Height}x{dataset.Width}",
            ["patients"] = JsonSerializer.Serialize(dataset.PatientIds),
            ["patient_count"] = dataset.PatientIds.Count.ToString(inv),
            ["slice_count"] = dataset.Count.ToString(inv),
            ["tumour_slices"] = dataset.TumourSlices.ToString(inv),
            ["source_layout"] = dataset.Provenance.SourceLayout,
            ["normalisation"] = dataset.Provenance.Normalisation,
            ["slice_selection"] = dataset.Provenance.SliceSelection,
        };
    }
}
