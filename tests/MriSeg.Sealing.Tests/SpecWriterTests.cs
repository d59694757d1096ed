using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace MriSeg.Sealing.Tests;

/// <summary>
/// Packages built by an independent writer that follows docs/sealed-package-format.md, holding the data key and the
/// owner's signing key: an honest one must open; inconsistent ones (what a buggy sealer or a key holder could
/// produce, with every tag and the signature valid) must be refused by the checks past the cryptography.
/// </summary>
public sealed class SpecWriterTests : IDisposable
{
    private readonly DataKey _key = DataKey.Generate();
    private readonly TempFolder _folder = new();

    public void Dispose()
    {
        _key.Dispose();
        _folder.Dispose();
    }

    [Fact]
    public void An_honest_package_from_the_specification_opens()
    {
        var plaintext = Packages.RandomBytes(150, seed: 1);
        var package = Write(Split(plaintext, 64), Manifest(plaintext.Length, SHA256.HashData(plaintext)));
        using var opened = Packages.OpenMemory(package, _key, Packages.ExpectOwner, seekable: false);
        Assert.Equal(plaintext, opened.ToArray());
        Assert.Equal("spec-writer", opened.Info.Manifest.Owner);
        Assert.Equal("v", opened.Info.Manifest.Metadata["k"]);
    }

    [Fact]
    public void A_signed_manifest_with_the_wrong_sha256_is_refused()
    {
        var plaintext = Packages.RandomBytes(150, seed: 2);
        var wrong = SHA256.HashData(plaintext);
        wrong[0] ^= 1;
        var package = Write(Split(plaintext, 64), Manifest(plaintext.Length, wrong));
        foreach (var check in new[] { Packages.ExpectOwner, SignerCheck.SkipSignatureVerification })
        {
            foreach (var e in Rejection.All(package, _key, check, _folder))
            {
                Assert.Equal(SealingError.PlaintextDigestMismatch, e.Error);
                Assert.Equal("plaintext SHA-256 does not match the manifest", e.Message);
            }
        }
    }

    [Fact]
    public void A_signed_manifest_with_the_wrong_length_is_refused()
    {
        var plaintext = Packages.RandomBytes(150, seed: 3);
        var package = Write(Split(plaintext, 64), Manifest(149, SHA256.HashData(plaintext)));
        var results = Rejection.All(package, _key, Packages.ExpectOwner, _folder);

        // Seekable: the length the manifest implies differs from the package's; forward-only: counted at the end.
        Assert.Equal(SealingError.Malformed, results[0].Error);
        Assert.Equal(SealingError.PlaintextLengthMismatch, results[1].Error);
        Assert.Equal("plaintext length 150 does not match the manifest's 149", results[1].Message);
    }

    [Fact]
    public void Non_canonical_chunking_is_refused()
    {
        var plaintext = Packages.RandomBytes(128, seed: 4);
        var manifest = Manifest(128, SHA256.HashData(plaintext));

        // An empty final chunk after full ones (the sealer marks the last full chunk final instead).
        var emptyFinal = Write([(plaintext[..64], false), (plaintext[64..], false), ([], true)], manifest);
        Assert.Contains(Rejection.All(emptyFinal, _key, Packages.ExpectOwner, _folder), e => e.Message == "chunk 2: an empty final chunk after data");

        // A short non-final chunk.
        var shortChunk = Write([(plaintext[..60], false), (plaintext[60..124], false), (plaintext[124..], true)], manifest);
        Assert.Contains(Rejection.All(shortChunk, _key, Packages.ExpectOwner, _folder), e => e.Message == "chunk 0: a non-final chunk of 60 bytes (must be 64)");
    }

    [Fact]
    public void A_high_s_signature_is_refused()
    {
        var plaintext = Packages.RandomBytes(10, seed: 5);
        var package = Write(Split(plaintext, 64), Manifest(10, SHA256.HashData(plaintext)), highS: true);
        Assert.All(Rejection.All(package, _key, Packages.ExpectOwner, _folder), e => Assert.Equal(SealingError.SignatureInvalid, e.Error));
        using var opened = Packages.OpenMemory(package, _key, SignerCheck.SkipSignatureVerification, seekable: true);
        Assert.Equal(plaintext, opened.ToArray());
    }

    private static List<(byte[] Data, bool Final)> Split(byte[] plaintext, int chunk)
    {
        var chunks = plaintext.Chunk(chunk).Select(c => (c, false)).ToList();
        if (chunks.Count == 0)
        {
            chunks.Add(([], false));
        }

        chunks[^1] = (chunks[^1].Item1, true);
        return chunks;
    }

    private static byte[] Manifest(long length, byte[] sha256)
    {
        var owner = Encoding.UTF8.GetBytes("spec-writer");
        var m = new List<byte> { (byte)ContentType.Model };
        m.AddRange(BigEndian(DateTimeOffset.UnixEpoch.AddDays(20000).ToUnixTimeMilliseconds()));
        m.AddRange(BigEndian(length));
        m.AddRange(sha256);
        m.AddRange(Convert.FromHexString(Packages.Owner.Thumbprint));
        m.AddRange([(byte)(owner.Length >> 8), (byte)owner.Length, .. owner]);
        m.AddRange([0, 1, 0, 1, (byte)'k', 0, 1, (byte)'v']);
        return [.. m];
    }

    private static byte[] BigEndian(long value)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteInt64BigEndian(b, value);
        return b;
    }

    private byte[] Write(List<(byte[] Data, bool Final)> chunks, byte[] manifest, bool highS = false)
    {
        var header = new byte[48];
        "MRISEGPK"u8.CopyTo(header);
        header[9] = 1;
        header[10] = header[11] = header[12] = 1;
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(16), 64);
        Convert.FromHexString(_key.KeyId).CopyTo(header, 20);
        RandomNumberGenerator.Fill(header.AsSpan(36, 7));
        var h = SHA256.HashData(header);
        var m = SHA256.HashData(manifest);

        var output = new List<byte>(header);
        using var aes = new AesGcm(_key.ExportKeyBytes(), 16);
        for (var i = 0; i < chunks.Count; i++)
        {
            var (data, final) = chunks[i];
            var nonce = new byte[12];
            header.AsSpan(36, 7).CopyTo(nonce);
            BinaryPrimitives.WriteUInt32BigEndian(nonce.AsSpan(7), (uint)i);
            nonce[11] = final ? (byte)1 : (byte)0;
            var ciphertext = new byte[data.Length];
            var tag = new byte[16];
            aes.Encrypt(nonce, data, ciphertext, tag, final ? [.. h, .. m] : h);
            var word = new byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(word, (uint)data.Length | (final ? 0x80000000u : 0));
            output.AddRange([.. word, .. ciphertext, .. tag]);
        }

        var signature = Packages.Owner.SignData([.. "MriSeg.Sealing.v1 package signature\0"u8.ToArray(), .. h, .. m]);
        if (highS)
        {
            var order = new System.Numerics.BigInteger(Convert.FromHexString("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551"), isUnsigned: true, isBigEndian: true);
            var s = new System.Numerics.BigInteger(signature.AsSpan(32), isUnsigned: true, isBigEndian: true);
            var high = (order - s).ToByteArray(isUnsigned: true, isBigEndian: true);
            Array.Clear(signature, 32, 32);
            high.CopyTo(signature, 64 - high.Length);
        }

        var lengths = new byte[8];
        BinaryPrimitives.WriteUInt32BigEndian(lengths, (uint)manifest.Length);
        BinaryPrimitives.WriteUInt32BigEndian(lengths.AsSpan(4), (uint)(manifest.Length + 80));
        output.AddRange([.. lengths[..4], .. manifest, .. signature, .. lengths[4..], .. "MRISEGEP"u8.ToArray()]);
        return [.. output];
    }
}
