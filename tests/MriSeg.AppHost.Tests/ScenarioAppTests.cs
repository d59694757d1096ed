using Aspire.Hosting;
using Aspire.Hosting.Testing;
using Azure.Storage.Blobs;
using MriSeg.Contracts;
using MriSeg.Contracts.V1;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Scenario;
using Xunit;

namespace MriSeg.AppHost.Tests;

/// <summary>
/// The main job through the real AppHost: three phantom hospitals and a consumer, every phase through the services'
/// contracts (small sizes: 10 patients each, 32x32 slices, a tiny U-Net for two epochs).
/// </summary>
[Trait("Category", "App")]
[Collection(AppHostCollection.Name)]
public sealed class ScenarioAppTests(AppHostFixture fixture, ITestOutputHelper output)
{
    private const string TinyPipeline = """
        {
          "model": { "in_channels": 4, "out_channels": 1, "depth": 2, "base_width": 4, "group_norm_groups": 1 },
          "privacy": { "mode": "dp", "epsilon": 4, "delta": 1e-4, "accountant": "rdp", "clip_norm": 1.0 },
          "epochs": 2, "batch_size": 8, "max_slices_per_patient": 1,
          "optimizer": { "kind": "adam", "learning_rate": 0.01 },
          "validation": { "every_epochs": 1 },
          "split": { "validation_fraction": 0.15, "test_fraction": 0.15, "stratify": true },
          "seed": 5
        }
        """;

    [Fact]
    public async Task The_scenario_runs_all_six_phases_and_leaves_only_sealed_data_behind()
    {
        var ct = TestContext.Current.CancellationToken;
        Uri GrpcAddress(string name) => fixture.App.GetEndpoint(name, ServiceCatalog.GrpcEndpoint);
        var blobs = new BlobServiceClient(await fixture.App.GetConnectionStringAsync(ServiceCatalog.BlobConnection, ct));
        var outputDirectory = Path.Combine(fixture.KeysLocation, "..", "output");
        var options = new ScenarioOptions
        {
            PatientsPerHospital = 10, VolumeSize = 32, VolumeDepth = 16, Epsilon = 4, Delta = 1e-4, PipelineJson = TinyPipeline, OutputDirectory = outputDirectory,
            ConsumerKeyPath = Path.Combine(fixture.KeysLocation, "keys", "tdc.key"),
        };
        var events = new List<ScenarioEvent>();
        using var runner = new ScenarioRunner(new ScenarioEndpoints(GrpcAddress(ServiceCatalog.Preprocess), GrpcAddress(ServiceCatalog.Packaging), GrpcAddress(ServiceCatalog.Trainer),
            GrpcAddress(ServiceCatalog.ModelVault)), blobs, e => { lock (events) { events.Add(e); } });

        var summary = await runner.RunAsync(options, ct);
        foreach (var p in summary.Phases)
        {
            output.WriteLine($"{p.Phase}. {p.Name} ({p.Seconds} s): {p.Result}");
        }

        // Every phase ran, in order, and reported progress.
        Assert.Equal([1, 2, 3, 4, 5, 6], summary.Phases.Select(p => p.Phase));
        Assert.Contains(events, e => e.Phase == 5 && e.Message.StartsWith("epoch", StringComparison.Ordinal));

        // 1-2. Each hospital's shard holds its 10 patients, sealed in its own container; no plaintext is left there.
        Assert.Equal(["hospital-a", "hospital-b", "hospital-c"], summary.Hospitals.Select(h => h.Id));
        var packaging = new Packaging.PackagingClient(fixture.Channel(ServiceCatalog.Packaging));
        foreach (var h in summary.Hospitals)
        {
            Assert.Equal(10, h.Patients);
            Assert.True(h.Slices >= 10, $"{h.Id}: {h.Slices} slices");
            var names = new List<string>();
            await foreach (var item in blobs.GetBlobContainerClient(h.Id).GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, $"scenario/{summary.RunId}/", ct))
            {
                names.Add(item.Name);
            }

            Assert.Equal([$"scenario/{summary.RunId}/shard.sealed"], names);
            var verified = await packaging.VerifyAsync(new VerifyRequest
            {
                Package = new SealedPackageRef { Blob = new BlobRef { Container = h.Id, Name = names[0] }, Owner = h.Id, KeyId = h.KeyId, ContentType = ContentType.Dataset },
            }, cancellationToken: ct);
            Assert.True(verified.Valid, verified.Failure);
            Assert.Equal("10", verified.Manifest.Metadata["patient_count"]);
        }

        // 3. The consumer's base model and pipeline are sealed; their plaintext staging blobs are gone.
        var consumerBlobs = new List<string>();
        await foreach (var item in blobs.GetBlobContainerClient(options.Consumer).GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, $"scenario/{summary.RunId}/", ct))
        {
            consumerBlobs.Add(item.Name);
        }

        Assert.Equal([$"scenario/{summary.RunId}/base-model.sealed", $"scenario/{summary.RunId}/pipeline.sealed"], consumerBlobs.Order());

        // 5. The run kept to its declared privacy and left six sealed outputs for the consumer.
        Assert.InRange(summary.Epsilon, 0.1, 4.0);
        Assert.Equal(1e-4, summary.Delta);
        Assert.Equal(6, summary.Outputs.SealedOutputs.Count);
        Assert.All(summary.Outputs.SealedOutputs, o => Assert.StartsWith($"{options.Consumer}/outputs/{summary.RunId}/", o, StringComparison.Ordinal));
        Assert.All(summary.Outputs.SealedOutputs, o => Assert.EndsWith(".sealed", o, StringComparison.Ordinal));

        // 6. The ModelVault registered the model with its privacy and provenance, and segmented the unseen case on its grid.
        using var consumerKey = MriSeg.Sealing.SigningKey.Load(options.ConsumerKeyPath);
        var vault = new ModelVault.ModelVaultClient(fixture.Channel(ServiceCatalog.ModelVault).WithPartyTokens(consumerKey, options.Consumer, PartyTokens.ModelVaultAudience));
        var record = await vault.GetModelAsync(new GetModelRequest { ModelId = summary.Outputs.ModelId }, cancellationToken: ct);
        Assert.Equal(summary.RunId, record.RunId);
        Assert.Equal(summary.Epsilon, record.Privacy.Epsilon, 9);
        Assert.Equal(3, record.Datasets.Count);
        Assert.Equal(30, record.Datasets.Sum(d => d.Patients));
        Assert.NotNull(summary.Dice);
        Assert.InRange(summary.Dice!.Value, 0, 1);
        Assert.True(File.Exists(summary.Segmented.Mask));
        Assert.NotNull(summary.Segmented.Dice); // computed against the phantom's truth: the mask is on the input's grid
        Assert.True(summary.Segmented.Overlay is { } overlay && new FileInfo(overlay).Length > 100);
        Assert.True(File.Exists(Path.Combine(summary.Outputs.Directory, "summary.json")));

        // Only the consumer obtains its output key outside the clean room: a hospital (its key as Packaging holds it) is refused.
        var start = Google.Protobuf.JsonParser.Default.Parse<StartRunRequest>(await File.ReadAllTextAsync(Path.Combine(summary.Outputs.Directory, "start-run.json"), ct));
        using var hospitalKey = MriSeg.Sealing.SigningKey.Load(Path.Combine(fixture.KeysLocation, "keys", "hospital-a.key"));

        // Nor may a hospital call the consumer's ModelVault: it is not one of the vault's callers.
        var asHospital = new ModelVault.ModelVaultClient(fixture.Channel(ServiceCatalog.ModelVault).WithPartyTokens(hospitalKey, "hospital-a", PartyTokens.ModelVaultAudience));
        var notACaller = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => asHospital.ListModelsAsync(new ListModelsRequest(), cancellationToken: ct).ResponseAsync);
        Assert.Equal(Grpc.Core.StatusCode.Unauthenticated, notACaller.StatusCode);
        var hospital = new MriSeg.KeyRelease.Client.KeyBrokerParty(new KeyBroker.KeyBrokerClient(fixture.Channel(ServiceCatalog.KeyBroker)), "hospital-a", hospitalKey);
        var denied = await Assert.ThrowsAsync<Grpc.Core.RpcException>(async () => await hospital.ReleaseOwnOutputKeyAsync(start.OutputKeyId, ct));
        Assert.Equal(Grpc.Core.StatusCode.PermissionDenied, denied.StatusCode);
    }
}
