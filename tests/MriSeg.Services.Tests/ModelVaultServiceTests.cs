using System.Security.Cryptography;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Hosting;
using MriSeg.CleanRoom.Consumer;
using MriSeg.Imaging;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.KeyRelease.Parties;
using MriSeg.ModelVault;
using MriSeg.Sealing;
using MriSeg.Testing.Models;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>
/// The ModelVault service in-process over Azurite: PullModel of a real clean-room run (the in-process KeyBroker releases the
/// consumer's output key to the vault, which holds the consumer's signing key), ListModels/GetModel, and Segment of PNG
/// slices and NIfTI volumes (inline and from blobs) with its refusals.
/// </summary>
public sealed class ModelVaultServiceTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private readonly AzuriteFixture azurite;
    private readonly Lazy<CleanRoomWorld> env;
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly string suffix = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    private readonly string scratch = Directory.CreateTempSubdirectory("mriseg-modelvault-svc-").FullName;
    private readonly List<IDisposable> hosts = [];
    private readonly TestVaultCaller caller;

    public ModelVaultServiceTests(AzuriteFixture azurite)
    {
        azurite.Require();
        this.azurite = azurite;
        env = new Lazy<CleanRoomWorld>(() => new CleanRoomWorld(azurite));
        caller = new TestVaultCaller();
    }

    public void Dispose()
    {
        foreach (var h in hosts)
        {
            h.Dispose();
        }

        caller.Dispose();

        if (env.IsValueCreated)
        {
            env.Value.Dispose();
        }

        Directory.Delete(scratch, recursive: true);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Models => Path.Combine(scratch, "models");

    private string Table => "mvsvc" + suffix;

    /// <summary>A vault acting as <paramref name="consumer"/>; with <paramref name="withBroker"/> its KeyBroker and attestation metadata are the in-process broker's.</summary>
    private V1.ModelVault.ModelVaultClient Vault(string consumer, string? keyPath, bool withBroker)
    {
        var settings = caller.With(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["ModelVault:Consumer"] = consumer,
            ["ModelVault:ModelsDirectory"] = Models,
            ["ModelVault:RegistryTable"] = Table,
            ["ModelVault:KeyBrokerAddress"] = "http://localhost",
            ["ModelVault:DevelopmentAuthority:Enabled"] = "true",
            ["ModelVault:DevelopmentAuthority:Issuer"] = CleanRoomWorld.Issuer,
            ["ModelVault:AllowLocalPaths"] = "false",
        });
        if (keyPath is not null)
        {
            settings["ModelVault:PartyKeyPath"] = keyPath;
        }

        var host = new ServiceHost<ModelVaultService>(settings, withBroker
            ? services =>
            {
                services.AddHttpClient(nameof(V1.KeyBroker.KeyBrokerClient)).ConfigurePrimaryHttpMessageHandler(() => env.Value.Broker.Server.CreateHandler());
                services.AddHttpClient(ModelVaultSettings.MetadataClientName).ConfigurePrimaryHttpMessageHandler(() => env.Value.Broker.Server.CreateHandler());
            }
            : null);
        hosts.Add(host);
        return caller.Client(host);
    }

    internal static async Task<(List<V1.PullModelProgress> Messages, RpcException? Error)> PullAsync(V1.ModelVault.ModelVaultClient vault, V1.PullModelRequest request)
    {
        using var call = vault.PullModel(request, cancellationToken: Ct);
        var messages = new List<V1.PullModelProgress>();
        try
        {
            await foreach (var m in call.ResponseStream.ReadAllAsync(Ct))
            {
                messages.Add(m);
            }

            return (messages, null);
        }
        catch (RpcException e)
        {
            return (messages, e);
        }
    }

    /// <summary>A grey PNG slice: an elliptic "brain" with a brighter spot; the two channels differ in contrast.</summary>
    internal static byte[] Png(int width, int height, int channel)
    {
        using var image = new Image<L8>(width, height);
        var rng = new Random(7 + channel);
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                var (dx, dy) = ((x - (width / 2.0)) / (width * 0.4), (y - (height / 2.0)) / (height * 0.4));
                var inside = (dx * dx) + (dy * dy) < 1;
                var spot = Math.Abs(x - (width / 3)) < 4 && Math.Abs(y - (height / 2)) < 4;
                image[x, y] = new L8(inside ? (byte)((channel == 0 ? 90 : 140) + rng.Next(30) + (spot && channel == 0 ? 100 : 0)) : (byte)0);
            }
        }

        using var stream = new MemoryStream();
        image.SaveAsPng(stream);
        return stream.ToArray();
    }

    private static void AssertPngMask(V1.SegmentResponse response, int width, int height)
    {
        Assert.Equal(V1.ImageFormat.Png, response.MaskFormat);
        using var mask = Image.Load<L8>(response.Mask.ToByteArray());
        Assert.Equal((width, height), (mask.Width, mask.Height));
        long tumour = 0;
        mask.ProcessPixelRows(rows =>
        {
            for (var y = 0; y < rows.Height; y++)
            {
                foreach (var p in rows.GetRowSpan(y))
                {
                    Assert.True(p.PackedValue is 0 or 255, $"mask pixel {p.PackedValue}");
                    tumour += p.PackedValue == 255 ? 1 : 0;
                }
            }
        });
        var wt = Assert.Single(response.Regions);
        Assert.Equal("WT", wt.Region);
        Assert.Equal(tumour, wt.Voxels);
        Assert.Equal(tumour / 1000.0, wt.Millilitres, 9); // PNG pixels count as 1 mm³
    }

    [Fact]
    public async Task PullModel_streams_progress_registers_the_run_with_its_privacy_and_providers_CreateOutputKey_imports_and_the_model_segments()
    {
        var world = await env.Value.NewWorldAsync(measurement, Ct);
        var runId = "run-vault-" + world.Suffix;
        var run = await env.Value.Runner(world).ExecuteAsync(world.Spec(runId), null, Ct);
        var keyPath = Path.Combine(scratch, world.Consumer + ".key");
        env.Value.SavePartyKey(world.Consumer, keyPath);
        var vault = Vault(world.Consumer, keyPath, withBroker: true);

        // 1. Another code measurement than the run's: refused, the stream ends FAILED with the reason, nothing registered.
        var other = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var (refusedMessages, refused) = await PullAsync(vault, new V1.PullModelRequest { RunId = runId, ExpectedCodeMeasurement = other });
        Assert.NotNull(refused);
        Assert.Equal(StatusCode.FailedPrecondition, refused.StatusCode);
        Assert.Contains($"the request expects {other[..16]}", refused.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(V1.JobState.Failed, refusedMessages[^1].Progress.State);
        Assert.Equal(refused.Status.Detail, refusedMessages[^1].Progress.Error);
        Assert.DoesNotContain(refusedMessages, m => m.Model is not null);
        Assert.Empty((await vault.ListModelsAsync(new V1.ListModelsRequest(), cancellationToken: Ct)).Models);
        Assert.False(Directory.Exists(Models) && Directory.EnumerateFileSystemEntries(Models).Any());

        // 2. A run with no outputs: NOT_FOUND.
        var (_, missing) = await PullAsync(vault, new V1.PullModelRequest { RunId = "no-such-run", ExpectedCodeMeasurement = measurement });
        Assert.Equal(StatusCode.NotFound, missing?.StatusCode);

        // 3. The run's outputs with its measurement: progress through each step, the record last.
        var (messages, error) = await PullAsync(vault, new V1.PullModelRequest { RunId = runId, ExpectedCodeMeasurement = measurement });
        Assert.Null(error);
        Assert.Equal(["starting", "downloading", "verifying", "obtaining", "registering", "registered"], messages.Select(m => m.Progress.Step));
        Assert.All(messages[..^1], m => Assert.Equal(V1.JobState.Running, m.Progress.State));
        Assert.All(messages[..^1], m => Assert.Null(m.Model));
        Assert.Single(messages.Select(m => m.Progress.JobId).Distinct());
        Assert.Equal(V1.JobState.Succeeded, messages[^1].Progress.State);
        var record = messages[^1].Model;
        Assert.Equal(runId, record.ModelId);
        Assert.Equal(measurement, record.CodeMeasurement);
        Assert.Equal(run.Spent.Epsilon, record.Privacy.Epsilon, 9);
        Assert.Equal(run.Spent.Delta, record.Privacy.Delta, 12);
        Assert.InRange(record.Privacy.Epsilon, 0.01, 4);
        Assert.Equal([world.ProviderA, world.ProviderB], record.Datasets.Select(d => d.Provider));
        Assert.All(record.Datasets, d => Assert.True(d.Patients > 0 && d.DatasetId.StartsWith("sha256:", StringComparison.Ordinal)));
        Assert.True(record.Metrics.ContainsKey("dice"));
        Assert.Equal(["flair", "t1"], record.Modalities);
        Assert.Equal(["WT"], record.LabelChannels);
        Assert.Equal(record.ModelSha256, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(Models, record.ModelId, "model.safetensors")))));

        var listed = Assert.Single((await vault.ListModelsAsync(new V1.ListModelsRequest(), cancellationToken: Ct)).Models);
        Assert.Equal(record, listed);
        Assert.Equal(record, await vault.GetModelAsync(new V1.GetModelRequest { ModelId = runId }, cancellationToken: Ct));
        var unknown = await Assert.ThrowsAsync<RpcException>(async () => await vault.GetModelAsync(new V1.GetModelRequest { ModelId = "no-such-model" }, cancellationToken: Ct));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);

        // 4. CreateOutputKey: a fresh key imported at the broker as the consumer's output key, which the consumer alone gets back.
        var created = await vault.CreateOutputKeyAsync(new V1.CreateOutputKeyRequest { ReleasePolicyJson = env.Value.Policy(measurement) }, cancellationToken: Ct);
        Assert.Matches("^[0-9a-f]{32}$", created.KeyId);
        Assert.NotEqual(world.OutputKey.KeyId, created.KeyId);
        using (var released = await env.Value.Party(world.Consumer).ReleaseOwnOutputKeyAsync(created.KeyId, Ct))
        {
            Assert.Equal(created.KeyId, released.KeyId);
        }

        var noPolicy = await Assert.ThrowsAsync<RpcException>(async () => await vault.CreateOutputKeyAsync(new V1.CreateOutputKeyRequest(), cancellationToken: Ct));
        Assert.Equal(StatusCode.InvalidArgument, noPolicy.StatusCode);
        var badPolicy = await Assert.ThrowsAsync<RpcException>(async () =>
            await vault.CreateOutputKeyAsync(new V1.CreateOutputKeyRequest { ReleasePolicyJson = "{\"not\": \"a policy\"}" }, cancellationToken: Ct));
        Assert.Equal(StatusCode.InvalidArgument, badPolicy.StatusCode);
        Assert.Contains("the KeyBroker says", badPolicy.Status.Detail, StringComparison.Ordinal);

        // 5. The pulled model segments a PNG slice pair (flair, t1) into a PNG mask of the slice's size, with an overlay.
        var segmented = await vault.SegmentAsync(new V1.SegmentRequest
        {
            ModelId = record.ModelId,
            Data = ByteString.CopyFrom(Png(40, 36, 0)),
            FileName = "case_flair.png",
            ExtraChannels = { ByteString.CopyFrom(Png(40, 36, 1)) },
            Overlay = true,
        }, cancellationToken: Ct);
        AssertPngMask(segmented, 40, 36);
        using var overlay = Image.Load<Rgb24>(segmented.OverlayPng.ToByteArray());
        Assert.Equal((40 * 7, 36 * 7), (overlay.Width, overlay.Height)); // enlarged by a whole factor to at least 256 px
        Assert.Equal(1, segmented.Slices);
    }

    [Fact]
    public async Task Segment_gives_masks_in_the_inputs_geometry_with_volumes_and_refuses_bad_input_with_clear_statuses()
    {
        // A registered model without a run: an untrained two-channel U-Net in the vault's folder, its record in the registry.
        var modelId = "tiny-" + suffix;
        var folder = Path.Combine(Models, modelId);
        TinyModelFolder.Write(folder, ["flair", "t1"]);
        var weights = Path.Combine(folder, "model.safetensors");
        await new ModelRegistry(new TableServiceClient(azurite.TableConnectionString), Models, Table).PutAsync(new V1.ModelRecord
        {
            ModelId = modelId,
            RunId = modelId,
            Registered = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
            ModelSha256 = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(weights))),
            Modalities = { "flair", "t1" },
            LabelChannels = { "WT" },
        }, Ct);
        var vault = Vault("tdc", keyPath: null, withBroker: false);

        // A small phantom volume (flair, t1) inline: a NIfTI mask on the input's own grid and affine, the volume in mL.
        var generator = new PhantomGenerator(PhantomOptions.Default with { Size = new GridSize(48, 40, 12) });
        var info = generator.WriteCase(generator.Generate(0, 0), Path.Combine(scratch, "phantoms"));
        var flair = Directory.GetFiles(info.Folder, "*_flair.nii.gz").Single();
        var t1 = Directory.GetFiles(info.Folder, "*_t1.nii.gz").Single();
        var response = await vault.SegmentAsync(new V1.SegmentRequest
        {
            ModelId = modelId,
            Data = ByteString.CopyFrom(File.ReadAllBytes(flair)),
            FileName = Path.GetFileName(flair),
            ExtraChannels = { ByteString.CopyFrom(File.ReadAllBytes(t1)) },
            Threshold = 0.5,
            Overlay = true,
        }, cancellationToken: Ct);
        Assert.Equal(V1.ImageFormat.Nifti, response.MaskFormat);
        var input = NiftiReader.Read(flair, new NiftiReadOptions { Canonicalize = false });
        var maskFile = Path.Combine(scratch, "mask.nii.gz");
        File.WriteAllBytes(maskFile, response.Mask.ToByteArray());
        var mask = NiftiReader.Read(maskFile, new NiftiReadOptions { Canonicalize = false });
        Assert.Equal(input.Size, mask.Size);
        Assert.True(input.Affine.ApproximatelyEquals(mask.Affine, 1e-6));
        var voxels = mask.Data.LongCount(v => v != 0);
        var wt = Assert.Single(response.Regions);
        Assert.Equal(voxels, wt.Voxels);
        Assert.Equal(voxels * input.Spacing.X * input.Spacing.Y * input.Spacing.Z / 1000, wt.Millilitres, 9);
        Assert.InRange(response.Slices, 1, 12);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, response.OverlayPng.ToByteArray()[..4]);

        // The same case from blob storage (a case folder's prefix): the same mask.
        var container = new BlobServiceClient(azurite.BlobConnectionString).GetBlobContainerClient("mv-cases-" + suffix);
        await container.CreateIfNotExistsAsync(cancellationToken: Ct);
        foreach (var file in Directory.GetFiles(info.Folder))
        {
            await container.GetBlobClient($"cases/{Path.GetFileName(info.Folder)}/{Path.GetFileName(file)}").UploadAsync(file, Ct);
        }

        var fromBlob = await vault.SegmentAsync(new V1.SegmentRequest
        {
            ModelId = modelId,
            Location = new V1.Location { Blob = new V1.BlobRef { Container = container.Name, Name = $"cases/{Path.GetFileName(info.Folder)}" } },
        }, cancellationToken: Ct);
        Assert.Equal(wt.Voxels, Assert.Single(fromBlob.Regions).Voxels);
        File.WriteAllBytes(maskFile, fromBlob.Mask.ToByteArray());
        Assert.Equal(mask.Data, NiftiReader.Read(maskFile, new NiftiReadOptions { Canonicalize = false }).Data);

        // One file of the case in blob storage: its siblings give the other channel.
        var fromFile = await vault.SegmentAsync(new V1.SegmentRequest
        {
            ModelId = modelId,
            Location = new V1.Location { Blob = new V1.BlobRef { Container = container.Name, Name = $"cases/{Path.GetFileName(info.Folder)}/{Path.GetFileName(t1)}" } },
        }, cancellationToken: Ct);
        Assert.Equal(wt.Voxels, Assert.Single(fromFile.Regions).Voxels);

        // A PNG slice pair inline: a PNG mask of the slice's size.
        AssertPngMask(await vault.SegmentAsync(new V1.SegmentRequest
        {
            ModelId = modelId,
            Data = ByteString.CopyFrom(Png(52, 44, 0)),
            Format = V1.ImageFormat.Png,
            ExtraChannels = { ByteString.CopyFrom(Png(52, 44, 1)) },
        }, cancellationToken: Ct), 52, 44);

        async Task<RpcException> RefusedAsync(V1.SegmentRequest request) =>
            await Assert.ThrowsAsync<RpcException>(async () => await vault.SegmentAsync(request, cancellationToken: Ct));

        // Malformed NIfTI bytes, and a truncated one: INVALID_ARGUMENT naming the problem.
        var garbage = await RefusedAsync(new V1.SegmentRequest
        {
            ModelId = modelId, Data = ByteString.CopyFromUtf8("this is not a NIfTI volume at all, just text"), FileName = "case_flair.nii.gz",
            ExtraChannels = { ByteString.CopyFrom(File.ReadAllBytes(t1)) },
        });
        Assert.Equal(StatusCode.InvalidArgument, garbage.StatusCode);
        Assert.StartsWith("Segment: data-flair.nii: not a NIfTI file", garbage.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("/tmp", garbage.Status.Detail, StringComparison.Ordinal);
        var truncated = await RefusedAsync(new V1.SegmentRequest
        {
            ModelId = modelId, Data = ByteString.CopyFrom(File.ReadAllBytes(flair)[..300]), FileName = "case_flair.nii.gz",
            ExtraChannels = { ByteString.CopyFrom(File.ReadAllBytes(t1)) },
        });
        Assert.Equal(StatusCode.InvalidArgument, truncated.StatusCode);
        Assert.Contains("data-flair.nii.gz", truncated.Status.Detail, StringComparison.Ordinal);

        // One channel for a two-channel model; no format; a bad threshold; a local path where none is allowed.
        var oneChannel = await RefusedAsync(new V1.SegmentRequest { ModelId = modelId, Data = ByteString.CopyFrom(File.ReadAllBytes(flair)), FileName = "x.nii.gz" });
        Assert.Equal(StatusCode.InvalidArgument, oneChannel.StatusCode);
        Assert.Contains("2 channel(s) (flair, t1)", oneChannel.Status.Detail, StringComparison.Ordinal);
        var noFormat = await RefusedAsync(new V1.SegmentRequest { ModelId = modelId, Data = ByteString.CopyFrom(Png(8, 8, 0)), FileName = "slice.jpg", ExtraChannels = { ByteString.CopyFrom(Png(8, 8, 1)) } });
        Assert.Equal(StatusCode.InvalidArgument, noFormat.StatusCode);
        Assert.Contains("format", noFormat.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.InvalidArgument, (await RefusedAsync(new V1.SegmentRequest { ModelId = modelId, Data = ByteString.CopyFrom(Png(8, 8, 0)), Format = V1.ImageFormat.Png, Threshold = 1.5 })).StatusCode);
        Assert.Equal(StatusCode.PermissionDenied, (await RefusedAsync(new V1.SegmentRequest { ModelId = modelId, Location = new V1.Location { LocalPath = info.Folder } })).StatusCode);

        // An unknown model: NOT_FOUND; a blob that is not there: NOT_FOUND.
        var unknown = await RefusedAsync(new V1.SegmentRequest { ModelId = "no-such-model", Data = ByteString.CopyFrom(Png(8, 8, 0)), Format = V1.ImageFormat.Png });
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        Assert.Contains("no-such-model", unknown.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.NotFound, (await RefusedAsync(new V1.SegmentRequest
        {
            ModelId = modelId, Location = new V1.Location { Blob = new V1.BlobRef { Container = container.Name, Name = "cases/nobody" } },
        })).StatusCode);

        // A blob case folder that lacks the model's t1: INVALID_ARGUMENT naming the channel, not the service's temporary folder.
        await container.GetBlobClient("cases/partial/p_flair.nii.gz").UploadAsync(flair, Ct);
        var partial = await RefusedAsync(new V1.SegmentRequest
        {
            ModelId = modelId, Location = new V1.Location { Blob = new V1.BlobRef { Container = container.Name, Name = "cases/partial" } },
        });
        Assert.Equal(StatusCode.InvalidArgument, partial.StatusCode);
        Assert.StartsWith($"Segment: blob {container.Name}/cases/partial: no T1 image", partial.Status.Detail, StringComparison.Ordinal);
        Assert.DoesNotContain("/tmp", partial.Status.Detail, StringComparison.Ordinal);

        // Weights changed on disk after registration: refused, not used.
        var bytes = File.ReadAllBytes(weights);
        bytes[^1] ^= 0x01;
        File.WriteAllBytes(weights, bytes);
        var altered = await RefusedAsync(new V1.SegmentRequest { ModelId = modelId, Data = ByteString.CopyFrom(Png(40, 36, 0)), Format = V1.ImageFormat.Png, ExtraChannels = { ByteString.CopyFrom(Png(40, 36, 1)) } });
        Assert.Equal(StatusCode.FailedPrecondition, altered.StatusCode);
        Assert.Contains("not the registered ones", altered.Status.Detail, StringComparison.Ordinal);
    }
}

/// <summary>The ModelVault's refusals that need no storage, and its settings: the vault starts without a key and says what is missing.</summary>
public sealed class ModelVaultSettingsTests : IDisposable
{
    private readonly string scratch = Directory.CreateTempSubdirectory("mriseg-modelvault-settings-").FullName;
    private readonly TestVaultCaller caller;

    public ModelVaultSettingsTests()
    {
        caller = new TestVaultCaller();
    }

    public void Dispose()
    {
        caller.Dispose();
        Directory.Delete(scratch, recursive: true);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_pull_needs_an_acceptable_measurement_and_the_consumers_key_and_each_refusal_says_which()
    {
        var measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        using var open = new ServiceHost<ModelVaultService>(caller.With(new Dictionary<string, string>
        {
            ["ModelVault:ModelsDirectory"] = scratch,
            ["ModelVault:KeysDirectory"] = scratch,
            ["ModelVault:DevelopmentAuthority:Enabled"] = "true",
        }));
        var vault = caller.Client(open);

        // No measurement named and none configured.
        var (messages, noMeasurement) = await ModelVaultServiceTests.PullAsync(vault, new V1.PullModelRequest { RunId = "run-1" });
        Assert.Equal(StatusCode.InvalidArgument, noMeasurement?.StatusCode);
        Assert.Contains("expected_code_measurement", noMeasurement!.Status.Detail, StringComparison.Ordinal);
        Assert.Contains("ModelVault:AllowedMeasurements", noMeasurement.Status.Detail, StringComparison.Ordinal);
        Assert.Equal(V1.JobState.Failed, messages[^1].Progress.State);

        // A measurement, but no tdc.key in the key folder (a listed caller is calling): the service runs and says so.
        var (_, noKey) = await ModelVaultServiceTests.PullAsync(vault, new V1.PullModelRequest { RunId = "run-1", ExpectedCodeMeasurement = measurement });
        Assert.Equal(StatusCode.FailedPrecondition, noKey?.StatusCode);
        Assert.Contains("tdc.key", noKey!.Status.Detail, StringComparison.Ordinal);

        // Not a run id; not a measurement.
        Assert.Equal(StatusCode.InvalidArgument, (await ModelVaultServiceTests.PullAsync(vault, new V1.PullModelRequest { RunId = "../etc", ExpectedCodeMeasurement = measurement })).Error?.StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, (await ModelVaultServiceTests.PullAsync(vault, new V1.PullModelRequest { RunId = "run-1", ExpectedCodeMeasurement = "xyz" })).Error?.StatusCode);

        // With an allow-list, a request may narrow it but not name another measurement.
        using var listed = new ServiceHost<ModelVaultService>(caller.With(new Dictionary<string, string>
        {
            ["ModelVault:ModelsDirectory"] = scratch,
            ["ModelVault:AllowedMeasurements:0"] = measurement,
            ["ModelVault:DevelopmentAuthority:Enabled"] = "true",
        }));
        var other = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var (_, widened) = await ModelVaultServiceTests.PullAsync(caller.Client(listed),
            new V1.PullModelRequest { RunId = "run-1", ExpectedCodeMeasurement = other });
        Assert.Equal(StatusCode.InvalidArgument, widened?.StatusCode);
        Assert.Contains("not in ModelVault:AllowedMeasurements", widened!.Status.Detail, StringComparison.Ordinal);

        // No trusted authority at all (outside Development, none configured): nothing can be verified.
        using var untrusting = new ServiceHost<ModelVaultService>(caller.With(new Dictionary<string, string>
        {
            ["ModelVault:ModelsDirectory"] = scratch,
        }));
        var (_, noAuthority) = await ModelVaultServiceTests.PullAsync(caller.Client(untrusting),
            new V1.PullModelRequest { RunId = "run-1", ExpectedCodeMeasurement = measurement });
        Assert.Equal(StatusCode.FailedPrecondition, noAuthority?.StatusCode);
        Assert.Contains("ModelVault:Attestation:Authorities", noAuthority!.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_call_needs_a_fresh_token_of_the_consumer_or_a_listed_caller_and_anything_else_is_unauthenticated()
    {
        // The consumer's own key in the vault's key folder, and one listed caller with a key of its own.
        using var consumerKey = SigningKey.Generate();
        consumerKey.Save(Path.Combine(scratch, "tdc.key"));
        using var vault = new ServiceHost<ModelVaultService>(caller.With(new Dictionary<string, string>
        {
            ["ModelVault:ModelsDirectory"] = scratch,
            ["ModelVault:KeysDirectory"] = scratch,
        }));
        using var channel = vault.CreateChannel();

        // GetModel with an empty id is refused as INVALID_ARGUMENT once the caller is authenticated (no storage needed).
        async Task<StatusCode> GetModelAs(string? authorization)
        {
            var headers = new Metadata();
            if (authorization is not null)
            {
                headers.Add(PartyTokens.AuthorizationHeader, authorization);
            }

            var e = await Assert.ThrowsAsync<RpcException>(() => new V1.ModelVault.ModelVaultClient(channel).GetModelAsync(new(), headers, cancellationToken: Ct).ResponseAsync);
            if (e.StatusCode == StatusCode.Unauthenticated)
            {
                Assert.StartsWith("ModelVault: ", e.Status.Detail, StringComparison.Ordinal);
            }

            return e.StatusCode;
        }

        string Bearer(SigningKey key, string party, string audience = PartyTokens.ModelVaultAudience, TimeSpan? lifetime = null, DateTimeOffset? now = null) =>
            PartyTokens.Bearer(PartyTokens.Mint(key, party, audience, lifetime, now));

        Assert.Equal(StatusCode.InvalidArgument, await GetModelAs(Bearer(consumerKey, "tdc")));
        Assert.Equal(StatusCode.InvalidArgument, await GetModelAs(Bearer(caller.Key, TestVaultCaller.Party)));
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => caller.Client(vault).GetModelAsync(new(), cancellationToken: Ct).ResponseAsync)).StatusCode);

        using var stranger = SigningKey.Generate();
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(null));                                     // no credentials
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs("Bearer not-a-jwt"));                        // malformed
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(stranger, "tdc")));                   // forged: the consumer's name, another key
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(caller.Key, "tdc")));                 // a caller posing as the consumer
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(stranger, "hospital-a")));            // a party the vault does not list
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(consumerKey, "tdc", PartyTokens.DefaultAudience))); // a KeyBroker token
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(consumerKey, "tdc", now: DateTimeOffset.UtcNow.AddMinutes(-10)))); // expired
        var once = Bearer(consumerKey, "tdc");
        Assert.Equal(StatusCode.InvalidArgument, await GetModelAs(once));
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(once));                                      // replayed

        // The streaming call is guarded too, and a removed key file stops its holder at once.
        using var pull = new V1.ModelVault.ModelVaultClient(channel).PullModel(new V1.PullModelRequest { RunId = "run-1" }, cancellationToken: Ct);
        Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<RpcException>(() => pull.ResponseStream.MoveNext(Ct))).StatusCode);
        File.Delete(Path.Combine(scratch, "tdc.key"));
        Assert.Equal(StatusCode.Unauthenticated, await GetModelAs(Bearer(consumerKey, "tdc")));
    }

    [Fact]
    public void Settings_resolve_the_party_key_from_the_key_folder_and_trust_the_development_authority_only_in_development()
    {
        static ModelVaultSettings From(string environment, Dictionary<string, string?> values) =>
            ModelVaultSettings.From(new ConfigurationBuilder().AddInMemoryCollection(values).Build(), new TestEnvironment(environment, "/srv/vault"));

        var development = From(Environments.Development, new() { ["ModelVault:KeysDirectory"] = "keys", ["ModelVault:Consumer"] = "tdc-one" });
        Assert.Equal(Path.GetFullPath("/srv/vault/keys/tdc-one.key"), development.PartyKeyPath);
        Assert.Equal(ModelVaultSettings.DefaultDevelopmentIssuer, Assert.Single(development.Authorities).Issuer);
        Assert.True(development.AllowLocalPaths);
        Assert.Equal(ModelVaultSettings.DefaultKeyBrokerAddress, development.KeyBrokerAddress);

        var production = From(Environments.Production, new()
        {
            ["ModelVault:PartyKeyPath"] = "/etc/mriseg/tdc.pem",
            ["ModelVault:AllowedMeasurements:0"] = new string('A', 64),
            ["ModelVault:Attestation:Authorities:0:Issuer"] = "https://maa.example.net",
        });
        Assert.Equal("/etc/mriseg/tdc.pem", production.PartyKeyPath);
        Assert.Equal("https://maa.example.net", Assert.Single(production.Authorities).Issuer);
        Assert.Null(production.DevelopmentIssuer);
        Assert.Equal([new string('a', 64)], production.AllowedMeasurements);
        Assert.False(production.AllowLocalPaths);
        Assert.Null(From(Environments.Production, []).PartyKeyPath);

        Assert.Throws<InvalidOperationException>(() => From(Environments.Production, new() { ["ModelVault:AllowedMeasurements:0"] = "not-hex" }));
        Assert.Throws<InvalidOperationException>(() => From(Environments.Production, new() { ["ModelVault:Consumer"] = "Not A Party" }));

        // Listed callers: a party id and a public key each; the consumer itself is always one and cannot be listed again.
        var listed = From(Environments.Production, new() { ["ModelVault:Callers:0:Party"] = "ml-engineer", ["ModelVault:Callers:0:PublicKeyPath"] = "/etc/mriseg/ml.pub" });
        Assert.Equal([new VaultCaller("ml-engineer", "/etc/mriseg/ml.pub")], listed.Callers);
        Assert.Throws<InvalidOperationException>(() => From(Environments.Production, new() { ["ModelVault:Callers:0:Party"] = "tdc", ["ModelVault:Callers:0:PublicKeyPath"] = "/k.pub" }));
        Assert.Throws<InvalidOperationException>(() => From(Environments.Production, new() { ["ModelVault:Callers:0:Party"] = "ml-engineer" }));
        Assert.Throws<InvalidOperationException>(() => From(Environments.Production, new() { ["ModelVault:Callers:0:Party"] = "Not A Party", ["ModelVault:Callers:0:PublicKeyPath"] = "/k.pub" }));
    }

    private sealed class TestEnvironment(string name, string root) : IHostEnvironment
    {
        public string EnvironmentName { get; set; } = name;

        public string ApplicationName { get; set; } = "MriSeg.ModelVault";

        public string ContentRootPath { get; set; } = root;

        public IFileProvider ContentRootFileProvider { get; set; } = new NullFileProvider();
    }
}
