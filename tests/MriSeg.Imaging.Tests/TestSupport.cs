using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;

namespace MriSeg.Imaging.Tests;

/// <summary>A temporary folder, deleted at the end.</summary>
internal sealed class TempFolder : IDisposable
{
    public TempFolder() => Path = Directory.CreateTempSubdirectory("mriseg-imaging-tests-").FullName;

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

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

/// <summary>
/// Builds NIfTI-1 and NIfTI-2 files byte by byte, independently of the library's writer (straight from the
/// specification's field offsets), so that the reader is tested against bytes it did not produce. Every field
/// can be set to a wrong value on purpose.
/// </summary>
internal sealed class NiftiBuilder
{
    public int Version { get; set; } = 1;
    public bool LittleEndian { get; set; } = true;
    public int? SizeofHdr { get; set; }
    public byte[]? Magic { get; set; }
    public long[] Dim { get; set; } = [3, 4, 3, 2, 1, 1, 1, 1];
    public double[] Pixdim { get; set; } = [1, 1, 1, 1, 1, 1, 1, 1];
    public short Datatype { get; set; } = 16;
    public short? Bitpix { get; set; }
    public double? VoxOffset { get; set; }
    public double SclSlope { get; set; } = 1;
    public double SclInter { get; set; }
    public int QformCode { get; set; }
    public int SformCode { get; set; } = 1;
    public double[] Quatern { get; set; } = [0, 0, 0, 0, 0, 0];
    public double[] Srow { get; set; } = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0];

    /// <summary>The raw voxel bytes (already in the builder's byte order).</summary>
    public byte[] Data { get; set; } = [];

    public int HeaderSize => Version == 1 ? 348 : 540;

    /// <summary>Sets <see cref="Data"/> from values, encoded as <see cref="Datatype"/> in the builder's byte order.</summary>
    public NiftiBuilder WithValues(params double[] values)
    {
        var size = Datatype switch
        {
            2 => 1,
            4 => 2,
            8 or 16 => 4,
            64 => 8,
            _ => throw new InvalidOperationException("set Data directly for this datatype"),
        };
        var data = new byte[values.Length * size];
        for (var i = 0; i < values.Length; i++)
        {
            var s = data.AsSpan(i * size);
            switch (Datatype)
            {
                case 2: data[i] = checked((byte)values[i]); break;
                case 4: if (LittleEndian) BinaryPrimitives.WriteInt16LittleEndian(s, checked((short)values[i])); else BinaryPrimitives.WriteInt16BigEndian(s, checked((short)values[i])); break;
                case 8: if (LittleEndian) BinaryPrimitives.WriteInt32LittleEndian(s, checked((int)values[i])); else BinaryPrimitives.WriteInt32BigEndian(s, checked((int)values[i])); break;
                case 16: if (LittleEndian) BinaryPrimitives.WriteSingleLittleEndian(s, (float)values[i]); else BinaryPrimitives.WriteSingleBigEndian(s, (float)values[i]); break;
                case 64: if (LittleEndian) BinaryPrimitives.WriteDoubleLittleEndian(s, values[i]); else BinaryPrimitives.WriteDoubleBigEndian(s, values[i]); break;
            }
        }

        Data = data;
        return this;
    }

    public byte[] Build()
    {
        var header = Version == 1 ? BuildV1() : BuildV2();
        // The voxels go at vox_offset, or (for a vox_offset that points into the header) right after it.
        var offset = (long)(VoxOffset ?? HeaderSize + 4);
        var dataAt = offset >= HeaderSize + 4 ? offset : HeaderSize + 4;
        var file = new byte[dataAt + Data.Length];
        header.CopyTo(file, 0);
        Data.CopyTo(file, dataAt);
        return file;
    }

    private byte[] BuildV1()
    {
        var h = new byte[348];
        I32(h, 0, SizeofHdr ?? 348);
        for (var i = 0; i < 8; i++)
        {
            I16(h, 40 + (2 * i), (short)Dim[i]);
            F32(h, 76 + (4 * i), Pixdim[i]);
        }

        I16(h, 70, Datatype);
        I16(h, 72, Bitpix ?? DefaultBitpix());
        F32(h, 108, VoxOffset ?? 352);
        F32(h, 112, SclSlope);
        F32(h, 116, SclInter);
        I16(h, 252, (short)QformCode);
        I16(h, 254, (short)SformCode);
        for (var i = 0; i < 6; i++)
        {
            F32(h, 256 + (4 * i), Quatern[i]);
        }

        for (var i = 0; i < 12; i++)
        {
            F32(h, 280 + (4 * i), Srow[i]);
        }

        (Magic ?? "n+1\0"u8.ToArray()).CopyTo(h, 344);
        return h;
    }

    private byte[] BuildV2()
    {
        var h = new byte[540];
        I32(h, 0, SizeofHdr ?? 540);
        (Magic ?? [(byte)'n', (byte)'+', (byte)'2', 0, 0x0D, 0x0A, 0x1A, 0x0A]).CopyTo(h, 4);
        I16(h, 12, Datatype);
        I16(h, 14, Bitpix ?? DefaultBitpix());
        for (var i = 0; i < 8; i++)
        {
            I64(h, 16 + (8 * i), Dim[i]);
            F64(h, 104 + (8 * i), Pixdim[i]);
        }

        I64(h, 168, (long)(VoxOffset ?? 544));
        F64(h, 176, SclSlope);
        F64(h, 184, SclInter);
        I32(h, 344, QformCode);
        I32(h, 348, SformCode);
        for (var i = 0; i < 6; i++)
        {
            F64(h, 352 + (8 * i), Quatern[i]);
        }

        for (var i = 0; i < 12; i++)
        {
            F64(h, 400 + (8 * i), Srow[i]);
        }

        I32(h, 500, 2);
        Encoding.ASCII.GetBytes("built by the test").CopyTo(h, 240);
        return h;
    }

    private short DefaultBitpix() => Datatype switch
    {
        2 => 8,
        4 => 16,
        8 or 16 => 32,
        64 => 64,
        512 => 16,
        _ => 0,
    };

    private void I16(byte[] b, int at, short v)
    {
        if (LittleEndian) BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(at), v); else BinaryPrimitives.WriteInt16BigEndian(b.AsSpan(at), v);
    }

    private void I32(byte[] b, int at, int v)
    {
        if (LittleEndian) BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(at), v); else BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(at), v);
    }

    private void I64(byte[] b, int at, long v)
    {
        if (LittleEndian) BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(at), v); else BinaryPrimitives.WriteInt64BigEndian(b.AsSpan(at), v);
    }

    private void F32(byte[] b, int at, double v)
    {
        if (LittleEndian) BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(at), (float)v); else BinaryPrimitives.WriteSingleBigEndian(b.AsSpan(at), (float)v);
    }

    private void F64(byte[] b, int at, double v)
    {
        if (LittleEndian) BinaryPrimitives.WriteDoubleLittleEndian(b.AsSpan(at), v); else BinaryPrimitives.WriteDoubleBigEndian(b.AsSpan(at), v);
    }
}

internal static class Voxels
{
    /// <summary>Asserts two large arrays are identical, fast, naming the first difference.</summary>
    public static void Same(float[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        if (!expected.AsSpan().SequenceEqual(actual))
        {
            var i = 0;
            while (expected[i].Equals(actual[i]))
            {
                i++;
            }

            Assert.Fail($"voxel {i}: expected {expected[i]}, got {actual[i]}");
        }
    }
}

internal static class Bytes
{
    public static byte[] Gzip(byte[] data)
    {
        var ms = new MemoryStream();
        using (var z = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
        {
            z.Write(data);
        }

        return ms.ToArray();
    }

    public static byte[] Gunzip(byte[] data)
    {
        using var z = new GZipStream(new MemoryStream(data), CompressionMode.Decompress);
        var ms = new MemoryStream();
        z.CopyTo(ms);
        return ms.ToArray();
    }

    public static double[] Ramp(int n, double start = 0, double step = 1) => Enumerable.Range(0, n).Select(i => start + (i * step)).ToArray();
}

/// <summary>A forward-only stream with short reads: stands for a network download.</summary>
internal sealed class TrickleStream(byte[] data) : Stream
{
    private readonly MemoryStream _inner = new(data, writable: false);

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, Math.Min(count, 37));

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
