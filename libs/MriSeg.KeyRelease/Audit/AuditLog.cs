using System.Buffers.Binary;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;

namespace MriSeg.KeyRelease.Audit;

/// <summary>One audited decision about a key.</summary>
/// <param name="Sequence">1, 2, … per key.</param>
/// <param name="At">When (millisecond precision).</param>
/// <param name="Actor">The calling party.</param>
/// <param name="ActorRole">Its role, if known.</param>
/// <param name="Action">"import", "update", "revoke", "release", "deny", "settle".</param>
/// <param name="KeyId">The key.</param>
/// <param name="Allowed">Whether the broker allowed it.</param>
/// <param name="Reason">Why (one line; never key material).</param>
/// <param name="PreviousHash">The hash of the record before (<see cref="AuditChain.GenesisHash"/> for the first).</param>
/// <param name="Hash">This record's hash (<see cref="AuditChain.ComputeHash"/>).</param>
public sealed record AuditEntry(long Sequence, DateTimeOffset At, string Actor, PartyRole? ActorRole, string Action, string KeyId,
    bool Allowed, string Reason, string PreviousHash, string Hash);

/// <summary>The result of checking a chain.</summary>
/// <param name="Intact">Whether every record links and hashes correctly and the head names the last one.</param>
/// <param name="BrokenAt">The first sequence that fails, if any.</param>
/// <param name="Problem">What failed.</param>
/// <param name="VerifiedCount">How many records, from the first, verified.</param>
public sealed record AuditVerification(bool Intact, long? BrokenAt, string? Problem, int VerifiedCount);

/// <summary>
/// The hash chain of a key's audit records:
/// <code>
/// hash = hex SHA-256( "MriSeg.KeyRelease.v1 audit\0" ‖ field(sequence) ‖ field(at, Unix ms) ‖ field(actor) ‖ field(role number or "")
///                     ‖ field(action) ‖ field(key id) ‖ field("1" | "0") ‖ field(reason) ‖ field(previous hash) )
/// field(s) = uint32 big-endian byte length ‖ UTF-8 of s (numbers in invariant decimal)
/// </code>
/// The first record's previous hash is 64 zeros. Changing, removing, inserting or reordering a record breaks the chain
/// at that record; removing records from the end is caught by the head (the last sequence and hash, written in the same
/// transaction as each record).
/// </summary>
public static class AuditChain
{
    /// <summary>The previous hash of the first record.</summary>
    public static readonly string GenesisHash = new('0', 64);

    private static ReadOnlySpan<byte> Context => "MriSeg.KeyRelease.v1 audit\0"u8;

    /// <summary>The hash of a record (its <see cref="AuditEntry.Hash"/> is not an input).</summary>
    public static string ComputeHash(AuditEntry e)
    {
        ArgumentNullException.ThrowIfNull(e);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Context);
        Field(hash, e.Sequence.ToString(CultureInfo.InvariantCulture));
        Field(hash, e.At.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));
        Field(hash, e.Actor);
        Field(hash, e.ActorRole is { } role ? ((int)role).ToString(CultureInfo.InvariantCulture) : "");
        Field(hash, e.Action);
        Field(hash, e.KeyId);
        Field(hash, e.Allowed ? "1" : "0");
        Field(hash, e.Reason);
        Field(hash, e.PreviousHash);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Checks a chain read oldest first, and that <paramref name="head"/> (last sequence, last hash) names its end.</summary>
    public static AuditVerification Verify(IReadOnlyList<AuditEntry> entries, (long Sequence, string Hash)? head)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var previous = GenesisHash;
        for (var i = 0; i < entries.Count; i++)
        {
            var e = entries[i];
            var expected = i + 1L;
            string? problem = null;
            if (e.Sequence != expected)
            {
                problem = $"record {expected} is missing (found sequence {e.Sequence})";
            }
            else if (!string.Equals(e.PreviousHash, previous, StringComparison.Ordinal))
            {
                problem = $"record {expected} does not link to record {expected - 1}";
            }
            else if (!string.Equals(ComputeHash(e), e.Hash, StringComparison.Ordinal))
            {
                problem = $"record {expected} was altered (its hash does not match its content)";
            }

            if (problem is not null)
            {
                return new AuditVerification(false, expected, problem, i);
            }

            previous = e.Hash;
        }

        var last = entries.Count == 0 ? (0L, GenesisHash) : (entries[^1].Sequence, entries[^1].Hash);
        if (head is null)
        {
            return entries.Count == 0
                ? new AuditVerification(true, null, null, 0)
                : new AuditVerification(false, entries.Count, "the chain's head record is missing", entries.Count);
        }

        if (head.Value.Sequence != last.Item1 || !string.Equals(head.Value.Hash, last.Item2, StringComparison.Ordinal))
        {
            return new AuditVerification(false, Math.Min(head.Value.Sequence, last.Item1 + 1),
                $"the chain ends at record {last.Item1} but its head names record {head.Value.Sequence} (records removed or head altered)", entries.Count);
        }

        return new AuditVerification(true, null, null, entries.Count);
    }

    private static void Field(IncrementalHash hash, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value);
        Span<byte> length = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(length, (uint)bytes.Length);
        hash.AppendData(length);
        hash.AppendData(bytes);
    }
}

/// <summary>
/// Append-only audit chains per key in table <see cref="KeyBrokerTables.Audit"/>: partition = key id, rows
/// <c>r&lt;19-digit sequence&gt;</c> and <c>head</c>. Each append inserts the record and moves the head in one
/// entity-group transaction guarded by the head's ETag, so concurrent appends serialise and the chain never forks.
/// </summary>
public sealed class AuditLog(IRecordStore store, TimeProvider time)
{
    /// <summary>Row key of the head record.</summary>
    public const string HeadRow = "head";

    private const int MaxAttempts = 32;
    private const int MaxReasonLength = 2000;
    private static readonly JsonSerializerOptions Options = StoreJson.Options;

    /// <summary>The row key of a record.</summary>
    public static string RowOf(long sequence) => "r" + sequence.ToString("D19", CultureInfo.InvariantCulture);

    /// <summary>Appends a decision to <paramref name="keyId"/>'s chain.</summary>
    public async Task<AuditEntry> AppendAsync(string keyId, PartyPrincipal? actor, string action, bool allowed, string reason, CancellationToken cancellationToken)
    {
        var text = reason.Length > MaxReasonLength ? reason[..MaxReasonLength] + "…" : reason;
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var headRecord = await store.GetAsync(KeyBrokerTables.Audit, keyId, HeadRow, cancellationToken).ConfigureAwait(false);
            var head = headRecord is null ? null : JsonSerializer.Deserialize<Head>(headRecord.Data, Options);
            var now = DateTimeOffset.FromUnixTimeMilliseconds(time.GetUtcNow().ToUnixTimeMilliseconds());
            var entry = new AuditEntry((head?.Sequence ?? 0) + 1, now, actor?.PartyId ?? "", actor?.Role, action, keyId, allowed, text,
                head?.Hash ?? AuditChain.GenesisHash, "");
            entry = entry with { Hash = AuditChain.ComputeHash(entry) };
            var newHead = JsonSerializer.Serialize(new Head(entry.Sequence, entry.Hash), Options);
            RecordWrite headWrite = headRecord is null
                ? new RecordWrite.Insert(new StoredRecord(keyId, HeadRow, newHead))
                : new RecordWrite.Replace(headRecord with { Data = newHead });
            try
            {
                await store.SubmitAsync(KeyBrokerTables.Audit,
                    [new RecordWrite.Insert(new StoredRecord(keyId, RowOf(entry.Sequence), JsonSerializer.Serialize(entry, Options))), headWrite],
                    cancellationToken).ConfigureAwait(false);
                return entry;
            }
            catch (RecordConflictException)
            {
                await Task.Delay(Random.Shared.Next(1, 8), cancellationToken).ConfigureAwait(false);
            }
        }

        throw new KeyBrokerException(KeyBrokerError.Unavailable, $"audit chain of key {keyId}: appends kept colliding; retry");
    }

    /// <summary>Reads and verifies <paramref name="keyId"/>'s whole chain, oldest first.</summary>
    public async Task<(IReadOnlyList<AuditEntry> Entries, AuditVerification Verification)> ReadAsync(string keyId, CancellationToken cancellationToken)
    {
        var entries = new List<AuditEntry>();
        (long, string)? head = null;
        await foreach (var record in store.QueryAsync(KeyBrokerTables.Audit, keyId, null, cancellationToken).ConfigureAwait(false))
        {
            if (record.Row == HeadRow)
            {
                var h = record.Tampered ? null : TryRead<Head>(record.Data);
                head = h is null ? (-1, "") : (h.Sequence, h.Hash);
                continue;
            }

            // An altered or unreadable record stands in the chain as one whose hash does not match: the chain breaks there.
            var entry = record.Tampered ? null : TryRead<AuditEntry>(record.Data);
            entries.Add(entry ?? new AuditEntry(SequenceOf(record.Row), default, "", null, "", keyId, false, "",
                entries.Count == 0 ? AuditChain.GenesisHash : entries[^1].Hash, "(altered)"));
        }

        return (entries, AuditChain.Verify(entries, head));
    }

    private static long SequenceOf(string row) =>
        row.Length == 20 && long.TryParse(row.AsSpan(1), NumberStyles.None, CultureInfo.InvariantCulture, out var sequence) ? sequence : -1;

    private static T? TryRead<T>(string data)
        where T : class
    {
        try
        {
            return JsonSerializer.Deserialize<T>(data, Options);
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private sealed record Head(long Sequence, string Hash);
}
