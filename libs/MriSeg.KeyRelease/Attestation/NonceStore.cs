using System.Security.Cryptography;
using System.Text.Json;
using MriSeg.KeyRelease.Storage;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>A nonce the broker issued for a clean room's attestation.</summary>
/// <param name="Nonce">64 lower-case hex digits (32 random bytes).</param>
/// <param name="PartyId">The clean room it was issued to.</param>
/// <param name="RunId">The run it was issued for.</param>
/// <param name="Expires">When it stops being accepted.</param>
/// <param name="Used">Whether a release has consumed it.</param>
public sealed record IssuedNonce(string Nonce, string PartyId, string RunId, DateTimeOffset Expires, bool Used = false);

/// <summary>
/// Single-use attestation nonces in table <see cref="KeyBrokerTables.Nonces"/> (partition = nonce). A nonce is
/// issued to one clean room for one run, lives <see cref="Lifetime"/>, and is consumed by exactly one release
/// attempt: the consumption is a conditional replace (ETag), so of two racing uses exactly one wins. A restart loses
/// nothing; a nonce the store does not know is refused (fail closed).
/// </summary>
public sealed class NonceStore(IRecordStore store, TimeProvider time, TimeSpan lifetime)
{
    private const string Row = "nonce";
    private static readonly JsonSerializerOptions Options = StoreJson.Options;

    /// <summary>How long an issued nonce is accepted.</summary>
    public TimeSpan Lifetime => lifetime;

    /// <summary>Issues a fresh nonce to <paramref name="partyId"/> for <paramref name="runId"/>.</summary>
    public async Task<IssuedNonce> IssueAsync(string partyId, string runId, CancellationToken cancellationToken)
    {
        var nonce = new IssuedNonce(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), partyId, runId, time.GetUtcNow() + lifetime);
        await store.InsertAsync(KeyBrokerTables.Nonces, new StoredRecord(nonce.Nonce, Row, JsonSerializer.Serialize(nonce, Options)), cancellationToken).ConfigureAwait(false);
        return nonce;
    }

    /// <summary>
    /// Consumes <paramref name="nonce"/> for <paramref name="partyId"/> and <paramref name="runId"/>; null when accepted, else the
    /// reason it is refused (unknown, expired, used, another party's or another run's). A nonce presented by the wrong
    /// party or for the wrong run is not consumed (that party cannot burn it).
    /// </summary>
    public async Task<string?> ConsumeAsync(string nonce, string partyId, string runId, CancellationToken cancellationToken)
    {
        if (nonce is not { Length: 64 } || !nonce.All(char.IsAsciiHexDigitLower))
        {
            return "the nonce is not one the broker issues (64 lower-case hex digits)";
        }

        var record = await store.GetAsync(KeyBrokerTables.Nonces, nonce, Row, cancellationToken).ConfigureAwait(false);
        if (record is null)
        {
            return "the nonce is unknown (not issued by this broker)";
        }

        var issued = JsonSerializer.Deserialize<IssuedNonce>(record.Data, Options);
        if (issued is null || issued.Nonce != nonce)
        {
            return "the nonce record is unreadable";
        }

        if (issued.Used)
        {
            return "the nonce was used before (replay)";
        }

        if (!string.Equals(issued.PartyId, partyId, StringComparison.Ordinal))
        {
            return "the nonce was issued to another clean room";
        }

        if (!string.Equals(issued.RunId, runId, StringComparison.Ordinal))
        {
            return $"the nonce was issued for run '{Ids.Printable(issued.RunId)}', not '{Ids.Printable(runId)}'";
        }

        if (time.GetUtcNow() > issued.Expires)
        {
            return "the nonce expired";
        }

        try
        {
            await store.ReplaceAsync(KeyBrokerTables.Nonces, record with { Data = JsonSerializer.Serialize(issued with { Used = true }, Options) }, cancellationToken).ConfigureAwait(false);
            return null;
        }
        catch (RecordConflictException)
        {
            return "the nonce was used before (replay)";
        }
    }
}
