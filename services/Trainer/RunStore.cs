using Azure;
using Azure.Data.Tables;
using Google.Protobuf;
using MriSeg.Contracts.V1;

namespace MriSeg.Trainer;

/// <summary>
/// Run records in Table storage (table <c>trainerruns</c>, partition <c>run</c>, row key the run id): the request and the
/// last RunInfo, as protobuf JSON. Beside them (partition <c>lease</c>) each executing run's lease: which Trainer runs it and
/// until when, so that two Trainers over the same storage never execute one run at once (a run is resumed only by the
/// Trainer that takes its lease, after its holder released it or stopped renewing it).
/// </summary>
public sealed class RunStore(TableServiceClient tables, TimeProvider time)
{
    public const string TableName = "trainerruns";
    private const string Partition = "run";
    private const string LeasePartition = "lease";
    private volatile bool _created;

    public RunStore(TableServiceClient tables)
        : this(tables, TimeProvider.System)
    {
    }

    /// <summary>
    /// Takes the lease of <paramref name="runId"/> for <paramref name="holder"/> until now + <paramref name="duration"/>: when
    /// nobody holds it, the holder already does, or its holder let it expire. False when another holder has it (or took it
    /// in the meantime: every change is conditional on the version read).
    /// </summary>
    public Task<bool> TryAcquireLeaseAsync(string runId, string holder, TimeSpan duration, CancellationToken ct) =>
        WriteLeaseAsync(runId, holder, duration, mayTake: true, ct);

    /// <summary>Extends a lease <paramref name="holder"/> holds; false when it is not (or no longer) the holder's.</summary>
    public Task<bool> RenewLeaseAsync(string runId, string holder, TimeSpan duration, CancellationToken ct) =>
        WriteLeaseAsync(runId, holder, duration, mayTake: false, ct);

    /// <summary>Ends <paramref name="holder"/>'s lease (another holder's is left alone).</summary>
    public async Task ReleaseLeaseAsync(string runId, string holder, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var found = await table.GetEntityIfExistsAsync<TableEntity>(LeasePartition, runId, cancellationToken: ct).ConfigureAwait(false);
        if (found.HasValue && found.Value!.GetString("Holder") == holder)
        {
            try
            {
                await table.DeleteEntityAsync(found.Value, found.Value.ETag, ct).ConfigureAwait(false);
            }
            catch (RequestFailedException e) when (e.Status is 404 or 412)
            {
                // Gone, or taken over after it expired: not ours to delete.
            }
        }
    }

    /// <summary>The holder of a run's lease and its expiry, or null when nobody holds it.</summary>
    public async Task<(string Holder, DateTimeOffset Expires)?> GetLeaseAsync(string runId, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var found = await table.GetEntityIfExistsAsync<TableEntity>(LeasePartition, runId, cancellationToken: ct).ConfigureAwait(false);
        return found.HasValue ? (found.Value!.GetString("Holder"), found.Value.GetDateTimeOffset("Expires")!.Value) : null;
    }

    private async Task<bool> WriteLeaseAsync(string runId, string holder, TimeSpan duration, bool mayTake, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var now = time.GetUtcNow();
        var lease = new TableEntity(LeasePartition, runId) { ["Holder"] = holder, ["Expires"] = now + duration };
        var found = await table.GetEntityIfExistsAsync<TableEntity>(LeasePartition, runId, cancellationToken: ct).ConfigureAwait(false);
        try
        {
            if (!found.HasValue)
            {
                if (!mayTake)
                {
                    return false;
                }

                await table.AddEntityAsync(lease, ct).ConfigureAwait(false);
                return true;
            }

            var current = found.Value!;
            var ours = current.GetString("Holder") == holder;
            if (!ours && (!mayTake || current.GetDateTimeOffset("Expires") > now))
            {
                return false;
            }

            await table.UpdateEntityAsync(lease, current.ETag, TableUpdateMode.Replace, ct).ConfigureAwait(false);
            return true;
        }
        catch (RequestFailedException e) when (e.Status is 409 or 412)
        {
            return false; // another Trainer wrote it between our read and our write
        }
    }

    /// <summary>Adds a new run; false when the id exists.</summary>
    public async Task<bool> TryAddAsync(StartRunRequest request, RunInfo info, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        try
        {
            await table.AddEntityAsync(Entity(request, info), ct).ConfigureAwait(false);
            return true;
        }
        catch (RequestFailedException e) when (e.Status == 409)
        {
            return false;
        }
    }

    /// <summary>Replaces a run's record.</summary>
    public async Task UpdateAsync(StartRunRequest request, RunInfo info, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        await table.UpsertEntityAsync(Entity(request, info), TableUpdateMode.Replace, ct).ConfigureAwait(false);
    }

    /// <summary>A run's record, or null.</summary>
    public async Task<(StartRunRequest Request, RunInfo Info)?> GetAsync(string runId, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var found = await table.GetEntityIfExistsAsync<TableEntity>(Partition, runId, cancellationToken: ct).ConfigureAwait(false);
        return found.HasValue ? Parse(found.Value!) : null;
    }

    /// <summary>All runs (of <paramref name="consumer"/> when given).</summary>
    public async Task<List<RunInfo>> ListAsync(string? consumer, CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var runs = new List<RunInfo>();
        await foreach (var e in table.QueryAsync<TableEntity>(x => x.PartitionKey == Partition, cancellationToken: ct).ConfigureAwait(false))
        {
            var info = Parse(e).Info;
            if (string.IsNullOrEmpty(consumer) || info.Consumer == consumer)
            {
                runs.Add(info);
            }
        }

        return runs;
    }

    /// <summary>Runs whose record is queued or running: not finished (their trainer was killed or shut down, unless live here).</summary>
    public async Task<List<(StartRunRequest Request, RunInfo Info)>> ListUnfinishedAsync(CancellationToken ct)
    {
        var table = await TableAsync(ct).ConfigureAwait(false);
        var runs = new List<(StartRunRequest, RunInfo)>();
        await foreach (var e in table.QueryAsync<TableEntity>(x => x.PartitionKey == Partition, cancellationToken: ct).ConfigureAwait(false))
        {
            var run = Parse(e);
            if (run.Info.State is JobState.Queued or JobState.Running)
            {
                runs.Add(run);
            }
        }

        return runs;
    }

    private static TableEntity Entity(StartRunRequest request, RunInfo info) => new(Partition, info.RunId)
    {
        ["Request"] = JsonFormatter.Default.Format(request),
        ["Info"] = JsonFormatter.Default.Format(info),
        ["State"] = info.State.ToString(),
    };

    private static (StartRunRequest Request, RunInfo Info) Parse(TableEntity e) =>
        (JsonParser.Default.Parse<StartRunRequest>(e.GetString("Request")), JsonParser.Default.Parse<RunInfo>(e.GetString("Info")));

    private async Task<TableClient> TableAsync(CancellationToken ct)
    {
        var table = tables.GetTableClient(TableName);
        if (!_created)
        {
            await table.CreateIfNotExistsAsync(ct).ConfigureAwait(false);
            _created = true;
        }

        return table;
    }
}
