using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Azure.Data.Tables;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.CleanRoom;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Contracts;
using MriSeg.Learning.Training;
using MriSeg.Privacy;
using MriSeg.Sealing;
using MriSeg.Trainer;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>
/// Sealed per-epoch checkpoints and resume after a killed trainer, over Azurite with the KeyBroker in-process: the lost
/// steps count, the budget is charged once, a tampered checkpoint is refused, and the Trainer resumes its unfinished
/// runs when it starts again.
/// </summary>
public sealed class CheckpointResumeTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private readonly AzuriteFixture azurite;
    private readonly CleanRoomWorld env;
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly List<IDisposable> hosts = [];

    public CheckpointResumeTests(AzuriteFixture azurite)
    {
        azurite.Require();
        this.azurite = azurite;
        env = new CleanRoomWorld(azurite);
    }

    public void Dispose()
    {
        foreach (var h in hosts)
        {
            h.Dispose();
        }

        env.Dispose();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_killed_run_resumes_from_its_sealed_checkpoint_counts_its_lost_steps_and_is_charged_once()
    {
        var started = DateTime.UtcNow.AddSeconds(-1);
        var pipelineJson = CleanRoomWorld.PipelineWithEpochs(4);
        var pipelineSha = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(pipelineJson)));
        var world = await env.NewWorldAsync(measurement, Ct, pipelineJson: pipelineJson);
        const string runId = "run-killed";
        var spec = world.Spec(runId);
        var container = env.Blobs.GetBlobContainerClient(world.Consumer);

        // First attempt: killed (interrupted between steps, as a killed process stops) at the first step after epoch 1's checkpoint.
        var first = new List<RunProgressEvent>();
        using var kill = new CancellationTokenSource();
        var checkpointed = false;
        var killed = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ExecuteAsync(spec, e =>
        {
            lock (first)
            {
                first.Add(e);
            }

            checkpointed |= e.Message.StartsWith("checkpoint of epoch 1 sealed", StringComparison.Ordinal);
            if (checkpointed && e.Phase == V1.RunPhase.Training && e.Message.StartsWith("step ", StringComparison.Ordinal))
            {
                kill.Cancel();
            }
        }, Ct, kill.Token));
        Assert.Equal(RunFailure.Interrupted, killed.Failure);
        var killedAt = first.Last(e => e.Message.StartsWith("step ", StringComparison.Ordinal)).Step;
        var checkpointAt = first.Single(e => e.Message.StartsWith("checkpoint of epoch 1 sealed", StringComparison.Ordinal)).Step;
        var declared = first.First(e => e.Message.StartsWith("declaring", StringComparison.Ordinal)).Steps;
        var planned = first.First(e => e.Message.StartsWith("step ", StringComparison.Ordinal)).Steps;
        Assert.InRange(planned, 1, declared);
        Assert.Equal(checkpointAt + 1, killedAt);
        Assert.True(planned >= 3 * checkpointAt, $"{planned} steps planned, epoch 1 ends at {checkpointAt}");

        // What the kill left: the state of epoch 1 and the steps marker, nothing uploaded, nothing settled.
        var prefix = RunCheckpoints.PrefixOf(runId);
        Assert.Equal([prefix + RunCheckpoints.StateName(1), prefix + RunCheckpoints.StepsName], (await ListAsync(world.Consumer, prefix)).Order());
        Assert.Empty(await ListAsync(world.Consumer, $"outputs/{runId}/"));
        var stateBytes = (await container.GetBlobClient(prefix + RunCheckpoints.StateName(1)).DownloadContentAsync(Ct)).Value.Content.ToArray();
        var markerBytes = (await container.GetBlobClient(prefix + RunCheckpoints.StepsName).DownloadContentAsync(Ct)).Value.Content.ToArray();

        // Sealed: a checkpoint package signed by the run's attested key, under a key that is not the consumer's output key;
        // the consumer's own output key opens nothing, and no shard plaintext nor the checkpoint's own clear format is in the blob.
        var info = SealedPackage.Inspect(new MemoryStream(stateBytes), SignerCheck.SkipSignatureVerification);
        Assert.Equal(ContentType.Checkpoint, info.Manifest.ContentType);
        Assert.Equal(world.CleanRoom, info.Manifest.Owner);
        Assert.Equal(runId, info.Manifest.Metadata["mriseg.run_id"]);
        Assert.NotEqual(world.OutputKey.KeyId, info.KeyId);
        using (var signer = SignerPublicKey.FromPem(info.Manifest.Metadata["mriseg.signer_public_key"]))
        {
            Assert.True(SealedPackage.Inspect(new MemoryStream(stateBytes), SignerCheck.Expect(signer)).SignatureVerified);
        }

        using (var consumerKey = await env.Party(world.Consumer).ReleaseOwnOutputKeyAsync(world.OutputKey.KeyId, Ct))
        {
            await Assert.ThrowsAsync<SealedPackageException>(() => SealedPackage.OpenToMemoryAsync(new MemoryStream(stateBytes), consumerKey, SignerCheck.SkipSignatureVerification, cancellationToken: Ct));
        }

        var scan = new PlaintextScan(world.ShardTensorData);
        Assert.False(scan.Contains(stateBytes));
        Assert.False(scan.Contains(markerBytes));
        Assert.DoesNotContain("training_checkpoint", Encoding.Latin1.GetString(stateBytes), StringComparison.Ordinal);
        Assert.DoesNotContain("steps_started\"", Encoding.Latin1.GetString(markerBytes), StringComparison.Ordinal);

        // With every key of the run (the clean room's position), the checkpoint opens: epoch 1's state, and the marker
        // says the second epoch's steps may all have run.
        using (var key = RunCheckpoints.DeriveKey(runId, world.Consumer, pipelineSha, world.OutputKey, world.DatasetKeys))
        {
            using var state = await SealedPackage.OpenToMemoryAsync(new MemoryStream(stateBytes), key, SignerCheck.SkipSignatureVerification, cancellationToken: Ct);
            var checkpoint = TrainingCheckpoint.FromBytes(state.ToArray());
            Assert.Equal((1, checkpointAt, 0L), (checkpoint.Epoch, checkpoint.Steps, checkpoint.LostSteps));
            Assert.NotEmpty(checkpoint.Weights);
            Assert.NotEmpty(checkpoint.OptimizerTensors);
            using var marker = await SealedPackage.OpenToMemoryAsync(new MemoryStream(markerBytes), key, SignerCheck.SkipSignatureVerification, cancellationToken: Ct);
            Assert.Equal(2 * checkpointAt, JsonDocument.Parse(marker.ToArray()).RootElement.GetProperty("steps_started").GetInt64());
        }

        // The broker holds the run's reservation, unsettled, once per contract; the same run id cannot widen it.
        var engine = env.Broker.Services.GetRequiredService<KeyBrokerEngine>();
        var reserved = await LedgerRunAsync(engine, world, runId);
        Assert.All(reserved, r => Assert.False(r.Settled));
        var run0 = reserved[0];
        Assert.Equal(declared, run0.Steps);
        var wider = new V1.PrivacyParameters
        {
            Epsilon = run0.DeclaredEpsilon, Delta = run0.DeclaredDelta, Sigma = run0.NoiseMultiplier, SampleRate = run0.SampleRate, Steps = run0.Steps + 1, Accountant = "rdp",
        };
        var party = env.Party(world.CleanRoom);
        var widen = await Assert.ThrowsAsync<RpcException>(() => party.ReleaseWithAttestationAsync(world.Datasets[0].KeyId,
            new ReleaseRun(runId, world.Contracts[world.Datasets[0].KeyId], world.Consumer, pipelineSha, wider),
            party.DevelopmentAttestation(env.Http, CleanRoomWorld.Issuer, measurement), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, widen.StatusCode);
        Assert.Contains("reserved other parameters", widen.Status.Detail, StringComparison.Ordinal);

        // A tampered checkpoint: one byte of the sealed state flipped. The resume is refused with the reason, before any
        // training, and nothing is settled, removed or uploaded.
        var tampered = stateBytes.ToArray();
        tampered[tampered.Length / 2] ^= 1;
        await container.GetBlobClient(prefix + RunCheckpoints.StateName(1)).UploadAsync(BinaryData.FromBytes(tampered), overwrite: true, Ct);
        var refusedEvents = new List<RunProgressEvent>();
        var refused = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ResumeAsync(spec, 0, refusedEvents.Add, Ct));
        Assert.Equal(RunFailure.TamperedPackage, refused.Failure);
        Assert.Contains($"the checkpoint {world.Consumer.ToLowerInvariant()}/{prefix}{RunCheckpoints.StateName(1)} is refused", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(refusedEvents, e => e.Phase == V1.RunPhase.Training);
        Assert.All(await LedgerRunAsync(engine, world, runId), r => Assert.False(r.Settled));
        Assert.Equal(2, (await ListAsync(world.Consumer, prefix)).Count);
        Assert.Empty(await ListAsync(world.Consumer, $"outputs/{runId}/"));
        await container.GetBlobClient(prefix + RunCheckpoints.StateName(1)).UploadAsync(BinaryData.FromBytes(stateBytes), overwrite: true, Ct);

        // Resume in a new clean-room run: fresh attestation, the keys again under the same run id, training from epoch 1's
        // state for the rest of the declared steps only.
        var second = new List<RunProgressEvent>();
        var result = await env.Runner(world).ResumeAsync(spec, 0, e => { lock (second) { second.Add(e); } }, Ct);
        var steps = second.Where(e => e.Phase == V1.RunPhase.Training && e.Message.StartsWith("step ", StringComparison.Ordinal)).ToList();
        Assert.Equal(2 * checkpointAt + 1, steps[0].Step);
        Assert.Equal(planned - (2 * checkpointAt), steps.Count);
        Assert.Contains(second, e => e.Message.Contains($"{2 * checkpointAt} steps counted as spent, {checkpointAt} of them lost", StringComparison.Ordinal));
        Assert.Equal(planned, result.Spent.Steps);

        // The consumer opens every output; the card states all the steps, the lost ones, and ε composed over all of them,
        // within the target and the contract's per-run cap.
        using var outputKey = await env.Party(world.Consumer).ReleaseOwnOutputKeyAsync(world.OutputKey.KeyId, Ct);
        using var runSigner = SignerPublicKey.FromPem(result.SigningKeyPem);
        Assert.Equal(CleanRoomRun.OutputNames.Count, result.Outputs.Count);
        var opened = new Dictionary<string, byte[]>();
        foreach (var output in result.Outputs)
        {
            var bytes = (await container.GetBlobClient(output.Blob.Name).DownloadContentAsync(Ct)).Value.Content.ToArray();
            using var package = await SealedPackage.OpenToMemoryAsync(new MemoryStream(bytes), outputKey, SignerCheck.Expect(runSigner), cancellationToken: Ct);
            opened[package.Info.Manifest.Metadata["mriseg.file"]] = package.ToArray();
        }

        var card = ModelCard.FromJson(Encoding.UTF8.GetString(opened["model-card.json"]));
        Assert.NotNull(card.Privacy);
        Assert.Equal(planned, card.Privacy!.Steps);
        Assert.Equal(checkpointAt, card.Privacy.LostSteps);
        var composed = PrivacyAccounting.ComputeEpsilon(card.Privacy.SampleRate, card.Privacy.Sigma, planned, CleanRoomWorld.Delta, AccountantKind.Rdp).Epsilon;
        Assert.Equal(composed, card.Privacy.Epsilon, 9);
        Assert.InRange(card.Privacy.Epsilon, 0.01, 4.0);
        Assert.Contains("of them taken by an interrupted attempt", Encoding.UTF8.GetString(opened["model-card.md"]), StringComparison.Ordinal);

        // Charged once: one ledger entry per contract, settled at the planned steps; ε spent is that one run's, within
        // the per-run cap; nothing reserved.
        foreach (var r in await LedgerRunAsync(engine, world, runId))
        {
            Assert.Equal(planned, r.SettledSteps);
        }

        foreach (var contract in world.Contracts.Values)
        {
            var budget = await env.Client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = contract }, party.Credentials(), cancellationToken: Ct);
            var once = PrivacyComposition.Epsilon([new PrivacyEvent(run0.SampleRate, run0.NoiseMultiplier, planned)], CleanRoomWorld.Delta);
            Assert.Equal(once, budget.EpsilonSpent, 9);
            Assert.Equal(0, budget.EpsilonReserved, 9);
            Assert.True(budget.EpsilonSpent <= budget.EpsilonPerRunCap, $"ε {budget.EpsilonSpent} over the per-run cap {budget.EpsilonPerRunCap}");
        }

        // The finished run removed its checkpoints; it cannot run again (the broker refuses a settled run).
        Assert.Empty(await ListAsync(world.Consumer, prefix));
        var again = await Assert.ThrowsAsync<CleanRoomRunException>(() => env.Runner(world).ResumeAsync(spec, 0, null, Ct));
        Assert.Equal(RunFailure.PolicyRefused, again.Failure);
        Assert.Contains("already settled", again.Message, StringComparison.Ordinal);

        // Nothing decrypted reached a disk: the temporary folder and Azurite's storage hold no shard plaintext.
        Assert.Empty(scan.FindIn([Path.GetTempPath(), env.Azurite.Location!], started));
    }

    [Fact]
    public async Task A_trainer_shut_down_mid_run_resumes_the_run_when_it_starts_again_once_no_other_trainer_holds_its_lease()
    {
        var world = await env.NewWorldAsync(measurement, Ct, pipelineJson: CleanRoomWorld.PipelineWithEpochs(6));
        var runId = "svc-resume-" + world.Suffix;
        var request = new V1.StartRunRequest
        {
            RunId = runId,
            Consumer = world.Consumer,
            Pipeline = world.Pipeline,
            ContractId = world.Spec(runId).ContractId,
            OutputKeyId = world.OutputKey.KeyId,
        };
        request.Datasets.AddRange(world.Datasets);
        request.DatasetContracts.Add(world.Contracts);

        // The first Trainer starts the run; once epoch 1's checkpoint is stored the Trainer shuts down.
        var (firstHost, client) = Trainer(world);
        await client.StartRunAsync(request, cancellationToken: Ct);
        using (var watch = CancellationTokenSource.CreateLinkedTokenSource(Ct))
        {
            using var call = client.WatchRun(new V1.WatchRunRequest { RunId = runId }, cancellationToken: watch.Token);
            await foreach (var p in call.ResponseStream.ReadAllAsync(watch.Token))
            {
                Assert.Equal(V1.JobState.Running, p.State);
                if (p.Message.StartsWith("checkpoint of epoch 1 sealed", StringComparison.Ordinal))
                {
                    break;
                }
            }

            await watch.CancelAsync();
        }

        firstHost.Dispose();
        var store = new RunStore(new TableServiceClient(azurite.TableConnectionString));
        var left = (await store.GetAsync(runId, Ct))!.Value.Info;
        Assert.Equal(V1.JobState.Running, left.State);
        Assert.NotEmpty(await ListAsync(world.Consumer, RunCheckpoints.PrefixOf(runId)));
        Assert.Null(await store.GetLeaseAsync(runId, Ct)); // a Trainer that stops releases its runs' leases

        // As if a killed Trainer still held the run (its lease not yet expired): a new Trainer leaves it alone at start...
        Assert.True(await store.TryAcquireLeaseAsync(runId, "killed-trainer", TimeSpan.FromSeconds(4), Ct));
        var (restartedHost, restarted) = Trainer(world);
        var second = ((WebApplicationFactory<TrainerService>)restartedHost).Services.GetRequiredService<RunManager>();
        Assert.Equal(0, await second.ResumeUnfinishedAsync(Ct));
        Assert.Equal("killed-trainer", (await store.GetLeaseAsync(runId, Ct))?.Holder);

        // ...and takes it over once that lease has expired, on its own; a third Trainer then finds it held and stays out.
        for (var i = 0; i < 100 && (await store.GetLeaseAsync(runId, Ct))?.Holder != second.LeaseHolder; i++)
        {
            await Task.Delay(200, Ct);
        }

        Assert.Equal(second.LeaseHolder, (await store.GetLeaseAsync(runId, Ct))?.Holder);
        var (thirdHost, _) = Trainer(world);
        Assert.Equal(0, await ((WebApplicationFactory<TrainerService>)thirdHost).Services.GetRequiredService<RunManager>().ResumeUnfinishedAsync(Ct));
        var info = await restarted.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: Ct);
        for (var i = 0; i < 600 && info.State is V1.JobState.Running or V1.JobState.Queued; i++)
        {
            await Task.Delay(200, Ct);
            info = await restarted.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: Ct);
        }

        Assert.Equal(V1.JobState.Succeeded, info.State);
        Assert.Equal(CleanRoomRun.OutputNames.Count, info.Outputs.Count);
        var engine = env.Broker.Services.GetRequiredService<KeyBrokerEngine>();
        Assert.True(info.Privacy.Steps > 0);
        foreach (var r in await LedgerRunAsync(engine, world, runId))
        {
            Assert.Equal(info.Privacy.Steps, r.SettledSteps);
            Assert.True(r.SettledSteps <= r.Steps);
        }

        Assert.Empty(await ListAsync(world.Consumer, RunCheckpoints.PrefixOf(runId)));
        Assert.Null(await store.GetLeaseAsync(runId, Ct));
    }

    [Fact]
    public async Task A_run_lease_is_held_by_one_trainer_until_it_releases_it_or_lets_it_expire()
    {
        var clock = new ManualClock(DateTimeOffset.UtcNow);
        var store = new RunStore(new TableServiceClient(azurite.TableConnectionString), clock);
        var runId = "lease-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
        var minute = TimeSpan.FromMinutes(1);

        Assert.False(await store.RenewLeaseAsync(runId, "a", minute, Ct)); // nothing to renew
        Assert.True(await store.TryAcquireLeaseAsync(runId, "a", minute, Ct));
        Assert.False(await store.TryAcquireLeaseAsync(runId, "b", minute, Ct));
        Assert.False(await store.RenewLeaseAsync(runId, "b", minute, Ct));
        await store.ReleaseLeaseAsync(runId, "b", Ct); // not b's: nothing happens
        Assert.Equal("a", (await store.GetLeaseAsync(runId, Ct))?.Holder);

        clock.Advance(TimeSpan.FromSeconds(50));
        Assert.True(await store.RenewLeaseAsync(runId, "a", minute, Ct)); // now runs to 110 s
        clock.Advance(TimeSpan.FromSeconds(50));
        Assert.False(await store.TryAcquireLeaseAsync(runId, "b", minute, Ct));

        // a stops renewing: once its lease has expired b takes the run, and a can no longer renew or release it.
        clock.Advance(TimeSpan.FromSeconds(11));
        Assert.True(await store.TryAcquireLeaseAsync(runId, "b", minute, Ct));
        Assert.False(await store.RenewLeaseAsync(runId, "a", minute, Ct));
        await store.ReleaseLeaseAsync(runId, "a", Ct);
        Assert.Equal("b", (await store.GetLeaseAsync(runId, Ct))?.Holder);

        await store.ReleaseLeaseAsync(runId, "b", Ct);
        Assert.Null(await store.GetLeaseAsync(runId, Ct));
        Assert.True(await store.TryAcquireLeaseAsync(runId, "a", minute, Ct));
    }

    private sealed class ManualClock(DateTimeOffset now) : TimeProvider
    {
        private DateTimeOffset _now = now;

        public override DateTimeOffset GetUtcNow() => _now;

        public void Advance(TimeSpan by) => _now += by;
    }

    /// <summary>The run's entry in each of the world's contract ledgers (exactly one each: the budget is charged once).</summary>
    private static async Task<List<PrivacyRun>> LedgerRunAsync(KeyBrokerEngine engine, CleanRoomWorld.World world, string runId)
    {
        var runs = new List<PrivacyRun>();
        foreach (var contract in world.Contracts.Values)
        {
            var record = (await engine.Ledger.GetAsync(contract, Ct))!.Value.Record;
            runs.Add(Assert.Single(record.Runs, r => r.RunId == runId));
        }

        return runs;
    }

    private async Task<List<string>> ListAsync(string container, string prefix)
    {
        var names = new List<string>();
        var client = env.Blobs.GetBlobContainerClient(container);
        if (!await client.ExistsAsync(Ct))
        {
            return names;
        }

        await foreach (var item in client.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, prefix, cancellationToken: Ct))
        {
            names.Add(item.Name);
        }

        return names;
    }

    private (IDisposable Host, V1.Trainer.TrainerClient Client) Trainer(CleanRoomWorld.World world)
    {
        var host = new ServiceHost<TrainerService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["Trainer:RunLeaseSeconds"] = "3", // a killed Trainer's runs are taken over within seconds
        });
        var factory = host.WithWebHostBuilder(b => b.ConfigureTestServices(s => s.AddSingleton<ICleanRoomRunFactory>(new WorldFactory(env, world))));
        hosts.Add(host);
        hosts.Add(factory);
        var client = new V1.Trainer.TrainerClient(GrpcChannel.ForAddress(factory.Server.BaseAddress, new GrpcChannelOptions { HttpHandler = factory.Server.CreateHandler() }));
        return (factory, client);
    }

    private sealed class WorldFactory(CleanRoomWorld env, CleanRoomWorld.World world) : ICleanRoomRunFactory
    {
        public CleanRoomRun Create() => env.Runner(world);
    }
}
