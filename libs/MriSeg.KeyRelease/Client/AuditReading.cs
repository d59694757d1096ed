using MriSeg.KeyRelease.Audit;
using MriSeg.KeyRelease.Parties;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Client;

/// <summary>
/// A key's audit trail as its owner read it: the records the broker sent (the verified part of the chain), the broker's
/// verdict (a DATA_LOSS at the end of the stream names the first broken record), and the reader's own check of the same
/// records (each record's hash recomputed with <see cref="AuditChain.ComputeHash"/>, each linked to the one before, the
/// first to the genesis hash), so a reader need not take the broker's word for the part it received. Records removed from
/// the end are visible only to the broker (its head record).
/// </summary>
/// <param name="Records">The records, oldest first.</param>
/// <param name="BrokerProblem">The broker's DATA_LOSS detail, or null when it reported the chain intact.</param>
/// <param name="Local">The reader's verification of <paramref name="Records"/>.</param>
public sealed record AuditReading(IReadOnlyList<V1.AuditRecord> Records, string? BrokerProblem, AuditVerification Local)
{
    /// <summary>Whether both the broker and this reader found the chain intact.</summary>
    public bool Intact => BrokerProblem is null && Local.Intact;

    /// <summary>One line: why the chain does not verify, or null.</summary>
    public string? Problem => BrokerProblem is not null ? "the broker reports: " + BrokerProblem
        : Local.Intact ? null : $"record {Local.BrokenAt}: {Local.Problem}";

    /// <summary>Recomputes the chain of <paramref name="records"/> (read from the first record on).</summary>
    public static AuditVerification VerifyHere(IReadOnlyList<V1.AuditRecord> records)
    {
        ArgumentNullException.ThrowIfNull(records);
        var entries = records.Select(ToEntry).ToList();
        // The reader has no head record: the chain must end where the records end.
        return AuditChain.Verify(entries, entries.Count == 0 ? null : (entries[^1].Sequence, entries[^1].Hash));
    }

    /// <summary>The library's form of a record (for recomputing its hash).</summary>
    public static AuditEntry ToEntry(V1.AuditRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return new AuditEntry(record.Sequence, record.At?.ToDateTimeOffset() ?? default, record.Actor, PartyRoles.FromContract(record.ActorRole),
            record.Action, record.KeyId, record.Allowed, record.Reason, record.PreviousHash, record.Hash);
    }
}
