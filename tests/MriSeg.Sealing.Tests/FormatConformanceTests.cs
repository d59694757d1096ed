using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace MriSeg.Sealing.Tests;

/// <summary>
/// Reads a package with nothing but the specification (docs/sealed-package-format.md) and the BCL, so the document
/// and the code cannot drift apart.
/// </summary>
public sealed class FormatConformanceTests
{
    [Fact]
    public void A_package_decodes_by_the_specification_alone()
    {
        using var key = DataKey.Generate();
        var plaintext = Packages.RandomBytes(2 * 64 + 5, seed: 11);
        var package = Packages.Seal(plaintext, key);
        var p = package.AsSpan();

        // Header.
        Assert.Equal("MRISEGPK"u8.ToArray(), p[..8].ToArray());
        Assert.Equal(1, BinaryPrimitives.ReadUInt16BigEndian(p[8..]));
        Assert.Equal([1, 1, 1, 0, 0, 0], p[10..16].ToArray());
        var chunkSize = (int)BinaryPrimitives.ReadUInt32BigEndian(p[16..]);
        Assert.Equal(64, chunkSize);
        Assert.Equal(key.KeyId, Convert.ToHexStringLower(p[20..36]));
        var prefix = p[36..43].ToArray();
        Assert.Equal(new byte[5], p[43..48].ToArray());
        var h = SHA256.HashData(p[..48]);

        // Body records, then the trailer.
        var at = 48;
        var records = new List<(int Start, int Length, bool Final)>();
        while (true)
        {
            var word = BinaryPrimitives.ReadUInt32BigEndian(p[at..]);
            var length = (int)(word & 0x7FFFFFFF);
            var final = (word >> 31) == 1;
            records.Add((at + 4, length, final));
            at += 4 + length + 16;
            if (final)
            {
                break;
            }
        }

        Assert.Equal([64, 64, 5], records.Select(r => r.Length));
        var manifestLength = (int)BinaryPrimitives.ReadUInt32BigEndian(p[at..]);
        var manifest = p.Slice(at + 4, manifestLength).ToArray();
        var signature = p.Slice(at + 4 + manifestLength, 64).ToArray();
        var footer = p[(at + 4 + manifestLength + 64)..];
        Assert.Equal(12, footer.Length);
        Assert.Equal((uint)(manifestLength + 80), BinaryPrimitives.ReadUInt32BigEndian(footer));
        Assert.Equal("MRISEGEP"u8.ToArray(), footer[4..].ToArray());
        var m = SHA256.HashData(manifest);

        // Chunks: nonce = prefix ‖ counter ‖ final flag; AAD = H, or H ‖ M for the final chunk.
        using var aes = new AesGcm(key.ExportKeyBytes(), 16);
        var decrypted = new List<byte>();
        for (var i = 0; i < records.Count; i++)
        {
            var (start, length, final) = records[i];
            var nonce = new byte[12];
            prefix.CopyTo(nonce, 0);
            BinaryPrimitives.WriteUInt32BigEndian(nonce.AsSpan(7), (uint)i);
            nonce[11] = final ? (byte)1 : (byte)0;
            var output = new byte[length];
            aes.Decrypt(nonce, p.Slice(start, length), p.Slice(start + length, 16), output, final ? [.. h, .. m] : h);
            decrypted.AddRange(output);
        }

        Assert.Equal(plaintext, decrypted.ToArray());

        // Manifest fields.
        var ms = manifest.AsSpan();
        Assert.Equal((byte)ContentType.Dataset, ms[0]);
        Assert.Equal(new DateTimeOffset(2025, 11, 26, 12, 0, 0, 123, TimeSpan.Zero).ToUnixTimeMilliseconds(), BinaryPrimitives.ReadInt64BigEndian(ms[1..]));
        Assert.Equal(plaintext.Length, BinaryPrimitives.ReadInt64BigEndian(ms[9..]));
        Assert.Equal(SHA256.HashData(plaintext), ms[17..49].ToArray());
        Assert.Equal(Packages.Owner.Thumbprint, Convert.ToHexStringLower(ms[49..81]));
        var ownerLength = BinaryPrimitives.ReadUInt16BigEndian(ms[81..]);
        Assert.Equal("hospital-a", Encoding.UTF8.GetString(ms.Slice(83, ownerLength)));
        var count = BinaryPrimitives.ReadUInt16BigEndian(ms[(83 + ownerLength)..]);
        Assert.Equal(3, count);
        var pos = 85 + ownerLength;
        var keys = new List<string>();
        for (var i = 0; i < count; i++)
        {
            var kl = BinaryPrimitives.ReadUInt16BigEndian(ms[pos..]);
            keys.Add(Encoding.UTF8.GetString(ms.Slice(pos + 2, kl)));
            pos += 2 + kl;
            var vl = BinaryPrimitives.ReadUInt16BigEndian(ms[pos..]);
            pos += 2 + vl;
        }

        Assert.Equal(manifest.Length, pos);
        Assert.Equal(["modality", "notes", "shard"], keys);

        // Signature: ECDSA P-256 / SHA-256 over "MriSeg.Sealing.v1 package signature\0" ‖ H ‖ M, P1363.
        using var ecdsa = ECDsa.Create();
        ecdsa.ImportSubjectPublicKeyInfo(Packages.Owner.PublicKey.ExportSubjectPublicKeyInfo(), out _);
        byte[] message = [.. "MriSeg.Sealing.v1 package signature\0"u8.ToArray(), .. h, .. m];
        Assert.True(ecdsa.VerifyData(message, signature, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));
    }

    [Fact]
    public void An_empty_plaintext_is_one_empty_final_chunk()
    {
        using var key = DataKey.Generate();
        var package = Packages.Seal([], key);
        Assert.Equal(0x80000000u, BinaryPrimitives.ReadUInt32BigEndian(package.AsSpan(48)));
        var l = Packages.Parse(package);
        Assert.Equal(48 + 4 + 16, l.TrailerStart);
    }

    [Fact]
    public void Header_and_nonce_prefix_are_fresh_per_package()
    {
        using var key = DataKey.Generate();
        var a = Packages.Seal([1, 2, 3], key);
        var b = Packages.Seal([1, 2, 3], key);
        Assert.NotEqual(a[36..43], b[36..43]);
        Assert.Equal(a[..36], b[..36]);
    }
}
