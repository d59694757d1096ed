using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Keys;

/// <summary>
/// The broker's own keys in table storage, for a KEK that lives elsewhere (Key Vault): one record, table
/// <see cref="Table"/>, partition <see cref="Partition"/>, row <see cref="Row"/>:
/// <code>
/// { "format": 1, "kekId": "&lt;KEK version id&gt;", "created": "…",
///   "wrapKeyId": "&lt;thumbprint&gt;", "wrapKey": "&lt;sealed PKCS#8 PEM of the import key pair&gt;",
///   "recordKey": "&lt;sealed 256-bit record key&gt;",
///   "developmentSigningKeyId": "&lt;thumbprint&gt;", "developmentSigningKey": "&lt;sealed PKCS#8 PEM&gt;" }
/// </code>
/// Each sealed field is base64(nonce ‖ AES-256-GCM ciphertext ‖ tag) under the KEK version <c>kekId</c> (pinned: a
/// later rotation does not touch it, that version is read by its id), with associated data naming the field and the
/// KEK version, so fields cannot be swapped; the public ids are checked against the keys they name. The record is not
/// under the record MAC (it holds the MAC key); the AEAD authenticates what matters.
/// <para>
/// Created once, on a first start (<c>KeyBroker:CreateKeys</c>), by an insert: of racing replicas one wins and the others
/// read its keyring. It is never created over existing state: if the keyring is missing but parties are registered (a
/// deleted row, another KEK), the start fails rather than make keys under which every stored record would fail.
/// </para>
/// </summary>
public static class BrokerKeyring
{
    /// <summary>The table.</summary>
    public const string Table = "kbbroker";

    /// <summary>The partition.</summary>
    public const string Partition = "broker";

    /// <summary>The row.</summary>
    public const string Row = "keyring";

    private const int Format = 1;
    private static ReadOnlySpan<byte> AadContext => "MriSeg.KeyRelease.v1 broker keyring\0"u8;

    /// <summary>The keyring's record (public fields and sealed fields, as stored).</summary>
    internal sealed record KeyringRecord(
        int Format, string KekId, DateTimeOffset Created, string WrapKeyId, string WrapKey, string RecordKey,
        string DevelopmentSigningKeyId, string DevelopmentSigningKey);

    /// <summary>What a keyring holds, opened.</summary>
    internal sealed class Contents(RecipientPrivateKey wrapKey, byte[] recordKey, string developmentSigningKeyPem) : IDisposable
    {
        private RecipientPrivateKey? _wrapKey = wrapKey;

        public byte[] RecordKey { get; } = recordKey;

        public string DevelopmentSigningKeyPem { get; } = developmentSigningKeyPem;

        /// <summary>The import key pair, handed over (not disposed with the contents).</summary>
        public RecipientPrivateKey TakeWrapKey()
        {
            var key = _wrapKey ?? throw new InvalidOperationException("the wrap key was taken");
            _wrapKey = null;
            return key;
        }

        public void Dispose()
        {
            _wrapKey?.Dispose();
            CryptographicOperations.ZeroMemory(RecordKey);
        }
    }

    /// <summary>Reads the keyring (opening it with the KEK version it names), or creates it under <paramref name="current"/>.</summary>
    internal static async Task<(Contents Contents, bool Created)> LoadOrCreateAsync(IRecordStore store, IKeyEncryptionKeySource kek, KeyEncryptionKey current,
        bool create, TimeProvider time, CancellationToken cancellationToken)
    {
        var record = await store.GetAsync(Table, Partition, Row, cancellationToken).ConfigureAwait(false);
        if (record is null)
        {
            if (!create)
            {
                throw new InvalidOperationException(
                    $"table storage has no broker keyring ({Table}/{Partition}/{Row}: the import key pair, record key and development signing key, wrapped under {kek.Description}); "
                    + "start the KeyBroker once with KeyBroker:CreateKeys=true to create it");
            }

            await RequireNoStateAsync(store, kek, cancellationToken).ConfigureAwait(false);
            var made = Make(current, time.GetUtcNow(), out var contents);
            try
            {
                await store.InsertAsync(Table, new StoredRecord(Partition, Row, JsonSerializer.Serialize(made, StoreJson.Options)), cancellationToken).ConfigureAwait(false);
                return (contents, true);
            }
            catch (RecordConflictException)
            {
                contents.Dispose(); // another replica made it meanwhile: use that one
                record = await store.GetAsync(Table, Partition, Row, cancellationToken).ConfigureAwait(false)
                    ?? throw new InvalidOperationException($"the broker keyring {Table}/{Partition}/{Row} was created and is gone again");
            }
            catch
            {
                contents.Dispose();
                throw;
            }
        }

        return (await OpenAsync(record, kek, cancellationToken).ConfigureAwait(false), false);
    }

    private static async Task RequireNoStateAsync(IRecordStore store, IKeyEncryptionKeySource kek, CancellationToken cancellationToken)
    {
        await foreach (var party in store.QueryAsync(KeyBrokerTables.Parties, "party", null, cancellationToken).ConfigureAwait(false))
        {
            throw new InvalidOperationException(
                $"table storage has no broker keyring ({Table}/{Partition}/{Row}) but holds registered parties (e.g. '{Ids.Printable(party.Row)}'): "
                + $"refusing to create new broker keys under {kek.Description} over existing state, whose records would all fail their integrity check. "
                + "Restore the keyring row (or point the broker at the storage and KEK it was made with)");
        }
    }

    private static KeyringRecord Make(KeyEncryptionKey kek, DateTimeOffset now, out Contents contents)
    {
        var wrapKey = RecipientPrivateKey.GenerateEcP256();
        var recordKey = RandomNumberGenerator.GetBytes(32);
        using var signing = SigningKey.Generate();
        var signingPem = signing.ExportPkcs8Pem();
        var wrapPem = Encoding.UTF8.GetBytes(wrapKey.ExportPkcs8Pem());
        var signingBytes = Encoding.UTF8.GetBytes(signingPem);
        try
        {
            var record = new KeyringRecord(Format, kek.Id, now, wrapKey.PublicKey.Thumbprint,
                Seal(kek, "wrapKey", wrapPem), Seal(kek, "recordKey", recordKey),
                signing.Thumbprint, Seal(kek, "developmentSigningKey", signingBytes));
            contents = new Contents(wrapKey, recordKey, signingPem);
            return record;
        }
        catch
        {
            wrapKey.Dispose();
            CryptographicOperations.ZeroMemory(recordKey);
            throw;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(wrapPem);
            CryptographicOperations.ZeroMemory(signingBytes);
        }
    }

    private static async Task<Contents> OpenAsync(StoredRecord stored, IKeyEncryptionKeySource kek, CancellationToken cancellationToken)
    {
        KeyringRecord? record;
        try
        {
            record = JsonSerializer.Deserialize<KeyringRecord>(stored.Data, StoreJson.Options);
        }
        catch (JsonException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the broker keyring {Table}/{Partition}/{Row} is unreadable: {e.Message}", e);
        }

        if (record is null || record.Format != Format || string.IsNullOrEmpty(record.KekId) || record.WrapKey is null || record.RecordKey is null || record.DevelopmentSigningKey is null)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss,
                string.Create(CultureInfo.InvariantCulture, $"the broker keyring {Table}/{Partition}/{Row} is incomplete or of an unknown format ({record?.Format})"));
        }

        var version = await kek.GetAsync(record.KekId, cancellationToken).ConfigureAwait(false);
        var wrapPem = Open(version, "wrapKey", record.WrapKey);
        var recordKey = Open(version, "recordKey", record.RecordKey);
        var signingPem = Open(version, "developmentSigningKey", record.DevelopmentSigningKey);
        RecipientPrivateKey? wrapKey = null;
        try
        {
            wrapKey = RecipientPrivateKey.FromPkcs8Pem(Encoding.UTF8.GetString(wrapPem));
            var signingText = Encoding.UTF8.GetString(signingPem);
            using var signing = SigningKey.FromPkcs8Pem(signingText);
            if (recordKey.Length != 32 || wrapKey.PublicKey.Thumbprint != record.WrapKeyId || signing.Thumbprint != record.DevelopmentSigningKeyId)
            {
                throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the broker keyring {Table}/{Partition}/{Row} does not match its key ids");
            }

            var contents = new Contents(wrapKey, recordKey, signingText);
            wrapKey = null;
            return contents;
        }
        catch (SealedPackageException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the broker keyring {Table}/{Partition}/{Row} holds an unreadable key: {e.Message}", e);
        }
        finally
        {
            wrapKey?.Dispose();
            CryptographicOperations.ZeroMemory(wrapPem);
            CryptographicOperations.ZeroMemory(signingPem);
        }
    }

    private static string Seal(KeyEncryptionKey kek, string field, ReadOnlySpan<byte> plaintext)
    {
        var key = kek.Key.ExportKeyBytes();
        try
        {
            var blob = new byte[12 + plaintext.Length + 16];
            RandomNumberGenerator.Fill(blob.AsSpan(0, 12));
            using var gcm = new AesGcm(key, 16);
            gcm.Encrypt(blob.AsSpan(0, 12), plaintext, blob.AsSpan(12, plaintext.Length), blob.AsSpan(12 + plaintext.Length), Aad(field, kek.Id));
            return Convert.ToBase64String(blob);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    private static byte[] Open(KeyEncryptionKey kek, string field, string sealedField)
    {
        byte[] blob;
        try
        {
            blob = Convert.FromBase64String(sealedField);
        }
        catch (FormatException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the broker keyring's {field} is not base64", e);
        }

        if (blob.Length < 12 + 16)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the broker keyring's {field} is too short");
        }

        var plaintext = new byte[blob.Length - 12 - 16];
        var key = kek.Key.ExportKeyBytes();
        try
        {
            using var gcm = new AesGcm(key, 16);
            gcm.Decrypt(blob.AsSpan(0, 12), blob.AsSpan(12, plaintext.Length), blob.AsSpan(12 + plaintext.Length), plaintext, Aad(field, kek.Id));
            return plaintext;
        }
        catch (AuthenticationTagMismatchException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss,
                $"the broker keyring's {field} does not authenticate under key-encryption key {kek.Id} (altered record or another key)", e);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(key);
        }
    }

    private static byte[] Aad(string field, string kekId)
    {
        var text = Encoding.UTF8.GetBytes(field + "\0" + kekId);
        var aad = new byte[AadContext.Length + text.Length];
        AadContext.CopyTo(aad);
        text.CopyTo(aad.AsSpan(AadContext.Length));
        return aad;
    }
}
