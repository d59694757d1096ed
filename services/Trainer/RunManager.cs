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

/// <summary>The production wiring: Blob storage, Packaging's owner registry, the KeyBroker over gRPC, the development authority.</summary>
public sealed class CleanRoomRunFactory(TrainerSettings settings, BlobServiceClient blobs, TableServiceClient tables, IHttpClientFactory http) : ICleanRoomRunFactory
{
    private readonly Lazy<string> _measurement = new(() => SoftwareMeasurement.OfDirectory(settings.MeasuredDirectory));

    public CleanRoomRun Create()
    {
        var keyPath = settings.PartyKeyPath ?? throw new CleanRoomRunException(RunFailure.Internal, "Trainer:PartyKeyPath is not set: the clean room has no party key for the KeyBroker");
        var channel = GrpcChannel.ForAddress(settings.KeyBrokerAddress);
        var party = new KeyBrokerParty(new KeyBroker.KeyBrokerClient(channel), settings.PartyId, SigningKey.Load(keyPath));
        var attestation = party.DevelopmentAttestation(http.CreateClient("attestation"), settings.AttestationIssuer, _measurement.Value);
        return new CleanRoomRun(new BlobPackageSource(blobs), new TableSignerDirectory(tables), new KeyBrokerKeySource(party, attestation),
            new BlobOutputSink(blobs), new CleanRoomRunOptions { CodeMeasurement = _measurement.Value, Device = settings.Device });
    }
}

/// <summary>
/// Runs in the background, one task each; keeps every live run's last progress for WatchRun and writes each phase
/// change and the end to <see cref="RunStore"/> (so GetRun answers after a restart). Metrics: meter "MriSeg.Trainer".
/// </summary>
public sealed class RunManager(RunStore store, ICleanRoomRunFactory factory, ILogger<RunManager> logger) : IDisposable
{
    public static readonly Meter Meter = new("MriSeg.Trainer");
    private static readonly Histogram<double> Loss = Meter.CreateHistogram<double>("mriseg.trainer.loss", description: "Mean training loss of an epoch");
    private static readonly Histogram<double> Dice = Meter.CreateHistogram<double>("mriseg.trainer.validation_dice", description: "Validation Dice");
    private static readonly Histogram<double> Epsilon = Meter.CreateHistogram<double>("mriseg.trainer.epsilon", description: "ε spent so far");
    private static readonly Histogram<double> Throughput = Meter.CreateHistogram<double>("mriseg.trainer.samples_per_second", "{slice}/s", "Training throughput");

    private readonly ConcurrentDictionary<string, LiveRun> _live = new(StringComparer.Ordinal);

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

        if (!await store.TryAddAsync(request, info, ct).ConfigureAwait(false))
        {
            _live.TryRemove(request.RunId, out _);
            return (await store.GetAsync(request.RunId, ct).ConfigureAwait(false))!.Value.Info;
        }

        _ = Task.Run(() => ExecuteAsync(live), CancellationToken.None);
        return live.Snapshot();
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

    private async Task ExecuteAsync(LiveRun live)
    {
        var r = live.Request;
        var phase = RunPhase.Unspecified;
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
            var result = await factory.Create().ExecuteAsync(spec, e =>
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

                if (e.Phase != phase)
                {
                    phase = e.Phase;
                    _ = PersistAsync(live);
                }
            }, live.Cancellation.Token).ConfigureAwait(false);
            live.Finish(JobState.Succeeded, null, result);
            logger.LogInformation("Run {RunId} succeeded: {Outputs} sealed outputs, ε {Epsilon}", r.RunId, result.Outputs.Count, result.Spent.Epsilon);
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

    private async Task PersistAsync(LiveRun live)
    {
        try
        {
            await store.UpdateAsync(live.Request, live.Snapshot(), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Azure.RequestFailedException e)
        {
            logger.LogError(e, "Run {RunId}: the run record could not be written", live.Request.RunId);
        }
    }

    public void Dispose()
    {
        foreach (var live in _live.Values)
        {
            live.Cancellation.Cancel();
        }
    }

    private sealed class LiveRun(StartRunRequest request, RunInfo info)
    {
        private readonly object _gate = new();
        private readonly List<ChannelWriter<RunProgress>> _watchers = [];

        public StartRunRequest Request { get; } = request;

        public CancellationTokenSource Cancellation { get; } = new();

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
                ValidationDice = e.ValidationDice ?? 0,
                EpsilonSpent = e.Epsilon ?? 0,
                EpsilonTarget = e.EpsilonTarget ?? 0,
                Delta = e.Delta ?? 0,
                SamplesPerSecond = e.SamplesPerSecond,
                Message = e.Message,
                At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow),
            };
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
