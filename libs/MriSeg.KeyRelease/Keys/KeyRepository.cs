using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using MriSeg.KeyRelease.Storage;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Keys;

/// <summary>An imported key as stored (table <see cref="KeyBrokerTables.Keys"/>, partition = key id, row "key").</summary>
/// <param name="KeyId">The data key's id (32 hex digits, derived from the key).</param>
/// <param name="Purpose">Dataset, model or output.</param>
/// <param name="Owner">The importing party.</param>
/// <param name="Version">1 at import, +1 per policy or contract update.</param>
/// <param name="Revoked">Whether it is revoked (its material is then erased).</param>
/// <param name="RevocationReason">The owner's reason.</param>
/// <param name="Imported">When it was imported.</param>
/// <param name="Updated">When it last changed.</param>
/// <param name="PolicyJson">The release policy document.</param>
/// <param name="ContractId">The contract it serves (required for dataset keys).</param>
/// <param name="Material">The key encrypted at rest (<see cref="BrokerKeyMaterial.EncryptAtRest"/>); null once revoked.</param>
/// <param name="KekId">The id of the key-encryption key version that encrypted it (the file KEK's key id, or a Key Vault secret version id): it is opened with that version.</param>
/// <param name="ETag">The version read.</param>
public sealed record StoredKey(
    string KeyId, V1.KeyPurpose Purpose, string Owner, int Version, bool Revoked, string? RevocationReason,
    DateTimeOffset Imported, DateTimeOffset Updated, string PolicyJson, string? ContractId, string? Material, string KekId,
    string? ETag = null)
{
    /// <summary>
    /// What the at-rest encryption binds: key id, owner, purpose, version, contract id and the policy's SHA-256. A
    /// storage writer who changes any of them (say, loosens the policy) makes the key undecryptable, not releasable.
    /// </summary>
    [JsonIgnore]
    public string Binding =>
        string.Join('\n', KeyId, Owner, ((int)Purpose).ToString(System.Globalization.CultureInfo.InvariantCulture),
            Version.ToString(System.Globalization.CultureInfo.InvariantCulture), ContractId ?? "",
            Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(PolicyJson))));
}

/// <summary>Imported keys in the record store.</summary>
public sealed class KeyRepository(IRecordStore store)
{
    private const string Row = "key";
    private static readonly JsonSerializerOptions Options = StoreJson.Options;

    /// <summary>The key, or null.</summary>
    public async Task<StoredKey?> GetAsync(string keyId, CancellationToken cancellationToken)
    {
        var record = await store.GetAsync(KeyBrokerTables.Keys, keyId, Row, cancellationToken).ConfigureAwait(false);
        if (record is null)
        {
            return null;
        }

        var key = JsonSerializer.Deserialize<StoredKey>(record.Data, Options);
        return key is null || key.KeyId != keyId
            ? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the stored record of key {keyId} is unreadable")
            : key with { ETag = record.ETag };
    }

    /// <summary>Stores a new key; <see cref="RecordConflictException"/> when the id exists.</summary>
    public Task InsertAsync(StoredKey key, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        return store.InsertAsync(KeyBrokerTables.Keys, new StoredRecord(key.KeyId, Row, Serialize(key)), cancellationToken);
    }

    /// <summary>Replaces a key read at its ETag; <see cref="RecordConflictException"/> when it changed.</summary>
    public Task ReplaceAsync(StoredKey key, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        return store.ReplaceAsync(KeyBrokerTables.Keys, new StoredRecord(key.KeyId, Row, Serialize(key), key.ETag), cancellationToken);
    }

    private static string Serialize(StoredKey key) => JsonSerializer.Serialize(key with { ETag = null }, Options);
}
