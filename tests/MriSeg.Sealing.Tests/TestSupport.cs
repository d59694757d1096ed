using System.Security.Cryptography;

namespace MriSeg.Sealing.Tests;

/// <summary>A temporary folder, deleted at the end.</summary>
internal sealed class TempFolder : IDisposable
{
    public TempFolder() => Path = Directory.CreateTempSubdirectory("mriseg-sealing-tests-").FullName;

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Everything in the folder (hidden temporary files included).</summary>
    public string[] Entries() => Directory.GetFileSystemEntries(Path);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>A forward-only stream over a byte array or into a buffer: stands for a blob download or upload.</summary>
internal sealed class ForwardOnlyStream : Stream
{
    private readonly MemoryStream _inner;
    private readonly bool _write;

    private ForwardOnlyStream(MemoryStream inner, bool write)
    {
        _inner = inner;
        _write = write;
    }

    public static ForwardOnlyStream Reader(byte[] data) => new(new MemoryStream(data, writable: false), write: false);

    public static ForwardOnlyStream Writer() => new(new MemoryStream(), write: true);

    public byte[] Written => _inner.ToArray();

    public override bool CanRead => !_write;

    public override bool CanSeek => false;

    public override bool CanWrite => _write;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush()
    {
    }

    // Short reads on purpose: callers must loop.
    public override int Read(byte[] buffer, int offset, int count) =>
        _write ? throw new NotSupportedException() : _inner.Read(buffer, offset, Math.Min(count, 37));

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count)
    {
        if (!_write)
        {
            throw new NotSupportedException();
        }

        _inner.Write(buffer, offset, count);
    }
}

/// <summary>Keys and helpers shared by the tests.</summary>
internal static class Packages
{
    public const int SmallChunk = 64;

    public static readonly SigningKey Owner = SigningKey.Generate();

    public static readonly SigningKey Stranger = SigningKey.Generate();

    public static SignerCheck ExpectOwner => SignerCheck.Expect(Owner.PublicKey);

    public static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    public static SealOptions Options(int chunkSize = SmallChunk, HashingMode hashing = HashingMode.Auto, ContentType type = ContentType.Dataset) => new()
    {
        ContentType = type,
        Owner = "hospital-a",
        ChunkSize = chunkSize,
        Hashing = hashing,
        CreatedAt = new DateTimeOffset(2025, 11, 26, 12, 0, 0, 123, TimeSpan.Zero),
        Metadata = new Dictionary<string, string> { ["shard"] = "3/8", ["modality"] = "t1ce,flair", ["notes"] = "line one\nline two" },
    };

    /// <summary>Seals into a forward-only output (as a blob upload would be).</summary>
    public static byte[] Seal(byte[] plaintext, DataKey key, SealOptions? options = null, SigningKey? signer = null)
    {
        var output = ForwardOnlyStream.Writer();
        SealedPackage.SealAsync(new MemoryStream(plaintext, writable: false), output, key, signer ?? Owner, options ?? Options())
            .GetAwaiter().GetResult();
        return output.Written;
    }

    public static OpenedPackage OpenMemory(byte[] package, DataKey key, SignerCheck check, bool seekable, HashingMode hashing = HashingMode.Auto)
    {
        Stream input = seekable ? new MemoryStream(package, writable: false) : ForwardOnlyStream.Reader(package);
        return SealedPackage.OpenToMemoryAsync(input, key, check, new OpenOptions { Hashing = hashing }).GetAwaiter().GetResult();
    }

    /// <summary>Offsets of the parts of a package, computed from the format (not from the library).</summary>
    public sealed record Layout(int HeaderEnd, int[] RecordStarts, int[] RecordLengths, int TrailerStart, int ManifestStart, int ManifestLength, int SignatureStart, int FooterStart, int End);

    public static Layout Parse(byte[] package)
    {
        var starts = new List<int>();
        var lengths = new List<int>();
        var at = 48;
        while (true)
        {
            var word = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(package.AsSpan(at));
            var length = (int)(word & 0x7FFFFFFF);
            starts.Add(at);
            lengths.Add(4 + length + 16);
            at += 4 + length + 16;
            if ((word & 0x80000000) != 0)
            {
                break;
            }
        }

        var manifestLength = (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(package.AsSpan(at));
        var signature = at + 4 + manifestLength;
        return new Layout(48, [.. starts], [.. lengths], at, at + 4, manifestLength, signature, signature + 64, package.Length);
    }

    public static byte[] Splice(params byte[][] parts) => [.. parts.SelectMany(p => p)];

    public static string Sha256Hex(byte[] data) => Convert.ToHexStringLower(SHA256.HashData(data));
}

/// <summary>Opens a package every way there is and collects how each refused it.</summary>
internal static class Rejection
{
    public static readonly string[] Paths = ["memory (seekable)", "memory (forward-only)", "file (seekable)", "file (forward-only)"];

    /// <summary>
    /// Opens <paramref name="package"/> into memory and into a file, from a seekable and from a forward-only
    /// stream. Returns, per path, the exception (null if the package was accepted). Afterwards the folder must
    /// be empty: no output file, no temporary file.
    /// </summary>
    public static SealedPackageException?[] TryAll(byte[] package, DataKey key, SignerCheck check, TempFolder folder)
    {
        var results = new SealedPackageException?[4];
        for (var path = 0; path < 4; path++)
        {
            var seekable = path % 2 == 0;
            try
            {
                if (path < 2)
                {
                    using var opened = Packages.OpenMemory(package, key, check, seekable);
                }
                else
                {
                    Stream input = seekable ? new MemoryStream(package, writable: false) : ForwardOnlyStream.Reader(package);
                    SealedPackage.OpenToFileAsync(input, folder.File("out.bin"), key, check).GetAwaiter().GetResult();
                }
            }
            catch (SealedPackageException e)
            {
                results[path] = e;
            }

            var left = folder.Entries();
            if (results[path] is not null && left.Length != 0)
            {
                Assert.Fail($"{Paths[path]}: refused ({results[path]!.Message}) but left {string.Join(", ", left.Select(Path.GetFileName))}");
            }

            foreach (var entry in left)
            {
                File.Delete(entry);
            }
        }

        return results;
    }

    /// <summary>Asserts every path refused; returns the exceptions.</summary>
    public static SealedPackageException[] All(byte[] package, DataKey key, SignerCheck check, TempFolder folder)
    {
        var results = TryAll(package, key, check, folder);
        for (var i = 0; i < results.Length; i++)
        {
            Assert.True(results[i] is not null, $"{Paths[i]} accepted the package");
        }

        return results!;
    }
}
