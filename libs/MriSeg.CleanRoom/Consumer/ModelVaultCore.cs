using System.Security.Cryptography;
using System.Text.Json;
using Azure;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using MriSeg.Learning.Model;
using MriSeg.Learning.Training;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.CleanRoom.Consumer;

/// <summary>The model registry: one table entity per model (the <see cref="V1.ModelRecord"/> as protobuf JSON) plus the model's folder.</summary>
public sealed class ModelRegistry(TableServiceClient tables, string modelsDirectory, string tableName = ModelRegistry.DefaultTableName)
{
    /// <summary>The default table.</summary>
    public const string DefaultTableName = "modelvault";

    private const string Partition = "model";

    /// <summary>Where each model's files are kept (<c>&lt;dir&gt;/&lt;model-id&gt;/</c>).</summary>
    public string ModelsDirectory => modelsDirectory;

    /// <summary>The folder of <paramref name="modelId"/>.</summary>
    public string FolderOf(string modelId) => Path.Combine(modelsDirectory, modelId);

    /// <summary>Stores <paramref name="record"/> (replacing an earlier registration of the same id).</summary>
    public async Task PutAsync(V1.ModelRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        var table = tables.GetTableClient(tableName);
        await table.CreateIfNotExistsAsync(cancellationToken).ConfigureAwait(false);
        var entity = new TableEntity(Partition, record.ModelId)
        {
            ["Record"] = JsonFormatter.Default.Format(record),
            ["RunId"] = record.RunId,
            ["ModelSha256"] = record.ModelSha256,
        };
        await table.UpsertEntityAsync(entity, TableUpdateMode.Replace, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The record of <paramref name="modelId"/>, or null.</summary>
    public async Task<V1.ModelRecord?> GetAsync(string modelId, CancellationToken cancellationToken)
    {
        try
        {
            var found = await tables.GetTableClient(tableName).GetEntityIfExistsAsync<TableEntity>(Partition, modelId, cancellationToken: cancellationToken).ConfigureAwait(false);
            return found.HasValue ? Parse(found.Value!) : null;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
    }

    /// <summary>Every registered model, newest first.</summary>
    public async Task<IReadOnlyList<V1.ModelRecord>> ListAsync(CancellationToken cancellationToken)
    {
        var list = new List<V1.ModelRecord>();
        try
        {
            await foreach (var e in tables.GetTableClient(tableName).QueryAsync<TableEntity>(x => x.PartitionKey == Partition, cancellationToken: cancellationToken).ConfigureAwait(false))
            {
                list.Add(Parse(e));
            }
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return list;
        }

        return [.. list.OrderByDescending(r => r.Registered?.ToDateTimeOffset())];
    }

    private static V1.ModelRecord Parse(TableEntity e) => JsonParser.Default.Parse<V1.ModelRecord>(e.GetString("Record"));
}

/// <summary>What to pull.</summary>
public sealed record PullRequest
{
    /// <summary>The run id.</summary>
    public required string RunId { get; init; }

    /// <summary>The consumer (this TDC's party id).</summary>
    public required string Consumer { get; init; }

    /// <summary>The container of the outputs; null: the consumer id lower-cased.</summary>
    public string? Container { get; init; }

    /// <summary>Explicit outputs; empty: listed under <c>outputs/&lt;run-id&gt;/</c>.</summary>
    public IReadOnlyList<V1.SealedPackageRef> Outputs { get; init; } = [];

    /// <summary>A code measurement the token must name (narrows the allow-list).</summary>
    public string? ExpectedMeasurement { get; init; }
}

/// <summary>
/// Pulls a run's sealed outputs as the consumer: lists and downloads them, checks each package's signed manifest (run,
/// consumer, file), its signature under the signer key in its metadata, that this key is bound in the attestation token,
/// that the token verifies and names an allowed measurement, then obtains the output key as the consumer, decrypts in
/// memory and registers the model. Nothing is written before every package has passed.
/// </summary>
public sealed class ModelPuller(BlobServiceClient blobs, Func<string, CancellationToken, Task<DataKey>> releaseOutputKey, ProvenanceVerifier provenance, ModelRegistry registry, TimeProvider? time = null)
{
    /// <summary>Pulls, verifies, decrypts and registers; <paramref name="progress"/> gets one-line messages.</summary>
    /// <exception cref="ModelPullException">A check failed; nothing was registered.</exception>
    public async Task<V1.ModelRecord> PullAsync(PullRequest request, Action<string>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        progress ??= _ => { };
        if (string.IsNullOrEmpty(request.RunId) || request.RunId.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')) || request.RunId.StartsWith('.'))
        {
            throw new ModelPullException(PullFailure.InvalidRequest, "run_id must be a name (letters, digits, '-', '_', '.')");
        }

        var container = request.Container ?? request.Consumer.ToLowerInvariant();
        var refs = request.Outputs.Count > 0 ? request.Outputs : await ListAsync(container, request.RunId, cancellationToken).ConfigureAwait(false);
        var byName = new Dictionary<string, (V1.SealedPackageRef Ref, byte[] Bytes, PackageInfo Info)>(StringComparer.Ordinal);
        progress($"downloading {refs.Count} sealed outputs of run {request.RunId}");
        foreach (var r in refs)
        {
            byte[] bytes;
            try
            {
                bytes = (await blobs.GetBlobContainerClient(r.Blob.Container).GetBlobClient(r.Blob.Name).DownloadContentAsync(cancellationToken).ConfigureAwait(false)).Value.Content.ToArray();
            }
            catch (RequestFailedException e) when (e.Status == 404)
            {
                throw new ModelPullException(PullFailure.NotFound, $"output {r.Blob.Container}/{r.Blob.Name} does not exist", e);
            }

            if (!string.IsNullOrEmpty(r.SealedSha256) && !string.Equals(r.SealedSha256, Convert.ToHexStringLower(SHA256.HashData(bytes)), StringComparison.OrdinalIgnoreCase))
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"output {r.Blob.Name}: its SHA-256 is not the referenced {r.SealedSha256}");
            }

            PackageInfo info;
            try
            {
                info = SealedPackage.Inspect(new MemoryStream(bytes, writable: false), SignerCheck.SkipSignatureVerification);
            }
            catch (SealedPackageException e)
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"output {r.Blob.Name}: {e.Message}", e);
            }

            var meta = info.Manifest.Metadata;
            var file = Meta(meta, OutputMetadata.File, r.Blob.Name);
            if (!CleanRoomRun.OutputNames.Contains(file) || !r.Blob.Name.EndsWith("/" + file + ".sealed", StringComparison.Ordinal) && r.Blob.Name != file + ".sealed")
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"output {r.Blob.Name}: its manifest names the file '{file}'");
            }

            if (Meta(meta, OutputMetadata.RunId, r.Blob.Name) != request.RunId || Meta(meta, OutputMetadata.Consumer, r.Blob.Name) != request.Consumer)
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"output {r.Blob.Name}: its manifest names run {meta[OutputMetadata.RunId]} for {meta[OutputMetadata.Consumer]}, not run {request.RunId} for {request.Consumer}");
            }

            if (!byName.TryAdd(file, (r, bytes, info)))
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"two outputs name the file {file}");
            }
        }

        var missing = CleanRoomRun.OutputNames.Where(n => !byName.ContainsKey(n)).ToList();
        if (missing.Count > 0)
        {
            throw new ModelPullException(PullFailure.NotFound, $"run {request.RunId} has no {string.Join(", ", missing)} in {container}/outputs/{request.RunId}/");
        }

        // One token, one signer, one measurement, one key for all outputs.
        var first = byName[UNetModelFile.WeightsFileName].Info.Manifest.Metadata;
        string token = first[OutputMetadata.AttestationToken], signerPem = Meta(first, OutputMetadata.SignerPublicKey, "model"),
            measurement = Meta(first, OutputMetadata.CodeMeasurement, "model"), pipeline = Meta(first, OutputMetadata.PipelineSha256, "model");
        var keyId = byName[UNetModelFile.WeightsFileName].Info.KeyId;
        foreach (var (name, (_, _, info)) in byName)
        {
            var m = info.Manifest.Metadata;
            if (Meta(m, OutputMetadata.AttestationToken, name) != token || Meta(m, OutputMetadata.SignerPublicKey, name) != signerPem
                || Meta(m, OutputMetadata.CodeMeasurement, name) != measurement || Meta(m, OutputMetadata.PipelineSha256, name) != pipeline || info.KeyId != keyId)
            {
                throw new ModelPullException(PullFailure.TamperedPackage, $"output {name}: its attestation, signer, measurement, pipeline or key differs from the model's");
            }
        }

        progress("verifying the attestation token (issuer keys, signer binding, code measurement)");
        var verified = await provenance.VerifyAsync(token, signerPem, measurement, pipeline, request.ExpectedMeasurement, cancellationToken).ConfigureAwait(false);

        progress($"obtaining the output key {keyId} as {request.Consumer}");
        DataKey key;
        try
        {
            key = await releaseOutputKey(keyId, cancellationToken).ConfigureAwait(false);
        }
        catch (Grpc.Core.RpcException e)
        {
            throw new ModelPullException(PullFailure.KeyRefused, $"the KeyBroker did not release the output key {keyId}: {e.StatusCode}: {e.Status.Detail}", e);
        }

        var plain = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        using (key)
        using (var signer = SignerPublicKey.FromPem(signerPem))
        {
            foreach (var (name, (_, bytes, _)) in byName)
            {
                try
                {
                    using var opened = await SealedPackage.OpenToMemoryAsync(new MemoryStream(bytes, writable: false), key, SignerCheck.Expect(signer), cancellationToken: cancellationToken).ConfigureAwait(false);
                    plain[name] = opened.ToArray();
                }
                catch (SealedPackageException e)
                {
                    throw new ModelPullException(PullFailure.TamperedPackage, $"output {name}: {e.Message}", e);
                }
            }
        }

        progress("registering the model");
        var record = BuildRecord(request, plain, verified);
        var folder = registry.FolderOf(record.ModelId);
        var staging = folder + ".partial-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        Directory.CreateDirectory(staging);
        try
        {
            foreach (var (name, bytes) in plain)
            {
                await File.WriteAllBytesAsync(Path.Combine(staging, name), bytes, cancellationToken).ConfigureAwait(false);
            }

            var manifest = JsonSerializer.Deserialize<ModelManifest>(plain[TrainingOutputs.ManifestFileName], TrainingOutputs.JsonOptions)!;
            await File.WriteAllTextAsync(Path.Combine(staging, UNetModelFile.ConfigFileName), manifest.Architecture.ToJson(), cancellationToken).ConfigureAwait(false);
            if (Directory.Exists(folder))
            {
                Directory.Delete(folder, recursive: true);
            }

            Directory.Move(staging, folder);
        }
        catch
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }

            throw;
        }

        await registry.PutAsync(record, cancellationToken).ConfigureAwait(false);
        return record;
    }

    private async Task<IReadOnlyList<V1.SealedPackageRef>> ListAsync(string container, string runId, CancellationToken cancellationToken)
    {
        var list = new List<V1.SealedPackageRef>();
        try
        {
            await foreach (var item in blobs.GetBlobContainerClient(container).GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None,
                $"outputs/{runId}/", cancellationToken).ConfigureAwait(false))
            {
                list.Add(new V1.SealedPackageRef { Blob = new V1.BlobRef { Container = container, Name = item.Name, Etag = item.Properties.ETag?.ToString() ?? "" } });
            }
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            throw new ModelPullException(PullFailure.NotFound, $"container {container} does not exist", e);
        }

        if (list.Count == 0)
        {
            throw new ModelPullException(PullFailure.NotFound, $"run {runId} has no outputs in {container}/outputs/{runId}/");
        }

        return list;
    }

    private static string Meta(IReadOnlyDictionary<string, string> meta, string key, string what) =>
        meta.TryGetValue(key, out var v) && v.Length > 0 ? v : throw new ModelPullException(PullFailure.TamperedPackage, $"output {what}: its manifest has no {key}");

    private V1.ModelRecord BuildRecord(PullRequest request, Dictionary<string, byte[]> plain, VerifiedProvenance verified)
    {
        var card = ModelCard.FromJson(Utf8.Text(plain["model-card.json"]));
        var manifest = JsonSerializer.Deserialize<ModelManifest>(plain[TrainingOutputs.ManifestFileName], TrainingOutputs.JsonOptions)
            ?? throw new ModelPullException(PullFailure.TamperedPackage, "model.json is empty");
        var record = new V1.ModelRecord
        {
            ModelId = request.RunId,
            RunId = request.RunId,
            Registered = Timestamp.FromDateTimeOffset((time ?? TimeProvider.System).GetUtcNow()),
            ModelSha256 = Convert.ToHexStringLower(SHA256.HashData(plain[UNetModelFile.WeightsFileName])),
            CodeMeasurement = verified.Measurement,
            Architecture = manifest.Architecture.ToJson(),
            Modalities = { manifest.Input.Modalities },
            LabelChannels = { manifest.Input.LabelChannels },
        };
        using (var metrics = JsonDocument.Parse(plain[TrainingOutputs.MetricsFileName]))
        {
            foreach (var p in metrics.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind == JsonValueKind.Number)
                {
                    record.Metrics[p.Name] = p.Value.GetDouble();
                }
            }
        }

        if (card.Privacy is { } privacy)
        {
            record.Privacy = new V1.PrivacyParameters
            {
                Epsilon = privacy.Epsilon, Delta = privacy.Delta, Sigma = privacy.Sigma, SampleRate = privacy.SampleRate, Steps = privacy.Steps, Accountant = privacy.Accountant,
            };
        }

        foreach (var p in card.Providers)
        {
            // The card states the SHA-256 of each provider's opened shard (plaintext), which identifies the dataset.
            record.Datasets.Add(new V1.DatasetProvenance { DatasetId = "sha256:" + p.DatasetSha256, Provider = p.Provider, Patients = p.Patients, Slices = p.Slices });
        }

        return record;
    }
}
