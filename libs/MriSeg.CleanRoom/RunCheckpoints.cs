using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using MriSeg.Learning.Training;
using MriSeg.Sealing;

namespace MriSeg.CleanRoom;

/// <summary>
/// A run's sealed checkpoints in the consumer's container, under <c>checkpoints/&lt;run-id&gt;/</c>:
/// <list type="bullet">
/// <item><c>epoch-NNNNN.sealed</c>: the training state at the end of epoch NNNNN (<see cref="TrainingCheckpoint"/>: weights,
/// optimiser, EMA, best weights, step count, history); a new blob per epoch, the older ones removed once it is stored.</item>
/// <item><c>steps.sealed</c>: the high-water mark of steps started (<see cref="StepsMarker"/>), replaced before every chunk
/// of steps (an epoch) and before the chunk's first step, so a run killed anywhere in the chunk is charged all of it.</item>
/// </list>
/// Both are sealed packages (content type checkpoint) under the run's <b>checkpoint key</b> (<see cref="DeriveKey"/>),
/// signed by the attempt's attested ephemeral key with the attestation token in the manifest. The checkpoint key is
/// derived from the output key and every dataset key of the run, so only a clean room that was released all of them
/// (attested, within the contracts) can open or forge a checkpoint: not the consumer, who can obtain its own output key
/// without attestation, and not a provider, who holds only its own dataset key.
/// </summary>
public sealed class RunCheckpoints
{
    /// <summary>The steps marker's name under the run's prefix.</summary>
    public const string StepsName = "steps.sealed";

    /// <summary>Manifest metadata: which checkpoint blob this is ("state" or "steps").</summary>
    public const string KindMetadataKey = "mriseg.checkpoint";

    /// <summary>Manifest metadata of a state blob: SHA-256 of the training patients' ids (a resume must train the same patients).</summary>
    public const string PatientsMetadataKey = "mriseg.training_patients_sha256";

    private static readonly Regex StateNamePattern = new(@"/epoch-(\d{5,9})\.sealed$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));

    private static readonly JsonSerializerOptions JsonOptions = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    private readonly ICheckpointStore _store;
    private readonly DataKey _key;
    private readonly SigningKey _signer;
    private readonly string _owner;
    private readonly IReadOnlyDictionary<string, string> _provenance;
    private readonly TimeProvider _time;

    internal RunCheckpoints(ICheckpointStore store, string container, string runId, DataKey key, SigningKey signer, string owner,
        IReadOnlyDictionary<string, string> provenance, TimeProvider time)
    {
        _store = store;
        Container = container;
        RunId = runId;
        _key = key;
        _signer = signer;
        _owner = owner;
        _provenance = provenance;
        _time = time;
    }

    /// <summary>The container (the consumer's).</summary>
    public string Container { get; }

    /// <summary>The run.</summary>
    public string RunId { get; }

    /// <summary>The blob name prefix of the run's checkpoints.</summary>
    public string Prefix => PrefixOf(RunId);

    /// <summary>The blob name prefix of <paramref name="runId"/>'s checkpoints: <c>checkpoints/&lt;run-id&gt;/</c>.</summary>
    public static string PrefixOf(string runId) => $"checkpoints/{runId}/";

    /// <summary>The name of epoch <paramref name="epoch"/>'s state blob under the prefix.</summary>
    public static string StateName(int epoch) => string.Create(CultureInfo.InvariantCulture, $"epoch-{epoch:D5}.sealed");

    /// <summary>
    /// The checkpoint key of a run: HKDF-SHA256 over the output key and the dataset keys (ordered by key id), bound to
    /// the run id, the consumer and the pipeline. The caller disposes it.
    /// </summary>
    public static DataKey DeriveKey(string runId, string consumer, string pipelineSha256, DataKey outputKey, IEnumerable<DataKey> datasetKeys)
    {
        ArgumentException.ThrowIfNullOrEmpty(runId);
        ArgumentNullException.ThrowIfNull(outputKey);
        ArgumentNullException.ThrowIfNull(datasetKeys);
        var datasets = datasetKeys.DistinctBy(k => k.KeyId).OrderBy(k => k.KeyId, StringComparer.Ordinal).ToList();
        if (datasets.Count == 0)
        {
            throw new ArgumentException("a checkpoint key needs the run's dataset keys", nameof(datasetKeys));
        }

        var parts = new List<byte[]> { outputKey.ExportKeyBytes() };
        parts.AddRange(datasets.Select(k => k.ExportKeyBytes()));
        var ikm = new byte[parts.Sum(p => p.Length)];
        var at = 0;
        foreach (var part in parts)
        {
            part.CopyTo(ikm, at);
            at += part.Length;
            CryptographicOperations.ZeroMemory(part);
        }

        var info = Encoding.UTF8.GetBytes(string.Join('\0', [runId, consumer, pipelineSha256, outputKey.KeyId, .. datasets.Select(k => k.KeyId)]));
        var derived = HKDF.DeriveKey(HashAlgorithmName.SHA256, ikm, DataKey.SizeInBytes, "MriSeg.CleanRoom.v1 checkpoint key"u8.ToArray(), info);
        try
        {
            return DataKey.FromBytes(derived);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(ikm);
            CryptographicOperations.ZeroMemory(derived);
        }
    }

    /// <summary>Records, durably, that steps up to <paramref name="stepsStarted"/> may be taken; returns once stored.</summary>
    internal async Task WriteStepsAsync(long stepsStarted, long plannedSteps, CancellationToken ct)
    {
        var marker = new StepsMarker(StepsMarker.FormatName, 1, RunId, stepsStarted, plannedSteps, _time.GetUtcNow());
        var sealedBytes = await SealAsync(JsonSerializer.SerializeToUtf8Bytes(marker, JsonOptions), "steps", new Dictionary<string, string>
        {
            ["mriseg.steps_started"] = stepsStarted.ToString(CultureInfo.InvariantCulture),
        }, ct).ConfigureAwait(false);
        await _store.PutAsync(Container, Prefix + StepsName, sealedBytes, ct).ConfigureAwait(false);
    }

    /// <summary>Seals and stores the state of an epoch, then removes the older state blobs; returns the blob name.</summary>
    internal async Task<string> WriteStateAsync(TrainingCheckpoint checkpoint, string trainingPatientsSha256, CancellationToken ct)
    {
        var plaintext = checkpoint.ToBytes();
        byte[] sealedBytes;
        try
        {
            sealedBytes = await SealAsync(plaintext, "state", new Dictionary<string, string>
            {
                ["mriseg.epoch"] = checkpoint.Epoch.ToString(CultureInfo.InvariantCulture),
                ["mriseg.steps"] = checkpoint.Steps.ToString(CultureInfo.InvariantCulture),
                [PatientsMetadataKey] = trainingPatientsSha256,
            }, ct).ConfigureAwait(false);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(plaintext);
        }

        var name = Prefix + StateName(checkpoint.Epoch);
        await _store.PutAsync(Container, name, sealedBytes, ct).ConfigureAwait(false);
        foreach (var old in await _store.ListAsync(Container, Prefix, ct).ConfigureAwait(false))
        {
            if (old != name && StateNamePattern.IsMatch(old))
            {
                await _store.DeleteAsync(Container, old, ct).ConfigureAwait(false);
            }
        }

        return name;
    }

    /// <summary>
    /// Reads what an earlier attempt left: the latest state (opened, checked, parsed) and the steps marker. A blob that
    /// fails any check ends the run: a resume never falls back to an older state or ignores a marker.
    /// </summary>
    /// <exception cref="CleanRoomRunException">A checkpoint blob is not this run's authentic checkpoint.</exception>
    internal async Task<Found> ReadAsync(CancellationToken ct)
    {
        var names = await _store.ListAsync(Container, Prefix, ct).ConfigureAwait(false);
        TrainingCheckpoint? state = null;
        byte[]? statePlaintext = null;
        string? patientsSha = null;
        string? stateName = null;
        var latest = names.Select(n => (Name: n, Match: StateNamePattern.Match(n)))
            .Where(x => x.Match.Success)
            .Select(x => (x.Name, Epoch: int.Parse(x.Match.Groups[1].Value, CultureInfo.InvariantCulture)))
            .OrderByDescending(x => x.Epoch)
            .FirstOrDefault();
        if (latest.Name is not null)
        {
            stateName = latest.Name;
            var (plaintext, metadata) = await OpenAsync(latest.Name, "state", ct).ConfigureAwait(false);
            try
            {
                if (!metadata.TryGetValue("mriseg.epoch", out var epochText) || epochText != latest.Epoch.ToString(CultureInfo.InvariantCulture))
                {
                    throw Refused(latest.Name, $"it states epoch {epochText ?? "(none)"}, its name epoch {latest.Epoch} (a renamed older checkpoint)");
                }

                state = TrainingCheckpoint.FromBytes(plaintext);
                patientsSha = metadata.GetValueOrDefault(PatientsMetadataKey);
                statePlaintext = plaintext;
            }
            catch (FormatException e)
            {
                CryptographicOperations.ZeroMemory(plaintext);
                throw Refused(latest.Name, $"its content is not a training checkpoint: {e.Message}", e);
            }
            catch
            {
                CryptographicOperations.ZeroMemory(plaintext);
                throw;
            }
        }

        long? marked = null;
        if (names.Contains(Prefix + StepsName))
        {
            var (plaintext, _) = await OpenAsync(Prefix + StepsName, "steps", ct).ConfigureAwait(false);
            StepsMarker? marker;
            try
            {
                marker = JsonSerializer.Deserialize<StepsMarker>(plaintext, JsonOptions);
            }
            catch (JsonException e)
            {
                throw Refused(Prefix + StepsName, $"its content is not a steps marker: {e.Message}", e);
            }

            if (marker is null || marker.Format != StepsMarker.FormatName || marker.RunId != RunId || marker.StepsStarted < 0)
            {
                throw Refused(Prefix + StepsName, "its content is not this run's steps marker");
            }

            marked = marker.StepsStarted;
        }

        return new Found(state, statePlaintext, stateName, patientsSha, marked);
    }

    /// <summary>Removes every checkpoint blob of the run (best effort: a blob left behind is sealed).</summary>
    internal static async Task DeleteAllAsync(ICheckpointStore store, string container, string runId, CancellationToken ct)
    {
        foreach (var name in await store.ListAsync(container, PrefixOf(runId), ct).ConfigureAwait(false))
        {
            await store.DeleteAsync(container, name, ct).ConfigureAwait(false);
        }
    }

    private async Task<byte[]> SealAsync(byte[] plaintext, string kind, Dictionary<string, string> metadata, CancellationToken ct)
    {
        foreach (var (k, v) in _provenance)
        {
            metadata[k] = v;
        }

        metadata["mriseg.run_id"] = RunId;
        metadata[KindMetadataKey] = kind;
        using var destination = new MemoryStream();
        using var source = new MemoryStream(plaintext, writable: false);
        await SealedPackage.SealAsync(source, destination, _key, _signer, new SealOptions
        {
            ContentType = ContentType.Checkpoint,
            Owner = _owner,
            CreatedAt = _time.GetUtcNow(),
            Metadata = metadata,
        }, ct).ConfigureAwait(false);
        return destination.ToArray();
    }

    /// <summary>Opens a checkpoint blob: this run's key, content type, run id and kind, signed by the key its manifest names.</summary>
    private async Task<(byte[] Plaintext, IReadOnlyDictionary<string, string> Metadata)> OpenAsync(string name, string kind, CancellationToken ct)
    {
        var bytes = await _store.GetAsync(Container, name, ct).ConfigureAwait(false)
            ?? throw Refused(name, "it disappeared while the run read it");
        try
        {
            var info = SealedPackage.Inspect(new MemoryStream(bytes, writable: false), SignerCheck.SkipSignatureVerification);
            var m = info.Manifest;
            if (info.KeyId != _key.KeyId)
            {
                throw Refused(name, "it is sealed under another key than this run's checkpoint key");
            }

            if (m.ContentType != ContentType.Checkpoint || m.Metadata.GetValueOrDefault("mriseg.run_id") != RunId || m.Metadata.GetValueOrDefault(KindMetadataKey) != kind)
            {
                throw Refused(name, $"it holds a {m.ContentType} ({m.Metadata.GetValueOrDefault(KindMetadataKey) ?? "no kind"}) of run '{m.Metadata.GetValueOrDefault("mriseg.run_id")}', not this run's {kind} checkpoint");
            }

            using var signer = SignerPublicKey.FromPem(m.Metadata.GetValueOrDefault("mriseg.signer_public_key") ?? throw Refused(name, "its manifest names no signer"));
            using var opened = await SealedPackage.OpenToMemoryAsync(new MemoryStream(bytes, writable: false), _key, SignerCheck.Expect(signer), cancellationToken: ct).ConfigureAwait(false);
            return (opened.ToArray(), opened.Info.Manifest.Metadata);
        }
        catch (SealedPackageException e)
        {
            throw Refused(name, e.Message, e);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or CryptographicException)
        {
            throw Refused(name, $"its manifest names an unusable signer: {e.Message}", e);
        }
    }

    private CleanRoomRunException Refused(string name, string reason, Exception? inner = null) =>
        new(RunFailure.TamperedPackage, $"the checkpoint {Container}/{name} is refused: {reason}; the run does not resume from it and its reservation stays in full", inner);

    /// <summary>What an earlier attempt left.</summary>
    /// <param name="State">The latest state, or null.</param>
    /// <param name="StatePlaintext">Its plaintext (the state's tensors point into it; zero it when done).</param>
    /// <param name="StateName">Its blob name.</param>
    /// <param name="TrainingPatientsSha256">The training patients it was made for.</param>
    /// <param name="StepsMarked">The steps marker's high-water mark, or null when there is none.</param>
    internal sealed record Found(TrainingCheckpoint? State, byte[]? StatePlaintext, string? StateName, string? TrainingPatientsSha256, long? StepsMarked);

    /// <summary>The steps marker: every step up to <paramref name="StepsStarted"/> may have been taken.</summary>
    /// <param name="Format">"mriseg.steps_marker".</param>
    /// <param name="Version">1.</param>
    /// <param name="RunId">The run.</param>
    /// <param name="StepsStarted">The high-water mark (the accountant's count, earlier attempts included).</param>
    /// <param name="PlannedSteps">The run's planned steps.</param>
    /// <param name="WrittenAt">When it was written.</param>
    internal sealed record StepsMarker(string Format, int Version, string RunId, long StepsStarted, long PlannedSteps, DateTimeOffset WrittenAt)
    {
        public const string FormatName = "mriseg.steps_marker";
    }
}
