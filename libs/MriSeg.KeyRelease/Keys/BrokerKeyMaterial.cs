using System.Security.Cryptography;
using System.Text;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Keys;

/// <summary>
/// The broker's own keys. Two places keep them (<c>KeyBroker:Kek:Source</c>):
/// <list type="bullet">
/// <item><b>file</b> (development, the default): files under one folder (mode 0700; files 0600),
/// <see cref="LoadOrCreate"/>: <c>broker-wrap.key</c>, the P-256 (or RSA) key pair owners wrap data keys to for import
/// (PKCS#8 PEM); <c>broker-kek.key</c>, the 256-bit key-encryption key (KEK) that encrypts stored data keys at rest and
/// from which the record MAC key is derived (MriSeg data-key file); <c>dev-attestation-signing.key</c>, the development
/// authority's signing key (<see cref="DevelopmentSigningKeyFile"/>).</item>
/// <item><b>keyvault</b> (the cloud: a container with no persistent disk), <see cref="LoadOrCreateAsync"/>: the KEK is
/// an Azure Key Vault secret (<see cref="KeyVaultKeyEncryptionKeySource"/>); the import key pair, a random 256-bit
/// record key (the MAC key derives from it) and the development authority's signing key are kept in table storage,
/// each AES-256-GCM-wrapped under a pinned KEK version (<see cref="BrokerKeyring"/>). A restart, a new replica or a new
/// revision reads them again; nothing is on the container's disk.</item>
/// </list>
/// Data keys at rest are wrapped under the current KEK version and record its id (<see cref="KekId"/>, stored in
/// <see cref="StoredKey.KekId"/>); <see cref="DecryptAtRestAsync"/> opens them with the version they name, so a KEK
/// rotation (a new secret version) leaves them readable. Key material is never logged; <see cref="WrapKeyId"/> and
/// <see cref="KekId"/> are public identifiers.
/// </summary>
public sealed class BrokerKeyMaterial : IDisposable
{
    /// <summary>File name of the import wrapping key.</summary>
    public const string WrapKeyFile = "broker-wrap.key";

    /// <summary>File name of the key-encryption key.</summary>
    public const string KekFile = "broker-kek.key";

    /// <summary>File name of the development attestation authority's signing key (file source).</summary>
    public const string DevelopmentSigningKeyFile = "dev-attestation-signing.key";

    private static ReadOnlySpan<byte> AadContext => "MriSeg.KeyRelease.v1 key at rest\0"u8;

    private readonly RecipientPrivateKey _wrapKey;
    private readonly IKeyEncryptionKeySource _kekSource;
    private readonly KeyEncryptionKey _kek;
    private readonly byte[] _recordKey;
    private readonly string? _developmentSigningKeyPem;

    /// <summary>Creates the material from keys (owned: disposed with it), as the file source has them: the KEK is also the record key.</summary>
    public BrokerKeyMaterial(RecipientPrivateKey wrapKey, DataKey kek)
        : this(wrapKey, new FileKeyEncryptionKeySource(kek ?? throw new ArgumentNullException(nameof(kek))))
    {
    }

    private BrokerKeyMaterial(RecipientPrivateKey wrapKey, FileKeyEncryptionKeySource source)
        : this(wrapKey, source, source.GetCurrentAsync(CancellationToken.None).GetAwaiter().GetResult(), recordKey: null, developmentSigningKeyPem: null)
    {
    }

    /// <param name="wrapKey">The import key pair (owned).</param>
    /// <param name="kekSource">The KEK source (owned).</param>
    /// <param name="kek">Its current version.</param>
    /// <param name="recordKey">The 256-bit record key (copied); null: the current KEK's bytes (the file source's derivation).</param>
    /// <param name="developmentSigningKeyPem">The development authority's signing key kept with the material, if any.</param>
    internal BrokerKeyMaterial(RecipientPrivateKey wrapKey, IKeyEncryptionKeySource kekSource, KeyEncryptionKey kek, byte[]? recordKey, string? developmentSigningKeyPem)
    {
        _wrapKey = wrapKey ?? throw new ArgumentNullException(nameof(wrapKey));
        _kekSource = kekSource ?? throw new ArgumentNullException(nameof(kekSource));
        _kek = kek ?? throw new ArgumentNullException(nameof(kek));
        _recordKey = recordKey is null ? kek.Key.ExportKeyBytes()
            : recordKey.Length == 32 ? (byte[])recordKey.Clone()
            : throw new ArgumentException("the record key is 32 bytes", nameof(recordKey));
        _developmentSigningKeyPem = developmentSigningKeyPem;
    }

    /// <summary>The public key owners wrap keys to.</summary>
    public RecipientPublicKey WrapPublicKey => _wrapKey.PublicKey;

    /// <summary>Its id: the thumbprint of the public key.</summary>
    public string WrapKeyId => _wrapKey.PublicKey.Thumbprint;

    /// <summary>
    /// The id of the KEK version new material is wrapped under (not secret): the file KEK's MriSeg key id, or the Key Vault
    /// secret version's id.
    /// </summary>
    public string KekId => _kek.Id;

    /// <summary>Where the KEK comes from (for logs: a path, or a vault and secret name).</summary>
    public string KekDescription => _kekSource.Description;

    /// <summary>Whether loading created keys (a first start).</summary>
    public bool Created { get; private init; }

    /// <summary>
    /// A new instance of the development attestation authority's signing key kept with this material (the Key Vault
    /// source keeps it in the keyring), or null where it is not (the file source: <see cref="DevelopmentSigningKeyFile"/>).
    /// </summary>
    public SigningKey? CreateDevelopmentSigningKey() => _developmentSigningKeyPem is null ? null : SigningKey.FromPkcs8Pem(_developmentSigningKeyPem);

    /// <summary>Fresh in-memory keys (tests).</summary>
    public static BrokerKeyMaterial CreateEphemeral() => new(RecipientPrivateKey.GenerateEcP256(), DataKey.Generate());

    /// <summary>
    /// Loads the keys from <paramref name="directory"/>, creating the folder (0700) and missing keys (0600) when
    /// <paramref name="create"/> is set; otherwise a missing key is an error.
    /// </summary>
    public static BrokerKeyMaterial LoadOrCreate(string directory, bool create, out bool created)
    {
        created = false;
        if (!Directory.Exists(directory))
        {
            if (!create)
            {
                throw new InvalidOperationException($"the broker key folder {directory} does not exist");
            }

            if (OperatingSystem.IsWindows())
            {
                Directory.CreateDirectory(directory);
            }
            else
            {
                Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }

        var wrapPath = Path.Combine(directory, WrapKeyFile);
        var kekPath = Path.Combine(directory, KekFile);
        var wrap = LoadOrMake(wrapPath, create, RecipientPrivateKey.Load, () => RecipientPrivateKey.GenerateEcP256(), (k, p) => k.Save(p), k => k.Dispose(), ref created);
        try
        {
            var kek = LoadOrMake(kekPath, create, DataKey.Load, DataKey.Generate, (k, p) => k.Save(p), k => k.Dispose(), ref created);
            var source = new FileKeyEncryptionKeySource(kek, "file " + kekPath);
            return new BrokerKeyMaterial(wrap, source) { Created = created };
        }
        catch
        {
            wrap.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Loads the keys with a KEK from <paramref name="kek"/> (owned: disposed with the material, or here on failure) and
    /// the rest from the keyring in <paramref name="store"/> (the raw store, not an <see cref="IntegrityRecordStore"/>),
    /// creating the keyring when <paramref name="create"/> allows and the store holds no state yet
    /// (<see cref="BrokerKeyring"/>). The KEK's current version is read first: a missing secret is an error unless its
    /// source may create it.
    /// </summary>
    public static async Task<BrokerKeyMaterial> LoadOrCreateAsync(IKeyEncryptionKeySource kek, IRecordStore store, bool create, TimeProvider? time, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(kek);
        ArgumentNullException.ThrowIfNull(store);
        try
        {
            var current = await kek.GetCurrentAsync(cancellationToken).ConfigureAwait(false);
            var (contents, created) = await BrokerKeyring.LoadOrCreateAsync(store, kek, current, create, time ?? TimeProvider.System, cancellationToken).ConfigureAwait(false);
            using (contents)
            {
                return new BrokerKeyMaterial(contents.TakeWrapKey(), kek, current, contents.RecordKey, contents.DevelopmentSigningKeyPem) { Created = created || kek.Created };
            }
        }
        catch
        {
            kek.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The key that authenticates stored records (<see cref="IntegrityRecordStore"/>): HKDF-SHA256 of the record key
    /// (the KEK itself with the file source; the keyring's record key with Key Vault, so it does not change when the KEK
    /// rotates).
    /// </summary>
    public byte[] DeriveRecordMacKey() =>
        HKDF.DeriveKey(HashAlgorithmName.SHA256, _recordKey, 32, salt: [], info: "MriSeg.KeyRelease.v1 record mac"u8.ToArray());

    /// <summary>Unwraps a key imported wrapped to <see cref="WrapPublicKey"/>.</summary>
    public DataKey UnwrapImported(WrappedKey wrapped) => KeyWrap.Unwrap(wrapped, _wrapKey);

    /// <summary>
    /// Encrypts a data key at rest: AES-256-GCM under the current KEK version (record <see cref="KekId"/> with it), random 96-bit nonce, associated data binding the record
    /// (<paramref name="binding"/>: key id, owner, purpose, version, policy digest, contract id), so a stored key moved to
    /// another record, or a record whose bound fields were altered, does not decrypt. Returns base64(nonce ‖ ciphertext ‖ tag).
    /// </summary>
    public string EncryptAtRest(DataKey key, string binding)
    {
        ArgumentNullException.ThrowIfNull(key);
        var plaintext = key.ExportKeyBytes();
        var kek = _kek.Key.ExportKeyBytes();
        try
        {
            var blob = new byte[12 + plaintext.Length + 16];
            RandomNumberGenerator.Fill(blob.AsSpan(0, 12));
            using var gcm = new AesGcm(kek, 16);
            gcm.Encrypt(blob.AsSpan(0, 12), plaintext, blob.AsSpan(12, plaintext.Length), blob.AsSpan(12 + plaintext.Length), Aad(binding));
            return Convert.ToBase64String(blob);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(plaintext);
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    /// <summary>
    /// Decrypts what <see cref="EncryptAtRest"/> made under KEK version <paramref name="kekId"/> (the current one, or an
    /// older one read from the KEK source by that id); <see cref="KeyBrokerError.DataLoss"/> when it does not
    /// authenticate or that version is gone, <see cref="KeyBrokerError.Unavailable"/> when the source cannot be reached.
    /// </summary>
    public async Task<DataKey> DecryptAtRestAsync(string encrypted, string binding, string kekId, CancellationToken cancellationToken)
    {
        var kek = string.Equals(kekId, _kek.Id, StringComparison.Ordinal) ? _kek : await _kekSource.GetAsync(kekId, cancellationToken).ConfigureAwait(false);
        return DecryptAtRest(encrypted, binding, kek);
    }

    /// <summary>Decrypts what <see cref="EncryptAtRest"/> made under the current KEK; <see cref="KeyBrokerError.DataLoss"/> when it does not authenticate.</summary>
    public DataKey DecryptAtRest(string encrypted, string binding) => DecryptAtRest(encrypted, binding, _kek);

    private static DataKey DecryptAtRest(string encrypted, string binding, KeyEncryptionKey kekVersion)
    {
        byte[] blob;
        try
        {
            blob = Convert.FromBase64String(encrypted);
        }
        catch (FormatException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, "the stored key material is not base64", e);
        }

        if (blob.Length != 12 + DataKey.SizeInBytes + 16)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, "the stored key material has the wrong length");
        }

        var plaintext = new byte[DataKey.SizeInBytes];
        var kek = kekVersion.Key.ExportKeyBytes();
        try
        {
            using var gcm = new AesGcm(kek, 16);
            gcm.Decrypt(blob.AsSpan(0, 12), blob.AsSpan(12, DataKey.SizeInBytes), blob.AsSpan(12 + DataKey.SizeInBytes), plaintext, Aad(binding));
            return DataKey.FromBytes(plaintext);
        }
        catch (AuthenticationTagMismatchException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, "the stored key material does not authenticate (altered record or another key-encryption key)", e);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(plaintext);
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _wrapKey.Dispose();
        _kekSource.Dispose();
        CryptographicOperations.ZeroMemory(_recordKey);
    }

    private static byte[] Aad(string binding)
    {
        var bytes = Encoding.UTF8.GetBytes(binding);
        var aad = new byte[AadContext.Length + bytes.Length];
        AadContext.CopyTo(aad);
        bytes.CopyTo(aad.AsSpan(AadContext.Length));
        return aad;
    }

    private static T LoadOrMake<T>(string path, bool create, Func<string, T> load, Func<T> make, Action<T, string> save, Action<T> dispose, ref bool created)
    {
        if (File.Exists(path))
        {
            return load(path);
        }

        if (!create)
        {
            throw new InvalidOperationException($"the broker key {Path.GetFileName(path)} is missing in {Path.GetDirectoryName(path)}");
        }

        var key = make();
        try
        {
            save(key, path);
            created = true;
            return key;
        }
        catch (SealedPackageException e) when (e.Error == SealingError.DestinationExists)
        {
            dispose(key); // another process made it meanwhile: use that one
            return load(path);
        }
    }
}
