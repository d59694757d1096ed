using System.Buffers.Binary;
using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>
/// Seals, opens and inspects sealed packages (format in docs/sealed-package-format.md). Sealing streams: the output
/// is written front to back and never sought, so it may be a blob upload. Opening releases plaintext only
/// after the whole package has verified: into memory (<see cref="OpenToMemoryAsync"/>) or into a file via a
/// temporary file renamed at the end (<see cref="OpenToFileAsync"/>). Every failure is a
/// <see cref="SealedPackageException"/>.
/// </summary>
public static class SealedPackage
{
    private const int RingSize = 4;

    /// <summary>
    /// Seals <paramref name="plaintext"/> (read to its end) into <paramref name="destination"/> under
    /// <paramref name="key"/>, signed by <paramref name="signer"/>. Memory: a few chunk-sized buffers. The
    /// destination is written front to back and never sought (a blob upload works). If sealing fails part-way,
    /// the destination holds a prefix without a final chunk or trailer, which every opener refuses; discard it
    /// (or abort the upload).
    /// </summary>
    public static async Task<PackageInfo> SealAsync(Stream plaintext, Stream destination, DataKey key, SigningKey signer,
        SealOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(signer);
        ArgumentNullException.ThrowIfNull(options);
        if (!plaintext.CanRead || !destination.CanWrite)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, "seal needs a readable input and a writable output");
        }

        var chunkSize = options.ChunkSize;
        PackageFormat.ValidateChunkSize(chunkSize);
        if (!Enum.IsDefined(options.ContentType))
        {
            throw new SealedPackageException(SealingError.InvalidArgument, $"unknown content type {(int)options.ContentType}");
        }

        var metadata = PackageManifest.EncodeMetadata(options.Metadata);
        var createdAt = DateTimeOffset.FromUnixTimeMilliseconds((options.CreatedAt ?? DateTimeOffset.UtcNow).ToUnixTimeMilliseconds());
        var signerThumbprint = signer.PublicKey.ThumbprintBytes;

        // Validates owner, metadata and manifest size before anything is written.
        _ = PackageManifest.Serialize(options.ContentType, options.Owner, createdAt, 0, new byte[32], signerThumbprint, metadata);

        var header = PackageHeader.Create(chunkSize, key.KeyIdBytes);
        await destination.WriteAsync(header.Bytes, cancellationToken).ConfigureAwait(false);

        using var aes = new AesGcm(key.Key, PackageFormat.TagLength);
        using var ring = new BufferRing(RingSize, chunkSize);
        using var hasher = new PlaintextHasher(options.Hashing, chunkSize);
        var record = new byte[PackageFormat.RecordOverhead + chunkSize];
        var nonce = new byte[PackageFormat.NonceLength];
        var finalAad = new byte[64];
        header.Digest.CopyTo(finalAad, 0);

        var current = await ring.NextAsync().ConfigureAwait(false);
        var currentLength = await ReadFullAsync(plaintext, ring[current], cancellationToken).ConfigureAwait(false);
        long counter = 0;
        long total = 0;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (counter >= PackageFormat.MaxChunkCount)
            {
                throw new SealedPackageException(SealingError.InputTooLarge, $"input too large: more than {PackageFormat.MaxChunkCount} chunks of {chunkSize} bytes");
            }

            // Read one chunk ahead: a chunk is final when the input ends with it.
            var next = -1;
            var nextLength = 0;
            var final = currentLength < chunkSize;
            if (!final)
            {
                next = await ring.NextAsync().ConfigureAwait(false);
                nextLength = await ReadFullAsync(plaintext, ring[next], cancellationToken).ConfigureAwait(false);
                final = nextLength == 0;
            }

            var region = ring[current].AsMemory(0, currentLength);
            ring.SetPending(current, hasher.Submit(region));
            total += currentLength;

            byte[]? trailer = null;
            if (final)
            {
                var digest = await hasher.FinishAsync().ConfigureAwait(false);
                var manifestBytes = PackageManifest.Serialize(options.ContentType, options.Owner, createdAt, total, digest, signerThumbprint, metadata);
                SHA256.HashData(manifestBytes, finalAad.AsSpan(32));
                var signature = signer.SignData(SignedMessage(header.Digest, finalAad.AsSpan(32)));
                trailer = BuildTrailer(manifestBytes, signature);
            }

            PackageFormat.BuildNonce(nonce, header.NoncePrefix, counter, final);
            BinaryPrimitives.WriteUInt32BigEndian(record, (uint)currentLength | (final ? 0x8000_0000u : 0u));
            aes.Encrypt(nonce, region.Span, record.AsSpan(PackageFormat.RecordPrefixLength, currentLength),
                record.AsSpan(PackageFormat.RecordPrefixLength + currentLength, PackageFormat.TagLength),
                final ? finalAad : header.Digest);
            await destination.WriteAsync(record.AsMemory(0, PackageFormat.RecordOverhead + currentLength), cancellationToken).ConfigureAwait(false);
            counter++;

            if (trailer is not null)
            {
                await destination.WriteAsync(trailer, cancellationToken).ConfigureAwait(false);
                await destination.FlushAsync(cancellationToken).ConfigureAwait(false);
                var manifest = PackageManifest.Parse(trailer.AsSpan(4, trailer.Length - PackageFormat.TrailerOverhead));
                return new PackageInfo(chunkSize, header.KeyIdHex, manifest, signatureVerified: true,
                    PackageFormat.PackageLength(total, chunkSize, trailer.Length - PackageFormat.TrailerOverhead));
            }

            current = next;
            currentLength = nextLength;
        }
    }

    /// <summary>
    /// Seals a file into a package file, through a temporary file (mode 0600) renamed at the end; nothing is
    /// left at <paramref name="packagePath"/> on failure.
    /// </summary>
    public static async Task<PackageInfo> SealFileAsync(string plaintextPath, string packagePath, DataKey key, SigningKey signer,
        SealOptions options, bool overwrite = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plaintextPath);
        ArgumentNullException.ThrowIfNull(packagePath);
        SecureFile.CheckDestination(packagePath, overwrite);
        var input = new FileStream(plaintextPath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0,
            FileOptions.Asynchronous | FileOptions.SequentialScan);
        await using (input.ConfigureAwait(false))
        {
            return await SealToFileAsync(input, packagePath, key, signer, options, overwrite, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Seals <paramref name="plaintext"/> (read to its end; e.g. a <see cref="MeteredStream"/> that reports
    /// progress) into a package file, through a temporary file (mode 0600) beside it that is flushed to disk and
    /// renamed at the end; nothing is left at <paramref name="packagePath"/> on failure.
    /// </summary>
    public static async Task<PackageInfo> SealToFileAsync(Stream plaintext, string packagePath, DataKey key, SigningKey signer,
        SealOptions options, bool overwrite = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(plaintext);
        ArgumentNullException.ThrowIfNull(packagePath);
        SecureFile.CheckDestination(packagePath, overwrite);
        var temp = SecureFile.TemporaryPathBeside(packagePath);
        var done = false;
        try
        {
            PackageInfo info;
            var output = SecureFile.CreateNew(temp, asynchronous: true);
            await using (output.ConfigureAwait(false))
            {
                info = await SealAsync(plaintext, output, key, signer, options, cancellationToken).ConfigureAwait(false);
                output.Flush(flushToDisk: true);
            }

            try
            {
                File.Move(temp, packagePath, overwrite);
            }
            catch (IOException e) when (!overwrite && File.Exists(packagePath))
            {
                throw new SealedPackageException(SealingError.DestinationExists, $"destination exists: {packagePath}", innerException: e);
            }

            done = true;
            return info;
        }
        finally
        {
            if (!done)
            {
                SecureFile.DeleteQuietly(temp);
            }
        }
    }

    /// <summary>
    /// Opens a package into memory. Returns only after every chunk, the final chunk, the plaintext length and
    /// SHA-256 and (unless skipped) the signature verified; on any failure throws and the partial plaintext is
    /// zeroed. A seekable input is checked (header, key id, trailer, signature) before decryption starts and
    /// the buffer is allocated once; a non-seekable one is read in one pass. At most
    /// <see cref="Array.MaxLength"/> bytes of plaintext.
    /// </summary>
    public static async Task<OpenedPackage> OpenToMemoryAsync(Stream package, DataKey key, SignerCheck signerCheck,
        OpenOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(package);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(signerCheck);
        options ??= OpenOptions.Default;
        var sink = new MemorySink();
        await using (sink.ConfigureAwait(false))
        {
            var info = await OpenCoreAsync(package, key, signerCheck, sink, options.Hashing, cancellationToken).ConfigureAwait(false);
            return sink.HandOver(info);
        }
    }

    /// <summary>
    /// Opens a package into <paramref name="destinationPath"/>: plaintext goes to a temporary file (mode 0600)
    /// beside it, renamed onto it only once the whole package verified; on any failure the temporary file is
    /// deleted and the destination is untouched.
    /// </summary>
    public static async Task<PackageInfo> OpenToFileAsync(Stream package, string destinationPath, DataKey key, SignerCheck signerCheck,
        OpenOptions? options = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(package);
        ArgumentNullException.ThrowIfNull(destinationPath);
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(signerCheck);
        options ??= OpenOptions.Default;
        SecureFile.CheckDestination(destinationPath, options.Overwrite);
        var sink = new FileSink(destinationPath, options.Overwrite);
        await using (sink.ConfigureAwait(false))
        {
            var info = await OpenCoreAsync(package, key, signerCheck, sink, options.Hashing, cancellationToken).ConfigureAwait(false);
            await sink.CompleteAsync(cancellationToken).ConfigureAwait(false);
            return info;
        }
    }

    /// <summary>
    /// Reads the header and manifest of a package without its key. Needs a seekable stream (the manifest is in
    /// the trailer). With <see cref="SignerCheck.Expect"/> the signature is verified (header and manifest are
    /// then authenticated); with <see cref="SignerCheck.SkipSignatureVerification"/> the manifest is shown as
    /// written, unauthenticated. Also checks that the package length matches what the manifest implies.
    /// </summary>
    public static PackageInfo Inspect(Stream package, SignerCheck signerCheck)
    {
        ArgumentNullException.ThrowIfNull(package);
        ArgumentNullException.ThrowIfNull(signerCheck);
        if (!package.CanSeek)
        {
            throw new SealedPackageException(SealingError.NotSeekable, "inspect needs a seekable stream (the manifest is in the trailer)");
        }

        var start = package.Position;
        var header = ReadHeaderAt(package, start);
        var layout = ReadLayout(package, start, header);
        var verified = CheckSignature(signerCheck, header, layout.Manifest, layout.ManifestDigest, layout.Signature);
        return new PackageInfo(header.ChunkSize, header.KeyIdHex, layout.Manifest, verified, layout.Length);
    }

    /// <summary>
    /// Checks a package without its data key, reading it once front to back (a non-seekable stream such as a
    /// blob download works; memory stays bounded). It checks everything that does not need the key: the header,
    /// the framing of every record (lengths, exactly one final record, last), the trailer, the end of the stream,
    /// that the records hold as many bytes as the manifest says, and, with <see cref="SignerCheck.Expect"/>, the
    /// signer and the signature (which authenticate the header and the manifest). It cannot check the chunks'
    /// ciphertexts and tags, nor the plaintext's SHA-256: that needs the key (<see cref="OpenToMemoryAsync"/>).
    /// To bind the ciphertext too, compare a digest of the bytes read (e.g. <see cref="MeteredStream"/>) with one
    /// recorded when sealing. Throws <see cref="SealedPackageException"/> on the first failed check.
    /// </summary>
    public static async Task<PackageInfo> VerifyWithoutKeyAsync(Stream package, SignerCheck signerCheck, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(package);
        ArgumentNullException.ThrowIfNull(signerCheck);
        if (!package.CanRead)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, "verify needs a readable package stream");
        }

        var headerBytes = new byte[PackageFormat.HeaderLength];
        if (await ReadFullAsync(package, headerBytes, cancellationToken).ConfigureAwait(false) < headerBytes.Length)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: header incomplete");
        }

        var header = PackageHeader.Parse(headerBytes);
        var chunkSize = header.ChunkSize;
        var scratch = new byte[Math.Min(chunkSize + PackageFormat.TagLength, 1 << 20)];
        var word = new byte[PackageFormat.RecordPrefixLength];
        long counter = 0;
        long total = 0;
        long packageLength = PackageFormat.HeaderLength;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var got = await ReadFullAsync(package, word, cancellationToken).ConfigureAwait(false);
            if (got == 0)
            {
                throw new SealedPackageException(SealingError.Truncated, $"truncated: no final chunk (the package ends after {counter} chunk(s))", counter);
            }

            if (got < word.Length)
            {
                throw new SealedPackageException(SealingError.Truncated, $"truncated: chunk {counter} is incomplete", counter);
            }

            var value = BinaryPrimitives.ReadUInt32BigEndian(word);
            var final = (value & 0x8000_0000u) != 0;
            var length = value & 0x7FFF_FFFFu;
            CheckRecordFraming(counter, final, length, chunkSize);

            // The ciphertext and tag cannot be checked without the key: read past them.
            var remaining = (long)length + PackageFormat.TagLength;
            while (remaining > 0)
            {
                var want = (int)Math.Min(remaining, scratch.Length);
                got = await ReadFullAsync(package, scratch.AsMemory(0, want), cancellationToken).ConfigureAwait(false);
                if (got < want)
                {
                    throw new SealedPackageException(SealingError.Truncated, $"truncated: chunk {counter} is incomplete", counter);
                }

                remaining -= want;
            }

            packageLength += PackageFormat.RecordOverhead + length;
            total += length;
            counter++;
            if (!final)
            {
                continue;
            }

            var trailer = await ReadTrailerAsync(package, cancellationToken).ConfigureAwait(false);
            packageLength += trailer.Length;
            if (trailer.Manifest.PlaintextLength != total)
            {
                throw new SealedPackageException(SealingError.ManifestInvalid,
                    $"manifest: plaintext length {trailer.Manifest.PlaintextLength} does not match the {total} bytes the chunks hold");
            }

            var verified = CheckSignature(signerCheck, header, trailer.Manifest, trailer.ManifestDigest, trailer.Signature);
            return new PackageInfo(chunkSize, header.KeyIdHex, trailer.Manifest, verified, packageLength);
        }
    }

    /// <summary>Inspects a package file (see <see cref="Inspect(Stream, SignerCheck)"/>).</summary>
    public static PackageInfo Inspect(string packagePath, SignerCheck signerCheck)
    {
        using var stream = File.OpenRead(packagePath);
        return Inspect(stream, signerCheck);
    }

    private static async Task<PackageInfo> OpenCoreAsync(Stream input, DataKey key, SignerCheck signerCheck, IPlaintextSink sink,
        HashingMode hashing, CancellationToken cancellationToken)
    {
        if (!input.CanRead)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, "open needs a readable package stream");
        }

        if (input.CanSeek)
        {
            // Fail fast before decrypting anything, and learn the length; the pass below re-verifies everything.
            var start = input.Position;
            var preHeader = ReadHeaderAt(input, start);
            CheckKey(preHeader, key);
            var layout = ReadLayout(input, start, preHeader);
            CheckSignature(signerCheck, preHeader, layout.Manifest, layout.ManifestDigest, layout.Signature);
            sink.Reserve(layout.Manifest.PlaintextLength);
            input.Position = start;
        }

        var headerBytes = new byte[PackageFormat.HeaderLength];
        if (await ReadFullAsync(input, headerBytes, cancellationToken).ConfigureAwait(false) < headerBytes.Length)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: header incomplete");
        }

        var header = PackageHeader.Parse(headerBytes);
        CheckKey(header, key);
        var chunkSize = header.ChunkSize;
        sink.Begin(chunkSize);

        using var aes = new AesGcm(key.Key, PackageFormat.TagLength);
        using var hasher = new PlaintextHasher(hashing, chunkSize);
        var record = new byte[PackageFormat.RecordOverhead + chunkSize];
        var nonce = new byte[PackageFormat.NonceLength];
        var finalAad = new byte[64];
        header.Digest.CopyTo(finalAad, 0);
        long counter = 0;
        long total = 0;
        long packageLength = PackageFormat.HeaderLength;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var got = await ReadFullAsync(input, record.AsMemory(0, PackageFormat.RecordPrefixLength), cancellationToken).ConfigureAwait(false);
            if (got == 0)
            {
                throw new SealedPackageException(SealingError.Truncated, $"truncated: no final chunk (the package ends after {counter} chunk(s))", counter);
            }

            if (got < PackageFormat.RecordPrefixLength)
            {
                throw new SealedPackageException(SealingError.Truncated, $"truncated: chunk {counter} is incomplete", counter);
            }

            var word = BinaryPrimitives.ReadUInt32BigEndian(record);
            var final = (word & 0x8000_0000u) != 0;
            var length = word & 0x7FFF_FFFFu;
            CheckRecordFraming(counter, final, length, chunkSize);

            var body = (int)length + PackageFormat.TagLength;
            got = await ReadFullAsync(input, record.AsMemory(PackageFormat.RecordPrefixLength, body), cancellationToken).ConfigureAwait(false);
            if (got < body)
            {
                throw new SealedPackageException(SealingError.Truncated, $"truncated: chunk {counter} is incomplete", counter);
            }

            packageLength += PackageFormat.RecordPrefixLength + body;
            PackageManifest? manifest = null;
            var verified = false;
            if (final)
            {
                var trailer = await ReadTrailerAsync(input, cancellationToken).ConfigureAwait(false);
                manifest = trailer.Manifest;
                packageLength += trailer.Length;
                verified = CheckSignature(signerCheck, header, manifest, trailer.ManifestDigest, trailer.Signature);
                trailer.ManifestDigest.CopyTo(finalAad, 32);
            }

            var destination = await sink.NextAsync((int)length, hasher).ConfigureAwait(false);
            PackageFormat.BuildNonce(nonce, header.NoncePrefix, counter, final);
            try
            {
                aes.Decrypt(nonce, record.AsSpan(PackageFormat.RecordPrefixLength, (int)length),
                    record.AsSpan(PackageFormat.RecordPrefixLength + (int)length, PackageFormat.TagLength),
                    destination.Span, final ? finalAad : header.Digest);
            }
            catch (CryptographicException e)
            {
                throw new SealedPackageException(SealingError.ChunkAuthenticationFailed,
                    final ? $"chunk {counter}: authentication failed (final chunk; it also covers the manifest)" : $"chunk {counter}: authentication failed",
                    counter, e);
            }

            var hashed = hasher.Submit(destination);
            await sink.CommitAsync(destination, hashed, cancellationToken).ConfigureAwait(false);
            total += length;
            counter++;

            if (manifest is not null)
            {
                var digest = await hasher.FinishAsync().ConfigureAwait(false);
                if (total != manifest.PlaintextLength)
                {
                    throw new SealedPackageException(SealingError.PlaintextLengthMismatch,
                        $"plaintext length {total} does not match the manifest's {manifest.PlaintextLength}");
                }

                if (!CryptographicOperations.FixedTimeEquals(digest, manifest.PlaintextSha256Bytes))
                {
                    throw new SealedPackageException(SealingError.PlaintextDigestMismatch, "plaintext SHA-256 does not match the manifest");
                }

                return new PackageInfo(chunkSize, header.KeyIdHex, manifest, verified, packageLength);
            }
        }
    }

    /// <summary>The rules of a record word that need no key (docs/sealed-package-format.md §4).</summary>
    private static void CheckRecordFraming(long counter, bool final, uint length, int chunkSize)
    {
        if (length > chunkSize)
        {
            throw new SealedPackageException(SealingError.Malformed, $"chunk {counter}: length {length} exceeds the chunk size {chunkSize}", counter);
        }

        if (!final && length != chunkSize)
        {
            throw new SealedPackageException(SealingError.Malformed, $"chunk {counter}: a non-final chunk of {length} bytes (must be {chunkSize})", counter);
        }

        if (final && length == 0 && counter != 0)
        {
            throw new SealedPackageException(SealingError.Malformed, $"chunk {counter}: an empty final chunk after data", counter);
        }

        if (counter >= PackageFormat.MaxChunkCount)
        {
            throw new SealedPackageException(SealingError.Malformed, $"chunk {counter}: more than {PackageFormat.MaxChunkCount} chunks", counter);
        }
    }

    private static void CheckKey(PackageHeader header, DataKey key)
    {
        if (!CryptographicOperations.FixedTimeEquals(header.KeyId, key.KeyIdBytes))
        {
            throw new SealedPackageException(SealingError.WrongDataKey,
                $"wrong data key: the package is sealed under key id {header.KeyIdHex}, the given key has id {key.KeyId}");
        }
    }

    /// <summary>Checks the signer and the signature when asked; returns whether it verified.</summary>
    private static bool CheckSignature(SignerCheck check, PackageHeader header, PackageManifest manifest, byte[] manifestDigest, byte[] signature)
    {
        var expected = check.ExpectedSigner;
        if (expected is null)
        {
            return false;
        }

        if (!CryptographicOperations.FixedTimeEquals(manifest.SignerThumbprintBytes, expected.ThumbprintBytes))
        {
            throw new SealedPackageException(SealingError.SignerMismatch,
                $"signer mismatch: the package names signer {Hex.Short(manifest.SignerThumbprint)}…, the expected signer is {Hex.Short(expected.Thumbprint)}…");
        }

        if (!expected.VerifyData(SignedMessage(header.Digest, manifestDigest), signature))
        {
            throw new SealedPackageException(SealingError.SignatureInvalid, "signature does not verify against the expected signer");
        }

        return true;
    }

    internal static byte[] SignedMessage(ReadOnlySpan<byte> headerDigest, ReadOnlySpan<byte> manifestDigest)
    {
        var context = PackageFormat.SignatureContext;
        var message = new byte[context.Length + 64];
        context.CopyTo(message);
        headerDigest.CopyTo(message.AsSpan(context.Length));
        manifestDigest.CopyTo(message.AsSpan(context.Length + 32));
        return message;
    }

    private static byte[] BuildTrailer(byte[] manifest, byte[] signature)
    {
        var trailer = new byte[manifest.Length + PackageFormat.TrailerOverhead];
        var span = trailer.AsSpan();
        BinaryPrimitives.WriteUInt32BigEndian(span, (uint)manifest.Length);
        manifest.CopyTo(span[4..]);
        signature.CopyTo(span[(4 + manifest.Length)..]);
        BinaryPrimitives.WriteUInt32BigEndian(span[(4 + manifest.Length + PackageFormat.SignatureLength)..], (uint)trailer.Length);
        PackageFormat.EndMagic.CopyTo(span[(trailer.Length - 8)..]);
        return trailer;
    }

    private sealed record Trailer(PackageManifest Manifest, byte[] ManifestDigest, byte[] Signature, long Length);

    private sealed record Layout(PackageManifest Manifest, byte[] ManifestDigest, byte[] Signature, long Length);

    /// <summary>Parses the trailer body after its 4-byte manifest length: manifest ‖ signature ‖ footer.</summary>
    private static Trailer ParseTrailer(int manifestLength, ReadOnlySpan<byte> rest)
    {
        var footer = rest[(manifestLength + PackageFormat.SignatureLength)..];
        if (BinaryPrimitives.ReadUInt32BigEndian(footer) != (uint)(manifestLength + PackageFormat.TrailerOverhead))
        {
            throw new SealedPackageException(SealingError.Malformed, "trailer: the trailer length does not match the manifest length");
        }

        if (!footer[4..].SequenceEqual(PackageFormat.EndMagic))
        {
            throw new SealedPackageException(SealingError.Malformed, "trailer: bad end magic");
        }

        var manifestBytes = rest[..manifestLength];
        var manifest = PackageManifest.Parse(manifestBytes);
        return new Trailer(manifest, SHA256.HashData(manifestBytes), rest.Slice(manifestLength, PackageFormat.SignatureLength).ToArray(),
            manifestLength + PackageFormat.TrailerOverhead);
    }

    private static async Task<Trailer> ReadTrailerAsync(Stream input, CancellationToken cancellationToken)
    {
        var lengthBytes = new byte[4];
        if (await ReadFullAsync(input, lengthBytes, cancellationToken).ConfigureAwait(false) < 4)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: trailer incomplete");
        }

        var manifestLength = BinaryPrimitives.ReadUInt32BigEndian(lengthBytes);
        if (manifestLength is 0 or > PackageFormat.MaxManifestLength)
        {
            throw new SealedPackageException(SealingError.Malformed, $"trailer: manifest length {manifestLength} is outside [1, {PackageFormat.MaxManifestLength}]");
        }

        var rest = new byte[manifestLength + PackageFormat.SignatureLength + PackageFormat.FooterLength];
        if (await ReadFullAsync(input, rest, cancellationToken).ConfigureAwait(false) < rest.Length)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: trailer incomplete");
        }

        var trailer = ParseTrailer((int)manifestLength, rest);
        var probe = new byte[1];
        if (await input.ReadAsync(probe, cancellationToken).ConfigureAwait(false) != 0)
        {
            throw new SealedPackageException(SealingError.TrailingData, "trailing data after the end of the package");
        }

        return trailer;
    }

    private static PackageHeader ReadHeaderAt(Stream input, long start)
    {
        input.Position = start;
        var bytes = new byte[PackageFormat.HeaderLength];
        if (input.ReadAtLeast(bytes, bytes.Length, throwOnEndOfStream: false) < bytes.Length)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: header incomplete");
        }

        return PackageHeader.Parse(bytes);
    }

    /// <summary>Reads the trailer of a seekable package from its end and checks the length the manifest implies.</summary>
    private static Layout ReadLayout(Stream input, long start, PackageHeader header)
    {
        var length = input.Length - start;
        if (length < PackageFormat.HeaderLength + PackageFormat.FooterLength)
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: no end marker");
        }

        var footer = new byte[PackageFormat.FooterLength];
        input.Position = input.Length - footer.Length;
        input.ReadExactly(footer);
        if (!footer.AsSpan(4).SequenceEqual(PackageFormat.EndMagic))
        {
            throw new SealedPackageException(SealingError.Truncated, "truncated: no end marker at the end of the package (truncated, extended or altered)");
        }

        var trailerLength = BinaryPrimitives.ReadUInt32BigEndian(footer);
        if (trailerLength <= PackageFormat.TrailerOverhead || trailerLength > PackageFormat.MaxManifestLength + PackageFormat.TrailerOverhead
            || trailerLength > length - PackageFormat.HeaderLength - PackageFormat.RecordOverhead)
        {
            throw new SealedPackageException(SealingError.Malformed, $"trailer: trailer length {trailerLength} out of range");
        }

        var trailerBytes = new byte[trailerLength];
        input.Position = input.Length - trailerLength;
        input.ReadExactly(trailerBytes);
        var manifestLength = BinaryPrimitives.ReadUInt32BigEndian(trailerBytes);
        if (manifestLength + PackageFormat.TrailerOverhead != trailerLength)
        {
            throw new SealedPackageException(SealingError.Malformed, "trailer: the manifest length does not match the trailer length");
        }

        var trailer = ParseTrailer((int)manifestLength, trailerBytes.AsSpan(4));
        var expected = PackageFormat.PackageLength(trailer.Manifest.PlaintextLength, header.ChunkSize, (int)manifestLength);
        if (expected < 0 || PackageFormat.ChunkCount(trailer.Manifest.PlaintextLength, header.ChunkSize) > PackageFormat.MaxChunkCount)
        {
            throw new SealedPackageException(SealingError.ManifestInvalid, $"manifest: plaintext length {trailer.Manifest.PlaintextLength} is impossible for chunks of {header.ChunkSize} bytes");
        }

        if (expected != length)
        {
            throw new SealedPackageException(expected > length ? SealingError.Truncated : SealingError.Malformed,
                $"the package is {length} bytes but its manifest implies {expected} (truncated, extended or altered)");
        }

        return new Layout(trailer.Manifest, trailer.ManifestDigest, trailer.Signature, length);
    }

    private static async ValueTask<int> ReadFullAsync(Stream stream, Memory<byte> buffer, CancellationToken cancellationToken) =>
        await stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
}
