using MriSeg.ServiceDefaults;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Preprocessing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Preprocess;

/// <summary>
/// Phase 1 on a provider's premises: ingests a local folder or a blob prefix into a de-identified slice shard.
/// Blob sources are copied into a private (0700) temporary folder first, because NIfTI reading wants files; the
/// folder is deleted when the job ends, whatever the outcome. The provider's pseudonymisation secret stays in the
/// service's key folder and never appears in a response.
/// </summary>
public sealed partial class PreprocessService(PreprocessSettings settings, BlobServiceClient blobs, ILogger<PreprocessService> logger)
    : V1.Preprocess.PreprocessBase
{
    public override Task<V1.InspectSourceResponse> InspectSource(V1.InspectSourceRequest request, ServerCallContext context) =>
        Guard("InspectSource", context, async ct =>
        {
            await using var source = await MaterialiseAsync(request.Source, null, ct);
            var cases = Select(CaseDiscovery.Discover(source.Path), request.Layout, source.Description);
            var response = new V1.InspectSourceResponse { Cases = cases.Count, Layout = cases.Count > 0 ? ToContract(cases[0].Layout) : request.Layout };
            var roles = cases.Where(c => c.Problem is null).SelectMany(c => c.Files.Keys).Distinct();
            response.Modalities.AddRange(Brats.Modalities.Where(m => roles.Contains(SourceLayouts.Role(m))).Select(Brats.Suffix));
            response.Problems.AddRange(cases.Where(c => c.Problem is not null).Select(c => $"{c.CaseId}: {c.Problem}"));
            return response;
        });

    public override Task RunPreprocess(V1.PreprocessRequest request, IServerStreamWriter<V1.PreprocessProgress> responseStream, ServerCallContext context) =>
        Guard("RunPreprocess", context, async ct =>
        {
            var provider = ProviderId(request.ProviderId);
            var options = Options(request.Options, provider);
            var output = OutputTarget(request.Output, $"{provider}/shards/{DateTime.UtcNow:yyyyMMdd-HHmmss}.safetensors");
            var job = new JobReporter(responseStream, settings.ProgressInterval, "patients");
            await job.SendAsync(V1.JobState.Running, "reading", $"reading {Describe(request.Source)}", 0, 0, ct);
            await using var source = await MaterialiseAsync(request.Source, job, ct);
            var cases = Select(CaseDiscovery.Discover(source.Path), request.Layout, source.Description);
            if (cases.Count == 0)
            {
                throw GrpcErrors.InvalidArgument($"{source.Description}: no case found in any known layout");
            }

            var result = await new Preprocessor(options).RunAsync(cases, new SynchronousProgress(p =>
                job.Post(V1.JobState.Running, "normalising", p.CurrentCase is null ? "" : $"{p.CasesDone}/{p.CasesTotal} cases, {p.Slices} slices", p.CasesDone, p.CasesTotal)), ct);
            await job.FlushAsync(ct);

            var shard = DatasetShard.ToBytes(result.Dataset);
            var sha256 = Convert.ToHexStringLower(SHA256.HashData(shard));
            await job.SendAsync(V1.JobState.Running, "writing", $"writing {shard.Length:N0} bytes to {Describe(output)}", cases.Count, cases.Count, ct);
            await WriteAsync(output, shard, ct);

            var s = result.Summary;
            var summary = new V1.ShardSummary
            {
                ShardId = sha256[..16], Location = output, Patients = s.Patients, Slices = s.Slices,
                Height = s.Height, Width = s.Width, Sha256 = sha256,
            };
            summary.Modalities.AddRange(result.Dataset.Modalities);
            summary.Warnings.AddRange(s.Skipped.Select(k => $"skipped {k.CaseId}: {k.Reason}"));
            logger.LogInformation("Provider {Provider}: {Patients} patients, {Slices} slices ({Skipped} cases skipped) → {Output}",
                provider, s.Patients, s.Slices, s.Skipped.Count, Describe(output));
            await job.SendAsync(V1.JobState.Succeeded, "done", $"{s.Patients} patients, {s.Slices} slices, {s.TumourSlices} with tumour, {s.Skipped.Count} cases skipped",
                cases.Count, cases.Count, ct, summary);
        }, responseStream);

    public override Task GeneratePhantoms(V1.GeneratePhantomsRequest request, IServerStreamWriter<V1.PreprocessProgress> responseStream, ServerCallContext context) =>
        Guard("GeneratePhantoms", context, async ct =>
        {
            if (request.Patients is < 1 or > 10_000)
            {
                throw GrpcErrors.InvalidArgument($"patients must be 1 to 10000, got {request.Patients}");
            }

            if (request.Layout is not (V1.SourceLayout.Auto or V1.SourceLayout.BratsCases))
            {
                throw GrpcErrors.InvalidArgument($"phantoms are written in the BraTS case layout only, not {request.Layout}");
            }

            var side = request.Size == 0 ? PhantomOptions.Default.Size.X : request.Size;
            if (side is < 32 or > 512 || side % 16 != 0)
            {
                throw GrpcErrors.InvalidArgument($"size must be a multiple of 16 from 32 to 512, got {request.Size}");
            }

            var depth = request.Depth == 0 ? Math.Max(16, side / 2) : request.Depth;
            if (depth < 16 || depth > side)
            {
                throw GrpcErrors.InvalidArgument($"depth must be from 16 to the size {side}, got {request.Depth}");
            }

            if (request.Site is < 0 or > 1000)
            {
                throw GrpcErrors.InvalidArgument($"site must be 0 to 1000, got {request.Site}");
            }

            var site = request.Site == 0 ? 1 : request.Site;
            var generator = new PhantomGenerator(new PhantomOptions
            {
                Size = new GridSize(side, side, depth),
                Seed = request.Seed == 0 ? PhantomOptions.Default.Seed : request.Seed,
                MaxDegreeOfParallelism = settings.MaxParallelism,
            });
            var job = new JobReporter(responseStream, settings.ProgressInterval, "patients");
            var target = request.Output ?? throw GrpcErrors.InvalidArgument("output is required");
            if (target.WhereCase == V1.Location.WhereOneofCase.LocalPath)
            {
                var folder = LocalPath(target.LocalPath);
                Directory.CreateDirectory(folder);
                await job.SendAsync(V1.JobState.Running, "generating", $"{request.Patients} phantoms into {folder}", 0, request.Patients, ct);
                generator.WriteSite(folder, site, request.Patients, cancellationToken: ct);
            }
            else if (target.WhereCase == V1.Location.WhereOneofCase.Blob)
            {
                var container = blobs.GetBlobContainerClient(target.Blob.Container);
                await container.CreateIfNotExistsAsync(cancellationToken: ct);
                var scratch = PrivateFolder.Create();
                try
                {
                    await job.SendAsync(V1.JobState.Running, "generating", $"{request.Patients} phantoms", 0, request.Patients, ct);
                    generator.WriteSite(scratch.Path, site, request.Patients, cancellationToken: ct);
                    var files = Directory.GetFiles(scratch.Path, "*", SearchOption.AllDirectories);
                    var done = 0;
                    foreach (var file in files)
                    {
                        var name = $"{target.Blob.Name.TrimEnd('/')}/{Path.GetRelativePath(scratch.Path, file).Replace('\\', '/')}".TrimStart('/');
                        await container.GetBlobClient(name).UploadAsync(file, new BlobUploadOptions(), ct);
                        job.Post(V1.JobState.Running, "uploading", name, ++done * request.Patients / files.Length, request.Patients);
                    }
                }
                finally
                {
                    await scratch.DisposeAsync();
                }
            }
            else
            {
                throw GrpcErrors.InvalidArgument("output must be a blob prefix or a local path");
            }

            await job.SendAsync(V1.JobState.Succeeded, "done", $"{request.Patients} phantom cases written to {Describe(target)}", request.Patients, request.Patients, ct);
        }, responseStream);

    [GeneratedRegex("^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")]
    private static partial Regex ProviderIdPattern();

    private static string ProviderId(string id) =>
        ProviderIdPattern().IsMatch(id ?? "") ? id! : throw GrpcErrors.InvalidArgument(
            $"provider_id \"{id}\" is not valid: 3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit");

    private PreprocessOptions Options(V1.PreprocessOptions? o, string provider)
    {
        o ??= new V1.PreprocessOptions();
        if (o.Normalization is not (V1.Normalization.Unspecified or V1.Normalization.ZscoreBrain))
        {
            throw GrpcErrors.InvalidArgument($"normalization {o.Normalization} is not supported: this service z-scores inside the brain");
        }

        if (o.MaxSlicesPerPatient != 0)
        {
            throw GrpcErrors.InvalidArgument("max_slices_per_patient is not supported here: the training pipeline bounds slices per patient (max_slices_per_patient of the training configuration)");
        }

        try
        {
            // Both percentiles 0: the pre-processor's own.
            var defaults = new PreprocessOptions { PseudonymKey = PseudonymKeyOf(provider) };
            var percentiles = o.LowerPercentile == 0 && o.UpperPercentile == 0;
            var options = defaults with
            {
                Size = o.SliceSize,
                Modalities = o.Modalities.Count == 0 ? Brats.Modalities : PreprocessOptions.ParseModalities(string.Join(',', o.Modalities)),
                Labels = string.IsNullOrEmpty(o.Labels) ? LabelScheme.WholeTumour : LabelSchemes.Parse(o.Labels),
                LowerPercentile = percentiles ? defaults.LowerPercentile : o.LowerPercentile,
                UpperPercentile = percentiles ? defaults.UpperPercentile : o.UpperPercentile,
                TumourFreeShare = o.EmptySliceFraction,
                MaxVoxels = o.MaxVoxels > 0 ? o.MaxVoxels : NiftiReadOptions.DefaultMaxVoxels,
                MaxDegreeOfParallelism = settings.MaxParallelism,
            };
            options.Validate();
            return options;
        }
        catch (ArgumentException e)
        {
            throw GrpcErrors.InvalidArgument(e.Message);
        }
    }

    private PseudonymKey PseudonymKeyOf(string provider)
    {
        var folder = settings.PseudonymKeysDirectory
            ?? throw GrpcErrors.FailedPrecondition("no pseudonymisation key folder: set Preprocess:PseudonymKeysDirectory");
        var path = Path.Combine(folder, $"{provider}.pseudonym");
        if (File.Exists(path))
        {
            return PseudonymKey.Load(path);
        }

        if (!settings.CreatePseudonymKeys)
        {
            throw GrpcErrors.FailedPrecondition($"provider {provider} has no pseudonymisation secret ({provider}.pseudonym in the key folder)");
        }

        Directory.CreateDirectory(folder);
        try
        {
            var key = PseudonymKey.CreateFile(path);
            logger.LogWarning("Created a pseudonymisation secret for provider {Provider} in {Folder}: keep it, or the provider's pseudonyms change", provider, folder);
            return key;
        }
        catch (IOException) when (File.Exists(path))
        {
            return PseudonymKey.Load(path); // another job created it first
        }
    }

    private static List<SourceCase> Select(IReadOnlyList<SourceCase> cases, V1.SourceLayout layout, string source)
    {
        if (layout == V1.SourceLayout.Auto)
        {
            return [.. cases];
        }

        var wanted = layout switch
        {
            V1.SourceLayout.BratsCases => SourceLayout.BratsVolumes,
            V1.SourceLayout.ModalityFiles => SourceLayout.NamedVolumes,
            V1.SourceLayout.SlicePng => SourceLayout.PngSlices,
            _ => throw GrpcErrors.InvalidArgument($"unknown layout {layout}"),
        };
        var other = cases.FirstOrDefault(c => c.Layout != wanted);
        return other is null ? [.. cases] : throw GrpcErrors.InvalidArgument(
            $"{source}: case {other.CaseId} is in the {other.Layout.Name()} layout, not the requested {wanted.Name()}");
    }

    private static V1.SourceLayout ToContract(SourceLayout layout) => layout switch
    {
        SourceLayout.BratsVolumes => V1.SourceLayout.BratsCases,
        SourceLayout.NamedVolumes => V1.SourceLayout.ModalityFiles,
        _ => V1.SourceLayout.SlicePng,
    };

    private V1.Location OutputTarget(V1.Location? output, string defaultName)
    {
        if (output is null || output.WhereCase == V1.Location.WhereOneofCase.None)
        {
            throw GrpcErrors.InvalidArgument("output is required: a blob (container and name) or a local path");
        }

        if (output.WhereCase == V1.Location.WhereOneofCase.LocalPath)
        {
            _ = LocalPath(output.LocalPath);
            return output;
        }

        if (string.IsNullOrEmpty(output.Blob.Container))
        {
            throw GrpcErrors.InvalidArgument("output blob: the container is required");
        }

        return string.IsNullOrEmpty(output.Blob.Name)
            ? new V1.Location { Blob = new V1.BlobRef { Container = output.Blob.Container, Name = defaultName } }
            : output;
    }

    private string LocalPath(string path)
    {
        if (!settings.AllowLocalPaths)
        {
            throw GrpcErrors.PermissionDenied("local paths are not allowed on this service (Preprocess:AllowLocalPaths); use a blob");
        }

        return Path.IsPathFullyQualified(path) ? path : throw GrpcErrors.InvalidArgument($"local path \"{path}\" must be absolute");
    }

    /// <summary>A source as a folder: a local path as is, or a blob prefix copied into a private temporary folder.</summary>
    private async Task<Source> MaterialiseAsync(V1.Location? location, JobReporter? job, CancellationToken ct)
    {
        switch (location?.WhereCase)
        {
            case V1.Location.WhereOneofCase.LocalPath:
                var path = LocalPath(location.LocalPath);
                return Directory.Exists(path) ? new Source(path, path, null) : throw GrpcErrors.NotFound($"{path}: no such folder");
            case V1.Location.WhereOneofCase.Blob:
                var blob = location.Blob;
                var container = blobs.GetBlobContainerClient(blob.Container);
                var prefix = string.IsNullOrEmpty(blob.Name) ? null : blob.Name.TrimEnd('/') + "/";
                var scratch = PrivateFolder.Create();
                try
                {
                    var count = 0;
                    await foreach (var item in container.GetBlobsAsync(new GetBlobsOptions { Prefix = prefix }, ct))
                    {
                        var relative = prefix is null ? item.Name : item.Name[prefix.Length..];
                        var target = Path.GetFullPath(Path.Combine(scratch.Path, relative));
                        if (!target.StartsWith(scratch.Path + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                        {
                            throw GrpcErrors.InvalidArgument($"blob name {item.Name} escapes its prefix");
                        }

                        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                        await container.GetBlobClient(item.Name).DownloadToAsync(target, ct);
                        count++;
                        job?.Post(V1.JobState.Running, "downloading", item.Name, count, 0);
                    }

                    var description = $"blob {blob.Container}/{prefix}";
                    return count > 0 ? new Source(scratch.Path, description, scratch) : throw GrpcErrors.NotFound($"{description}: no blobs");
                }
                catch
                {
                    await scratch.DisposeAsync();
                    throw;
                }

            default:
                throw GrpcErrors.InvalidArgument("source is required: a blob prefix (container and name prefix) or a local path");
        }
    }

    private async Task WriteAsync(V1.Location output, byte[] shard, CancellationToken ct)
    {
        if (output.WhereCase == V1.Location.WhereOneofCase.LocalPath)
        {
            var path = output.LocalPath;
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var temporary = $"{path}.{Guid.NewGuid():n}.partial";
            await File.WriteAllBytesAsync(temporary, shard, ct);
            File.Move(temporary, path, overwrite: true);
            return;
        }

        var container = blobs.GetBlobContainerClient(output.Blob.Container);
        await container.CreateIfNotExistsAsync(cancellationToken: ct);
        // A shard is written once: an existing blob of that name is not replaced.
        await container.GetBlobClient(output.Blob.Name).UploadAsync(new BinaryData(shard),
            new BlobUploadOptions { Conditions = new BlobRequestConditions { IfNoneMatch = ETag.All } }, ct);
    }

    private static string Describe(V1.Location? location) => location?.WhereCase switch
    {
        V1.Location.WhereOneofCase.LocalPath => location.LocalPath,
        V1.Location.WhereOneofCase.Blob => $"blob {location.Blob.Container}/{location.Blob.Name}",
        _ => "(nothing)",
    };

    /// <summary>Runs an RPC body and maps failures to statuses (and, for streams, a final FAILED message).</summary>
    private async Task<T> Guard<T>(string operation, ServerCallContext context, Func<CancellationToken, Task<T>> body)
    {
        try
        {
            return await body(context.CancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, operation, logger, context.CancellationToken);
        }
    }

    /// <summary>Runs a streaming RPC body; a failure also ends the stream with a FAILED message carrying the reason.</summary>
    private async Task Guard(string operation, ServerCallContext context, Func<CancellationToken, Task> body, IServerStreamWriter<V1.PreprocessProgress> stream)
    {
        try
        {
            await body(context.CancellationToken);
        }
        catch (Exception e)
        {
            var status = Errors.Map(e, operation, logger, context.CancellationToken);
            if (!context.CancellationToken.IsCancellationRequested)
            {
                try
                {
                    await stream.WriteAsync(new V1.PreprocessProgress
                    {
                        Progress = new V1.JobProgress
                        {
                            State = V1.JobState.Failed, Step = "failed", Error = status.Status.Detail,
                            At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
                        },
                    });
                }
                catch (InvalidOperationException)
                {
                    // A write was still pending (the failure came from inside a progress write): the status carries the reason.
                }
            }

            throw status;
        }
    }

    private sealed record Source(string Path, string Description, PrivateFolder? Scratch) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Scratch?.DisposeAsync() ?? ValueTask.CompletedTask;
    }

    /// <summary>IProgress that calls back on the reporting thread (Progress&lt;T&gt; would post to the thread pool out of order).</summary>
    private sealed class SynchronousProgress(Action<PreprocessProgress> report) : IProgress<PreprocessProgress>
    {
        public void Report(PreprocessProgress value) => report(value);
    }

    /// <summary>
    /// Streams JobProgress messages, at most one per interval while running (the latest wins); terminal messages
    /// always go out. Writes are serialised: gRPC allows one pending write per stream.
    /// </summary>
    private sealed class JobReporter(IServerStreamWriter<V1.PreprocessProgress> stream, TimeSpan interval, string unit)
    {
        private readonly string _jobId = Guid.NewGuid().ToString("n");
        private readonly SemaphoreSlim _gate = new(1, 1);
        private long _lastSent;
        private V1.PreprocessProgress? _pending;

        public void Post(V1.JobState state, string step, string message, long done, long total)
        {
            var now = Environment.TickCount64;
            var message1 = Message(state, step, message, done, total, null);
            if (now - Interlocked.Read(ref _lastSent) < interval.TotalMilliseconds || !_gate.Wait(0))
            {
                Volatile.Write(ref _pending, message1);
                return;
            }

            try
            {
                Interlocked.Exchange(ref _lastSent, now);
                Volatile.Write(ref _pending, null);
                stream.WriteAsync(message1).GetAwaiter().GetResult();
            }
            finally
            {
                _gate.Release();
            }
        }

        public async Task FlushAsync(CancellationToken ct)
        {
            if (Interlocked.Exchange(ref _pending, null) is { } pending)
            {
                await WriteAsync(pending, ct);
            }
        }

        public Task SendAsync(V1.JobState state, string step, string message, long done, long total, CancellationToken ct, V1.ShardSummary? summary = null)
        {
            Volatile.Write(ref _pending, null);
            return WriteAsync(Message(state, step, message, done, total, summary), ct);
        }

        private async Task WriteAsync(V1.PreprocessProgress message, CancellationToken ct)
        {
            await _gate.WaitAsync(ct);
            try
            {
                Interlocked.Exchange(ref _lastSent, Environment.TickCount64);
                await stream.WriteAsync(message, ct);
            }
            finally
            {
                _gate.Release();
            }
        }

        private V1.PreprocessProgress Message(V1.JobState state, string step, string message, long done, long total, V1.ShardSummary? summary) => new()
        {
            Progress = new V1.JobProgress
            {
                JobId = _jobId, State = state, Step = step, Message = message, Done = done, Total = total, Unit = unit,
                At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
            },
            Summary = summary,
        };
    }
}
