using System.Security.Cryptography;


namespace MriSeg.Sealing;

/// <summary>
/// Whose signature an opener or inspector requires. <see cref="Expect"/> is the normal case (the owner's
/// registered public key); <see cref="SkipSignatureVerification"/> is the explicit choice not to check it.
/// </summary>
public sealed class SignerCheck
{
    private SignerCheck(SignerPublicKey? expected) => ExpectedSigner = expected;

    /// <summary>
    /// Do not verify the signature. Inspect then reports an unauthenticated manifest; open still authenticates
    /// the header, every chunk and the manifest under the data key and checks the plaintext length and
    /// SHA-256, but proves nothing about who sealed the package.
    /// </summary>
    public static SignerCheck SkipSignatureVerification { get; } = new(null);

    /// <summary>The public key the package must be signed by, or null for <see cref="SkipSignatureVerification"/>.</summary>
    public SignerPublicKey? ExpectedSigner { get; }

    /// <summary>Require a valid signature by <paramref name="expectedSigner"/>.</summary>
    public static SignerCheck Expect(SignerPublicKey expectedSigner)
    {
        ArgumentNullException.ThrowIfNull(expectedSigner);
        return new SignerCheck(expectedSigner);
    }
}

/// <summary>What to seal and how.</summary>
public sealed class SealOptions
{
    /// <summary>What the package holds.</summary>
    public required ContentType ContentType { get; init; }

    /// <summary>The owner (1 to 1024 bytes of UTF-8, no control characters).</summary>
    public required string Owner { get; init; }

    /// <summary>Free string metadata (at most 1024 entries; keys 1 to 256 bytes, values up to 65535 bytes of UTF-8).</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }

    /// <summary>Plaintext bytes per chunk (default 1 MiB, between 16 bytes and 64 MiB).</summary>
    public int ChunkSize { get; init; } = PackageFormat.DefaultChunkSize;

    /// <summary>The creation time to record (default: now). Stored with millisecond precision.</summary>
    public DateTimeOffset? CreatedAt { get; init; }

    /// <summary>How the plaintext SHA-256 is computed.</summary>
    public HashingMode Hashing { get; init; } = HashingMode.Auto;
}

/// <summary>How to open.</summary>
public sealed class OpenOptions
{
    /// <summary>The defaults.</summary>
    public static OpenOptions Default { get; } = new();

    /// <summary>Replace an existing destination file (only once everything has verified).</summary>
    public bool Overwrite { get; init; }

    /// <summary>How the plaintext SHA-256 is computed.</summary>
    public HashingMode Hashing { get; init; } = HashingMode.Auto;
}

/// <summary>What a package is, as read from its header and manifest.</summary>
public sealed class PackageInfo
{
    internal PackageInfo(int chunkSize, string keyId, PackageManifest manifest, bool signatureVerified, long packageLength)
    {
        ChunkSize = chunkSize;
        KeyId = keyId;
        Manifest = manifest;
        SignatureVerified = signatureVerified;
        PackageLength = packageLength;
    }

    /// <summary>Format version.</summary>
    public int FormatVersion => PackageFormat.Version;

    /// <summary>Plaintext bytes per chunk.</summary>
    public int ChunkSize { get; }

    /// <summary>Id of the data key the package is sealed under.</summary>
    public string KeyId { get; }

    /// <summary>The manifest.</summary>
    public PackageManifest Manifest { get; }

    /// <summary>Number of chunks.</summary>
    public long ChunkCount => PackageFormat.ChunkCount(Manifest.PlaintextLength, ChunkSize);

    /// <summary>
    /// True when the signature was verified against the expected signer; false when the caller chose
    /// <see cref="SignerCheck.SkipSignatureVerification"/> (then nothing proves who sealed the package).
    /// </summary>
    public bool SignatureVerified { get; }

    /// <summary>Length of the package in bytes.</summary>
    public long PackageLength { get; }
}

/// <summary>
/// A package opened into memory: returned only once every chunk, the final flag, the length, the SHA-256
/// and (when asked) the signature have verified. Dispose to zero the plaintext.
/// </summary>
public sealed class OpenedPackage : IDisposable
{
    private readonly byte[] _buffer;
    private readonly int _length;

    internal OpenedPackage(PackageInfo info, byte[] buffer, int length)
    {
        Info = info;
        _buffer = buffer;
        _length = length;
    }

    /// <summary>What was opened.</summary>
    public PackageInfo Info { get; }

    /// <summary>The plaintext.</summary>
    public ReadOnlyMemory<byte> Plaintext => _buffer.AsMemory(0, _length);

    /// <summary>A read-only stream over the plaintext (no copy).</summary>
    public MemoryStream OpenRead() => new(_buffer, 0, _length, writable: false);

    /// <summary>A copy of the plaintext.</summary>
    public byte[] ToArray() => Plaintext.ToArray();

    /// <summary>Zeroes the plaintext.</summary>
    public void Dispose() => CryptographicOperations.ZeroMemory(_buffer);
}
