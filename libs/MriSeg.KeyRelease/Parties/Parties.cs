using System.Security.Cryptography;
using System.Text.Json;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Parties;

/// <summary>The three kinds of principal (common.proto's Party).</summary>
public enum PartyRole
{
    /// <summary>A hospital (TDP): imports dataset keys.</summary>
    DataProvider = 1,

    /// <summary>The model consumer (TDC): imports model and output keys, obtains its own output key.</summary>
    DataConsumer = 2,

    /// <summary>The clean room (CCR): obtains keys under attestation, settles privacy spend.</summary>
    CleanRoom = 3,
}

/// <summary>Role names and conversions.</summary>
public static class PartyRoles
{
    /// <summary>The short name ("TDP", "TDC", "CCR").</summary>
    public static string ShortName(this PartyRole role) => role switch
    {
        PartyRole.DataProvider => "TDP",
        PartyRole.DataConsumer => "TDC",
        PartyRole.CleanRoom => "CCR",
        _ => role.ToString(),
    };

    /// <summary>The contract enum value.</summary>
    public static V1.Party ToContract(this PartyRole role) => (V1.Party)(int)role;

    /// <summary>
    /// The role that imports and owns keys of <paramref name="purpose"/>: dataset keys a data provider's, model and output
    /// keys the consumer's; null for an unspecified purpose.
    /// </summary>
    public static PartyRole? OwnerOf(V1.KeyPurpose purpose) => purpose switch
    {
        V1.KeyPurpose.Dataset => PartyRole.DataProvider,
        V1.KeyPurpose.Model or V1.KeyPurpose.Output => PartyRole.DataConsumer,
        _ => null,
    };

    /// <summary>The role of a contract enum value, or null when unspecified or unknown.</summary>
    public static PartyRole? FromContract(V1.Party party) => party switch
    {
        V1.Party.DataProvider => PartyRole.DataProvider,
        V1.Party.DataConsumer => PartyRole.DataConsumer,
        V1.Party.CleanRoom => PartyRole.CleanRoom,
        _ => null,
    };
}

/// <summary>An authenticated caller.</summary>
/// <param name="PartyId">The registered party id (the token's subject).</param>
/// <param name="Role">The role it registered with.</param>
/// <param name="KeyThumbprint">Thumbprint of the registered key that signed the token.</param>
public sealed record PartyPrincipal(string PartyId, PartyRole Role, string KeyThumbprint)
{
    /// <summary>"hospital-a (TDP)".</summary>
    public override string ToString() => $"{PartyId} ({Role.ShortName()})";
}

/// <summary>A party's registration: its role and signing public key.</summary>
/// <param name="PartyId">The party id.</param>
/// <param name="Role">Its role (fixed at first registration).</param>
/// <param name="PublicKeyPem">SubjectPublicKeyInfo PEM of its ECDSA P-256 key.</param>
/// <param name="Thumbprint">Lower-case hex SHA-256 of the SubjectPublicKeyInfo.</param>
/// <param name="RegisteredAt">When this key was registered.</param>
/// <param name="ETag">The version read (for a conditional rotation).</param>
public sealed record RegisteredParty(string PartyId, PartyRole Role, string PublicKeyPem, string Thumbprint, DateTimeOffset RegisteredAt, string? ETag = null);

/// <summary>Where a token's subject is looked up: the party's role and public key, or null for a party not known here.</summary>
public interface IPartyDirectory
{
    /// <summary>The registration of <paramref name="partyId"/>, or null.</summary>
    Task<RegisteredParty?> FindAsync(string partyId, CancellationToken cancellationToken);
}

/// <summary>The registered parties, table <see cref="KeyBrokerTables.Parties"/> (partition "party", row = party id).</summary>
public sealed class PartyRegistry(IRecordStore store) : IPartyDirectory
{
    private const string Partition = "party";
    private static readonly JsonSerializerOptions Options = StoreJson.Options;

    /// <summary>The registration of <paramref name="partyId"/>, or null.</summary>
    public async Task<RegisteredParty?> FindAsync(string partyId, CancellationToken cancellationToken)
    {
        var record = await store.GetAsync(KeyBrokerTables.Parties, Partition, partyId, cancellationToken).ConfigureAwait(false);
        if (record is null)
        {
            return null;
        }

        var party = JsonSerializer.Deserialize<RegisteredParty>(record.Data, Options)
            ?? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the registration of party '{partyId}' is unreadable");
        return party with { ETag = record.ETag };
    }

    /// <summary>Registers a new party; <see cref="RecordConflictException"/> when it exists.</summary>
    public Task AddAsync(RegisteredParty party, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(party);
        return store.InsertAsync(KeyBrokerTables.Parties, new StoredRecord(Partition, party.PartyId, Serialize(party)), cancellationToken);
    }

    /// <summary>Replaces a registration read at <see cref="RegisteredParty.ETag"/>; <see cref="RecordConflictException"/> when it changed.</summary>
    public Task ReplaceAsync(RegisteredParty party, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(party);
        return store.ReplaceAsync(KeyBrokerTables.Parties, new StoredRecord(Partition, party.PartyId, Serialize(party), party.ETag), cancellationToken);
    }

    /// <summary>A registration record for <paramref name="key"/>.</summary>
    public static RegisteredParty Create(string partyId, PartyRole role, SignerPublicKey key, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(key);
        return new RegisteredParty(partyId, role, key.ExportPem(), key.Thumbprint, now);
    }

    private static string Serialize(RegisteredParty party) => JsonSerializer.Serialize(party with { ETag = null }, Options);
}

/// <summary>How first registrations are allowed.</summary>
public enum RegistrationMode
{
    /// <summary>The first registration of a party id is accepted from whoever proves possession of the key (development).</summary>
    TrustOnFirstUse,

    /// <summary>A first registration also needs the operator's admin token (header <c>x-mriseg-admin-token</c>).</summary>
    AdminToken,
}

/// <summary>Constant-time comparison of secrets of any length (through their SHA-256).</summary>
internal static class Secrets
{
    public static bool Equal(string? given, string? expected)
    {
        if (string.IsNullOrEmpty(given) || string.IsNullOrEmpty(expected))
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(
            SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(given)),
            SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(expected)));
    }
}
