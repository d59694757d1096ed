using System.Buffers.Binary;
using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>The 48-byte header (layout in docs/sealed-package-format.md) and its SHA-256 digest.</summary>
internal sealed class PackageHeader
{
    private PackageHeader(byte[] bytes, int chunkSize, byte[] keyId, byte[] noncePrefix)
    {
        Bytes = bytes;
        ChunkSize = chunkSize;
        KeyId = keyId;
        NoncePrefix = noncePrefix;
        Digest = SHA256.HashData(bytes);
    }

    public byte[] Bytes { get; }

    public int ChunkSize { get; }

    public byte[] KeyId { get; }

    public byte[] NoncePrefix { get; }

    /// <summary>SHA-256 of the 48 header bytes: the associated data of every chunk.</summary>
    public byte[] Digest { get; }

    public string KeyIdHex => Hex.Lower(KeyId);

    public static PackageHeader Create(int chunkSize, ReadOnlySpan<byte> keyId)
    {
        PackageFormat.ValidateChunkSize(chunkSize);
        var bytes = new byte[PackageFormat.HeaderLength];
        PackageFormat.HeaderMagic.CopyTo(bytes);
        BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(8), PackageFormat.Version);
        bytes[10] = PackageFormat.AeadAes256GcmStream;
        bytes[11] = PackageFormat.SignatureEcdsaP256Sha256;
        bytes[12] = PackageFormat.DigestSha256;
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(16), (uint)chunkSize);
        keyId.CopyTo(bytes.AsSpan(20, PackageFormat.KeyIdLength));
        RandomNumberGenerator.Fill(bytes.AsSpan(36, PackageFormat.NoncePrefixLength));
        return Parse(bytes);
    }

    public static PackageHeader Parse(ReadOnlySpan<byte> span)
    {
        if (span.Length != PackageFormat.HeaderLength)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: header incomplete");
        }

        if (!span[..8].SequenceEqual(PackageFormat.HeaderMagic))
        {
            throw new SealedPackageException(SealingError.Malformed, "not a sealed package: bad header magic");
        }

        var version = BinaryPrimitives.ReadUInt16BigEndian(span[8..]);
        if (version != PackageFormat.Version)
        {
            throw new SealedPackageException(SealingError.UnsupportedFormat, $"unsupported format version {version} (this library reads version {PackageFormat.Version})");
        }

        if (span[10] != PackageFormat.AeadAes256GcmStream)
        {
            throw new SealedPackageException(SealingError.UnsupportedFormat, $"header: unsupported encryption algorithm id {span[10]}");
        }

        if (span[11] != PackageFormat.SignatureEcdsaP256Sha256)
        {
            throw new SealedPackageException(SealingError.UnsupportedFormat, $"header: unsupported signature algorithm id {span[11]}");
        }

        if (span[12] != PackageFormat.DigestSha256)
        {
            throw new SealedPackageException(SealingError.UnsupportedFormat, $"header: unsupported digest algorithm id {span[12]}");
        }

        if (span[13..16].ContainsAnyExcept((byte)0) || span[43..48].ContainsAnyExcept((byte)0))
        {
            throw new SealedPackageException(SealingError.Malformed, "header: reserved bytes are not zero");
        }

        var chunkSize = BinaryPrimitives.ReadUInt32BigEndian(span[16..]);
        if (chunkSize < PackageFormat.MinChunkSize || chunkSize > PackageFormat.MaxChunkSize)
        {
            throw new SealedPackageException(SealingError.Malformed, $"header: chunk size {chunkSize} is outside [{PackageFormat.MinChunkSize}, {PackageFormat.MaxChunkSize}]");
        }

        return new PackageHeader(span.ToArray(), (int)chunkSize, span.Slice(20, PackageFormat.KeyIdLength).ToArray(),
            span.Slice(36, PackageFormat.NoncePrefixLength).ToArray());
    }
}
