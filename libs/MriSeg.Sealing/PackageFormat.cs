using System.Buffers.Binary;

namespace MriSeg.Sealing;

/// <summary>
/// Constants and length arithmetic of sealed-package format version 1. The byte layout is specified in
/// <c>docs/sealed-package-format.md</c>; every multi-byte integer is big-endian.
/// </summary>
public static class PackageFormat
{
    /// <summary>The format version this library writes and reads.</summary>
    public const int Version = 1;

    /// <summary>Length of the fixed header.</summary>
    public const int HeaderLength = 48;

    /// <summary>AES-256-GCM tag length.</summary>
    public const int TagLength = 16;

    /// <summary>AES-GCM nonce length: nonce prefix (7) ‖ chunk counter (4) ‖ last-chunk flag (1).</summary>
    public const int NonceLength = 12;

    /// <summary>Length of the per-package random nonce prefix.</summary>
    public const int NoncePrefixLength = 7;

    /// <summary>Length of a key id.</summary>
    public const int KeyIdLength = 16;

    /// <summary>Length of the word that precedes each chunk (final flag and chunk length).</summary>
    public const int RecordPrefixLength = 4;

    /// <summary>Per-chunk overhead: record word and tag.</summary>
    public const int RecordOverhead = RecordPrefixLength + TagLength;

    /// <summary>Length of an ECDSA P-256 signature in IEEE P1363 form (r ‖ s).</summary>
    public const int SignatureLength = 64;

    /// <summary>Length of the footer: trailer length (4) ‖ end magic (8).</summary>
    public const int FooterLength = 12;

    /// <summary>Trailer bytes besides the manifest: manifest length, signature, footer.</summary>
    public const int TrailerOverhead = 4 + SignatureLength + FooterLength;

    /// <summary>The default chunk size (1 MiB).</summary>
    public const int DefaultChunkSize = 1 << 20;

    /// <summary>The smallest chunk size accepted.</summary>
    public const int MinChunkSize = 16;

    /// <summary>The largest chunk size accepted (64 MiB).</summary>
    public const int MaxChunkSize = 1 << 26;

    /// <summary>The largest manifest accepted (1 MiB).</summary>
    public const int MaxManifestLength = 1 << 20;

    /// <summary>The most chunks one package may have (the counter is 32 bits).</summary>
    public const long MaxChunkCount = 1L << 32;

    /// <summary>Algorithm id of the body encryption: AES-256-GCM in the STREAM construction.</summary>
    public const byte AeadAes256GcmStream = 1;

    /// <summary>Algorithm id of the signature: ECDSA P-256 with SHA-256, IEEE P1363, low-s.</summary>
    public const byte SignatureEcdsaP256Sha256 = 1;

    /// <summary>Algorithm id of the plaintext digest: SHA-256.</summary>
    public const byte DigestSha256 = 1;

    /// <summary>Magic that starts every package: ASCII "MRISEGPK".</summary>
    public static ReadOnlySpan<byte> HeaderMagic => "MRISEGPK"u8;

    /// <summary>Magic that ends every package: ASCII "MRISEGEP".</summary>
    public static ReadOnlySpan<byte> EndMagic => "MRISEGEP"u8;

    /// <summary>Domain-separation prefix of the signed message.</summary>
    internal static ReadOnlySpan<byte> SignatureContext => "MriSeg.Sealing.v1 package signature\0"u8;

    /// <summary>Number of chunks a plaintext of this length is sealed into (an empty plaintext has one empty final chunk).</summary>
    public static long ChunkCount(long plaintextLength, int chunkSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(plaintextLength);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkSize, MinChunkSize);
        return plaintextLength == 0 ? 1 : (plaintextLength - 1) / chunkSize + 1;
    }

    /// <summary>Exact package length for a plaintext length, chunk size and manifest length, or -1 on overflow.</summary>
    public static long PackageLength(long plaintextLength, int chunkSize, int manifestLength)
    {
        var chunks = ChunkCount(plaintextLength, chunkSize);
        try
        {
            return checked(HeaderLength + plaintextLength + chunks * RecordOverhead + manifestLength + TrailerOverhead);
        }
        catch (OverflowException)
        {
            return -1;
        }
    }

    internal static void BuildNonce(Span<byte> nonce, ReadOnlySpan<byte> prefix, long counter, bool final)
    {
        prefix.CopyTo(nonce);
        BinaryPrimitives.WriteUInt32BigEndian(nonce.Slice(NoncePrefixLength, 4), checked((uint)counter));
        nonce[NonceLength - 1] = final ? (byte)1 : (byte)0;
    }

    internal static void ValidateChunkSize(int chunkSize)
    {
        if (chunkSize < MinChunkSize || chunkSize > MaxChunkSize)
        {
            throw new SealedPackageException(SealingError.InvalidArgument,
                $"chunk size {chunkSize} is outside [{MinChunkSize}, {MaxChunkSize}]");
        }
    }
}
