using Azure;
using Azure.Data.Tables;
using Google.Protobuf;
using MriSeg.Contracts.V1;

namespace MriSeg.Trainer;

/// <summary>Run records in Table storage (table <c>trainerruns</c>, partition <c>run</c>, row key the run id): the request and the last RunInfo, as protobuf JSON.</summary>
public sealed class RunStore(TableServiceClient tables)
{
    public const string TableName = "trainerruns";
    private const string Partition = "run";
    private volatile bool _created;

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
