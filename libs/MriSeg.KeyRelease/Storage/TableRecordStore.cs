using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Azure;
using Azure.Data.Tables;

namespace MriSeg.KeyRelease.Storage;

/// <summary>
/// <see cref="IRecordStore"/> in Azure Table storage (Azurite locally): one entity per record with the JSON in
/// property <c>Data</c>; optimistic concurrency with the entities' ETags; batches are entity-group transactions.
/// Tables are created on first use. A document is at most <see cref="MaxDataChars"/> characters (a Table string
/// property holds 64 KiB of UTF-16).
/// </summary>
public sealed class TableRecordStore(TableServiceClient tables) : IRecordStore
{
    /// <summary>Largest document, in UTF-16 characters.</summary>
    public const int MaxDataChars = 31 * 1024;

    private const string DataProperty = "Data";
    private readonly ConcurrentDictionary<string, Task> _created = new(StringComparer.Ordinal);

    /// <inheritdoc />
    public async Task<StoredRecord?> GetAsync(string table, string partition, string row, CancellationToken cancellationToken)
    {
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        var found = await client.GetEntityIfExistsAsync<TableEntity>(partition, row, cancellationToken: cancellationToken).ConfigureAwait(false);
        return found.HasValue ? ToRecord(found.Value!) : null;
    }

    /// <inheritdoc />
    public async Task<string> InsertAsync(string table, StoredRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        try
        {
            var response = await client.AddEntityAsync(ToEntity(record), cancellationToken).ConfigureAwait(false);
            return response.Headers.ETag?.ToString() ?? throw new InvalidOperationException("table storage returned no ETag");
        }
        catch (RequestFailedException e) when (e.Status == 409)
        {
            throw new RecordConflictException($"{table}/{record.Partition}/{record.Row} exists", e);
        }
    }

    /// <inheritdoc />
    public async Task<string> ReplaceAsync(string table, StoredRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        try
        {
            var response = await client.UpdateEntityAsync(ToEntity(record), new ETag(record.ETag ?? throw new ArgumentException("replace needs the ETag read", nameof(record))),
                TableUpdateMode.Replace, cancellationToken).ConfigureAwait(false);
            return response.Headers.ETag?.ToString() ?? throw new InvalidOperationException("table storage returned no ETag");
        }
        catch (RequestFailedException e) when (e.Status is 404 or 409 or 412)
        {
            throw new RecordConflictException($"{table}/{record.Partition}/{record.Row} changed or is gone", e);
        }
    }

    /// <inheritdoc />
    public async Task DeleteAsync(string table, string partition, string row, string etag, CancellationToken cancellationToken)
    {
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        Response response;
        try
        {
            response = await client.DeleteEntityAsync(partition, row, new ETag(etag), cancellationToken).ConfigureAwait(false);
        }
        catch (RequestFailedException e) when (e.Status is 404 or 409 or 412)
        {
            throw new RecordConflictException($"{table}/{partition}/{row} changed or is gone", e);
        }

        // The SDK answers a delete of a missing entity without throwing; that is a lost race here.
        if (response.Status == 404)
        {
            throw new RecordConflictException($"{table}/{partition}/{row} is gone");
        }
    }

    /// <inheritdoc />
    public async Task SubmitAsync(string table, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(writes);
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        var actions = writes.Select(w => w is RecordWrite.Insert
            ? new TableTransactionAction(TableTransactionActionType.Add, ToEntity(w.Record))
            : new TableTransactionAction(TableTransactionActionType.UpdateReplace, ToEntity(w.Record), new ETag(w.Record.ETag!))).ToList();
        try
        {
            await client.SubmitTransactionAsync(actions, cancellationToken).ConfigureAwait(false);
        }
        catch (TableTransactionFailedException e) when (e.Status is 404 or 409 or 412)
        {
            throw new RecordConflictException($"{table}: batch conflict ({e.ErrorCode ?? e.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)})", e);
        }
        catch (RequestFailedException e) when (e.Status is 404 or 409 or 412)
        {
            throw new RecordConflictException($"{table}: batch conflict ({e.ErrorCode ?? e.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)})", e);
        }
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<StoredRecord> QueryAsync(string table, string partition, string? fromRow, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var client = await TableAsync(table, cancellationToken).ConfigureAwait(false);
        var filter = fromRow is null
            ? TableClient.CreateQueryFilter($"PartitionKey eq {partition}")
            : TableClient.CreateQueryFilter($"PartitionKey eq {partition} and RowKey ge {fromRow}");
        await foreach (var entity in client.QueryAsync<TableEntity>(filter, cancellationToken: cancellationToken).ConfigureAwait(false))
        {
            yield return ToRecord(entity);
        }
    }

    private async Task<TableClient> TableAsync(string table, CancellationToken cancellationToken)
    {
        var client = tables.GetTableClient(table);
        var creation = _created.GetOrAdd(table, _ => client.CreateIfNotExistsAsync(CancellationToken.None));
        try
        {
            await creation.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (creation.IsFaulted)
        {
            _created.TryRemove(new KeyValuePair<string, Task>(table, creation));
            throw;
        }

        return client;
    }

    private static TableEntity ToEntity(StoredRecord record)
    {
        if (record.Data.Length > MaxDataChars)
        {
            throw new InvalidOperationException($"record {record.Partition}/{record.Row} is {record.Data.Length} characters, more than a table property holds ({MaxDataChars})");
        }

        return new TableEntity(record.Partition, record.Row) { [DataProperty] = record.Data };
    }

    private static StoredRecord ToRecord(TableEntity entity) =>
        new(entity.PartitionKey, entity.RowKey, entity.GetString(DataProperty) ?? "", entity.ETag.ToString());
}
