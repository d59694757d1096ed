using System.Buffers.Binary;
using System.Collections.ObjectModel;
using System.Text;

namespace MriSeg.Sealing;

/// <summary>What a package holds.</summary>
public enum ContentType : byte
{
    /// <summary>A dataset shard (training data of a data provider).</summary>
    Dataset = 1,

    /// <summary>A model (base model or trained model).</summary>
    Model = 2,

    /// <summary>A pipeline configuration.</summary>
    Pipeline = 3,

    /// <summary>An output of a clean-room run (metrics, curves).</summary>
    Output = 4,

    /// <summary>A training checkpoint.</summary>
    Checkpoint = 5,
}

/// <summary>
/// The manifest: what the package holds, who made it, when, and the plaintext's length and SHA-256. It is
/// stored in the clear (readable without the data key), covered by the owner's signature and, as associated
/// data of the final chunk, by the data key.
/// </summary>
public sealed class PackageManifest
{
    /// <summary>Most bytes (UTF-8) of the owner.</summary>
    public const int MaxOwnerBytes = 1024;

    /// <summary>Most bytes (UTF-8) of a metadata key.</summary>
    public const int MaxMetadataKeyBytes = 256;

    /// <summary>Most bytes (UTF-8) of a metadata value.</summary>
    public const int MaxMetadataValueBytes = 65535;

    /// <summary>Most metadata entries.</summary>
    public const int MaxMetadataEntries = 1024;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    internal PackageManifest(ContentType contentType, string owner, DateTimeOffset createdAt, long plaintextLength,
        byte[] plaintextSha256, byte[] signerThumbprint, IReadOnlyDictionary<string, string> metadata)
    {
        ContentType = contentType;
        Owner = owner;
        CreatedAt = createdAt;
        PlaintextLength = plaintextLength;
        PlaintextSha256Bytes = plaintextSha256;
        SignerThumbprintBytes = signerThumbprint;
        Metadata = metadata;
    }

    /// <summary>What the package holds.</summary>
    public ContentType ContentType { get; }

    /// <summary>The owner (data provider or consumer) as the sealer named it.</summary>
    public string Owner { get; }

    /// <summary>When the package was sealed (UTC, millisecond precision).</summary>
    public DateTimeOffset CreatedAt { get; }

    /// <summary>Length of the plaintext in bytes.</summary>
    public long PlaintextLength { get; }

    /// <summary>SHA-256 of the plaintext, lowercase hex.</summary>
    public string PlaintextSha256 => Hex.Lower(PlaintextSha256Bytes);

    /// <summary>Thumbprint (SHA-256 of the SubjectPublicKeyInfo, lowercase hex) of the signer's public key.</summary>
    public string SignerThumbprint => Hex.Lower(SignerThumbprintBytes);

    /// <summary>Free string metadata, ordered by key (UTF-8 byte order).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    internal byte[] PlaintextSha256Bytes { get; }

    internal byte[] SignerThumbprintBytes { get; }

    /// <summary>Validates and orders metadata (UTF-8 byte order of the keys).</summary>
    internal static List<KeyValuePair<byte[], byte[]>> EncodeMetadata(IReadOnlyDictionary<string, string>? metadata)
    {
        var entries = new List<KeyValuePair<byte[], byte[]>>();
        if (metadata is null)
        {
            return entries;
        }

        if (metadata.Count > MaxMetadataEntries)
        {
            throw Invalid($"metadata has {metadata.Count} entries (at most {MaxMetadataEntries})");
        }

        foreach (var (key, value) in metadata)
        {
            entries.Add(new(
                Encode("metadata key", key, MaxMetadataKeyBytes, allowEmpty: false, allowLineBreaks: false),
                Encode($"metadata value of \"{key}\"", value ?? throw Invalid($"metadata value of \"{key}\" is null"), MaxMetadataValueBytes, allowEmpty: true, allowLineBreaks: true)));
        }

        entries.Sort(static (a, b) => a.Key.AsSpan().SequenceCompareTo(b.Key));
        for (var i = 1; i < entries.Count; i++)
        {
            if (entries[i - 1].Key.AsSpan().SequenceEqual(entries[i].Key))
            {
                throw Invalid("metadata has a duplicate key");
            }
        }

        return entries;
    }

    internal static byte[] Serialize(ContentType contentType, string owner, DateTimeOffset createdAt, long plaintextLength,
        ReadOnlySpan<byte> sha256, ReadOnlySpan<byte> signerThumbprint, List<KeyValuePair<byte[], byte[]>> metadata)
    {
        var ownerBytes = Encode("owner", owner, MaxOwnerBytes, allowEmpty: false, allowLineBreaks: false);
        var length = 1 + 8 + 8 + 32 + 32 + 2 + ownerBytes.Length + 2;
        foreach (var (k, v) in metadata)
        {
            length += 2 + k.Length + 2 + v.Length;
        }

        if (length > PackageFormat.MaxManifestLength)
        {
            throw Invalid($"manifest would be {length} bytes (at most {PackageFormat.MaxManifestLength})");
        }

        var buffer = new byte[length];
        var span = buffer.AsSpan();
        span[0] = (byte)contentType;
        BinaryPrimitives.WriteInt64BigEndian(span[1..], createdAt.ToUnixTimeMilliseconds());
        BinaryPrimitives.WriteInt64BigEndian(span[9..], plaintextLength);
        sha256.CopyTo(span[17..]);
        signerThumbprint.CopyTo(span[49..]);
        var at = 81;
        at = WriteU16Prefixed(span, at, ownerBytes);
        BinaryPrimitives.WriteUInt16BigEndian(span[at..], (ushort)metadata.Count);
        at += 2;
        foreach (var (k, v) in metadata)
        {
            at = WriteU16Prefixed(span, at, k);
            at = WriteU16Prefixed(span, at, v);
        }

        return buffer;
    }

    internal static PackageManifest Parse(ReadOnlySpan<byte> span)
    {
        try
        {
            var reader = new Reader(span);
            var type = reader.Byte();
            if (type is < (byte)ContentType.Dataset or > (byte)ContentType.Checkpoint)
            {
                throw Bad($"unknown content type {type}");
            }

            var createdMs = reader.Int64();
            if (createdMs < DateTimeOffset.MinValue.ToUnixTimeMilliseconds() || createdMs > DateTimeOffset.MaxValue.ToUnixTimeMilliseconds())
            {
                throw Bad("creation time out of range");
            }

            var length = reader.Int64();
            if (length < 0)
            {
                throw Bad("negative plaintext length");
            }

            var sha = reader.Bytes(32).ToArray();
            var thumb = reader.Bytes(32).ToArray();
            var owner = Decode("owner", reader.Bytes(reader.UInt16()), MaxOwnerBytes, allowEmpty: false, allowLineBreaks: false);
            var count = reader.UInt16();
            if (count > MaxMetadataEntries)
            {
                throw Bad($"{count} metadata entries (at most {MaxMetadataEntries})");
            }

            var metadata = new Dictionary<string, string>(count, StringComparer.Ordinal);
            var order = new List<string>(count);
            ReadOnlySpan<byte> previous = default;
            for (var i = 0; i < count; i++)
            {
                var keyBytes = reader.Bytes(reader.UInt16());
                if (i > 0 && previous.SequenceCompareTo(keyBytes) >= 0)
                {
                    throw Bad("metadata keys are not in strictly increasing order");
                }

                previous = keyBytes;
                var key = Decode("metadata key", keyBytes, MaxMetadataKeyBytes, allowEmpty: false, allowLineBreaks: false);
                var value = Decode("metadata value", reader.Bytes(reader.UInt16()), MaxMetadataValueBytes, allowEmpty: true, allowLineBreaks: true);
                metadata.Add(key, value);
                order.Add(key);
            }

            if (!reader.AtEnd)
            {
                throw Bad("trailing bytes");
            }

            return new PackageManifest((ContentType)type, owner, DateTimeOffset.FromUnixTimeMilliseconds(createdMs), length, sha, thumb,
                new ReadOnlyDictionary<string, string>(new OrderedDictionary<string, string>(order.Select(k => KeyValuePair.Create(k, metadata[k])), StringComparer.Ordinal)));
        }
        catch (SealedPackageException e) when (e.Error == SealingError.InvalidArgument)
        {
            throw Bad(e.Message);
        }
    }

    private static int WriteU16Prefixed(Span<byte> span, int at, byte[] bytes)
    {
        BinaryPrimitives.WriteUInt16BigEndian(span[at..], (ushort)bytes.Length);
        bytes.CopyTo(span[(at + 2)..]);
        return at + 2 + bytes.Length;
    }

    private static byte[] Encode(string what, string text, int maxBytes, bool allowEmpty, bool allowLineBreaks)
    {
        ArgumentNullException.ThrowIfNull(text, what);
        byte[] bytes;
        try
        {
            bytes = StrictUtf8.GetBytes(text);
        }
        catch (EncoderFallbackException)
        {
            throw Invalid($"{what} is not valid Unicode");
        }

        CheckText(what, text, bytes.Length, maxBytes, allowEmpty, allowLineBreaks);
        return bytes;
    }

    private static string Decode(string what, ReadOnlySpan<byte> bytes, int maxBytes, bool allowEmpty, bool allowLineBreaks)
    {
        string text;
        try
        {
            text = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw Bad($"{what} is not valid UTF-8");
        }

        CheckText(what, text, bytes.Length, maxBytes, allowEmpty, allowLineBreaks);
        return text;
    }

    /// <summary>
    /// Control characters are refused (they could rewrite a terminal showing <c>inspect</c> output);
    /// values may hold tab, line feed and carriage return.
    /// </summary>
    private static void CheckText(string what, string text, int byteCount, int maxBytes, bool allowEmpty, bool allowLineBreaks)
    {
        if (byteCount == 0 && !allowEmpty)
        {
            throw Invalid($"{what} is empty");
        }

        if (byteCount > maxBytes)
        {
            throw Invalid($"{what} is {byteCount} bytes of UTF-8 (at most {maxBytes})");
        }

        foreach (var c in text)
        {
            if (char.IsControl(c) && !(allowLineBreaks && c is '\t' or '\n' or '\r'))
            {
                throw Invalid($"{what} contains control character U+{(int)c:X4}");
            }
        }
    }

    private static SealedPackageException Invalid(string reason) => new(SealingError.InvalidArgument, reason);

    private static SealedPackageException Bad(string reason) =>
        new(SealingError.ManifestInvalid, reason.StartsWith("manifest", StringComparison.Ordinal) ? reason : "manifest: " + reason);

    private ref struct Reader(ReadOnlySpan<byte> span)
    {
        private ReadOnlySpan<byte> _rest = span;

        public readonly bool AtEnd => _rest.IsEmpty;

        public byte Byte() => Bytes(1)[0];

        public ushort UInt16() => BinaryPrimitives.ReadUInt16BigEndian(Bytes(2));

        public long Int64() => BinaryPrimitives.ReadInt64BigEndian(Bytes(8));

        public ReadOnlySpan<byte> Bytes(int count)
        {
            if (_rest.Length < count)
            {
                throw Bad("ends early");
            }

            var result = _rest[..count];
            _rest = _rest[count..];
            return result;
        }
    }
}
