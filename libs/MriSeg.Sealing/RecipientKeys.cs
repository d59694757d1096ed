using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>How a data key is wrapped to a recipient.</summary>
public enum KeyWrapAlgorithm
{
    /// <summary>RSA-OAEP with SHA-256 and MGF1-SHA-256 ("RSA-OAEP-256"); RSA keys of 2048 bits or more.</summary>
    RsaOaep256,

    /// <summary>Ephemeral-static ECDH on P-256, HKDF-SHA256, AES-256-GCM ("ECDH-ES+A256GCM").</summary>
    EcdhEsA256Gcm,
}

/// <summary>
/// A recipient's public key for key wrapping: RSA (2048 bits or more, wrapped with RSA-OAEP-256) or
/// P-256 (wrapped with ECDH-ES+A256GCM). PEM "PUBLIC KEY" (SubjectPublicKeyInfo).
/// </summary>
public sealed class RecipientPublicKey
{
    private RecipientPublicKey(KeyWrapAlgorithm algorithm, byte[] spki)
    {
        Algorithm = algorithm;
        SubjectPublicKeyInfo = spki;
        ThumbprintBytes = SHA256.HashData(spki);
        Thumbprint = Hex.Lower(ThumbprintBytes);
    }

    /// <summary>The wrapping algorithm this key takes.</summary>
    public KeyWrapAlgorithm Algorithm { get; }

    /// <summary>Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.</summary>
    public string Thumbprint { get; }

    internal byte[] ThumbprintBytes { get; }

    internal byte[] SubjectPublicKeyInfo { get; }

    /// <summary>Imports a "PUBLIC KEY" PEM of an RSA or P-256 key.</summary>
    public static RecipientPublicKey FromPem(string pem)
    {
        ArgumentNullException.ThrowIfNull(pem);
        if (!PemEncoding.TryFind(pem, out var fields) || pem[fields.Label] is not "PUBLIC KEY")
        {
            throw new SealedPackageException(SealingError.InvalidKey, "recipient public key: expected a \"PUBLIC KEY\" PEM");
        }

        return FromSubjectPublicKeyInfo(Convert.FromBase64String(pem[fields.Base64Data]));
    }

    /// <summary>Imports a DER SubjectPublicKeyInfo of an RSA or P-256 key.</summary>
    public static RecipientPublicKey FromSubjectPublicKeyInfo(ReadOnlySpan<byte> spki)
    {
        var (algorithm, canonical) = KeyWrapKeys.Classify(spki, "recipient public key");
        return new RecipientPublicKey(algorithm, canonical);
    }

    /// <summary>Reads a "PUBLIC KEY" PEM file.</summary>
    public static RecipientPublicKey Load(string path) => FromPem(File.ReadAllText(path));

    /// <summary>The "PUBLIC KEY" PEM.</summary>
    public string ExportPem() => PemEncoding.WriteString("PUBLIC KEY", SubjectPublicKeyInfo);

    /// <summary>The DER SubjectPublicKeyInfo.</summary>
    public byte[] ExportSubjectPublicKeyInfo() => (byte[])SubjectPublicKeyInfo.Clone();
}

/// <summary>
/// A recipient's private key for unwrapping (e.g. the clean room's ephemeral key pair).
/// PEM "PRIVATE KEY" (PKCS#8). Dispose to release it.
/// </summary>
public sealed class RecipientPrivateKey : IDisposable
{
    private readonly AsymmetricAlgorithm _key;

    private RecipientPrivateKey(AsymmetricAlgorithm key)
    {
        _key = key;
        var spki = key.ExportSubjectPublicKeyInfo();
        PublicKey = RecipientPublicKey.FromSubjectPublicKeyInfo(spki);
    }

    /// <summary>The public half, to give to whoever wraps keys for this recipient.</summary>
    public RecipientPublicKey PublicKey { get; }

    /// <summary>The wrapping algorithm this key takes.</summary>
    public KeyWrapAlgorithm Algorithm => PublicKey.Algorithm;

    internal RSA Rsa => (RSA)_key;

    internal ECDiffieHellman Ecdh => (ECDiffieHellman)_key;

    /// <summary>A fresh P-256 key pair (ECDH-ES+A256GCM).</summary>
    public static RecipientPrivateKey GenerateEcP256() => new(ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>A fresh RSA key pair (RSA-OAEP-256), 3072 bits unless told otherwise (2048 at least).</summary>
    public static RecipientPrivateKey GenerateRsa(int bits = 3072)
    {
        if (bits < 2048)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, $"RSA keys of {bits} bits are too small (2048 at least)");
        }

        return new(RSA.Create(bits));
    }

    /// <summary>Imports a PKCS#8 "PRIVATE KEY" PEM of an RSA or P-256 key.</summary>
    public static RecipientPrivateKey FromPkcs8Pem(string pem)
    {
        ArgumentNullException.ThrowIfNull(pem);
        if (!PemEncoding.TryFind(pem, out var fields) || pem[fields.Label] is not "PRIVATE KEY")
        {
            throw new SealedPackageException(SealingError.InvalidKey, "recipient private key: expected a PKCS#8 \"PRIVATE KEY\" PEM");
        }

        var der = Convert.FromBase64String(pem[fields.Base64Data]);
        try
        {
            var rsa = RSA.Create();
            try
            {
                rsa.ImportPkcs8PrivateKey(der, out var read);
                if (read == der.Length)
                {
                    return new RecipientPrivateKey(rsa);
                }
            }
            catch (CryptographicException)
            {
            }

            rsa.Dispose();
            var ecdh = ECDiffieHellman.Create();
            try
            {
                ecdh.ImportPkcs8PrivateKey(der, out var read);
                if (read != der.Length)
                {
                    throw new SealedPackageException(SealingError.InvalidKey, "recipient private key: trailing bytes after the PKCS#8 structure");
                }

                return new RecipientPrivateKey(ecdh);
            }
            catch (CryptographicException e)
            {
                ecdh.Dispose();
                throw new SealedPackageException(SealingError.InvalidKey, "recipient private key: neither an RSA nor a P-256 PKCS#8 key", innerException: e);
            }
            catch
            {
                ecdh.Dispose();
                throw;
            }
        }
        finally
        {
            CryptographicOperations.ZeroMemory(der);
        }
    }

    /// <summary>Reads a PEM file written by <see cref="Save"/>.</summary>
    public static RecipientPrivateKey Load(string path) => FromPkcs8Pem(File.ReadAllText(path));

    /// <summary>The private key as unencrypted PKCS#8 PEM.</summary>
    public string ExportPkcs8Pem() => _key.ExportPkcs8PrivateKeyPem();

    /// <summary>Writes the PKCS#8 PEM with mode 0600.</summary>
    public void Save(string path, bool overwrite = false) => SecureFile.WriteAllText(path, ExportPkcs8Pem() + "\n", overwrite);

    /// <inheritdoc />
    public void Dispose() => _key.Dispose();
}

internal static class KeyWrapKeys
{
    public static (KeyWrapAlgorithm Algorithm, byte[] CanonicalSpki) Classify(ReadOnlySpan<byte> spki, string what)
    {
        using (var rsa = RSA.Create())
        {
            try
            {
                rsa.ImportSubjectPublicKeyInfo(spki, out var read);
                if (read != spki.Length)
                {
                    throw new SealedPackageException(SealingError.InvalidKey, $"{what}: trailing bytes after the SubjectPublicKeyInfo");
                }

                if (rsa.KeySize < 2048)
                {
                    throw new SealedPackageException(SealingError.InvalidKey, $"{what}: RSA key of {rsa.KeySize} bits is too small (2048 at least)");
                }

                return (KeyWrapAlgorithm.RsaOaep256, rsa.ExportSubjectPublicKeyInfo());
            }
            catch (CryptographicException)
            {
            }
        }

        using var ecdh = ECDiffieHellman.Create();
        try
        {
            ecdh.ImportSubjectPublicKeyInfo(spki, out var read);
            if (read != spki.Length)
            {
                throw new SealedPackageException(SealingError.InvalidKey, $"{what}: trailing bytes after the SubjectPublicKeyInfo");
            }
        }
        catch (CryptographicException e)
        {
            throw new SealedPackageException(SealingError.InvalidKey, $"{what}: neither an RSA nor an EC public key", innerException: e);
        }

        KeyChecks.RequireP256(ecdh.ExportParameters(false), what);
        return (KeyWrapAlgorithm.EcdhEsA256Gcm, ecdh.ExportSubjectPublicKeyInfo());
    }
}
