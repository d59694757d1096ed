using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;

namespace MriSeg.KeyRelease.Storage;

/// <summary>
/// Authenticates every record the KeyBroker stores: the document is followed by U+001F and
/// base64(HMAC-SHA256(K, len‖table ‖ len‖partition ‖ len‖row ‖ len‖data)), K derived from the broker's
/// key-encryption key. A storage writer without that key cannot alter a party's registered key, a contract's caps
/// or ledger, a nonce, a key record or an audit record, nor move one to another row: reading it fails
/// (<see cref="KeyBrokerError.DataLoss"/>; in a listing the record comes back <see cref="StoredRecord.Tampered"/>).
/// It does not stop deleting records or putting back an older authentic version of the same row (a rollback).
/// </summary>
public sealed class IntegrityRecordStore(IRecordStore inner, byte[] macKey) : IRecordStore
{
    private const char Separator = '\u001f';
    private readonly byte[] _key = macKey is { Length: 32 } ? (byte[])macKey.Clone() : throw new ArgumentException("the MAC key is 32 bytes", nameof(macKey));

    /// <inheritdoc />
    public async Task<StoredRecord?> GetAsync(string table, string partition, string row, CancellationToken cancellationToken)
    {
        var record = await inner.GetAsync(table, partition, row, cancellationToken).ConfigureAwait(false);
        if (record is null)
        {
            return null;
        }

        var opened = Open(table, record);
        return opened.Tampered
            ? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"stored record {table}/{partition}/{row} fails its integrity check (altered in storage)")
            : opened;
    }

    /// <inheritdoc />
    public Task<string> InsertAsync(string table, StoredRecord record, CancellationToken cancellationToken) =>
        inner.InsertAsync(table, Seal(table, record), cancellationToken);

    /// <inheritdoc />
    public Task<string> ReplaceAsync(string table, StoredRecord record, CancellationToken cancellationToken) =>
        inner.ReplaceAsync(table, Seal(table, record), cancellationToken);

    /// <inheritdoc />
    public Task DeleteAsync(string table, string partition, string row, string etag, CancellationToken cancellationToken) =>
        inner.DeleteAsync(table, partition, row, etag, cancellationToken);

    /// <inheritdoc />
    public Task SubmitAsync(string table, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(writes);
        return inner.SubmitAsync(table, writes.Select(w => w switch
        {
            RecordWrite.Insert i => (RecordWrite)new RecordWrite.Insert(Seal(table, i.Record)),
            _ => new RecordWrite.Replace(Seal(table, w.Record)),
        }).ToList(), cancellationToken);
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<StoredRecord> QueryAsync(string table, string partition, string? fromRow, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await foreach (var record in inner.QueryAsync(table, partition, fromRow, cancellationToken).ConfigureAwait(false))
        {
            yield return Open(table, record);
        }
    }

    private StoredRecord Seal(string table, StoredRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return record with { Data = record.Data + Separator + Convert.ToBase64String(Mac(table, record.Partition, record.Row, record.Data)) };
    }

    private StoredRecord Open(string table, StoredRecord record)
    {
        var at = record.Data.LastIndexOf(Separator);
        if (at >= 0)
        {
            var data = record.Data[..at];
            Span<byte> given = stackalloc byte[32];
            if (Convert.TryFromBase64String(record.Data[(at + 1)..], given, out var written) && written == 32
                && CryptographicOperations.FixedTimeEquals(given, Mac(table, record.Partition, record.Row, data)))
            {
                return record with { Data = data };
            }
        }

        return record with { Data = "", Tampered = true };
    }

    private byte[] Mac(string table, string partition, string row, string data)
    {
        using var hmac = IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, _key);
        Span<byte> length = stackalloc byte[4];
        foreach (var part in new[] { table, partition, row, data })
        {
            var bytes = Encoding.UTF8.GetBytes(part);
            BinaryPrimitives.WriteInt32BigEndian(length, bytes.Length);
            hmac.AppendData(length);
            hmac.AppendData(bytes);
        }

        return hmac.GetHashAndReset();
    }
}
