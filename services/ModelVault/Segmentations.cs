using System.Security.Cryptography;
using Azure;
using Azure.Storage.Blobs;
using Google.Protobuf;
using MriSeg.CleanRoom.Consumer;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Imaging.Slices;
using MriSeg.KeyRelease;
using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using MriSeg.ServiceDefaults;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.ModelVault;

/// <summary>
/// Segment's work: the registered model's folder (its weights checked against the registered SHA-256), the input as files
/// in a private temporary folder (inline bytes written there, a blob or a blob case folder downloaded there, a local path
/// read in place where allowed), <see cref="Segmenter"/> on them, and the mask, overlay and region volumes read back. The
/// folder is deleted when the call ends, whatever the outcome. At most <see cref="ModelVaultSettings.MaxConcurrentSegmentations"/>
/// run at once.
/// </summary>
public sealed class Segmentations(ModelVaultSettings settings, ModelRegistry registry, BlobServiceClient blobs, ILogger<Segmentations> logger) : IDisposable
{
    /// <summary>The threshold when the request gives none.</summary>
    public const double DefaultThreshold = 0.5;

    /// <summary>The most blobs a blob case folder may hold.</summary>
    public const int MaxBlobFiles = 64;

    private readonly SemaphoreSlim _slots = new(settings.MaxConcurrentSegmentations);

    public async Task<V1.SegmentResponse> SegmentAsync(V1.SegmentRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!Ids.IsName(request.ModelId))
        {
            throw GrpcErrors.InvalidArgument($"model_id '{Ids.Printable(request.ModelId)}' is not a model id ({Ids.NameRule})");
        }

        var threshold = request.Threshold == 0 ? DefaultThreshold : request.Threshold;
        if (!(threshold > 0 && threshold < 1))
        {
            throw GrpcErrors.InvalidArgument($"threshold {threshold} must be in (0, 1) (0: the default {DefaultThreshold})");
        }

        if (request.InputCase == V1.SegmentRequest.InputOneofCase.None)
        {
            throw GrpcErrors.InvalidArgument("an input is required: data (inline bytes, with file_name or format) or location");
        }

        var record = await registry.GetAsync(request.ModelId, cancellationToken).ConfigureAwait(false)
            ?? throw GrpcErrors.NotFound($"no model '{request.ModelId}' is registered (ListModels lists them; PullModel registers a run's model)");
        var folder = registry.FolderOf(record.ModelId);
        await CheckModelFilesAsync(record, folder, cancellationToken).ConfigureAwait(false);

        await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            TorchRuntime.Initialize(logger);
            using var segmenter = Load(folder, record.ModelId);
            using var scratch = PrivateFolder.Create();
            var files = await InputsAsync(request, segmenter.Manifest.Input.Modalities, scratch, cancellationToken).ConfigureAwait(false);
            var png = files[0].EndsWith(".png", StringComparison.OrdinalIgnoreCase);
            var output = scratch.Sub("output");
            var maskPath = Path.Combine(output, png ? "mask.png" : "mask.nii.gz");
            var overlayPath = request.Overlay ? Path.Combine(output, "overlay.png") : null;
            SegmentationResult result;
            try
            {
                result = await Task.Run(() => segmenter.SegmentAsync(files, maskPath, overlayPath, threshold, cancellationToken), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is NiftiFormatException or SliceFormatException or PreprocessException or ArgumentException)
            {
                // The input's fault: said with the channel's name, not the service's temporary paths.
                throw GrpcErrors.InvalidArgument("Segment: " + Scrub(e.Message, scratch));
            }

            var response = new V1.SegmentResponse
            {
                Mask = ByteString.CopyFrom(await File.ReadAllBytesAsync(maskPath, cancellationToken).ConfigureAwait(false)),
                MaskFormat = png ? V1.ImageFormat.Png : V1.ImageFormat.Nifti,
                OverlaySlice = result.OverlaySlice,
                Slices = result.Slices,
            };
            if (overlayPath is not null)
            {
                response.OverlayPng = ByteString.CopyFrom(await File.ReadAllBytesAsync(overlayPath, cancellationToken).ConfigureAwait(false));
            }

            response.Regions.AddRange(result.Regions.Select(r => new V1.RegionVolume { Region = r.Region, Voxels = r.Voxels, Millilitres = r.CubicMillimetres / 1000 }));
            if (response.CalculateSize() > GrpcHostingExtensions.MaxMessageBytes)
            {
                throw GrpcErrors.ResourceExhausted(
                    $"the mask{(overlayPath is null ? "" : " and overlay")} take {response.CalculateSize():N0} bytes, more than a message may carry ({GrpcHostingExtensions.MaxMessageBytes:N0})");
            }

            logger.LogInformation("Segmented a {Format} input of {Channels} channel(s) with model {ModelId}: {Slices} slices, {Regions}",
                png ? "PNG" : "NIfTI", files.Count, record.ModelId, result.Slices, string.Join(", ", result.Regions.Select(r => $"{r.Region} {r.Voxels} voxels")));
            return response;
        }
        finally
        {
            _slots.Release();
        }
    }

    public void Dispose() => _slots.Dispose();

    /// <summary>The model's files are there and its weights are the registered ones.</summary>
    private static async Task CheckModelFilesAsync(V1.ModelRecord record, string folder, CancellationToken cancellationToken)
    {
        var weights = Path.Combine(folder, UNetModelFile.WeightsFileName);
        if (!File.Exists(weights) || !File.Exists(Path.Combine(folder, TrainingOutputs.ManifestFileName)))
        {
            throw GrpcErrors.FailedPrecondition(
                $"model '{record.ModelId}' is registered but its files are not in the vault's models folder (ModelVault:ModelsDirectory): pull run {record.RunId} again");
        }

        await using var stream = File.OpenRead(weights);
        var sha = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, cancellationToken).ConfigureAwait(false));
        if (!string.Equals(sha, record.ModelSha256, StringComparison.OrdinalIgnoreCase))
        {
            throw GrpcErrors.FailedPrecondition($"model '{record.ModelId}': its weights on disk are not the registered ones (SHA-256 {sha[..16]}…, registered {record.ModelSha256[..Math.Min(16, record.ModelSha256.Length)]}…): pull run {record.RunId} again");
        }
    }

    private Segmenter Load(string folder, string modelId)
    {
        try
        {
            return new Segmenter(folder);
        }
        catch (Exception e) when (e is FormatException or IOException or InvalidDataException or ArgumentException)
        {
            logger.LogError(e, "Model {ModelId} in {Folder} cannot be loaded", modelId, folder);
            throw GrpcErrors.FailedPrecondition($"model '{modelId}' cannot be loaded: {Errors.OneLine(e.Message)}");
        }
    }

    /// <summary>The input's channel files, in the model's channel order.</summary>
    private async Task<IReadOnlyList<string>> InputsAsync(V1.SegmentRequest request, IReadOnlyList<string> modalities, PrivateFolder scratch, CancellationToken ct)
    {
        var channelList = $"{modalities.Count} channel(s) ({string.Join(", ", modalities)})";
        if (request.InputCase == V1.SegmentRequest.InputOneofCase.Data)
        {
            var channels = new List<ByteString> { request.Data };
            channels.AddRange(request.ExtraChannels);
            if (channels.Count != modalities.Count)
            {
                throw GrpcErrors.InvalidArgument(
                    $"the model takes {channelList} in that order; the request has {channels.Count} (data and {request.ExtraChannels.Count} extra_channels)");
            }

            if (channels.Any(c => c.IsEmpty))
            {
                throw GrpcErrors.InvalidArgument("data and every extra channel must hold an image (one is empty)");
            }

            var format = request.Format != V1.ImageFormat.Unspecified ? request.Format : FormatOf(request.FileName)
                ?? throw GrpcErrors.InvalidArgument($"the input's format is unknown: set format, or a file_name ending in .nii, .nii.gz or .png (got '{Ids.Printable(request.FileName)}')");
            var input = scratch.Sub("input");
            var files = new List<string>();
            for (var k = 0; k < channels.Count; k++)
            {
                var bytes = channels[k].Memory;
                var extension = format == V1.ImageFormat.Png ? ".png" : NiftiReader.IsGzip(bytes.Span) ? ".nii.gz" : ".nii";
                var path = Path.Combine(input, k == 0 ? $"data-{modalities[k]}{extension}" : $"extra-channel-{k}-{modalities[k]}{extension}");
                await File.WriteAllBytesAsync(path, bytes, ct).ConfigureAwait(false);
                files.Add(path);
            }

            return files;
        }

        if (request.ExtraChannels.Count > 0)
        {
            throw GrpcErrors.InvalidArgument("extra_channels go with inline data only: a location names a case folder, or a file whose folder holds the other channels");
        }

        var location = request.Location;
        string local;
        switch (location.WhereCase)
        {
            case V1.Location.WhereOneofCase.LocalPath:
                if (!settings.AllowLocalPaths)
                {
                    throw GrpcErrors.PermissionDenied("local paths are not allowed on this service (ModelVault:AllowLocalPaths); send the image inline or put it in a blob");
                }

                if (!Path.IsPathFullyQualified(location.LocalPath))
                {
                    throw GrpcErrors.InvalidArgument($"local path '{Ids.Printable(location.LocalPath)}' must be absolute");
                }

                local = File.Exists(location.LocalPath) || Directory.Exists(location.LocalPath)
                    ? location.LocalPath
                    : throw GrpcErrors.NotFound($"{location.LocalPath}: no such file or folder");
                break;
            case V1.Location.WhereOneofCase.Blob:
                local = await DownloadAsync(location.Blob, modalities.Count, scratch.Sub("input"), ct).ConfigureAwait(false);
                break;
            default:
                throw GrpcErrors.InvalidArgument("location must be a blob (container and name) or a local path");
        }

        if (local.Contains(',', StringComparison.Ordinal))
        {
            throw GrpcErrors.InvalidArgument($"input path '{Ids.Printable(local)}' holds a ',', which is not supported here");
        }

        IReadOnlyList<string> resolved;
        try
        {
            resolved = Segmenter.ResolveInputs(local, modalities);
        }
        catch (Exception e) when (e is ArgumentException or PreprocessException)
        {
            var where = location.WhereCase == V1.Location.WhereOneofCase.Blob ? $"blob {location.Blob.Container}/{location.Blob.Name.TrimEnd('/')}" : location.LocalPath;
            throw GrpcErrors.InvalidArgument("Segment: " + Scrub(e.Message, scratch, where));
        }

        var expected = request.Format;
        if (expected != V1.ImageFormat.Unspecified && resolved.Any(f => FormatOf(f) != expected))
        {
            throw GrpcErrors.InvalidArgument($"format {expected} was asked for, but the input's files are {string.Join(", ", resolved.Select(Path.GetFileName))}");
        }

        return resolved;
    }

    /// <summary>
    /// A blob input into <paramref name="folder"/>: a blob that exists is one file (with its siblings in the same virtual folder
    /// when the model takes several channels); otherwise the name is a prefix, a case folder, downloaded whole.
    /// </summary>
    private async Task<string> DownloadAsync(V1.BlobRef blob, int channels, string folder, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(blob.Container) || string.IsNullOrEmpty(blob.Name))
        {
            throw GrpcErrors.InvalidArgument("location.blob needs a container and a name (a file, or a case folder's prefix)");
        }

        var container = blobs.GetBlobContainerClient(blob.Container);
        var client = container.GetBlobClient(blob.Name);
        bool exists;
        try
        {
            exists = (await client.ExistsAsync(ct).ConfigureAwait(false)).Value;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            exists = false;
        }

        if (exists && channels == 1)
        {
            var path = Path.Combine(folder, SafeFileName(blob.Name));
            await client.DownloadToAsync(path, ct).ConfigureAwait(false);
            return path;
        }

        var name = blob.Name.TrimEnd('/');
        var prefix = exists ? (name.Contains('/', StringComparison.Ordinal) ? name[..(name.LastIndexOf('/') + 1)] : "") : name + "/";
        var count = 0;
        long bytes = 0;
        await foreach (var item in container.GetBlobsAsync(new Azure.Storage.Blobs.Models.GetBlobsOptions { Prefix = prefix.Length == 0 ? null : prefix }, ct).ConfigureAwait(false))
        {
            var relative = item.Name[prefix.Length..];
            if (exists && relative.Contains('/', StringComparison.Ordinal))
            {
                continue; // siblings only, not sub-folders
            }

            if (++count > MaxBlobFiles)
            {
                throw GrpcErrors.InvalidArgument($"blob {blob.Container}/{prefix}: more than {MaxBlobFiles} blobs; name one case folder");
            }

            bytes += item.Properties.ContentLength ?? 0;
            if (bytes > settings.MaxBlobInputBytes)
            {
                throw GrpcErrors.ResourceExhausted($"blob {blob.Container}/{prefix}: more than {settings.MaxBlobInputBytes / (1024 * 1024)} MiB (ModelVault:MaxBlobInputMegabytes)");
            }

            var target = Path.GetFullPath(Path.Combine(folder, relative));
            if (!target.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            {
                throw GrpcErrors.InvalidArgument($"blob name {Ids.Printable(item.Name)} escapes its folder");
            }

            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            await container.GetBlobClient(item.Name).DownloadToAsync(target, ct).ConfigureAwait(false);
        }

        if (count == 0)
        {
            throw GrpcErrors.NotFound($"blob {blob.Container}/{blob.Name}: no such blob, and no blobs under {blob.Container}/{prefix}");
        }

        return exists ? Path.Combine(folder, SafeFileName(name)) : folder;
    }

    /// <summary>A library message without the service's temporary folder: inline channels by their names, blobs by their paths below the location.</summary>
    private static string Scrub(string message, PrivateFolder scratch, string location = "the location")
    {
        var input = Path.Combine(scratch.Path, "input");
        return Errors.OneLine(message)
            .Replace(input + Path.DirectorySeparatorChar, "", StringComparison.Ordinal)
            .Replace(input, location, StringComparison.Ordinal)
            .Replace(scratch.Path + Path.DirectorySeparatorChar, "", StringComparison.Ordinal);
    }

    private static string SafeFileName(string blobName)
    {
        var file = blobName.TrimEnd('/');
        file = file[(file.LastIndexOf('/') + 1)..];
        return file is "" or "." or ".." || file.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0
            ? throw GrpcErrors.InvalidArgument($"blob name {Ids.Printable(blobName)} does not end in a file name")
            : file;
    }

    /// <summary>The format a file name's extension gives, or null.</summary>
    internal static V1.ImageFormat? FormatOf(string? fileName) =>
        fileName is null ? null
        : fileName.EndsWith(".png", StringComparison.OrdinalIgnoreCase) ? V1.ImageFormat.Png
        : fileName.EndsWith(".nii", StringComparison.OrdinalIgnoreCase) || fileName.EndsWith(".nii.gz", StringComparison.OrdinalIgnoreCase) ? V1.ImageFormat.Nifti
        : null;
}
