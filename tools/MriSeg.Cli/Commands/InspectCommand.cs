using System.Buffers.Binary;
using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Formats;
using MriSeg.Imaging.Nifti;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg inspect FILE</c>: what a file is and what it holds, without any key. The file's first bytes
/// choose the reader (<see cref="Kinds"/>): sealed packages, NIfTI images (plain or gzipped), and safetensors
/// files (dataset shards in full, other safetensors files by their header).
/// </summary>
internal static class InspectCommand
{
    /// <summary>Bytes read to tell file kinds apart (a NIfTI-1 magic sits at offset 344).</summary>
    private const int SniffLength = 352;

    /// <param name="Name">What the file is, for messages ("a sealed package").</param>
    /// <param name="Matches">Whether the file's first bytes (up to <see cref="SniffLength"/>) are of this kind.</param>
    /// <param name="Inspect">The reader; null: recognised, not readable yet.</param>
    private sealed record FileKind(string Name, Func<byte[], bool> Matches, Func<CommandContext, string, string?, Task<int>>? Inspect);

    private static readonly FileKind[] Kinds =
    [
        new("a sealed package", b => b.AsSpan().StartsWith(PackageFormat.HeaderMagic), InspectPackageAsync),
        new("a NIfTI-1 image", b => b.Length >= 348 && b.AsSpan(344, 4).SequenceEqual("n+1\0"u8), InspectNifti),
        new("a NIfTI-2 image", b => b.Length >= 12 && b.AsSpan(4, 4).SequenceEqual("n+2\0"u8), InspectNifti),
        new("a gzip file (a compressed NIfTI image?)", b => NiftiReader.IsGzip(b), InspectNifti),
        new("a safetensors file", IsSafeTensors, InspectSafeTensors),
    ];

    /// <summary>safetensors: an 8-byte little-endian header length, then the JSON header's opening brace.</summary>
    private static bool IsSafeTensors(byte[] head) =>
        head.Length >= 9 && BinaryPrimitives.ReadUInt64LittleEndian(head) is > 1 and <= SafeTensors.MaxHeaderLength && head[8] == (byte)'{';

    public static Command Create(CliApp app)
    {
        var file = new Argument<string>("FILE") { Description = "The file to inspect." };
        var signerPub = new Option<string>("--signer-pub")
        {
            Description = "The owner's public key: verify the package's signature (header and manifest are then authenticated).",
            HelpName = "FILE",
        };

        var command = new Command("inspect", "Show what a file is and holds (a sealed package's header and manifest, a NIfTI volume, a dataset shard), no key needed.");
        command.Arguments.Add(file);
        command.Options.Add(signerPub);
        app.SetAction(command, (context, _) =>
        {
            var path = context.GetValue(file)!;
            var full = KeyFiles.RequireFile(path, "FILE");
            var head = ReadHead(full, path);
            var kind = Kinds.FirstOrDefault(k => k.Matches(head));
            if (kind is null)
            {
                throw new CliException($"{path} is not a sealed package (it does not start with \"MRISEGPK\"), nor a NIfTI image, gzip or safetensors file: inspect does not know this kind of file");
            }

            if (kind.Inspect is null)
            {
                throw new CliException($"{path} looks like {kind.Name}, which inspect cannot read yet");
            }

            return kind.Inspect(context, full, context.GetValue(signerPub));
        });
        return command;
    }

    private static byte[] ReadHead(string full, string path)
    {
        try
        {
            using var stream = File.OpenRead(full);
            var buffer = new byte[SniffLength];
            var read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            return buffer[..read];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{path}: cannot read: {e.Message}", e);
        }
    }

    private static Task<int> InspectPackageAsync(CommandContext context, string full, string? signerPath)
    {
        using var signer = signerPath is null ? null : KeyFiles.LoadSignerPublicKey(signerPath, "--signer-pub");
        PackageInfo info;
        try
        {
            info = SealedPackage.Inspect(full, signer is null ? SignerCheck.SkipSignatureVerification : SignerCheck.Expect(signer));
        }
        catch (SealedPackageException e)
        {
            throw new CliException(e.Message, e);
        }

        context.Output.WriteResult(new InspectResult("sealed-package", full, PackageView.From(info)), (console, r) =>
        {
            console.MarkupLine($"sealed package [bold]{Markup.Escape(r.File)}[/]");
            console.Write(PackageView.Render(r.Package));
        });
        return Task.FromResult(ExitCodes.Success);
    }

    internal sealed record InspectResult(string Kind, string File, PackageView Package);

    // Reads the whole volume, so every check of the reader (truncation, NaN, voxel limit) runs too.
    private static Task<int> InspectNifti(CommandContext context, string full, string? signerPath)
    {
        if (signerPath is not null)
        {
            throw new CliException("--signer-pub applies to sealed packages only");
        }

        Volume volume;
        try
        {
            volume = NiftiReader.Read(full);
        }
        catch (NiftiFormatException e)
        {
            throw new CliException(e.Message, e);
        }

        context.Output.WriteResult(NiftiView.From(full, volume), (console, r) =>
        {
            var grid = new Grid().AddColumn().AddColumn();
            void Row(string name, string value) => grid.AddRow(name, Markup.Escape(value));
            Row("file", r.File);
            Row("format", $"NIfTI-{r.NiftiVersion}, {r.Datatype}");
            Row("stored", $"{r.StorageSize} in {r.StorageOrientation} order ({r.AffineSource})");
            Row("canonical", $"{r.Size} RAS+, spacing {r.Spacing} mm");
            Row("values", $"min {r.Min:G6}, max {r.Max:G6}, {r.NonZeroVoxels} non-zero voxels");
            if (r.Labels is { } labels)
            {
                Row("labels", string.Join(", ", labels.Select(l => $"{l.Key}: {l.Value}")));
            }

            console.Write(grid);
        });
        return Task.FromResult(ExitCodes.Success);
    }

    // A dataset shard is read completely (every tensor and value checked); another safetensors file by its header.
    private static Task<int> InspectSafeTensors(CommandContext context, string full, string? signerPath)
    {
        if (signerPath is not null)
        {
            throw new CliException("--signer-pub applies to sealed packages only");
        }

        SafeTensorsHeader header;
        try
        {
            using var stream = File.OpenRead(full);
            header = SafeTensors.ReadHeader(stream);
        }
        catch (SafeTensorsFormatException e)
        {
            throw new CliException($"{full}: {e.Message}", e);
        }

        var tensors = header.Tensors.Select(t => new TensorView(t.Name, t.DType.Code(), [.. t.Shape])).ToList();
        if (header.Metadata.GetValueOrDefault("format") != DatasetShard.Format)
        {
            context.Output.WriteResult(new SafeTensorsView("safetensors", full, tensors, new SortedDictionary<string, string>(header.Metadata.ToDictionary(), StringComparer.Ordinal)), (console, r) =>
            {
                console.MarkupLine($"safetensors file [bold]{Markup.Escape(r.File)}[/] (not a dataset shard)");
                console.Write(TensorTable(r.Tensors));
                foreach (var (k, v) in r.Metadata)
                {
                    console.MarkupLine(Markup.Escape($"{k}: {v}"));
                }
            });
            return Task.FromResult(ExitCodes.Success);
        }

        SliceDataset dataset;
        try
        {
            dataset = DatasetShard.Load(full);
        }
        catch (DatasetSchemaException e)
        {
            throw new CliException(e.Message, e);
        }

        var perPatient = dataset.SlicesByPatient().Select(s => s.Length).Order().ToArray();
        var view = new ShardView(
            "dataset-shard", full, header.Metadata.GetValueOrDefault("version") ?? "?", $"{dataset.Height}x{dataset.Width}", [.. dataset.Modalities],
            dataset.Labels.Name(), [.. dataset.Labels.Channels()], dataset.PatientIds.Count, dataset.Count, dataset.TumourSlices,
            perPatient.Length > 0 ? perPatient[0] : 0, perPatient.Length > 0 ? perPatient[perPatient.Length / 2] : 0, perPatient.Length > 0 ? perPatient[^1] : 0,
            dataset.Provenance.SourceLayout, dataset.Provenance.Normalisation, dataset.Provenance.SliceSelection, tensors);
        context.Output.WriteResult(view, (console, r) =>
        {
            var grid = new Grid().AddColumn().AddColumn();
            void Row(string name, string value) => grid.AddRow(name, Markup.Escape(value));
            Row("file", r.File);
            Row("format", $"{DatasetShard.Format} version {r.Version} (safetensors)");
            Row("slices", $"{r.Slices} of {r.Size} ({r.TumourSlices} with tumour)");
            Row("patients", $"{r.Patients} (slices per patient: min {r.MinSlicesPerPatient}, median {r.MedianSlicesPerPatient}, max {r.MaxSlicesPerPatient})");
            Row("channels", string.Join(", ", r.Modalities));
            Row("labels", $"{r.Labels} ({string.Join(", ", r.LabelChannels)})");
            Row("source", r.SourceLayout);
            Row("normalisation", r.Normalisation);
            Row("selection", r.SliceSelection);
            console.Write(grid);
            console.Write(TensorTable(r.Tensors));
        });
        return Task.FromResult(ExitCodes.Success);
    }

    private static Table TensorTable(IEnumerable<TensorView> tensors)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("tensor").AddColumn("dtype").AddColumn("shape");
        foreach (var t in tensors)
        {
            table.AddRow(Markup.Escape(t.Name), Markup.Escape(t.Dtype), Markup.Escape("[" + string.Join(", ", t.Shape) + "]"));
        }

        return table;
    }

    internal sealed record TensorView(string Name, string Dtype, IReadOnlyList<long> Shape);

    internal sealed record SafeTensorsView(string Kind, string File, IReadOnlyList<TensorView> Tensors, SortedDictionary<string, string> Metadata);

    internal sealed record ShardView(
        string Kind, string File, string Version, string Size, IReadOnlyList<string> Modalities, string Labels, IReadOnlyList<string> LabelChannels,
        int Patients, int Slices, int TumourSlices, int MinSlicesPerPatient, int MedianSlicesPerPatient, int MaxSlicesPerPatient,
        string SourceLayout, string Normalisation, string SliceSelection, IReadOnlyList<TensorView> Tensors);

    internal sealed record NiftiView(
        string Kind, string File, int NiftiVersion, string Datatype, string StorageSize, string StorageOrientation, string AffineSource,
        string Size, string Spacing, float Min, float Max, long NonZeroVoxels, SortedDictionary<int, long>? Labels)
    {
        // At most this many distinct integer values make a label map worth listing (BraTS uses 4).
        private const int MaxLabels = 16;

        public static NiftiView From(string file, Volume v)
        {
            var (min, max, nonZero) = (float.PositiveInfinity, float.NegativeInfinity, 0L);
            var labels = new SortedDictionary<int, long>();
            foreach (var x in v.Data)
            {
                (min, max) = (Math.Min(min, x), Math.Max(max, x));
                nonZero += x != 0 ? 1 : 0;
                if (labels is not null && x == MathF.Round(x) && (labels.ContainsKey((int)x) || labels.Count < MaxLabels))
                {
                    labels[(int)x] = labels.GetValueOrDefault((int)x) + 1;
                }
                else
                {
                    labels = null;
                }
            }

            return new NiftiView("nifti", file, v.Header?.Version ?? 1, v.SourceDatatype.ToString(), v.StorageSize.ToString(),
                v.StorageOrientation.StorageCodes, v.AffineSource.ToString(), v.Size.ToString(),
                FormattableString.Invariant($"{v.Spacing.X:G4}x{v.Spacing.Y:G4}x{v.Spacing.Z:G4}"), min, max, nonZero, labels);
        }
    }
}
