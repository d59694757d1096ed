using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Threading.Channels;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Google.Protobuf.WellKnownTypes;
using Grpc.Net.Client;
using MriSeg.CleanRoom;
using MriSeg.Contracts.V1;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.Sealing;

namespace MriSeg.Trainer;

/// <summary>Builds the clean-room run with its dependencies (tests replace it).</summary>
public interface ICleanRoomRunFactory
{
    CleanRoomRun Create();
}

/// <summary>The production wiring: Blob storage, the KeyBroker's party table, the KeyBroker over gRPC as <see cref="CleanRoomIdentity"/>, the attestation of <see cref="AttestationSettings"/>.</summary>
public sealed class CleanRoomRunFactory(CleanRoomIdentity identity, BlobServiceClient blobs, TableServiceClient tables, IHttpClientFactory http, IConfiguration configuration) : ICleanRoomRunFactory
{
    public CleanRoomRun Create()
    {
        KeyBrokerParty party;
        try
        {
            party = identity.Party();
        }
        catch (InvalidOperationException e)
        {
            throw new CleanRoomRunException(RunFailure.Internal, e.Message, e);
        }

        var settings = identity.Settings;
        var (attestation, measurement) = AttestationSettings.From(configuration).Create(party, identity, http);
        return new CleanRoomRun(new BlobPackageSource(blobs), new TableSignerDirectory(tables), new KeyBrokerKeySource(party, attestation),
            new BlobOutputSink(blobs), new CleanRoomRunOptions { CodeMeasurement = measurement, Device = settings.Device }, checkpoints: new BlobCheckpointStore(blobs));
    }
}

/// <summary>
/// Runs in the background, one task each; keeps every live run's last progress for WatchRun and writes each phase
/// change, each epoch and the end to <see cref="RunStore"/> (so GetRun answers after a restart). Metrics: meter
/// "MriSeg.Trainer".
/// </summary>
/// <remarks>
/// As a hosted service it resumes, when the Trainer starts, every run whose record is still queued or running (its
/// trainer was killed or shut down): <see cref="CleanRoomRun.ResumeAsync"/> from the run's last sealed checkpoint,
/// with the steps the record shows passed on as a lower bound of what was spent. Stopping the host interrupts the live
/// runs the way a kill would (nothing settled, records left running, checkpoints kept) so that the next start resumes
/// them; only CancelRun ends a run CANCELLED.
/// </remarks>
public sealed class RunManager(RunStore store, ICleanRoomRunFactory factory, TrainerSettings settings, ILogger<RunManager> logger) : IHostedService, IDisposable
{
    public static readonly Meter Meter = new("MriSeg.Trainer");
    private static readonly Histogram<double> Loss = Meter.CreateHistogram<double>("mriseg.trainer.loss", description: "Mean training loss of an epoch");
    private static readonly Histogram<double> Dice = Meter.CreateHistogram<double>("mriseg.trainer.validation_dice", description: "Validation Dice");
    private static readonly Histogram<double> Epsilon = Meter.CreateHistogram<double>("mriseg.trainer.epsilon", description: "ε spent so far");
    private static readonly Histogram<double> Throughput = Meter.CreateHistogram<double>("mriseg.trainer.samples_per_second", "{slice}/s", "Training throughput");

    private readonly ConcurrentDictionary<string, LiveRun> _live = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly TimeSpan _lease = TimeSpan.FromSeconds(Math.Max(3, settings.RunLeaseSeconds));
    private Task? _resuming;

    /// <summary>This Trainer's name on the runs it leases (one per process).</summary>
    public string LeaseHolder { get; } = $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}";

    /// <summary>Starts a run, or returns the one with the same id.</summary>
    public async Task<RunInfo> StartAsync(StartRunRequest request, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(request.RunId))
        {
            request.RunId = "run-" + Guid.NewGuid().ToString("N")[..12];
        }

        var info = new RunInfo
        {
            RunId = request.RunId,
            Consumer = request.Consumer,
            State = JobState.Queued,
            Phase = RunPhase.Unspecified,
            Created = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
        };
        var live = new LiveRun(request, info);
        if (!_live.TryAdd(request.RunId, live))
        {
            return _live[request.RunId].Snapshot();
        }

        if (!await store.TryAddAsync(request, info, ct).ConfigureAwait(false)
            || !await store.TryAcquireLeaseAsync(request.RunId, LeaseHolder, _lease, ct).ConfigureAwait(false))
        {
            _live.TryRemove(request.RunId, out _);
            return (await store.GetAsync(request.RunId, ct).ConfigureAwait(false))!.Value.Info;
        }

        live.Task = Task.Run(() => ExecuteAsync(live, resume: false, 0), CancellationToken.None);
        return live.Snapshot();
    }

    /// <summary>
    /// Resumes every run whose record is queued or running, that is not live here and whose lease this Trainer can take
    /// (after a kill or a shutdown; a run another live Trainer executes is left to it); returns how many it started.
    /// </summary>
    public async Task<int> ResumeUnfinishedAsync(CancellationToken ct)
    {
        var resumed = 0;
        foreach (var (request, info) in await store.ListUnfinishedAsync(ct).ConfigureAwait(false))
        {
            info.State = JobState.Running;
            var live = new LiveRun(request, info);
            if (!_live.TryAdd(request.RunId, live))
            {
                continue;
            }

            if (!await store.TryAcquireLeaseAsync(request.RunId, LeaseHolder, _lease, ct).ConfigureAwait(false))
            {
                _live.TryRemove(request.RunId, out _);
                logger.LogInformation("Run {RunId} is unfinished but another Trainer holds it; it is resumed here only if that one stops renewing its lease", request.RunId);
                continue;
            }

            var recorded = info.Last?.Step ?? 0;
            logger.LogWarning("Run {RunId} did not finish in an earlier Trainer (last recorded step {Step}): resuming it from its last checkpoint", request.RunId, recorded);
            live.Task = Task.Run(() => ExecuteAsync(live, resume: true, recorded), CancellationToken.None);
            resumed++;
        }

        return resumed;
    }

    /// <summary>Resumes the unfinished runs in the background (storage may still be starting: retried for about a minute).</summary>
    Task IHostedService.StartAsync(CancellationToken cancellationToken)
    {
        _resuming = Task.Run(async () =>
        {
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    await ResumeUnfinishedAsync(_stopping.Token).ConfigureAwait(false);
                    await WatchForAbandonedRunsAsync(_stopping.Token).ConfigureAwait(false);
                    return;
                }
                catch (Azure.RequestFailedException e) when (attempt < 12)
                {
                    logger.LogDebug("Run records not readable yet ({Status}); retrying", e.Status);
                }
                catch (Exception e) when (e is Azure.RequestFailedException or AggregateException or HttpRequestException)
                {
                    logger.LogError(e, "Unfinished runs could not be resumed");
                    return;
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(Math.Min(10, attempt)), _stopping.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }, CancellationToken.None);
        return Task.CompletedTask;
    }

    /// <summary>
    /// Every lease period, resumes the unfinished runs whose Trainer stopped renewing their lease (killed, or cut off from
    /// storage), until this Trainer stops.
    /// </summary>
    private async Task WatchForAbandonedRunsAsync(CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_lease, ct).ConfigureAwait(false);
                await ResumeUnfinishedAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is Azure.RequestFailedException or HttpRequestException)
            {
                logger.LogWarning("Looking for abandoned runs failed ({Reason}); trying again in {Seconds} s", e.Message, _lease.TotalSeconds);
            }
        }
    }

    /// <summary>
    /// Renews the run's lease every third of its length until <paramref name="done"/>. When it is lost (another Trainer took
    /// it after it expired) or cannot be renewed before it expires, the run is interrupted as a kill would: the Trainer
    /// that holds the lease resumes it.
    /// </summary>
    private async Task KeepLeaseAsync(LiveRun live, CancellationToken done)
    {
        var runId = live.Request.RunId;
        var renewed = DateTimeOffset.UtcNow;
        while (!done.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(_lease / 3, done).ConfigureAwait(false);
                if (await store.RenewLeaseAsync(runId, LeaseHolder, _lease, done).ConfigureAwait(false))
                {
                    renewed = DateTimeOffset.UtcNow;
                    continue;
                }

                logger.LogError("Run {RunId}: its lease was taken by another Trainer; stopping here", runId);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            catch (Exception e) when (e is Azure.RequestFailedException or HttpRequestException)
            {
                if (DateTimeOffset.UtcNow - renewed < _lease - (_lease / 3))
                {
                    logger.LogWarning("Run {RunId}: the lease could not be renewed ({Reason}); retrying", runId, e.Message);
                    continue;
                }

                logger.LogError("Run {RunId}: the lease could not be renewed before it expires ({Reason}); stopping here", runId, e.Message);
            }

            live.LeaseLost = true;
            await live.Interruption.CancelAsync().ConfigureAwait(false);
            return;
        }
    }

    /// <summary>Interrupts the live runs (they resume on the next start) and waits for them to stop, at most until <paramref name="cancellationToken"/>.</summary>
    async Task IHostedService.StopAsync(CancellationToken cancellationToken)
    {
        Interrupt();
        var tasks = _live.Values.Select(l => l.Task).Append(_resuming).OfType<Task>().ToArray();
        try
        {
            await Task.WhenAll(tasks).WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            logger.LogWarning("{Count} runs were still stopping when the Trainer shut down", _live.Count);
        }
    }

    public async Task<RunInfo?> GetAsync(string runId, CancellationToken ct) =>
        _live.TryGetValue(runId, out var live) ? live.Snapshot() : (await store.GetAsync(runId, ct).ConfigureAwait(false))?.Info;

    public Task<List<RunInfo>> ListAsync(string? consumer, CancellationToken ct) => store.ListAsync(consumer, ct);

    public async Task<RunInfo?> CancelAsync(string runId, string reason, CancellationToken ct)
    {
        if (_live.TryGetValue(runId, out var live))
        {
            live.CancelReason = string.IsNullOrEmpty(reason) ? "cancelled" : reason;
            await live.Cancellation.CancelAsync().ConfigureAwait(false);
            return live.Snapshot();
        }

        return (await store.GetAsync(runId, ct).ConfigureAwait(false))?.Info;
    }

    /// <summary>Progress from the current state until the run ends; a finished run yields its last progress once.</summary>
    public async IAsyncEnumerable<RunProgress> WatchAsync(string runId, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        if (!_live.TryGetValue(runId, out var live))
        {
            var stored = await store.GetAsync(runId, ct).ConfigureAwait(false);
            if (stored?.Info.Last is { } last)
            {
                yield return last;
            }

            yield break;
        }

        var channel = Channel.CreateUnbounded<RunProgress>();
        live.Subscribe(channel.Writer);
        try
        {
            await foreach (var p in channel.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                yield return p;
            }
        }
        finally
        {
            live.Unsubscribe(channel.Writer);
        }
    }

    private async Task ExecuteAsync(LiveRun live, bool resume, long recordedSteps)
    {
        using var ended = new CancellationTokenSource();
        var keeper = KeepLeaseAsync(live, ended.Token);
        try
        {
            await RunAsync(live, resume, recordedSteps).ConfigureAwait(false);
        }
        finally
        {
            await ended.CancelAsync().ConfigureAwait(false);
            await keeper.ConfigureAwait(false);
            if (!live.LeaseLost)
            {
                try
                {
                    await store.ReleaseLeaseAsync(live.Request.RunId, LeaseHolder, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception e) when (e is Azure.RequestFailedException or HttpRequestException)
                {
                    logger.LogWarning("Run {RunId}: the lease could not be released ({Reason}); it expires in {Seconds} s", live.Request.RunId, e.Message, _lease.TotalSeconds);
                }
            }
        }
    }

    private async Task RunAsync(LiveRun live, bool resume, long recordedSteps)
    {
        var r = live.Request;
        var phase = RunPhase.Unspecified;
        var epoch = 0;
        try
        {
            var spec = new CleanRoomRunSpec
            {
                RunId = r.RunId,
                Consumer = r.Consumer,
                Datasets = [.. r.Datasets],
                BaseModel = r.BaseModel,
                Pipeline = r.Pipeline ?? new SealedPackageRef(),
                ContractId = r.ContractId,
                DatasetContracts = r.DatasetContracts,
                OutputKeyId = r.OutputKeyId,
                OutputContainer = string.IsNullOrEmpty(r.OutputPrefix?.Container) ? null : r.OutputPrefix.Container,
                OutputPrefix = string.IsNullOrEmpty(r.OutputPrefix?.Name) ? null : r.OutputPrefix.Name.TrimEnd('/') + "/",
            };
            var run = factory.Create();
            void OnProgress(RunProgressEvent e)
            {
                var progress = live.Publish(e);
                if (e.Loss is { } loss && e.Phase == RunPhase.Training)
                {
                    Loss.Record(loss, new KeyValuePair<string, object?>("run_id", r.RunId));
                }

                if (e.ValidationDice is { } dice)
                {
                    Dice.Record(dice, new KeyValuePair<string, object?>("run_id", r.RunId));
                }

                if (e.Epsilon is { } eps)
                {
                    Epsilon.Record(eps, new KeyValuePair<string, object?>("run_id", r.RunId));
                }

                if (e.SamplesPerSecond > 0)
                {
                    Throughput.Record(e.SamplesPerSecond, new KeyValuePair<string, object?>("run_id", r.RunId));
                }

                // Each phase and each epoch is recorded: the steps of the record are a lower bound of the spend a resume counts.
                if (e.Phase != phase || e.Epoch != epoch)
                {
                    (phase, epoch) = (e.Phase, e.Epoch);
                    _ = PersistAsync(live);
                }
            }

            CleanRoomRunResult result;
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    result = resume
                        ? await run.ResumeAsync(spec, recordedSteps, OnProgress, live.Cancellation.Token, live.Interruption.Token).ConfigureAwait(false)
                        : await run.ExecuteAsync(spec, OnProgress, live.Cancellation.Token, live.Interruption.Token).ConfigureAwait(false);
                    break;
                }
                catch (CleanRoomRunException e) when (resume && attempt < 10 && IsTransient(e))
                {
                    // The KeyBroker or the attestation service not reachable, or the clean room not registered there yet (a
                    // Trainer that has just started): nothing was settled with a broker that did not answer, and an attempt
                    // whose records it could not read settled nothing at all, so the next attempt resumes the run.
                    logger.LogWarning("Resuming run {RunId}: {Reason}; retrying", r.RunId, e.Message);
                    await Task.Delay(TimeSpan.FromSeconds(Math.Min(30, 2 * attempt)), live.Interruption.Token).ConfigureAwait(false);
                    run = factory.Create();
                }
            }

            live.Finish(JobState.Succeeded, null, result);
            logger.LogInformation("Run {RunId} succeeded: {Outputs} sealed outputs, ε {Epsilon}", r.RunId, result.Outputs.Count, result.Spent.Epsilon);
        }
        catch (Exception e) when (e is CleanRoomRunException { Failure: RunFailure.Interrupted } || (e is OperationCanceledException && live.Interruption.IsCancellationRequested))
        {
            // Not finished: the record stays running, and the next Trainer resumes the run. One that lost its lease leaves
            // the record to the Trainer that took it.
            logger.LogWarning("Run {RunId} interrupted: {Reason}", r.RunId, e.Message);
            if (!live.LeaseLost)
            {
                await PersistAsync(live).ConfigureAwait(false);
            }

            _live.TryRemove(r.RunId, out _);
            return;
        }
        catch (CleanRoomRunException e)
        {
            var cancelled = e.Failure == RunFailure.Cancelled;
            live.Finish(cancelled ? JobState.Cancelled : JobState.Failed, cancelled ? live.CancelReason ?? e.Message : $"{e.Failure}: {e.Message}", null);
            logger.LogWarning("Run {RunId} ended {State}: {Failure}: {Reason}", r.RunId, cancelled ? "CANCELLED" : "FAILED", e.Failure, e.Message);
        }
        catch (Exception e)
        {
            live.Finish(JobState.Failed, $"Internal: {e.Message}", null);
            logger.LogError(e, "Run {RunId} failed", r.RunId);
        }

        await PersistAsync(live).ConfigureAwait(false);
        _live.TryRemove(r.RunId, out _);
    }

    private static bool IsTransient(CleanRoomRunException e) =>
        e.InnerException is Grpc.Core.RpcException { StatusCode: Grpc.Core.StatusCode.Unavailable or Grpc.Core.StatusCode.DeadlineExceeded or Grpc.Core.StatusCode.Unauthenticated }
            or HttpRequestException;

    // One write at a time per run, each of the snapshot at its turn: an earlier progress write never lands after the
    // final one (a record left "running" after the end would be resumed on the next start).
    private async Task PersistAsync(LiveRun live)
    {
        await live.PersistGate.WaitAsync().ConfigureAwait(false);
        try
        {
            await store.UpdateAsync(live.Request, live.Snapshot(), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Azure.RequestFailedException e)
        {
            logger.LogError(e, "Run {RunId}: the run record could not be written", live.Request.RunId);
        }
        finally
        {
            live.PersistGate.Release();
        }
    }

    private void Interrupt()
    {
        _stopping.Cancel();
        foreach (var live in _live.Values)
        {
            live.Interruption.Cancel();
        }
    }

    /// <summary>Interrupts the live runs (a shutdown is not a cancellation: they resume on the next start).</summary>
    public void Dispose() => Interrupt();

    private sealed class LiveRun(StartRunRequest request, RunInfo info)
    {
        private readonly object _gate = new();
        private readonly List<ChannelWriter<RunProgress>> _watchers = [];

        public StartRunRequest Request { get; } = request;

        public CancellationTokenSource Cancellation { get; } = new();

        /// <summary>Stops the run as a kill would (the host shutting down).</summary>
        public CancellationTokenSource Interruption { get; } = new();

        /// <summary>Another Trainer took the run's lease: this one stops without writing the run's record again.</summary>
        public volatile bool LeaseLost;

        public SemaphoreSlim PersistGate { get; } = new(1, 1);

        public Task? Task { get; set; }

        public string? CancelReason { get; set; }

        public RunInfo Snapshot()
        {
            lock (_gate)
            {
                return info.Clone();
            }
        }

        public RunProgress Publish(RunProgressEvent e)
        {
            var p = new RunProgress
            {
                RunId = info.RunId,
                State = JobState.Running,
                Phase = e.Phase,
                Epoch = e.Epoch,
                Epochs = e.Epochs,
                Step = e.Step,
                Steps = e.Steps,
                Loss = e.Loss ?? 0,
                EpsilonSpent = e.Epsilon ?? 0,
                EpsilonTarget = e.EpsilonTarget ?? 0,
                Delta = e.Delta ?? 0,
                SamplesPerSecond = e.SamplesPerSecond,
                Message = e.Message,
                At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
            };
            if (e.ValidationDice is { } dice)
            {
                p.ValidationDice = dice;
            }

            lock (_gate)
            {
                // Keep the last known numbers when a report (e.g. a phase change) carries none.
                if (info.Last is { } last)
                {
                    p.Epochs = p.Epochs == 0 ? last.Epochs : p.Epochs;
                    p.Steps = p.Steps == 0 ? last.Steps : p.Steps;
                    p.EpsilonTarget = p.EpsilonTarget == 0 ? last.EpsilonTarget : p.EpsilonTarget;
                    p.Delta = p.Delta == 0 ? last.Delta : p.Delta;
                }

                info.State = JobState.Running;
                info.Phase = e.Phase;
                info.Last = p;
                foreach (var w in _watchers)
                {
                    w.TryWrite(p);
                }
            }

            return p;
        }

        public void Finish(JobState state, string? error, CleanRoomRunResult? result)
        {
            lock (_gate)
            {
                info.State = state;
                info.Finished = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow);
                info.Error = error ?? "";
                if (result is not null)
                {
                    info.Outputs.AddRange(result.Outputs);
                    info.Privacy = result.Spent;
                    info.Phase = RunPhase.Done;
                }

                var last = info.Last?.Clone() ?? new RunProgress { RunId = info.RunId };
                last.State = state;
                last.Phase = info.Phase;
                last.Error = info.Error;
                last.At = info.Finished;
                info.Last = last;
                foreach (var w in _watchers)
                {
                    w.TryWrite(last);
                    w.TryComplete();
                }

                _watchers.Clear();
            }
        }

        public void Subscribe(ChannelWriter<RunProgress> writer)
        {
            lock (_gate)
            {
                if (info.Last is { } last)
                {
                    writer.TryWrite(last);
                }

                if (info.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
                {
                    writer.TryComplete();
                    return;
                }

                _watchers.Add(writer);
            }
        }

        public void Unsubscribe(ChannelWriter<RunProgress> writer)
        {
            lock (_gate)
            {
                _watchers.Remove(writer);
            }
        }
    }
}
