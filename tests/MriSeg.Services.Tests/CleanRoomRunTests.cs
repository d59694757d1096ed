using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Azure.Storage.Blobs;
using MriSeg.CleanRoom;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The clean-room run as a library over Azurite with the KeyBroker in-process: the happy path and the failures that must release nothing.</summary>
public sealed class CleanRoomRunTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private readonly CleanRoomWorld env;
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    public CleanRoomRunTests(AzuriteFixture azurite)
    {
        azurite.Require();
        env = new CleanRoomWorld(azurite);
    }

    public void Dispose() => env.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_run_trains_on_two_providers_and_uploads_sealed_outputs_only_the_consumer_opens_with_nothing_decrypted_on_disk()
    {
        var started = DateTime.UtcNow.AddSeconds(-1);
        var world = await env.NewWorldAsync(measurement, Ct);
        var events = new List<RunProgressEvent>();
        var result = await env.Runner(world).ExecuteAsync(world.Spec("run-ok"), e => { lock (events) { events.Add(e); } }, Ct);

        // Outputs: six sealed blobs under the consumer's container, outputs/<run-id>/.
        var container = env.Blobs.GetBlobContainerClient(world.Consumer);
        var names = new List<string>();
        await foreach (var item in container.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, "outputs/run-ok/", cancellationToken: Ct))
        {
            names.Add(item.Name);
        }

        Assert.Equal(CleanRoomRun.OutputNames.Select(n => $"outputs/run-ok/{n}.sealed").Order(), names.Order());

        // The consumer obtains its own output key from the broker and opens each output; the signer is the run's attested key.
        using var outputKey = await env.Party(world.Consumer).ReleaseOwnOutputKeyAsync(world.OutputKey.KeyId, Ct);
        using var signer = SignerPublicKey.FromPem(result.SigningKeyPem);
        var opened = new Dictionary<string, byte[]>();
        foreach (var output in result.Outputs)
        {
            var bytes = (await container.GetBlobClient(output.Blob.Name).DownloadContentAsync(Ct)).Value.Content.ToArray();
            Assert.Equal(output.SealedSha256, Convert.ToHexStringLower(SHA256.HashData(bytes)));
            using var package = await SealedPackage.OpenToMemoryAsync(new MemoryStream(bytes), outputKey, SignerCheck.Expect(signer), cancellationToken: Ct);
            Assert.Equal(result.AttestationToken, package.Info.Manifest.Metadata["mriseg.attestation_token"]);
            opened[package.Info.Manifest.Metadata["mriseg.file"]] = package.ToArray();

            // A key other than the output key opens nothing.
            using var wrong = DataKey.Generate();
            await Assert.ThrowsAsync<SealedPackageException>(() => SealedPackage.OpenToMemoryAsync(new MemoryStream(bytes), wrong, SignerCheck.Expect(signer), cancellationToken: Ct));
        }

        // The attestation token binds the signing key (x-ms-runtime.keys) and states the trainer's measurement.
        var payload = JsonDocument.Parse(Base64UrlDecode(result.AttestationToken.Split('.')[1])).RootElement;
        Assert.Equal(measurement, payload.GetProperty("x-mriseg-measurement").GetString());
        var jwk = payload.GetProperty("x-ms-runtime").GetProperty("keys")[0];
        using (var ecdsa = ECDsa.Create())
        {
            ecdsa.ImportFromPem(result.SigningKeyPem);
            var p = ecdsa.ExportParameters(false);
            Assert.Equal(Base64Url(p.Q.X!), jwk.GetProperty("x").GetString());
        }

        // The model card: counts per provider, ε within the target.
        var card = ModelCard.FromJson(Encoding.UTF8.GetString(opened["model-card.json"]));
        Assert.Equal([world.ProviderA, world.ProviderB], card.Providers.Select(p => p.Provider));
        Assert.Equal([14, 12], card.Providers.Select(p => p.Patients));
        Assert.Equal([28, 24], card.Providers.Select(p => p.Slices));
        Assert.NotNull(card.Privacy);
        Assert.InRange(card.Privacy!.Epsilon, 0.01, 4.0);
        Assert.Equal(CleanRoomWorld.Delta, card.Privacy.Delta);
        Assert.Equal(measurement, card.CodeMeasurement);
        Assert.Contains("| **total** | 26 |", Encoding.UTF8.GetString(opened["model-card.md"]));
        Assert.Equal(0x89, opened["curves.png"][0]);
        Assert.Contains("\"dice\"", Encoding.UTF8.GetString(opened["metrics.json"]));
        Assert.Contains("mriseg.model", Encoding.UTF8.GetString(opened["model.json"]));

        // Progress went through every phase in order and reported ε.
        var phases = events.Select(e => e.Phase).Distinct().ToList();
        Assert.Equal(V1.RunPhase.Attesting, phases[0]);
        Assert.Equal(V1.RunPhase.Done, phases[^1]);
        Assert.Contains(V1.RunPhase.Training, phases);
        Assert.Contains(events, e => e.Phase == V1.RunPhase.Training && e.Epsilon > 0 && e.ValidationDice is not null);

        // Settled: both contracts hold the run as spent, nothing reserved.
        foreach (var contract in world.Contracts.Values)
        {
            var budget = await env.Client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = contract }, env.Party(world.CleanRoom).Credentials(), cancellationToken: Ct);
            Assert.Equal(0, budget.EpsilonReserved, 9);
            Assert.True(budget.EpsilonSpent > 0);
        }

        // No plaintext of either shard in any file written meanwhile: temp folders and Azurite's storage.
        var scan = new PlaintextScan(world.ShardTensorData);
        Assert.True(scan.IndexedWindows > 100_000);
        var hits = scan.FindIn([Path.GetTempPath(), env.Azurite.Location!], started);
        Assert.Empty(hits);

        // The scanner does find a leaked window (control).
        var control = Path.Combine(Directory.CreateTempSubdirectory("mriseg-scan-control-").FullName, "leak.bin");
        await File.WriteAllBytesAsync(control, [.. RandomNumberGenerator.GetBytes(10), .. world.ShardPlaintexts[1].AsSpan(5000, 64).ToArray(), .. RandomNumberGenerator.GetBytes(10)], Ct);
        Assert.Equal([control], scan.FindIn([Path.GetDirectoryName(control)!], started));
        Directory.Delete(Path.GetDirectoryName(control)!, recursive: true);
    }

    [Fact]
    public async Task Failures_end_the_run_with_the_reason_and_release_nothing()
    {
        var world = await env.NewWorldAsync(measurement, Ct);

        // A policy refusal: a trainer with another measurement gets no key.
        var refused = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world, new string('e', 64)).ExecuteAsync(world.Spec("run-wrong-code"), null, Ct));
        Assert.Equal(RunFailure.PolicyRefused, refused.Failure);
        Assert.Contains("x-mriseg-measurement", refused.Message);

        // A tampered package: one byte of provider B's sealed shard flipped in storage.
        var blob = env.Blobs.GetBlobContainerClient(world.ProviderB).GetBlobClient("shards/train.sealed");
        var original = (await blob.DownloadContentAsync(Ct)).Value.Content.ToArray();
        var altered = original.ToArray();
        altered[200] ^= 1;
        await blob.UploadAsync(BinaryData.FromBytes(altered), overwrite: true, Ct);
        var spec = world.Spec("run-tampered");
        spec = spec with { Datasets = [.. spec.Datasets.Select(d => d.Clone())] };
        foreach (var d in spec.Datasets)
        {
            d.Blob.Etag = "";
        }

        var tampered = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(spec, null, Ct));
        Assert.Equal(RunFailure.TamperedPackage, tampered.Failure);
        Assert.Contains("altered", tampered.Message);

        // Even with the altered bytes' SHA-256 named, the signature over the manifest or the chunk tags catch it.
        var spec2 = spec with { RunId = "run-tampered-2", Datasets = [.. spec.Datasets.Select(d => d.Clone())] };
        spec2.Datasets[1].SealedSha256 = Convert.ToHexStringLower(SHA256.HashData(altered));
        var tampered2 = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(spec2, null, Ct));
        Assert.Equal(RunFailure.TamperedPackage, tampered2.Failure);
        await blob.UploadAsync(BinaryData.FromBytes(original), overwrite: true, Ct);

        // A missing dataset blob.
        var missing = spec with { RunId = "run-missing", Datasets = [.. spec.Datasets.Select(d => d.Clone())] };
        missing.Datasets[0].Blob.Name = "shards/absent.sealed";
        var gone = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(missing, null, Ct));
        Assert.Equal(RunFailure.MissingPackage, gone.Failure);
        Assert.Contains("absent.sealed", gone.Message);

        // Nothing was uploaded and no budget stays reserved or spent.
        await AssertNothingReleasedAsync(world);
    }

    [Fact]
    public async Task Providers_whose_schemas_differ_end_the_run_naming_both_and_the_reservation_is_settled_at_zero()
    {
        var world = await env.NewWorldAsync(measurement, Ct, secondModalities: ["flair", "t2"]);
        var e = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(world.Spec("run-schema"), null, Ct));
        Assert.Equal(RunFailure.SchemaMismatch, e.Failure);
        Assert.Contains(world.ProviderA, e.Message);
        Assert.Contains(world.ProviderB, e.Message);
        await AssertNothingReleasedAsync(world);
    }

    [Fact]
    public async Task A_pipeline_whose_recipe_pre_processes_otherwise_than_the_shards_were_is_refused_before_training()
    {
        // The shards are 32x32 (flair, t1); the recipe says 64x64: it would train (and be scored) on data it was not made for.
        var recipe = CleanRoomWorld.PipelineJson.Replace("\"seed\": 3,", "\"seed\": 3, \"preprocessing\": { \"size\": 64, \"modalities\": [\"flair\", \"t1\"] },", StringComparison.Ordinal);
        Assert.NotEqual(CleanRoomWorld.PipelineJson, recipe);
        var world = await env.NewWorldAsync(measurement, Ct, pipelineJson: recipe);
        var e = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(world.Spec("run-recipe"), null, Ct));
        Assert.Equal(RunFailure.SchemaMismatch, e.Failure);
        Assert.Contains(world.ProviderA, e.Message, StringComparison.Ordinal);
        Assert.Contains("32x32 slices, the recipe 64x64", e.Message, StringComparison.Ordinal);
        await AssertNothingReleasedAsync(world);
    }

    [Fact]
    public async Task A_trainer_set_to_cuda_without_a_gpu_fails_before_anything_is_released()
    {
        var torch = MriSeg.Learning.Torch.TorchRuntime.Initialize();
        Assert.SkipWhen(torch.IsCuda, "this machine has CUDA: the run would train on it");
        Assert.SkipWhen(MriSeg.Learning.Torch.TorchRuntimeSettings.FromEnvironment().AllowCpuFallback, "MRISEG_ALLOW_CPU_FALLBACK is set");
        var world = await env.NewWorldAsync(measurement, Ct);
        var e = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world, device: "cuda").ExecuteAsync(world.Spec("run-cuda"), null, Ct));
        Assert.Equal(RunFailure.Internal, e.Failure);
        Assert.Contains("Trainer:Device = cuda", e.Message, StringComparison.Ordinal);
        Assert.Contains("MRISEG_ALLOW_CPU_FALLBACK=1", e.Message, StringComparison.Ordinal);
        await AssertNothingReleasedAsync(world);
    }

    private async Task AssertNothingReleasedAsync(CleanRoomWorld.World world)
    {
        await foreach (var item in env.Blobs.GetBlobContainerClient(world.Consumer).GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, "outputs/", cancellationToken: Ct))
        {
            Assert.Fail($"a failed run uploaded {item.Name}");
        }

        foreach (var contract in world.Contracts.Values)
        {
            var budget = await env.Client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = contract }, env.Party(world.CleanRoom).Credentials(), cancellationToken: Ct);
            Assert.Equal(0, budget.EpsilonReserved, 9);
            Assert.Equal(0, budget.EpsilonSpent, 9);
        }
    }

    private static byte[] Base64UrlDecode(string s) => Convert.FromBase64String(s.Replace('-', '+').Replace('_', '/').PadRight(s.Length + (4 - s.Length % 4) % 4, '='));

    private static string Base64Url(byte[] b) => Convert.ToBase64String(b).TrimEnd('=').Replace('+', '-').Replace('/', '_');
}
