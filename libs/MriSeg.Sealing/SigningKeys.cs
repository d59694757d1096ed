using System.Numerics;
using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>
/// An owner's ECDSA P-256 signing key. PEM export/import is PKCS#8 ("PRIVATE KEY"). Signatures are
/// IEEE P1363 (r ‖ s, 64 bytes) with s normalised to the lower half of the group order, so a package's
/// bytes are not malleable.
/// </summary>
public sealed class SigningKey : IDisposable
{
    private readonly ECDsa _ecdsa;

    private SigningKey(ECDsa ecdsa)
    {
        _ecdsa = ecdsa;
        PublicKey = SignerPublicKey.FromSubjectPublicKeyInfo(ecdsa.ExportSubjectPublicKeyInfo());
    }

    /// <summary>The public key to register for this owner.</summary>
    public SignerPublicKey PublicKey { get; }

    /// <summary>Thumbprint of the public key (lowercase hex SHA-256 of its SubjectPublicKeyInfo).</summary>
    public string Thumbprint => PublicKey.Thumbprint;

    /// <summary>A fresh P-256 key.</summary>
    public static SigningKey Generate() => new(ECDsa.Create(ECCurve.NamedCurves.nistP256));

    /// <summary>Imports a PKCS#8 "PRIVATE KEY" PEM of a P-256 key.</summary>
    public static SigningKey FromPkcs8Pem(string pem)
    {
        ArgumentNullException.ThrowIfNull(pem);
        var ecdsa = ECDsa.Create();
        try
        {
            if (!pem.Contains("-----BEGIN PRIVATE KEY-----", StringComparison.Ordinal))
            {
                throw new SealedPackageException(SealingError.InvalidKey, "signing key: expected a PKCS#8 \"PRIVATE KEY\" PEM");
            }

            ecdsa.ImportFromPem(pem);
            KeyChecks.RequireP256(ecdsa.ExportParameters(false), "signing key");
            return new SigningKey(ecdsa);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            ecdsa.Dispose();
            throw new SealedPackageException(SealingError.InvalidKey, "signing key: not a P-256 PKCS#8 private key PEM", innerException: e);
        }
        catch
        {
            ecdsa.Dispose();
            throw;
        }
    }

    /// <summary>Reads a PEM file written by <see cref="Save"/>.</summary>
    public static SigningKey Load(string path) => FromPkcs8Pem(File.ReadAllText(path));

    /// <summary>The private key as PKCS#8 PEM (unencrypted: protect the file).</summary>
    public string ExportPkcs8Pem() => _ecdsa.ExportPkcs8PrivateKeyPem();

    /// <summary>Writes the PKCS#8 PEM with mode 0600.</summary>
    public void Save(string path, bool overwrite = false) => SecureFile.WriteAllText(path, ExportPkcs8Pem() + "\n", overwrite);

    /// <summary>Signs <paramref name="data"/> (ECDSA P-256, SHA-256), low-s, IEEE P1363. Thread-safe.</summary>
    public byte[] SignData(ReadOnlySpan<byte> data)
    {
        byte[] signature;
        lock (_ecdsa)
        {
            // .NET does not promise that one key object may be used from several threads at once.
            signature = _ecdsa.SignData(data, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }

        LowS.Normalize(signature);
        return signature;
    }

    /// <inheritdoc />
    public void Dispose() => _ecdsa.Dispose();
}

/// <summary>An owner's registered ECDSA P-256 public key (SubjectPublicKeyInfo, PEM "PUBLIC KEY").</summary>
public sealed class SignerPublicKey : IDisposable
{
    private readonly ECDsa _ecdsa;
    private readonly byte[] _spki;

    private SignerPublicKey(ECDsa ecdsa, byte[] spki)
    {
        _ecdsa = ecdsa;
        _spki = spki;
        ThumbprintBytes = SHA256.HashData(spki);
        Thumbprint = Hex.Lower(ThumbprintBytes);
    }

    /// <summary>Lowercase hex SHA-256 of the DER SubjectPublicKeyInfo.</summary>
    public string Thumbprint { get; }

    internal byte[] ThumbprintBytes { get; }

    /// <summary>Imports a "PUBLIC KEY" PEM (SubjectPublicKeyInfo) of a P-256 key.</summary>
    public static SignerPublicKey FromPem(string pem)
    {
        ArgumentNullException.ThrowIfNull(pem);
        if (!pem.Contains("-----BEGIN PUBLIC KEY-----", StringComparison.Ordinal))
        {
            throw new SealedPackageException(SealingError.InvalidKey, "signer public key: expected a \"PUBLIC KEY\" PEM");
        }

        using var ecdsa = ECDsa.Create();
        try
        {
            ecdsa.ImportFromPem(pem);
        }
        catch (Exception e) when (e is CryptographicException or ArgumentException)
        {
            throw new SealedPackageException(SealingError.InvalidKey, "signer public key: not a P-256 public key PEM", innerException: e);
        }

        return FromSubjectPublicKeyInfo(ecdsa.ExportSubjectPublicKeyInfo());
    }

    /// <summary>Imports a DER SubjectPublicKeyInfo of a P-256 key.</summary>
    public static SignerPublicKey FromSubjectPublicKeyInfo(ReadOnlySpan<byte> spki)
    {
        var ecdsa = ECDsa.Create();
        try
        {
            ecdsa.ImportSubjectPublicKeyInfo(spki, out var read);
            if (read != spki.Length)
            {
                throw new SealedPackageException(SealingError.InvalidKey, "signer public key: trailing bytes after the SubjectPublicKeyInfo");
            }

            KeyChecks.RequireP256(ecdsa.ExportParameters(false), "signer public key");
            return new SignerPublicKey(ecdsa, ecdsa.ExportSubjectPublicKeyInfo());
        }
        catch (CryptographicException e)
        {
            ecdsa.Dispose();
            throw new SealedPackageException(SealingError.InvalidKey, "signer public key: not a P-256 SubjectPublicKeyInfo", innerException: e);
        }
        catch
        {
            ecdsa.Dispose();
            throw;
        }
    }

    /// <summary>Reads a "PUBLIC KEY" PEM file.</summary>
    public static SignerPublicKey Load(string path) => FromPem(File.ReadAllText(path));

    /// <summary>The DER SubjectPublicKeyInfo.</summary>
    public byte[] ExportSubjectPublicKeyInfo() => (byte[])_spki.Clone();

    /// <summary>The "PUBLIC KEY" PEM.</summary>
    public string ExportPem() => PemEncoding.WriteString("PUBLIC KEY", _spki);

    /// <summary>Writes the PEM file (public: mode as the process default).</summary>
    public void Save(string path, bool overwrite = false)
    {
        SecureFile.CheckDestination(path, overwrite);
        File.WriteAllText(path, ExportPem() + "\n");
    }

    /// <summary>Verifies a 64-byte IEEE P1363 signature; high-s signatures are refused. Thread-safe.</summary>
    public bool VerifyData(ReadOnlySpan<byte> data, ReadOnlySpan<byte> signature)
    {
        if (signature.Length != PackageFormat.SignatureLength || !LowS.IsLow(signature))
        {
            return false;
        }

        lock (_ecdsa)
        {
            return _ecdsa.VerifyData(data, signature, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _ecdsa.Dispose();
}

internal static class KeyChecks
{
    public const string P256Oid = "1.2.840.10045.3.1.7";

    public static void RequireP256(ECParameters parameters, string what)
    {
        if (!parameters.Curve.IsNamed || parameters.Curve.Oid?.Value != P256Oid)
        {
            throw new SealedPackageException(SealingError.InvalidKey, $"{what}: not on the P-256 curve");
        }
    }
}

/// <summary>Low-s normalisation of P-256 ECDSA signatures (s and n - s both verify).</summary>
internal static class LowS
{
    private static readonly BigInteger Order = new(Convert.FromHexString("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551"), isUnsigned: true, isBigEndian: true);
    private static readonly BigInteger HalfOrder = Order >> 1;

    public static bool IsLow(ReadOnlySpan<byte> signature) =>
        new BigInteger(signature[32..], isUnsigned: true, isBigEndian: true) <= HalfOrder;

    public static void Normalize(Span<byte> signature)
    {
        var s = new BigInteger(signature[32..], isUnsigned: true, isBigEndian: true);
        if (s <= HalfOrder)
        {
            return;
        }

        var low = Order - s;
        var target = signature[32..];
        target.Clear();
        var count = low.GetByteCount(isUnsigned: true);
        if (!low.TryWriteBytes(target[(32 - count)..], out _, isUnsigned: true, isBigEndian: true))
        {
            throw new InvalidOperationException("low-s normalisation failed");
        }
    }
}
