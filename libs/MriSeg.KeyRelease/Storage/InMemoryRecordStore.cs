using System.Globalization;
using System.Runtime.CompilerServices;

namespace MriSeg.KeyRelease.Storage;

/// <summary>
/// <see cref="IRecordStore"/> in the process's memory, with the same concurrency guarantees as Table storage
/// (one lock; ETags are counters). For tests and single-process tools: everything is lost when the process ends.
/// </summary>
public sealed class InMemoryRecordStore : IRecordStore
{
    private readonly Lock _gate = new();
    private readonly SortedDictionary<(string Table, string Partition, string Row), (string Data, string ETag)> _records = new(KeyComparer.Instance);
    private long _version;

    /// <summary>Replaces a record's data without changing the ETag rules (tests: simulated tampering with storage).</summary>
    public void Tamper(string table, string partition, string row, Func<string, string> change)
    {
        ArgumentNullException.ThrowIfNull(change);
        lock (_gate)
        {
            var key = (table, partition, row);
            var current = _records[key];
            _records[key] = (change(current.Data), NextETag());
        }
    }

    /// <inheritdoc />
    public Task<StoredRecord?> GetAsync(string table, string partition, string row, CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            return Task.FromResult(_records.TryGetValue((table, partition, row), out var found)
                ? new StoredRecord(partition, row, found.Data, found.ETag)
                : null);
        }
    }

    /// <inheritdoc />
    public Task<string> InsertAsync(string table, StoredRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        lock (_gate)
        {
            return Task.FromResult(InsertLocked(table, record));
        }
    }

    /// <inheritdoc />
    public Task<string> ReplaceAsync(string table, StoredRecord record, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(record);
        lock (_gate)
        {
            return Task.FromResult(ReplaceLocked(table, record));
        }
    }

    /// <inheritdoc />
    public Task DeleteAsync(string table, string partition, string row, string etag, CancellationToken cancellationToken)
    {
        lock (_gate)
        {
            var key = (table, partition, row);
            if (!_records.TryGetValue(key, out var found) || found.ETag != etag)
            {
                throw new RecordConflictException($"{table}/{partition}/{row} changed or is gone");
            }

            _records.Remove(key);
        }

        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public Task SubmitAsync(string table, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(writes);
        lock (_gate)
        {
            // Check everything first, so that a conflict leaves nothing written.
            foreach (var write in writes)
            {
                var exists = _records.TryGetValue((table, write.Record.Partition, write.Record.Row), out var found);
                var ok = write switch
                {
                    RecordWrite.Insert => !exists,
                    _ => exists && found.ETag == write.Record.ETag,
                };
                if (!ok)
                {
                    throw new RecordConflictException($"{table}/{write.Record.Partition}/{write.Record.Row}: batch conflict");
                }
            }

            foreach (var write in writes)
            {
                _ = write is RecordWrite.Insert ? InsertLocked(table, write.Record) : ReplaceLocked(table, write.Record);
            }
        }

        return Task.CompletedTask;
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<StoredRecord> QueryAsync(string table, string partition, string? fromRow, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        List<StoredRecord> rows;
        lock (_gate)
        {
            rows = _records
                .Where(r => r.Key.Table == table && r.Key.Partition == partition && (fromRow is null || string.CompareOrdinal(r.Key.Row, fromRow) >= 0))
                .Select(r => new StoredRecord(partition, r.Key.Row, r.Value.Data, r.Value.ETag))
                .ToList();
        }

        foreach (var row in rows)
        {
            cancellationToken.ThrowIfCancellationRequested();
            yield return row;
        }

        await Task.CompletedTask.ConfigureAwait(false);
    }

    private string InsertLocked(string table, StoredRecord record)
    {
        CheckSize(record);
        var key = (table, record.Partition, record.Row);
        if (_records.ContainsKey(key))
        {
            throw new RecordConflictException($"{table}/{record.Partition}/{record.Row} exists");
        }

        var etag = NextETag();
        _records[key] = (record.Data, etag);
        return etag;
    }

    private string ReplaceLocked(string table, StoredRecord record)
    {
        CheckSize(record);
        var key = (table, record.Partition, record.Row);
        if (!_records.TryGetValue(key, out var found) || found.ETag != record.ETag)
        {
            throw new RecordConflictException($"{table}/{record.Partition}/{record.Row} changed or is gone");
        }

        var etag = NextETag();
        _records[key] = (record.Data, etag);
        return etag;
    }

    // The same limit as Table storage, so that tests meet it where production would.
    private static void CheckSize(StoredRecord record)
    {
        if (record.Data.Length > TableRecordStore.MaxDataChars)
        {
            throw new InvalidOperationException($"record {record.Partition}/{record.Row} is {record.Data.Length} characters, more than a table property holds ({TableRecordStore.MaxDataChars})");
        }
    }

    private string NextETag() => "W/\"" + (++_version).ToString(CultureInfo.InvariantCulture) + "\"";

    private sealed class KeyComparer : IComparer<(string Table, string Partition, string Row)>
    {
        public static readonly KeyComparer Instance = new();

        public int Compare((string Table, string Partition, string Row) x, (string Table, string Partition, string Row) y)
        {
            var c = string.CompareOrdinal(x.Table, y.Table);
            if (c != 0)
            {
                return c;
            }

            c = string.CompareOrdinal(x.Partition, y.Partition);
            return c != 0 ? c : string.CompareOrdinal(x.Row, y.Row);
        }
    }
}
