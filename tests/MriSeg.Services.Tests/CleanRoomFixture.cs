using System.Security.Cryptography;
using System.Text;
using Azure.Storage.Blobs;
using Google.Protobuf.WellKnownTypes;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.CleanRoom;
using MriSeg.Imaging.Datasets;
using MriSeg.KeyBroker;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>
/// A clean-room world over Azurite with the KeyBroker in-process: two providers with small synthetic shards (32x32, two
/// modalities), a consumer with a pipeline (tiny U-Net, 2 epochs) and an output key, and the clean room's party. Each
/// scenario gets fresh ids (<see cref="NewWorldAsync"/>), so tests share one broker and one Azurite.
/// </summary>
public sealed class CleanRoomWorld : IDisposable
{
    public const string AdminToken = "cleanroom-test-operator";
    public const string Issuer = "http://localhost/dev-attestation";
    public const double Delta = 1e-3;

    public const string PipelineJson = """
        {
          "model": { "in_channels": 2, "out_channels": 1, "depth": 2, "base_width": 4, "group_norm_groups": 1 },
          "privacy": { "mode": "dp", "epsilon": 4, "delta": 1e-3, "accountant": "rdp", "clip_norm": 1.0 },
          "epochs": 2, "batch_size": 6, "max_slices_per_patient": 1, "max_patients_per_pass": 16,
          "optimizer": { "kind": "adam", "learning_rate": 0.01 },
          "augmentation": { "horizontal_flip": false, "rotation_degrees": 0, "scale": 0, "intensity_scale": 0, "intensity_shift": 0 },
          "validation": { "every_epochs": 1 },
          "split": { "validation_fraction": 0.15, "test_fraction": 0.15, "stratify": true },
          "seed": 3, "threads": 2
        }
        """;

    private readonly string keys = Directory.CreateTempSubdirectory("mriseg-cleanroom-broker-").FullName;
    private readonly Dictionary<string, SigningKey> partyKeys = [];

    public CleanRoomWorld(AzuriteFixture azurite)
    {
        Azurite = azurite;
        Broker = new ServiceHost<KeyBrokerService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["KeyBroker:KeysDirectory"] = keys,
            ["KeyBroker:CreateKeys"] = "true",
            ["KeyBroker:Registration"] = "AdminToken",
            ["KeyBroker:AdminToken"] = AdminToken,
            ["KeyBroker:DevelopmentAuthority:Enabled"] = "true",
            ["KeyBroker:DevelopmentAuthority:Issuer"] = Issuer,
        });
        Client = new V1.KeyBroker.KeyBrokerClient(Broker.CreateChannel());
        Http = Broker.CreateClient();
        Blobs = new BlobServiceClient(azurite.BlobConnectionString);
    }

    public AzuriteFixture Azurite { get; }

    public ServiceHost<KeyBrokerService> Broker { get; }

    public V1.KeyBroker.KeyBrokerClient Client { get; }

    public HttpClient Http { get; }

    public BlobServiceClient Blobs { get; }

    public KeyBrokerParty Party(string id)
    {
        lock (partyKeys)
        {
            if (!partyKeys.TryGetValue(id, out var key))
            {
                partyKeys[id] = key = SigningKey.Generate();
            }

            return new KeyBrokerParty(Client, id, key);
        }
    }

    /// <summary>Writes party <paramref name="id"/>'s signing key (PKCS#8 PEM, 0600) to <paramref name="path"/>, e.g. for a service that acts as that party.</summary>
    public void SavePartyKey(string id, string path)
    {
        lock (partyKeys)
        {
            partyKeys[id].Save(path);
        }
    }

    public string Policy(string measurement) => Broker.Services.GetRequiredService<DevelopmentAttestationAuthority>().PolicyFor(measurement);

    /// <summary>A synthetic shard: each patient's slices are random images with a square "tumour" that brightens channel 0.</summary>
    public static SliceDataset Shard(string prefix, int patients, int slicesEach, int seed, string[]? modalities = null, int size = 32)
    {
        modalities ??= ["flair", "t1"];
        var rng = new Random(seed);
        var n = patients * slicesEach;
        var plane = size * size;
        var images = new float[n * modalities.Length * plane];
        var masks = new byte[n * plane];
        for (var s = 0; s < n; s++)
        {
            var tumour = rng.Next(3) != 0;
            var (cy, cx, r) = (rng.Next(8, size - 8), rng.Next(8, size - 8), rng.Next(3, 7));
            for (var c = 0; c < modalities.Length; c++)
            {
                for (var i = 0; i < plane; i++)
                {
                    var inside = tumour && Math.Abs(i / size - cy) < r && Math.Abs(i % size - cx) < r;
                    images[(s * modalities.Length + c) * plane + i] = (float)(rng.NextDouble() - 0.5 + (inside && c == 0 ? 2.0 : 0));
                    if (c == 0 && inside)
                    {
                        masks[s * plane + i] = 1;
                    }
                }
            }
        }

        var index = Enumerable.Range(0, n).Select(i => i / slicesEach).ToArray();
        var ids = Enumerable.Range(0, patients).Select(p => $"{prefix}{p:000}").ToArray();
        return new SliceDataset(images, masks, index, size, size, modalities, LabelScheme.WholeTumour, ids);
    }

    /// <summary>Seals <paramref name="plaintext"/>, uploads it, and returns the reference and the data key.</summary>
    public async Task<(V1.SealedPackageRef Ref, DataKey Key)> SealAndUploadAsync(string owner, byte[] plaintext, ContentType type, string container, string name,
        IReadOnlyDictionary<string, string>? metadata, CancellationToken ct)
    {
        var key = DataKey.Generate();
        using var destination = new MemoryStream();
        SigningKey signer;
        lock (partyKeys)
        {
            signer = partyKeys[owner];
        }

        await SealedPackage.SealAsync(new MemoryStream(plaintext), destination, key, signer,
            new SealOptions { ContentType = type, Owner = owner, Metadata = metadata, ChunkSize = 64 * 1024 }, ct);
        var bytes = destination.ToArray();
        var containerClient = Blobs.GetBlobContainerClient(container);
        await containerClient.CreateIfNotExistsAsync(cancellationToken: ct);
        var info = await containerClient.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(bytes), ct);
        return (new V1.SealedPackageRef
        {
            Blob = new V1.BlobRef { Container = container, Name = name, Etag = info.Value.ETag.ToString() },
            KeyId = key.KeyId,
            ContentType = (V1.ContentType)(int)type,
            Owner = owner,
            SealedSha256 = Convert.ToHexStringLower(SHA256.HashData(bytes)),
        }, key);
    }

    /// <summary>
    /// Registers the parties of a fresh world, seals and uploads two providers' shards, the pipeline and (unless skipped)
    /// imports every key with a policy for <paramref name="measurement"/>.
    /// </summary>
    public async Task<World> NewWorldAsync(string measurement, CancellationToken ct, string[]? secondModalities = null, string? pipelineJson = null)
    {
        var suffix = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        var world = new World(suffix, measurement);
        await Party(world.ProviderA).RegisterAsync(PartyRole.DataProvider, AdminToken, cancellationToken: ct);
        await Party(world.ProviderB).RegisterAsync(PartyRole.DataProvider, AdminToken, cancellationToken: ct);
        await Party(world.Consumer).RegisterAsync(PartyRole.DataConsumer, AdminToken, cancellationToken: ct);
        await Party(world.CleanRoom).RegisterAsync(PartyRole.CleanRoom, AdminToken, cancellationToken: ct);

        var policy = Policy(measurement);
        var pipelineBytes = Encoding.UTF8.GetBytes(pipelineJson ?? PipelineJson);
        var pipelineSha = Convert.ToHexStringLower(SHA256.HashData(pipelineBytes));
        var shards = new[] { (world.ProviderA, Shard("A", 14, 2, 11)), (world.ProviderB, Shard("B", 12, 2, 12, secondModalities)) };
        foreach (var (owner, data) in shards)
        {
            var plaintext = DatasetShard.ToBytes(data);
            world.ShardPlaintexts.Add(plaintext);
            var (reference, key) = await SealAndUploadAsync(owner, plaintext, ContentType.Dataset, owner, "shards/train.sealed",
                new Dictionary<string, string> { [CleanRoomRun.PatientCountMetadataKey] = data.PatientIds.Count.ToString(System.Globalization.CultureInfo.InvariantCulture) }, ct);
            world.DatasetKeys.Add(DataKey.FromBytes(key.ExportKeyBytes()));
            using (key)
            {
                var contract = "contract-" + owner;
                await Party(owner).ImportKeyAsync(key, V1.KeyPurpose.Dataset, policy, new V1.ContractTerms
                {
                    ContractId = contract,
                    DatasetId = "brats-" + owner,
                    AllowedConsumers = { world.Consumer },
                    Expires = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddDays(1)),
                    MaxEpsilonPerRun = 8,
                    MaxEpsilonTotal = 20,
                    Delta = Delta,
                    AllowedPipelineSha256 = { pipelineSha },
                }, cancellationToken: ct);
                world.Datasets.Add(reference);
                world.Contracts[reference.KeyId] = contract;
                world.SignerPems[owner] = PartyKeyPem(owner);
            }
        }

        var (pipeline, pipelineKey) = await SealAndUploadAsync(world.Consumer, pipelineBytes, ContentType.Pipeline, world.Consumer, "pipelines/tiny.sealed", null, ct);
        using (pipelineKey)
        {
            await Party(world.Consumer).ImportKeyAsync(pipelineKey, V1.KeyPurpose.Model, policy, null, cancellationToken: ct);
        }

        world.Pipeline = pipeline;
        world.SignerPems[world.Consumer] = PartyKeyPem(world.Consumer);
        world.OutputKey = DataKey.Generate();
        await Party(world.Consumer).ImportKeyAsync(world.OutputKey, V1.KeyPurpose.Output, policy, null, cancellationToken: ct);
        return world;
    }

    public CleanRoomRun Runner(World world, string? measurement = null, string device = "cpu") =>
        new(new BlobPackageSource(Blobs), new StaticSignerDirectory(world.SignerPems),
            new KeyBrokerKeySource(Party(world.CleanRoom), Party(world.CleanRoom).DevelopmentAttestation(Http, Issuer, measurement ?? world.Measurement)),
            new BlobOutputSink(Blobs), new CleanRoomRunOptions { CodeMeasurement = measurement ?? world.Measurement, Device = device, Threads = 2 },
            checkpoints: new BlobCheckpointStore(Blobs));

    /// <summary>The tiny pipeline with another number of epochs (runs long enough to interrupt or cancel).</summary>
    public static string PipelineWithEpochs(int epochs) => PipelineJson.Replace("\"epochs\": 2,", $"\"epochs\": {epochs},", StringComparison.Ordinal);

    private string PartyKeyPem(string id)
    {
        lock (partyKeys)
        {
            return partyKeys[id].PublicKey.ExportPem();
        }
    }

    public void Dispose()
    {
        Http.Dispose();
        Broker.Dispose();
        foreach (var key in partyKeys.Values)
        {
            key.Dispose();
        }

        Directory.Delete(keys, recursive: true);
    }

    public sealed class World(string suffix, string measurement)
    {
        public string Suffix => suffix;

        public string Measurement => measurement;

        public string ProviderA => "hospital-a-" + suffix;

        public string ProviderB => "hospital-b-" + suffix;

        public string Consumer => "consumer-" + suffix;

        public string CleanRoom => "cleanroom-" + suffix;

        public List<V1.SealedPackageRef> Datasets { get; } = [];

        public Dictionary<string, string> Contracts { get; } = [];

        public Dictionary<string, string> SignerPems { get; } = [];

        public List<byte[]> ShardPlaintexts { get; } = [];

        /// <summary>
        /// The patients' data in the shards: the safetensors body after its JSON header. The header's text (format,
        /// dtypes, modalities) is the same in every shard, so another test's or the scenario's legitimate shards would match
        /// it; the images and masks are what must never appear in the clear.
        /// </summary>
        public IEnumerable<byte[]> ShardTensorData => ShardPlaintexts.Select(p => p[(8 + (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(p))..]);

        /// <summary>Copies of the providers' dataset keys (a test derives the run's checkpoint key from them, as only the clean room can).</summary>
        public List<DataKey> DatasetKeys { get; } = [];

        public V1.SealedPackageRef Pipeline { get; set; } = null!;

        public DataKey OutputKey { get; set; } = null!;

        public CleanRoomRunSpec Spec(string runId) => new()
        {
            RunId = runId,
            Consumer = Consumer,
            Datasets = Datasets,
            Pipeline = Pipeline,
            ContractId = Contracts.Values.First(),
            DatasetContracts = Contracts,
            OutputKeyId = OutputKey.KeyId,
        };
    }
}
