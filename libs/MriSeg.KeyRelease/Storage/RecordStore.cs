namespace MriSeg.KeyRelease.Storage;

/// <summary>A stored record: a partition, a row key and one JSON document, with the ETag it was read at.</summary>
/// <param name="Partition">Partition key (records of one partition can be written together atomically).</param>
/// <param name="Row">Row key; a partition's records are listed in ordinal order of it.</param>
/// <param name="Data">The record's JSON document.</param>
/// <param name="ETag">The version read (null for a record about to be inserted).</param>
public sealed record StoredRecord(string Partition, string Row, string Data, string? ETag = null)
{
    /// <summary>Set by <see cref="IntegrityRecordStore.QueryAsync"/> on a record whose integrity check failed (its <see cref="Data"/> is then empty).</summary>
    public bool Tampered { get; init; }
}

/// <summary>A write of a <see cref="IRecordStore.SubmitAsync"/> batch.</summary>
public abstract record RecordWrite(StoredRecord Record)
{
    /// <summary>Insert; fails with a conflict when the record exists.</summary>
    public sealed record Insert(StoredRecord Record) : RecordWrite(Record);

    /// <summary>Replace the record read at <see cref="StoredRecord.ETag"/>; fails with a conflict when it changed or is gone.</summary>
    public sealed record Replace(StoredRecord Record) : RecordWrite(Record);
}

/// <summary>
/// An optimistic-concurrency write lost a race (the record exists on insert, or changed or vanished since it was read).
/// Callers re-read and retry, or report the conflict.
/// </summary>
public sealed class RecordConflictException(string message, Exception? innerException = null) : Exception(message, innerException);

/// <summary>
/// The KeyBroker's persistence: tables of JSON records with ETags. <see cref="TableRecordStore"/> keeps them in
/// Azure Table storage (Azurite locally); <see cref="InMemoryRecordStore"/> in the process (tests, single-process tools).
/// Both give the same guarantees: an insert or a conditional replace succeeds for exactly one of several racing
/// writers, and a batch in one partition is all or nothing.
/// </summary>
public interface IRecordStore
{
    /// <summary>The record, with its current ETag, or null.</summary>
    Task<StoredRecord?> GetAsync(string table, string partition, string row, CancellationToken cancellationToken);

    /// <summary>Inserts; returns the new ETag. <see cref="RecordConflictException"/> when it exists.</summary>
    Task<string> InsertAsync(string table, StoredRecord record, CancellationToken cancellationToken);

    /// <summary>Replaces the record if its ETag is still <see cref="StoredRecord.ETag"/>; returns the new ETag. <see cref="RecordConflictException"/> otherwise.</summary>
    Task<string> ReplaceAsync(string table, StoredRecord record, CancellationToken cancellationToken);

    /// <summary>Deletes the record if its ETag is still <paramref name="etag"/>; <see cref="RecordConflictException"/> when it changed or is gone.</summary>
    Task DeleteAsync(string table, string partition, string row, string etag, CancellationToken cancellationToken);

    /// <summary>Writes several records of one partition atomically (all or none); <see cref="RecordConflictException"/> when any write conflicts.</summary>
    Task SubmitAsync(string table, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken);

    /// <summary>The records of a partition in ordinal row-key order, from <paramref name="fromRow"/> (inclusive) when given.</summary>
    IAsyncEnumerable<StoredRecord> QueryAsync(string table, string partition, string? fromRow, CancellationToken cancellationToken);
}

/// <summary>The table names the KeyBroker uses (Azure table names: letters and digits).</summary>
public static class KeyBrokerTables
{
    /// <summary>Registered parties: partition "party", row = party id.</summary>
    public const string Parties = "kbparties";

    /// <summary>Imported keys: partition = key id, row "key".</summary>
    public const string Keys = "kbkeys";

    /// <summary>Contracts and their privacy ledgers: partition = contract id, row "contract".</summary>
    public const string Contracts = "kbcontracts";

    /// <summary>Attestation nonces: partition = nonce, row "nonce".</summary>
    public const string Nonces = "kbnonces";

    /// <summary>Audit chains: partition = key id, rows "r" + 19-digit sequence and "head".</summary>
    public const string Audit = "kbaudit";
}
