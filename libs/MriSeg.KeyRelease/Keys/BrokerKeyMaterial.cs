using System.Security.Cryptography;
using System.Text;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Keys;

/// <summary>
/// The broker's own keys, in development files under one folder (mode 0700; files 0600) — the place Azure Key Vault
/// Premium or a managed HSM takes in the cloud:
/// <list type="bullet">
/// <item><c>broker-wrap.key</c>: the P-256 (or RSA) key pair owners wrap data keys to for import (PKCS#8 PEM);</item>
/// <item><c>broker-kek.key</c>: the 256-bit key-encryption key that encrypts stored data keys at rest (MriSeg data-key file).</item>
/// </list>
/// Key material is never logged; <see cref="WrapKeyId"/> and <see cref="KekId"/> are public identifiers.
/// </summary>
public sealed class BrokerKeyMaterial : IDisposable
{
    /// <summary>File name of the import wrapping key.</summary>
    public const string WrapKeyFile = "broker-wrap.key";

    /// <summary>File name of the key-encryption key.</summary>
    public const string KekFile = "broker-kek.key";

    private static ReadOnlySpan<byte> AadContext => "MriSeg.KeyRelease.v1 key at rest\0"u8;

    private readonly RecipientPrivateKey _wrapKey;
    private readonly DataKey _kek;

    /// <summary>Creates the material from keys (owned: disposed with it).</summary>
    public BrokerKeyMaterial(RecipientPrivateKey wrapKey, DataKey kek)
    {
        _wrapKey = wrapKey ?? throw new ArgumentNullException(nameof(wrapKey));
        _kek = kek ?? throw new ArgumentNullException(nameof(kek));
    }

    /// <summary>The public key owners wrap keys to.</summary>
    public RecipientPublicKey WrapPublicKey => _wrapKey.PublicKey;

    /// <summary>Its id: the thumbprint of the public key.</summary>
    public string WrapKeyId => _wrapKey.PublicKey.Thumbprint;

    /// <summary>The key-encryption key's id (its MriSeg key id; not secret).</summary>
    public string KekId => _kek.KeyId;

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
            return new BrokerKeyMaterial(wrap, kek);
        }
        catch
        {
            wrap.Dispose();
            throw;
        }
    }

    /// <summary>The key that authenticates stored records (<see cref="Storage.IntegrityRecordStore"/>): HKDF-SHA256 of the KEK.</summary>
    public byte[] DeriveRecordMacKey()
    {
        var kek = _kek.ExportKeyBytes();
        try
        {
            return HKDF.DeriveKey(HashAlgorithmName.SHA256, kek, 32, salt: [], info: "MriSeg.KeyRelease.v1 record mac"u8.ToArray());
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    /// <summary>Unwraps a key imported wrapped to <see cref="WrapPublicKey"/>.</summary>
    public DataKey UnwrapImported(WrappedKey wrapped) => KeyWrap.Unwrap(wrapped, _wrapKey);

    /// <summary>
    /// Encrypts a data key at rest: AES-256-GCM under the KEK, random 96-bit nonce, associated data binding the record
    /// (<paramref name="binding"/>: key id, owner, purpose, version, policy digest, contract id), so a stored key moved to
    /// another record, or a record whose bound fields were altered, does not decrypt. Returns base64(nonce ‖ ciphertext ‖ tag).
    /// </summary>
    public string EncryptAtRest(DataKey key, string binding)
    {
        ArgumentNullException.ThrowIfNull(key);
        var plaintext = key.ExportKeyBytes();
        var kek = _kek.ExportKeyBytes();
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

    /// <summary>Decrypts what <see cref="EncryptAtRest"/> made; <see cref="KeyBrokerError.DataLoss"/> when it does not authenticate.</summary>
    public DataKey DecryptAtRest(string encrypted, string binding)
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
        var kek = _kek.ExportKeyBytes();
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
        _kek.Dispose();
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
