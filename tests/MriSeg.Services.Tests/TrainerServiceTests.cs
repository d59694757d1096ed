using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.CleanRoom;
using MriSeg.Trainer;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The Trainer service in-process over Azurite, its runs against the in-process KeyBroker: start, watch, idempotence, records after a restart, failures.</summary>
public sealed class TrainerServiceTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private readonly AzuriteFixture azurite;
    private readonly CleanRoomWorld env;
    private readonly string measurement = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));
    private readonly List<IDisposable> hosts = [];

    public TrainerServiceTests(AzuriteFixture azurite)
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

    private V1.Trainer.TrainerClient Trainer(CleanRoomWorld.World world)
    {
        var host = new ServiceHost<TrainerService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
        });
        var factory = host.WithWebHostBuilder(b => b.ConfigureTestServices(s => s.AddSingleton<ICleanRoomRunFactory>(new WorldFactory(env, world))));
        hosts.Add(host);
        hosts.Add(factory);
        return new V1.Trainer.TrainerClient(GrpcChannel.ForAddress(factory.Server.BaseAddress, new GrpcChannelOptions { HttpHandler = factory.Server.CreateHandler() }));
    }

    private static V1.StartRunRequest Request(CleanRoomWorld.World world, string runId)
    {
        var spec = world.Spec(runId);
        var request = new V1.StartRunRequest
        {
            RunId = runId,
            Consumer = world.Consumer,
            Pipeline = world.Pipeline,
            ContractId = spec.ContractId,
            OutputKeyId = world.OutputKey.KeyId,
        };
        request.Datasets.AddRange(world.Datasets);
        request.DatasetContracts.Add(world.Contracts);
        return request;
    }

    private static async Task<List<V1.RunProgress>> WatchAsync(V1.Trainer.TrainerClient client, string runId)
    {
        using var call = client.WatchRun(new V1.WatchRunRequest { RunId = runId }, cancellationToken: Ct);
        var seen = new List<V1.RunProgress>();
        await foreach (var p in call.ResponseStream.ReadAllAsync(Ct))
        {
            seen.Add(p);
        }

        return seen;
    }

    [Fact]
    public async Task A_started_run_streams_to_success_is_idempotent_and_its_record_survives_a_restart()
    {
        var world = await env.NewWorldAsync(measurement, Ct);
        var client = Trainer(world);
        var runId = "svc-" + world.Suffix;
        var started = await client.StartRunAsync(Request(world, runId), cancellationToken: Ct);
        Assert.Equal(runId, started.RunId);
        var again = await client.StartRunAsync(Request(world, runId), cancellationToken: Ct);
        Assert.Equal(started.Created, again.Created);

        var progress = await WatchAsync(client, runId);
        Assert.Equal(V1.JobState.Succeeded, progress[^1].State);
        Assert.Contains(progress, p => p.Phase == V1.RunPhase.Training && p.EpsilonSpent > 0);

        var info = await client.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Succeeded, info.State);
        Assert.Equal(CleanRoomRun.OutputNames.Count, info.Outputs.Count);
        Assert.InRange(info.Privacy.Epsilon, 0.01, 4);

        // A new Trainer process (same storage) answers from the run record; the same id does not start it again.
        var restarted = Trainer(world);
        var after = await restarted.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Succeeded, after.State);
        Assert.Equal(info.Outputs, after.Outputs);
        Assert.Equal(V1.JobState.Succeeded, (await restarted.StartRunAsync(Request(world, runId), cancellationToken: Ct)).State);
        var listed = await restarted.ListRunsAsync(new V1.ListRunsRequest { Consumer = world.Consumer }, cancellationToken: Ct);
        Assert.Equal([runId], listed.Runs.Select(r => r.RunId));
    }

    [Fact]
    public async Task A_run_with_a_missing_dataset_ends_failed_with_the_reason_in_get_run()
    {
        var world = await env.NewWorldAsync(measurement, Ct);
        var client = Trainer(world);
        var request = Request(world, "svc-missing-" + world.Suffix);
        request.Datasets[1] = request.Datasets[1].Clone();
        request.Datasets[1].Blob.Name = "shards/nowhere.sealed";
        await client.StartRunAsync(request, cancellationToken: Ct);
        var progress = await WatchAsync(client, request.RunId);
        Assert.Equal(V1.JobState.Failed, progress[^1].State);
        var info = await client.GetRunAsync(new V1.GetRunRequest { RunId = request.RunId }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Failed, info.State);
        Assert.Contains("MissingPackage", info.Error);
        Assert.Contains("nowhere.sealed", info.Error);
        Assert.Empty(info.Outputs);
        var e = await Assert.ThrowsAsync<RpcException>(async () => await client.GetRunAsync(new V1.GetRunRequest { RunId = "no-such-run" }, cancellationToken: Ct));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
    }

    [Fact]
    public async Task Cancel_run_on_a_running_run_ends_it_cancelled_with_the_reason_and_releases_nothing()
    {
        // Twelve epochs: long enough that the cancellation lands while the run trains.
        var world = await env.NewWorldAsync(measurement, Ct, pipelineJson: CleanRoomWorld.PipelineWithEpochs(12));
        var client = Trainer(world);
        var runId = "svc-cancel-" + world.Suffix;
        await client.StartRunAsync(Request(world, runId), cancellationToken: Ct);

        const string reason = "stopped by the operator: wrong pipeline";
        var progress = new List<V1.RunProgress>();
        V1.RunInfo? cancelled = null;
        using (var call = client.WatchRun(new V1.WatchRunRequest { RunId = runId }, cancellationToken: Ct))
        {
            await foreach (var p in call.ResponseStream.ReadAllAsync(Ct))
            {
                progress.Add(p);
                if (cancelled is null && p.Phase == V1.RunPhase.Training && p.Step >= 1)
                {
                    cancelled = await client.CancelRunAsync(new V1.CancelRunRequest { RunId = runId, Reason = reason }, cancellationToken: Ct);
                }
            }
        }

        Assert.NotNull(cancelled);
        Assert.Equal(V1.JobState.Cancelled, progress[^1].State);
        Assert.Equal(reason, progress[^1].Error);
        var stepsBefore = progress.Where(p => p.Phase == V1.RunPhase.Training).Max(p => p.Step);
        Assert.True(stepsBefore < progress.First(p => p.Steps > 0 && p.Phase == V1.RunPhase.Training).Steps, "the run finished before the cancellation");

        var info = await client.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Cancelled, info.State);
        Assert.Equal(reason, info.Error);
        Assert.Empty(info.Outputs);

        // Nothing uploaded; the checkpoints removed; the spend settled at the steps taken (they stay spent), nothing reserved.
        var container = env.Blobs.GetBlobContainerClient(world.Consumer);
        await foreach (var item in container.GetBlobsAsync(Azure.Storage.Blobs.Models.BlobTraits.None, Azure.Storage.Blobs.Models.BlobStates.None, "", cancellationToken: Ct))
        {
            Assert.False(item.Name.StartsWith($"outputs/{runId}/", StringComparison.Ordinal), $"a cancelled run uploaded {item.Name}");
            Assert.False(item.Name.StartsWith(RunCheckpoints.PrefixOf(runId), StringComparison.Ordinal), $"a cancelled run left {item.Name}");
        }

        var engine = env.Broker.Services.GetRequiredService<MriSeg.KeyRelease.KeyBrokerEngine>();
        foreach (var contract in world.Contracts.Values)
        {
            var record = (await engine.Ledger.GetAsync(contract, Ct))!.Value.Record;
            var run = Assert.Single(record.Runs, r => r.RunId == runId);
            Assert.InRange(run.SettledSteps!.Value, 1, run.Steps - 1);
            var budget = await env.Client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = contract }, env.Party(world.CleanRoom).Credentials(), cancellationToken: Ct);
            Assert.Equal(0, budget.EpsilonReserved, 9);
            Assert.True(budget.EpsilonSpent > 0);
        }

        // Cancelling again answers the finished run's record.
        var again = await client.CancelRunAsync(new V1.CancelRunRequest { RunId = runId, Reason = "again" }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Cancelled, again.State);
        Assert.Equal(reason, again.Error);
    }

    private sealed class WorldFactory(CleanRoomWorld env, CleanRoomWorld.World world) : ICleanRoomRunFactory
    {
        public CleanRoomRun Create() => env.Runner(world);
    }
}
