using System.CommandLine;
using System.Globalization;
using System.IO.Compression;
using Google.Protobuf;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.CleanRoom.Consumer;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Imaging.Slices;
using MriSeg.KeyRelease;
using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using Spectre.Console;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg segment</c>: a tumour mask for a case, in the input's own geometry (NIfTI) or as a PNG for PNG slices, with
/// per-region volumes. <c>--model DIR</c> (a model folder) segments here with the <see cref="Segmenter"/> library;
/// <c>--model ID</c> sends the case's channel files inline to the ModelVault's Segment with a registered model.
/// </summary>
internal static class SegmentCommand
{
    public static Command Create(CliApp app)
    {
        var model = new Option<string>("--model")
        {
            Description = "A model registered at the ModelVault (its id), or a model folder (model.safetensors and model.json) to segment here without a service.",
            HelpName = "ID|DIR",
            Required = true,
        };
        var input = new Option<string>("--input")
        {
            Description = "The case: a case folder, one of its files (its folder gives the other channels), comma-separated files in the model's channel order, "
                + "or one file for a one-channel model; NIfTI (.nii, .nii.gz) or PNG slices.",
            HelpName = "PATH",
            Required = true,
        };
        var output = new Option<string>("--out")
        {
            Description = "The mask to write (replaced if it exists): NIfTI (.nii.gz or .nii) in the input's grid, or PNG for PNG slices.",
            HelpName = "FILE",
            Required = true,
        };
        var overlay = new Option<string>("--overlay") { Description = "Also write a slice of the input with the predicted contour (PNG).", HelpName = "PNG" };
        var threshold = new Option<double>("--threshold") { Description = "Probability above which a voxel is tumour, in (0, 1).", HelpName = "T", DefaultValueFactory = _ => 0.5 };

        var command = new Command("segment", "Segment a case (NIfTI volumes or PNG slices) with a model: a mask in the input's geometry and region volumes.")
        {
            model, input, output, overlay, threshold,
        };
        var caller = VaultCallerOptions.AddTo(command);
        app.SetAction(command, async (context, ct) =>
        {
            var t = context.GetValue(threshold);
            if (!(t > 0 && t < 1))
            {
                throw new CliException($"--threshold {t.ToString(CultureInfo.InvariantCulture)}: must be in (0, 1)");
            }

            var maskPath = KeyFiles.RequireDestination(context.GetValue(output)!, "--out", force: true);
            var overlayPath = context.GetValue(overlay) is { } o ? KeyFiles.RequireDestination(o, "--overlay", force: true) : null;
            if (overlayPath is not null)
            {
                KeyFiles.RequireDistinct(("--out", maskPath), ("--overlay", overlayPath));
                if (!overlayPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
                {
                    throw new CliException($"--overlay {context.GetValue(overlay)}: the overlay is a PNG; name it .png");
                }
            }

            var inputText = context.GetValue(input)!;
            foreach (var part in inputText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (!File.Exists(part) && !Directory.Exists(part))
                {
                    throw new CliException($"--input {part}: no such file or folder");
                }
            }

            var modelText = context.GetValue(model)!;
            SegmentView view;
            if (Directory.Exists(modelText))
            {
                view = await LocalAsync(context, modelText, inputText, maskPath, overlayPath, t, ct);
            }
            else if (Ids.IsName(modelText))
            {
                view = await RemoteAsync(context, caller, modelText, inputText, maskPath, overlayPath, t, ct);
            }
            else
            {
                throw new CliException($"--model {modelText}: no such model folder, and not a model id ({Ids.NameRule})");
            }

            context.Output.WriteResult(view, (console, v) =>
            {
                console.MarkupLine($"mask -> [bold]{Markup.Escape(v.Mask)}[/] ({v.Slices} slice(s) segmented)");
                foreach (var r in v.Regions)
                {
                    console.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture, $"  {r.Region}: {r.Voxels} voxels, {r.Millilitres:0.###} mL")));
                }

                if (v.Overlay is not null)
                {
                    console.MarkupLine($"overlay -> {Markup.Escape(v.Overlay)} (slice {v.OverlaySlice})");
                }
            });
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The <c>--json</c> result: the mask and overlay written, the regions' volumes.</summary>
    internal sealed record SegmentView(string Mask, string? Overlay, IReadOnlyList<RegionView> Regions, [property: System.Text.Json.Serialization.JsonIgnore] int Slices,
        [property: System.Text.Json.Serialization.JsonIgnore] int OverlaySlice);

    internal sealed record RegionView(string Region, long Voxels, double Millilitres);

    private static async Task<SegmentView> LocalAsync(CommandContext context, string folder, string input, string maskPath, string? overlayPath, double threshold, CancellationToken ct)
    {
        if (!File.Exists(Path.Combine(folder, UNetModelFile.WeightsFileName)) || !File.Exists(Path.Combine(folder, TrainingOutputs.ManifestFileName)))
        {
            throw new CliException($"--model {folder}: not a model folder (it needs {UNetModelFile.WeightsFileName} and {TrainingOutputs.ManifestFileName}, as `mriseg train` writes them)");
        }

        try
        {
            TorchRuntime.Initialize();
        }
        catch (TorchUnavailableException e)
        {
            throw new CliException(e.Message.Split('\n')[0].Trim());
        }

        Segmenter segmenter;
        try
        {
            segmenter = new Segmenter(folder);
        }
        catch (Exception e) when (e is FormatException or IOException or InvalidDataException or ArgumentException)
        {
            throw new CliException($"--model {folder}: {ErrorText.OneLine(e)}", e);
        }

        using (segmenter)
        {
            var files = Resolve(() => segmenter.ResolveInputs(input));
            CheckMaskName(maskPath, IsPng(files));
            var result = await Guard(() => context.Output.StatusAsync($"segmenting with {folder}", _ =>
                Task.Run(() => segmenter.SegmentAsync(files, maskPath, overlayPath, threshold, ct), ct)));
            return new SegmentView(maskPath, overlayPath, [.. result.Regions.Select(r => new RegionView(r.Region, r.Voxels, r.CubicMillimetres / 1000))],
                result.Slices, result.OverlaySlice);
        }
    }

    private static async Task<SegmentView> RemoteAsync(CommandContext context, VaultCallerOptions caller, string modelId, string input, string maskPath, string? overlayPath, double threshold, CancellationToken ct)
    {
        using var vault = ModelVaultConnection.Open(context, caller);
        var record = await vault.CallAsync($"model {modelId}", () => vault.Client.GetModelAsync(new V1.GetModelRequest { ModelId = modelId }, cancellationToken: ct).ResponseAsync);
        if (record.Modalities.Count == 0 && !input.Contains(',', StringComparison.Ordinal) && !File.Exists(input))
        {
            throw new CliException($"model {modelId}'s record names no input channels (it was registered before records did): give --input as comma-separated files in the model's channel order");
        }

        var files = record.Modalities.Count == 0
            ? input.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            : Resolve(() => Segmenter.ResolveInputs(input, [.. record.Modalities]));
        var png = IsPng(files);
        CheckMaskName(maskPath, png);

        long total = files.Sum(f => new FileInfo(f).Length);
        if (total > ModelVaultConnection.MaxMessageBytes - (1024 * 1024))
        {
            throw new CliException(
                $"--input: {Output.Bytes(total)} of images, more than one message to the ModelVault may carry ({Output.Bytes(ModelVaultConnection.MaxMessageBytes)}); segment with a model folder here, or crop the input");
        }

        var request = new V1.SegmentRequest
        {
            ModelId = modelId,
            Data = ByteString.CopyFrom(await File.ReadAllBytesAsync(files[0], ct)),
            FileName = Path.GetFileName(files[0]),
            Format = png ? V1.ImageFormat.Png : V1.ImageFormat.Nifti,
            Threshold = threshold,
            Overlay = overlayPath is not null,
        };
        foreach (var file in files.Skip(1))
        {
            request.ExtraChannels.Add(ByteString.CopyFrom(await File.ReadAllBytesAsync(file, ct)));
        }

        var response = await context.Output.StatusAsync($"segmenting with model {modelId} at the ModelVault", _ =>
            vault.CallAsync($"segmenting with model {modelId}", () => vault.Client.SegmentAsync(request, cancellationToken: ct).ResponseAsync));

        var mask = response.Mask.ToByteArray();
        if (maskPath.EndsWith(".nii", StringComparison.OrdinalIgnoreCase) && NiftiReader.IsGzip(mask))
        {
            using var gunzip = new GZipStream(new MemoryStream(mask), CompressionMode.Decompress);
            using var plain = new MemoryStream();
            await gunzip.CopyToAsync(plain, ct);
            mask = plain.ToArray();
        }

        await WriteAsync(maskPath, mask, "--out", ct);
        if (overlayPath is not null)
        {
            await WriteAsync(overlayPath, response.OverlayPng.ToByteArray(), "--overlay", ct);
        }

        return new SegmentView(maskPath, overlayPath, [.. response.Regions.Select(r => new RegionView(r.Region, r.Voxels, r.Millilitres))],
            response.Slices, response.OverlaySlice);
    }

    private static IReadOnlyList<string> Resolve(Func<IReadOnlyList<string>> resolve)
    {
        try
        {
            return resolve();
        }
        catch (Exception e) when (e is ArgumentException or PreprocessException or IOException)
        {
            throw new CliException($"--input: {ErrorText.OneLine(e)}", e);
        }
    }

    private static async Task<T> Guard<T>(Func<Task<T>> work)
    {
        try
        {
            return await work();
        }
        catch (Exception e) when (e is ArgumentException or NiftiFormatException or SliceFormatException or PreprocessException or FormatException)
        {
            throw new CliException(ErrorText.OneLine(e), e);
        }
    }

    private static bool IsPng(IReadOnlyList<string> files)
    {
        var png = files.Count(f => f.EndsWith(".png", StringComparison.OrdinalIgnoreCase));
        return png == 0 ? false
            : png == files.Count ? true
            : throw new CliException($"--input: mixes PNG and NIfTI files ({string.Join(", ", files.Select(Path.GetFileName))})");
    }

    private static void CheckMaskName(string maskPath, bool png)
    {
        if (png && !maskPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"--out {maskPath}: a PNG input gives a PNG mask; name it .png");
        }

        if (!png && !maskPath.EndsWith(".nii.gz", StringComparison.OrdinalIgnoreCase) && !maskPath.EndsWith(".nii", StringComparison.OrdinalIgnoreCase))
        {
            throw new CliException($"--out {maskPath}: a NIfTI input gives a NIfTI mask in its grid; name it .nii.gz or .nii");
        }
    }

    /// <summary>Writes through a temporary file beside <paramref name="path"/>, renamed into place when complete.</summary>
    private static async Task WriteAsync(string path, byte[] bytes, string option, CancellationToken ct)
    {
        var temp = KeyFiles.TemporaryBeside(path);
        try
        {
            await File.WriteAllBytesAsync(temp, bytes, ct);
            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{option} {path}: cannot write: {e.Message}", e);
        }
        finally
        {
            KeyFiles.DeleteQuietly(temp);
        }
    }
}
