using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Net.Client;
using MriSeg.CleanRoom;
using MriSeg.Imaging;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Preprocessing;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using MriSeg.Sealing;
using MriSeg.Contracts;
using TorchSharp;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Scenario;

/// <summary>The gRPC addresses of the services the parties call (the KeyBroker is reached only through them).</summary>
public sealed record ScenarioEndpoints(Uri Preprocess, Uri Packaging, Uri Trainer, Uri ModelVault);

/// <summary>One progress report: the phase (1 to 6) and what is happening.</summary>
public sealed record ScenarioEvent(int Phase, string PhaseName, string Message, double? Fraction = null);

/// <summary>A phase that ended: how long it took and what it produced, in one line.</summary>
public sealed record PhaseResult(int Phase, string Name, double Seconds, string Result);

/// <summary>The segmented held-out case.</summary>
public sealed record SegmentedCase(string Case, string Mask, string? Overlay, double? Dice, IReadOnlyList<RegionResult> Regions);

/// <summary>A region's predicted volume.</summary>
public sealed record RegionResult(string Region, long Voxels, double Millilitres);

/// <summary>What the scenario did (<c>mriseg scenario run --json</c>).</summary>
public sealed record ScenarioSummary
{
    /// <summary>The clean-room run id (also the model id and the output folder's name).</summary>
    public required string RunId { get; init; }

    /// <summary>Whole-tumour Dice of the model on the clean room's held-out test patients (the model card's).</summary>
    public required double? Dice { get; init; }

    /// <summary>ε the run spent (the model card's).</summary>
    public required double Epsilon { get; init; }

    /// <summary>δ of the run.</summary>
    public required double Delta { get; init; }

    /// <summary>Wall time of the six phases.</summary>
    public required double Seconds { get; init; }

    /// <summary>The local output folder, the sealed outputs (container/name), the ModelVault's model id.</summary>
    public required ScenarioOutputs Outputs { get; init; }

    /// <summary>Each phase's time and result.</summary>
    public required IReadOnlyList<PhaseResult> Phases { get; init; }

    /// <summary>What each hospital contributed.</summary>
    public required IReadOnlyList<HospitalResult> Hospitals { get; init; }

    /// <summary>The segmented held-out case.</summary>
    public required SegmentedCase Segmented { get; init; }

    /// <summary>The registered model's metrics.</summary>
    public required IReadOnlyDictionary<string, double> Metrics { get; init; }
}

/// <summary>Where the scenario's results are.</summary>
public sealed record ScenarioOutputs(string Directory, string ModelId, IReadOnlyList<string> SealedOutputs);

/// <summary>One hospital's contribution: its shard and sealed package.</summary>
public sealed record HospitalResult(string Id, int Patients, int Slices, string SealedPackage, string KeyId, string ContractId);

/// <summary>The scenario stopped in <see cref="Phase"/>; the message says why, in one line.</summary>
public sealed class ScenarioException(int phase, string message, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>The phase (1 to 6) that failed.</summary>
    public int Phase { get; } = phase;
}

/// <summary>
/// Plays the main job against running services: three hospitals (data providers) and a model consumer through the six
/// phases of the architecture. Every step goes through the services' public gRPC contracts, as the parties would: the
/// hospitals' data are generated and pre-processed by their Preprocess service, sealed by their Packaging service (which
/// holds their signing keys) and their keys handed to the KeyBroker with a release policy for the clean room's published
/// code measurement and a contract; the consumer seals its base model and pipeline the same way and imports its output
/// key; the Trainer runs; the ModelVault pulls, verifies and registers the model and segments a held-out case.
/// </summary>
/// <param name="endpoints">The services.</param>
/// <param name="storage">The parties' blob storage (each party writes only its own container: the consumer stages its model and
/// pipeline there for its Packaging service, and everyone removes their plaintext staging blobs once sealed).</param>
/// <param name="progress">Progress reports.</param>
public sealed class ScenarioRunner(ScenarioEndpoints endpoints, BlobServiceClient storage, Action<ScenarioEvent>? progress = null) : IDisposable
{
    /// <summary>The six phases' names, in order.</summary>
    public static readonly IReadOnlyList<string> PhaseNames =
        ["pre-process", "seal and upload data", "seal the model and pipeline", "import keys", "clean-room run", "pull and segment"];

    private readonly List<GrpcChannel> _channels = [];
    private readonly List<PhaseResult> _phases = [];
    private readonly Action<ScenarioEvent> _progress = progress ?? (_ => { });

    /// <summary>Runs all six phases.</summary>
    /// <exception cref="ScenarioException">A phase failed; the message names the service's reason.</exception>
    public async Task<ScenarioSummary> RunAsync(ScenarioOptions options, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var clock = Stopwatch.StartNew();
        var runId = options.RunId ?? $"scenario-{DateTime.UtcNow:yyyyMMdd-HHmmss}-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(2))}";
        var outputDirectory = Path.GetFullPath(Path.Combine(options.OutputDirectory, runId));
        Directory.CreateDirectory(outputDirectory);

        var preprocess = new V1.Preprocess.PreprocessClient(Channel(endpoints.Preprocess));
        var packaging = new V1.Packaging.PackagingClient(Channel(endpoints.Packaging));
        var trainer = new V1.Trainer.TrainerClient(Channel(endpoints.Trainer));
        // The vault authenticates its callers: the consumer's key, read when the vault is first called (phase 4, after
        // Packaging has made it at the consumer's first hand-off in development).
        V1.ModelVault.ModelVaultClient? vaultClient = null;
        V1.ModelVault.ModelVaultClient Vault() => vaultClient ??= new V1.ModelVault.ModelVaultClient(
            Channel(endpoints.ModelVault).WithPartyTokens(_consumerKey ??= LoadConsumerKey(options), options.Consumer, PartyTokens.ModelVaultAudience));
        var pipelineJson = options.ResolvePipeline();
        var config = TrainingConfig.FromJson(pipelineJson);
        // The contracts allow what the pipeline declares: the shipped recipe is set to --epsilon/--delta, a given pipeline
        // brings its own (a non-private pipeline gets the options' terms, and the clean room refuses it: patient-level DP only).
        var (epsilon, delta) = config.Privacy is { Mode: PrivacyMode.Dp } p ? (p.Epsilon, p.Delta) : (options.Epsilon, options.Delta);

        // 1. Each hospital pre-processes its data (generated phantoms by default) into a de-identified shard.
        var shards = new List<(ScenarioHospital Hospital, V1.ShardSummary Shard, List<string> Plaintext)>();
        await PhaseAsync(1, async () =>
        {
            for (var i = 0; i < options.Hospitals.Count; i++)
            {
                var h = options.Hospitals[i];
                var container = h.Id.ToLowerInvariant();
                var plaintext = new List<string>();
                V1.Location source;
                if (h.DataPath is null)
                {
                    var raw = $"scenario/{runId}/raw";
                    await DrainAsync(1, h.Id, preprocess.GeneratePhantoms(new V1.GeneratePhantomsRequest
                    {
                        Patients = options.PatientsPerHospital, Seed = options.Seed, Site = i + 1, Size = options.VolumeSize, Depth = options.VolumeDepth,
                        Layout = V1.SourceLayout.BratsCases, Output = Blob(container, raw),
                    }, cancellationToken: ct).ResponseStream, p => p.Progress, ct).ConfigureAwait(false);
                    source = Blob(container, raw);
                    plaintext.Add(raw + "/");
                }
                else
                {
                    source = new V1.Location { LocalPath = h.DataPath };
                }

                var shardName = $"scenario/{runId}/shard.safetensors";
                var last = await DrainAsync(1, h.Id, preprocess.RunPreprocess(new V1.PreprocessRequest
                {
                    ProviderId = h.Id, Source = source, Layout = V1.SourceLayout.Auto, Output = Blob(container, shardName),
                    Options = PreprocessOptionsFor(config, options, h),
                }, cancellationToken: ct).ResponseStream, p => p.Progress, ct).ConfigureAwait(false);
                var shard = last.Summary ?? throw new ScenarioException(1, $"{h.Id}: the Preprocess service ended without a shard summary");
                plaintext.Add(shardName);
                shards.Add((h, shard, plaintext));
            }

            return string.Join("; ", shards.Select(s => $"{s.Hospital.Id}: {s.Shard.Patients} patients, {s.Shard.Slices} slices {s.Shard.Height}x{s.Shard.Width}"));
        }).ConfigureAwait(false);

        // 2. Each hospital seals its shard (its Packaging service signs with its key); the data key comes back wrapped to the KeyBroker only.
        var sealedShards = new List<(ScenarioHospital Hospital, V1.ShardSummary Shard, V1.SealResult Sealed)>();
        await PhaseAsync(2, async () =>
        {
            foreach (var (h, shard, plaintext) in shards)
            {
                var container = h.Id.ToLowerInvariant();
                var result = await SealAsync(2, packaging, h.Id, Blob(container, $"scenario/{runId}/shard.safetensors"), V1.ContentType.Dataset,
                    $"scenario/{runId}/shard.sealed",
                    new Dictionary<string, string> { [CleanRoomRun.PatientCountMetadataKey] = shard.Patients.ToString(CultureInfo.InvariantCulture) }, ct).ConfigureAwait(false);
                sealedShards.Add((h, shard, result));
                if (!options.KeepPlaintext)
                {
                    await DeletePlaintextAsync(2, container, plaintext, ct).ConfigureAwait(false);
                }
            }

            return string.Join("; ", sealedShards.Select(s => $"{s.Hospital.Id}: {Name(s.Sealed.Package.Blob)} ({s.Sealed.Manifest.PlaintextLength / 1024.0 / 1024:F1} MiB)"));
        }).ConfigureAwait(false);

        // 3. The consumer seals its base model (pre-trained, or the pipeline's initial weights) and its pipeline configuration.
        var consumerContainer = options.Consumer.ToLowerInvariant();
        V1.SealResult sealedModel = null!, sealedPipeline = null!;
        var pipelineBytes = Encoding.UTF8.GetBytes(pipelineJson);
        var pipelineSha = Convert.ToHexStringLower(SHA256.HashData(pipelineBytes));
        await PhaseAsync(3, async () =>
        {
            var modelBytes = BaseModelWeights(config, options.BaseModelDirectory);
            sealedModel = await StageAndSealAsync(3, packaging, options, consumerContainer, $"scenario/{runId}/base-model.safetensors", modelBytes,
                V1.ContentType.Model, ct).ConfigureAwait(false);
            sealedPipeline = await StageAndSealAsync(3, packaging, options, consumerContainer, $"scenario/{runId}/pipeline.json", pipelineBytes,
                V1.ContentType.Pipeline, ct).ConfigureAwait(false);
            return $"base model {Name(sealedModel.Package.Blob)} ({modelBytes.Length / 1024} KiB, {(options.BaseModelDirectory is { } b ? "pre-trained: " + Path.GetFileName(Path.TrimEndingDirectorySeparator(b)) : "initial weights")}), pipeline {Name(sealedPipeline.Package.Blob)} (SHA-256 {pipelineSha[..16]}…)";
        }).ConfigureAwait(false);

        // 4. Keys go to the KeyBroker with a release policy for the clean room's published measurement and the contracts.
        var cleanRoom = await Call(4, "Trainer.DescribeCleanRoom", () => trainer.DescribeCleanRoomAsync(new V1.DescribeCleanRoomRequest(), cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
        var contracts = new Dictionary<string, string>(StringComparer.Ordinal);
        var hospitals = new List<HospitalResult>();
        string outputKeyId = "";
        await PhaseAsync(4, async () =>
        {
            foreach (var (h, shard, seal) in sealedShards)
            {
                var contractId = $"{h.Id.ToLowerInvariant()}-{runId}";
                await HandOffAsync(packaging, seal, h.Id, V1.KeyPurpose.Dataset, cleanRoom.ReleasePolicyJson, new V1.ContractTerms
                {
                    ContractId = contractId,
                    DatasetId = $"{h.Id.ToLowerInvariant()}.{runId}",
                    Owner = h.Id,
                    AllowedConsumers = { options.Consumer },
                    Expires = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddDays(30)),
                    MaxEpsilonPerRun = epsilon,
                    MaxEpsilonTotal = epsilon * 2,
                    Delta = delta,
                    AllowedPipelineSha256 = { pipelineSha },
                    Constraints = new V1.PipelineConstraints { RequirePatientLevelPrivacy = true },
                }, ct).ConfigureAwait(false);
                contracts[seal.Package.KeyId] = contractId;
                hospitals.Add(new HospitalResult(h.Id, shard.Patients, shard.Slices, Name(seal.Package.Blob), seal.Package.KeyId, contractId));
            }

            await HandOffAsync(packaging, sealedModel, options.Consumer, V1.KeyPurpose.Model, cleanRoom.ReleasePolicyJson, null, ct).ConfigureAwait(false);
            await HandOffAsync(packaging, sealedPipeline, options.Consumer, V1.KeyPurpose.Model, cleanRoom.ReleasePolicyJson, null, ct).ConfigureAwait(false);

            // The consumer's ModelVault makes the output key and imports it; it never leaves the vault and the broker.
            var output = await Call(4, "ModelVault.CreateOutputKey", () => Vault().CreateOutputKeyAsync(
                new V1.CreateOutputKeyRequest { ReleasePolicyJson = cleanRoom.ReleasePolicyJson }, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
            outputKeyId = output.KeyId;
            return $"{contracts.Count} dataset keys (contracts ε ≤ {epsilon.ToString(CultureInfo.InvariantCulture)} per run, δ = {delta.ToString("G3", CultureInfo.InvariantCulture)}), " +
                $"model and pipeline keys, output key {outputKeyId[..8]}…; policy: {(cleanRoom.HardwareBacked ? "hardware" : "development")} attestation of measurement {cleanRoom.CodeMeasurement[..16]}…";
        }).ConfigureAwait(false);

        // 5. The clean-room run.
        V1.RunInfo run = null!;
        await PhaseAsync(5, async () =>
        {
            var start = new V1.StartRunRequest
            {
                RunId = runId, Consumer = options.Consumer, BaseModel = sealedModel.Package, Pipeline = sealedPipeline.Package,
                ContractId = contracts.Values.First(), OutputKeyId = outputKeyId,
            };
            start.Datasets.AddRange(sealedShards.Select(s => s.Sealed.Package));
            start.DatasetContracts.Add(contracts);
            // The request as a file: `mriseg run start --request` takes the same document.
            await File.WriteAllTextAsync(Path.Combine(outputDirectory, "start-run.json"), JsonFormatter.Default.Format(start), ct).ConfigureAwait(false);
            await Call(5, "Trainer.StartRun", () => trainer.StartRunAsync(start, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
            await Call(5, "Trainer.WatchRun", async () =>
            {
                using var watch = trainer.WatchRun(new V1.WatchRunRequest { RunId = runId }, cancellationToken: ct);
                await foreach (var p in watch.ResponseStream.ReadAllAsync(ct).ConfigureAwait(false))
                {
                    _progress(new ScenarioEvent(5, PhaseNames[4], p.Describe(), p.Steps > 0 ? (double)p.Step / p.Steps : null));
                }

                return true;
            }).ConfigureAwait(false);
            run = await Call(5, "Trainer.GetRun", () => trainer.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
            if (run.State != V1.JobState.Succeeded)
            {
                throw new ScenarioException(5, $"run {runId} ended {run.State}: {run.Error}");
            }

            return $"run {runId}: ε = {run.Privacy.Epsilon:F3} (δ = {run.Privacy.Delta:G2}, σ = {run.Privacy.Sigma:F3}, q = {run.Privacy.SampleRate:F4}, {run.Privacy.Steps} steps), {run.Outputs.Count} sealed outputs";
        }).ConfigureAwait(false);

        // 6. The consumer pulls the model through its ModelVault and segments a case no hospital trained on.
        V1.ModelRecord record = null!;
        SegmentedCase segmented = null!;
        await PhaseAsync(6, async () =>
        {
            record = await Call(6, "ModelVault.PullModel", async () =>
            {
                V1.ModelRecord? pulled = null;
                using var pull = Vault().PullModel(new V1.PullModelRequest { RunId = runId, ExpectedCodeMeasurement = cleanRoom.CodeMeasurement }, cancellationToken: ct);
                await foreach (var p in pull.ResponseStream.ReadAllAsync(ct).ConfigureAwait(false))
                {
                    if (p.Progress is { } jp)
                    {
                        _progress(new ScenarioEvent(6, PhaseNames[5], jp.Message));
                    }

                    pulled = p.Model ?? pulled;
                }

                return pulled ?? throw new ScenarioException(6, "the ModelVault ended the pull without a model record");
            }).ConfigureAwait(false);
            await File.WriteAllTextAsync(Path.Combine(outputDirectory, "model-record.json"), JsonFormatter.Default.Format(record), ct).ConfigureAwait(false);
            segmented = await SegmentAsync(Vault(), record.ModelId, options, outputDirectory, ct).ConfigureAwait(false);
            return $"model {record.ModelId} registered (Dice {Metric(record, "dice")}); segmented {segmented.Case}: " +
                (segmented.Dice is { } d ? $"Dice {d:F3} against its ground truth, " : "") + $"mask {segmented.Mask}";
        }).ConfigureAwait(false);

        var summary = new ScenarioSummary
        {
            RunId = runId,
            Dice = record.Metrics.TryGetValue("dice", out var dice) ? dice : null,
            Epsilon = record.Privacy?.Epsilon ?? run.Privacy.Epsilon,
            Delta = record.Privacy?.Delta ?? run.Privacy.Delta,
            Seconds = Math.Round(clock.Elapsed.TotalSeconds, 1),
            Outputs = new ScenarioOutputs(outputDirectory, record.ModelId, [.. run.Outputs.Select(o => $"{o.Blob.Container}/{o.Blob.Name}")]),
            Phases = _phases,
            Hospitals = hospitals,
            Segmented = segmented,
            Metrics = record.Metrics.ToDictionary(),
        };
        await File.WriteAllTextAsync(Path.Combine(outputDirectory, "summary.json"), JsonSerializer.Serialize(summary, SummaryJson), ct).ConfigureAwait(false);
        return summary;
    }

    /// <summary>snake_case JSON of the summary (also what <c>--json</c> prints).</summary>
    public static JsonSerializerOptions SummaryJson { get; } = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var c in _channels)
        {
            c.Dispose();
        }

        _consumerKey?.Dispose();
    }

    /// <summary>The consumer's party key for the ModelVault's caller authentication.</summary>
    /// <exception cref="ScenarioException">It is missing or unreadable.</exception>
    private static SigningKey LoadConsumerKey(ScenarioOptions options)
    {
        var path = options.ConsumerKeyPath ?? Path.Combine(DevelopmentFolders.Resolve(Environment.CurrentDirectory, "keys"), options.Consumer + ".key");
        try
        {
            return SigningKey.Load(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or SealedPackageException)
        {
            throw new ScenarioException(4, $"the consumer's party key {path} (it signs the calls to the ModelVault; --party-key) cannot be read: {e.Message}", e);
        }
    }

    private SigningKey? _consumerKey;

    private GrpcChannel Channel(Uri address)
    {
        var channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxReceiveMessageSize = 256 * 1024 * 1024, MaxSendMessageSize = 256 * 1024 * 1024 });
        _channels.Add(channel);
        return channel;
    }

    private async Task PhaseAsync(int phase, Func<Task<string>> body)
    {
        var name = PhaseNames[phase - 1];
        _progress(new ScenarioEvent(phase, name, "started"));
        var clock = Stopwatch.StartNew();
        var result = await body().ConfigureAwait(false);
        _phases.Add(new PhaseResult(phase, name, Math.Round(clock.Elapsed.TotalSeconds, 1), result));
        _progress(new ScenarioEvent(phase, name, result, 1));
    }

    private static async Task<T> Call<T>(int phase, string what, Func<Task<T>> call)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            throw new ScenarioException(phase, $"{what}: {e.StatusCode}: {e.Status.Detail}", e);
        }
    }

    /// <summary>Reads a job stream to its end; a FAILED or CANCELLED job is an exception with its message.</summary>
    private async Task<T> DrainAsync<T>(int phase, string who, IAsyncStreamReader<T> stream, Func<T, V1.JobProgress?> progressOf, CancellationToken ct)
    {
        T? last = default;
        await Call(phase, who, async () =>
        {
            await foreach (var m in stream.ReadAllAsync(ct).ConfigureAwait(false))
            {
                last = m;
                if (progressOf(m) is { } p)
                {
                    if (p.State is V1.JobState.Failed or V1.JobState.Cancelled)
                    {
                        throw new ScenarioException(phase, $"{who}: {(p.Error.Length > 0 ? p.Error : p.Message)}");
                    }

                    _progress(new ScenarioEvent(phase, PhaseNames[phase - 1], $"{who}: {(p.Message.StartsWith(p.Step, StringComparison.Ordinal) ? p.Message : $"{p.Step} {p.Message}")}".TrimEnd(), p.Total > 0 ? (double)p.Done / p.Total : null));
                }
            }

            return true;
        }).ConfigureAwait(false);
        return last ?? throw new ScenarioException(phase, $"{who}: the stream ended without a message");
    }

    /// <summary>Seals through the owner's Packaging service; the data key comes back wrapped to the KeyBroker only.</summary>
    private async Task<V1.SealResult> SealAsync(int phase, V1.Packaging.PackagingClient packaging, string owner, V1.Location source, V1.ContentType type, string destination,
        IReadOnlyDictionary<string, string>? metadata, CancellationToken ct)
    {
        var request = new V1.SealRequest
        {
            Owner = owner, Source = source, ContentType = type, RecipientIsKeyBroker = true,
            Destination = new V1.BlobRef { Container = owner.ToLowerInvariant(), Name = destination },
        };
        if (metadata is not null)
        {
            foreach (var (k, v) in metadata)
            {
                request.Metadata[k] = v;
            }
        }

        var last = await DrainAsync(phase, $"{owner}: seal", packaging.Seal(request, cancellationToken: ct).ResponseStream, p => p.Progress, ct).ConfigureAwait(false);
        return last.Result ?? throw new ScenarioException(phase, $"{owner}: the Packaging service ended without a sealed package");
    }

    /// <summary>The consumer's plaintext goes to its own container for its Packaging service to seal, and is removed after.</summary>
    private async Task<V1.SealResult> StageAndSealAsync(int phase, V1.Packaging.PackagingClient packaging, ScenarioOptions options,
        string container, string name, byte[] plaintext, V1.ContentType type, CancellationToken ct)
    {
        V1.Location staged;
        try
        {
            var client = storage.GetBlobContainerClient(container);
            await client.CreateIfNotExistsAsync(cancellationToken: ct).ConfigureAwait(false);
            await client.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(plaintext), overwrite: false, ct).ConfigureAwait(false);
            staged = Blob(container, name);
        }
        catch (RequestFailedException e)
        {
            throw new ScenarioException(phase, $"staging {container}/{name}: {e.Status} {e.ErrorCode}", e);
        }

        var result = await SealAsync(phase, packaging, options.Consumer, staged, type, Path.ChangeExtension(name, ".sealed"), null, ct).ConfigureAwait(false);
        if (!options.KeepPlaintext)
        {
            await DeletePlaintextAsync(phase, container, [name], ct).ConfigureAwait(false);
        }

        return result;
    }

    /// <summary>Removes plaintext staging blobs (a name ending in '/' is a prefix).</summary>
    private async Task DeletePlaintextAsync(int phase, string container, IEnumerable<string> names, CancellationToken ct)
    {
        var client = storage.GetBlobContainerClient(container);
        try
        {
            foreach (var name in names)
            {
                if (name.EndsWith('/'))
                {
                    // Thousands of small files (five per generated case): deleted concurrently.
                    await Parallel.ForEachAsync(client.GetBlobsAsync(BlobTraits.None, BlobStates.None, name, ct), new ParallelOptions { MaxDegreeOfParallelism = 16, CancellationToken = ct },
                        async (item, c) => await client.DeleteBlobIfExistsAsync(item.Name, cancellationToken: c).ConfigureAwait(false)).ConfigureAwait(false);
                }
                else
                {
                    await client.DeleteBlobIfExistsAsync(name, cancellationToken: ct).ConfigureAwait(false);
                }
            }
        }
        catch (RequestFailedException e)
        {
            throw new ScenarioException(phase, $"removing plaintext staging blobs from {container}: {e.Status} {e.ErrorCode}", e);
        }

        _progress(new ScenarioEvent(phase, PhaseNames[phase - 1], $"{container}: plaintext staging blobs removed"));
    }

    private async Task HandOffAsync(V1.Packaging.PackagingClient packaging, V1.SealResult seal, string owner, V1.KeyPurpose purpose, string policy, V1.ContractTerms? contract, CancellationToken ct)
    {
        var request = new V1.HandOffKeyRequest
        {
            KeyId = seal.Package.KeyId, WrappedDataKey = seal.WrappedDataKey, WrapAlgorithm = seal.WrapAlgorithm, ReleasePolicyJson = policy, Purpose = purpose, Owner = owner,
            Contract = contract,
        };
        await Call(4, $"{owner}: Packaging.HandOffKey ({Name(seal.Package.Blob)})", () => packaging.HandOffKeyAsync(request, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
        _progress(new ScenarioEvent(4, PhaseNames[3], $"{owner}: key {seal.Package.KeyId[..8]}… of {Name(seal.Package.Blob)} imported"));
    }

    /// <summary>
    /// How a hospital pre-processes for this pipeline: as its recipe's <c>preprocessing</c> section says (size, channels,
    /// labels, normalisation, slice selection), which the clean room then checks each shard against; for a pipeline
    /// without one, tumour slices and a quarter of the tumour-free ones (so that the model also learns to find nothing) at
    /// the phantom size (real data: native, unless <see cref="ScenarioOptions.SliceSize"/>).
    /// </summary>
    public static V1.PreprocessOptions PreprocessOptionsFor(TrainingConfig config, ScenarioOptions options, ScenarioHospital hospital)
    {
        if (config.Preprocessing is { } p)
        {
            var recipe = new V1.PreprocessOptions
            {
                SliceSize = p.Size, EmptySliceFraction = p.TumourFreeShare, Labels = p.Labels,
                LowerPercentile = p.LowerPercentile, UpperPercentile = p.UpperPercentile,
            };
            recipe.Modalities.AddRange(p.Modalities);
            return recipe;
        }

        return new V1.PreprocessOptions
        {
            SliceSize = options.SliceSize == 0 ? (hospital.DataPath is null ? options.VolumeSize : 0) : options.SliceSize, EmptySliceFraction = 0.25,
        };
    }

    /// <summary>
    /// The base model the consumer brings, as safetensors: the model in <paramref name="folder"/> (its architecture must be the
    /// pipeline's), else the pipeline's architecture with its seeded initial weights.
    /// </summary>
    /// <exception cref="ScenarioException">The folder holds no model, or one of another architecture.</exception>
    public static byte[] BaseModelWeights(TrainingConfig config, string? folder)
    {
        TorchRuntime.Initialize();
        if (folder is null)
        {
            using var generator = new torch.Generator(config.Seed);
            using var initial = new UNet2d(config.Model!, torch.ScalarType.Float32, torch.CPU, generator);
            return UNetModelFile.SerializeWeights(initial);
        }

        UNet2d? trained;
        try
        {
            trained = TrainingData.LoadBaseModel(config with { BaseModel = folder });
        }
        catch (ArgumentException e)
        {
            throw new ScenarioException(3, $"the base model: {e.Message}", e);
        }

        using (trained)
        {
            if (config.Model is { } wanted && wanted.WithoutDeepSupervision() != trained!.Config)
            {
                throw new ScenarioException(3, $"the base model in {folder} is not the pipeline's architecture ({JsonSerializer.Serialize(trained!.Config)}; the pipeline's: {JsonSerializer.Serialize(wanted)})");
            }

            return UNetModelFile.SerializeWeights(trained!);
        }
    }

    private async Task<SegmentedCase> SegmentAsync(V1.ModelVault.ModelVaultClient vault, string modelId, ScenarioOptions options, string outputDirectory, CancellationToken ct)
    {
        string caseFolder;
        if (options.SegmentCase is { } given)
        {
            caseFolder = Path.GetFullPath(given);
        }
        else
        {
            // A patient of a site no hospital brought: generated like theirs, never seen in training.
            var generator = new PhantomGenerator(PhantomOptions.Default with
            {
                Size = new GridSize(options.VolumeSize, options.VolumeSize, options.VolumeDepth), Seed = options.Seed,
            });
            var phantom = generator.Generate(options.Hospitals.Count + 1, 0);
            caseFolder = generator.WriteCase(phantom, Path.Combine(outputDirectory, "held-out")).Folder;
        }

        var source = CaseDiscovery.ReadCase(caseFolder) ?? throw new ScenarioException(6, $"{caseFolder}: no recognised case files to segment");
        var channels = Brats.Modalities.Select(m => source.Files.TryGetValue(SourceLayouts.Role(m), out var f) ? f
            : throw new ScenarioException(6, $"{caseFolder}: no {Brats.Suffix(m)} image to segment")).ToList();
        var png = channels[0].EndsWith(".png", StringComparison.OrdinalIgnoreCase);
        var request = new V1.SegmentRequest
        {
            ModelId = modelId, Data = ByteString.CopyFrom(await File.ReadAllBytesAsync(channels[0], ct).ConfigureAwait(false)),
            FileName = Path.GetFileName(channels[0]), Overlay = true,
        };
        foreach (var extra in channels.Skip(1))
        {
            request.ExtraChannels.Add(ByteString.CopyFrom(await File.ReadAllBytesAsync(extra, ct).ConfigureAwait(false)));
        }

        var response = await Call(6, "ModelVault.Segment", () => vault.SegmentAsync(request, cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
        var maskPath = Path.Combine(outputDirectory, png ? "mask.png" : "mask.nii.gz");
        await File.WriteAllBytesAsync(maskPath, response.Mask.ToByteArray(), ct).ConfigureAwait(false);
        string? overlayPath = null;
        if (!response.OverlayPng.IsEmpty)
        {
            overlayPath = Path.Combine(outputDirectory, "overlay.png");
            await File.WriteAllBytesAsync(overlayPath, response.OverlayPng.ToByteArray(), ct).ConfigureAwait(false);
        }

        double? dice = null;
        var truth = source.Files.TryGetValue(CaseFileRole.BratsLabels, out var labels) ? labels : source.Files.GetValueOrDefault(CaseFileRole.WholeTumourMask);
        if (truth is not null && !png)
        {
            dice = WholeTumourDice(NiftiReader.Read(maskPath).Data, NiftiReader.Read(truth).Data);
        }

        return new SegmentedCase(source.CaseId, maskPath, overlayPath, dice, [.. response.Regions.Select(r => new RegionResult(r.Region, r.Voxels, r.Millilitres))]);
    }

    /// <summary>Dice of predicted &gt; 0 against truth &gt; 0 over a volume (1 when both are empty).</summary>
    public static double WholeTumourDice(ReadOnlySpan<float> predicted, ReadOnlySpan<float> truth)
    {
        if (predicted.Length != truth.Length)
        {
            throw new ScenarioException(6, $"the mask has {predicted.Length} voxels, the ground truth {truth.Length}: the mask is not on the input's grid");
        }

        long both = 0, p = 0, t = 0;
        for (var i = 0; i < predicted.Length; i++)
        {
            var a = predicted[i] > 0;
            var b = truth[i] > 0;
            p += a ? 1 : 0;
            t += b ? 1 : 0;
            both += a && b ? 1 : 0;
        }

        return p + t == 0 ? 1 : 2.0 * both / (p + t);
    }


    private static string Metric(V1.ModelRecord record, string name) =>
        record.Metrics.TryGetValue(name, out var v) ? v.ToString("F3", CultureInfo.InvariantCulture) : "n/a";

    private static string Name(V1.BlobRef blob) => $"{blob.Container}/{blob.Name}";

    private static V1.Location Blob(string container, string name) => new() { Blob = new V1.BlobRef { Container = container, Name = name } };
}
