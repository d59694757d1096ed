using System.Buffers.Binary;
using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Tests;

/// <summary>
/// A corpus of malformed files, each made from a valid small volume and then corrupted: every one must be
/// rejected with <see cref="NiftiFormatException"/>, a message naming the file and the problem, and no crash,
/// out-of-memory or hang.
/// </summary>
public sealed class MalformedNiftiTests
{
    private const int Voxels = 4 * 3 * 2;

    private static NiftiBuilder Valid() => new NiftiBuilder { Dim = [3, 4, 3, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels));

    private static byte[] ValidGzip() => Bytes.Gzip(Valid().Build());

    private static byte[] Patch(byte[] file, Action<Span<byte>> change)
    {
        var copy = (byte[])file.Clone();
        change(copy);
        return copy;
    }

    /// <summary>Kind → (bytes, expected fragment of the message).</summary>
    private static readonly Dictionary<string, (Func<byte[]> Make, string Expected)> Corpus = new()
    {
        ["empty file"] = (() => [], "the file is empty"),
        ["shorter than sizeof_hdr"] = (() => [0x5C, 0x01], "too short for a NIfTI header"),
        ["truncated header"] = (() => Valid().Build()[..200], "inside the 348-byte NIfTI-1 header"),
        ["truncated voxels"] = (() => Valid().Build()[..^10], "truncated"),
        ["truncated NIfTI-2 voxels"] = (() => new NiftiBuilder { Version = 2 }.WithValues(Bytes.Ramp(Voxels)).Build()[..^1], "truncated"),
        ["sizeof_hdr lies (349)"] = (() => Patch(Valid().Build(), b => BinaryPrimitives.WriteInt32LittleEndian(b, 349)), "sizeof_hdr is 349"),
        ["sizeof_hdr lies (0)"] = (() => Patch(Valid().Build(), b => BinaryPrimitives.WriteInt32LittleEndian(b, 0)), "must be 348 (NIfTI-1) or 540 (NIfTI-2)"),
        ["a PNG, not a NIfTI file"] = (() => [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13], "not a NIfTI file"),
        ["bad magic"] = (() => new NiftiBuilder { Magic = "abc\0"u8.ToArray() }.WithValues(Bytes.Ramp(Voxels)).Build(), "bad magic \"abc\\x00\""),
        ["ANALYZE-style header without magic"] = (() => new NiftiBuilder { Magic = new byte[4] }.WithValues(Bytes.Ramp(Voxels)).Build(), "bad magic"),
        ["detached header magic ni1"] = (() => new NiftiBuilder { Magic = "ni1\0"u8.ToArray() }.WithValues(Bytes.Ramp(Voxels)).Build(), "detached .hdr/.img pair"),
        ["NIfTI-2 magic mangled by a text transfer"] = (() => new NiftiBuilder { Version = 2, Magic = "n+2\0\n\n\x1A\n"u8.ToArray() }.WithValues(Bytes.Ramp(Voxels)).Build(), "corrupted NIfTI-2 magic"),
        ["dim[0] zero"] = (() => new NiftiBuilder { Dim = [0, 4, 3, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "dim[0] is 0, must be 1..7"),
        ["dim[0] eight"] = (() => new NiftiBuilder { Dim = [8, 4, 3, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "dim[0] is 8, must be 1..7"),
        ["dim[0] negative (wrong byte order guess)"] = (() => new NiftiBuilder { Dim = [-3, 4, 3, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "dim[0] is -3"),
        ["zero dimension"] = (() => new NiftiBuilder { Dim = [3, 4, 0, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "dim[2] is 0: every dimension must be positive"),
        ["negative dimension"] = (() => new NiftiBuilder { Dim = [3, 4, 3, -2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "dim[3] is -2"),
        ["4-D series"] = (() => new NiftiBuilder { Dim = [4, 4, 3, 2, 5, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels * 5)).Build(), "a 4-D series of 5 volumes: only 3-D volumes are supported"),
        ["5-D image"] = (() => new NiftiBuilder { Dim = [5, 4, 3, 2, 1, 3, 1, 1] }.WithValues(Bytes.Ramp(Voxels * 3)).Build(), "dim[5] = 3"),
        ["over the voxel limit (NIfTI-1 maximum dims)"] = (() => new NiftiBuilder { Dim = [3, 32767, 32767, 32767, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "over the limit of 134217728"),
        ["decompression bomb: small gzip declaring 1024^3 voxels"] = (() => Bytes.Gzip(new NiftiBuilder { Version = 2, Dim = [3, 1024, 1024, 1024, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build()), "declare 1073741824 voxels, over the limit"),
        ["dimensions whose product overflows 64 bits"] = (() => new NiftiBuilder { Version = 2, Dim = [3, 1L << 40, 1L << 40, 1L << 40, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "overflow"),
        ["unsupported datatype (uint16)"] = (() => new NiftiBuilder { Datatype = 512, Data = new byte[Voxels * 2] }.Build(), "unsupported datatype code 512 (DT_UINT16)"),
        ["unsupported datatype (complex64)"] = (() => new NiftiBuilder { Datatype = 32, Bitpix = 64, Data = new byte[Voxels * 8] }.Build(), "unsupported datatype code 32 (DT_COMPLEX64)"),
        ["unknown datatype code"] = (() => new NiftiBuilder { Datatype = 3, Bitpix = 8, Data = new byte[Voxels] }.Build(), "unsupported datatype code 3 (not a NIfTI datatype)"),
        ["bitpix inconsistent with datatype"] = (() => new NiftiBuilder { Bitpix = 8 }.WithValues(Bytes.Ramp(Voxels)).Build(), "bitpix is 8 but datatype 16 (DT_FLOAT32) has 32 bits"),
        ["vox_offset inside the header"] = (() => new NiftiBuilder { VoxOffset = 100 }.WithValues(Bytes.Ramp(Voxels)).Build(), "bad vox_offset 100: the voxels cannot start inside the 348-byte header"),
        ["vox_offset not a whole number"] = (() => Patch(Valid().Build(), b => BinaryPrimitives.WriteSingleLittleEndian(b[108..], 352.5f)), "bad vox_offset 352.5"),
        ["vox_offset NaN"] = (() => Patch(Valid().Build(), b => BinaryPrimitives.WriteSingleLittleEndian(b[108..], float.NaN)), "bad vox_offset NaN"),
        ["vox_offset beyond the end of the file"] = (() => Patch(Valid().Build(), b => BinaryPrimitives.WriteSingleLittleEndian(b[108..], 5000)), "bad vox_offset 5000: beyond the end of the data (the file has 448 bytes)"),
        ["vox_offset beyond the end of a gzip stream"] = (() => Bytes.Gzip(Patch(Valid().Build(), b => BinaryPrimitives.WriteSingleLittleEndian(b[108..], 5000))), "bad vox_offset 5000: beyond the end of the data"),
        ["vox_offset implausibly far (NIfTI-2)"] = (() => new NiftiBuilder { Version = 2, VoxOffset = 544 }.WithValues(Bytes.Ramp(Voxels)).Build().Also(b => BinaryPrimitives.WriteInt64LittleEndian(b.AsSpan(168), 1L << 50)), "header extensions, over the limit"),
        ["NaN voxels"] = (() => new NiftiBuilder().WithValues([.. Bytes.Ramp(Voxels - 3), double.NaN, double.NaN, 1]).Build(), "2 of 24 voxels are NaN or infinite"),
        ["infinite voxels in float64"] = (() => new NiftiBuilder { Datatype = 64 }.WithValues([.. Bytes.Ramp(Voxels - 1), double.NegativeInfinity]).Build(), "1 of 24 voxels are NaN or infinite"),
        ["float64 beyond float32 range"] = (() => new NiftiBuilder { Datatype = 64 }.WithValues([.. Bytes.Ramp(Voxels - 1), 1e300]).Build(), "1 of 24 voxels are NaN or infinite"),
        ["scaling overflows to infinity"] = (() => new NiftiBuilder { Datatype = 4, SclSlope = 1e38 }.WithValues(Bytes.Ramp(Voxels)).Build(), "20 of 24 voxels are NaN or infinite"),
        ["non-finite pixdim"] = (() => new NiftiBuilder { Pixdim = [1, double.NaN, 1, 1, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(Voxels)).Build(), "pixdim[1] is NaN"),
        ["degenerate sform"] = (() => new NiftiBuilder { Srow = new double[12] }.WithValues(Bytes.Ramp(Voxels)).Build(), "srow_x/y/z are degenerate"),
        ["non-finite quaternion"] = (() => new NiftiBuilder { SformCode = 0, QformCode = 1, Quatern = [double.NaN, 0, 0, 0, 0, 0] }.WithValues(Bytes.Ramp(Voxels)).Build(), "quaternion or its offsets are not finite"),
        ["gzip stream ends early"] = (() => ValidGzip()[..(ValidGzip().Length / 2)], "the gzip stream ends early"),
        ["gzip stream cut inside the header"] = (() => ValidGzip()[..12], "the gzip stream ends early"),
        ["corrupt gzip: bad compression method"] = (() => Patch(ValidGzip(), b => b[2] = 7), "corrupt gzip stream"),
        ["corrupt gzip: CRC-32 mismatch"] = (() => Patch(ValidGzip(), b => b[^6] ^= 0xFF), "corrupt gzip stream"),
        ["corrupt gzip: bit rot in the deflate data"] = (() => Patch(ValidGzip(), b => { for (var i = 10; i < b.Length - 8; i++) b[i] ^= 0x5A; }), "gzip"),
        ["gzip magic followed by garbage"] = (() => [0x1F, 0x8B, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], "corrupt gzip stream"),
    };

    public static TheoryData<string> Kinds() => new(Corpus.Keys);

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Each_malformed_kind_is_rejected_with_a_message_naming_file_and_problem(string kind)
    {
        var (make, expected) = Corpus[kind];
        using var temp = new TempFolder();
        var path = temp.File("case.nii.gz");
        File.WriteAllBytes(path, make());

        var e = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(path));
        Assert.StartsWith(path + ": ", e.Message, StringComparison.Ordinal);
        Assert.Equal(path, e.FileName);
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        TestContext.Current.TestOutputHelper?.WriteLine(e.Message);

        // The same bytes through a forward-only stream: the same verdict (length unknown up front).
        var e2 = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(new TrickleStream(make()), "stream-name"));
        Assert.StartsWith("stream-name: ", e2.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_corpus_covers_at_least_fifteen_kinds() => Assert.True(Corpus.Count >= 15, $"{Corpus.Count} kinds");

    [Fact]
    public void A_lower_voxel_limit_rejects_before_reading_voxels()
    {
        var file = Valid().Build();
        var e = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(new MemoryStream(file), "small", new NiftiReadOptions { MaxVoxels = 10 }));
        Assert.Contains("declare 24 voxels, over the limit of 10", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentOutOfRangeException>(() => NiftiReader.Read(new MemoryStream(file), "x", new NiftiReadOptions { MaxVoxels = 0 }));
    }

    [Fact]
    public void Header_only_reading_applies_the_same_checks()
    {
        var e = Assert.Throws<NiftiFormatException>(() => NiftiReader.ReadHeader(new MemoryStream(new NiftiBuilder { Datatype = 512, Data = new byte[48] }.Build()), "h"));
        Assert.Contains("DT_UINT16", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bomb_that_is_really_large_is_stopped_by_the_limit_not_by_running_out_of_memory()
    {
        // 600^3 float64 voxels declared (1.7 GB) in a few hundred bytes of gzip that really decompress to zeros:
        // rejected from the header alone.
        var header = new NiftiBuilder { Datatype = 64, Dim = [3, 600, 600, 600, 1, 1, 1, 1] }.Build();
        var e = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(new MemoryStream(Bytes.Gzip([.. header, .. new byte[1 << 20]])), "bomb"));
        Assert.Contains("over the limit", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(8)] // first byte of the CRC-32
    [InlineData(1)] // last byte of ISIZE (the length modulo 2^32)
    public void A_bad_gzip_trailer_after_a_megabyte_of_voxels_is_detected(int fromEnd)
    {
        // Incompressible voxels, so the trailer arrives long after the header: checked after the voxels are read.
        var random = new Random(3);
        var values = Enumerable.Range(0, 64 * 64 * 64).Select(_ => random.NextDouble()).ToArray();
        var gz = Bytes.Gzip(new NiftiBuilder { Dim = [3, 64, 64, 64, 1, 1, 1, 1] }.WithValues(values).Build());
        Assert.Equal(64 * 64 * 64, NiftiReader.Read(new MemoryStream(gz), "intact").Data.Length);
        gz[^fromEnd] ^= 0x01;
        var e = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(new MemoryStream(gz), "bad-trailer"));
        Assert.Contains("corrupt gzip stream", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_files_are_io_errors_not_format_errors()
    {
        using var temp = new TempFolder();
        Assert.Throws<FileNotFoundException>(() => NiftiReader.Read(temp.File("absent.nii.gz")));
    }
}

internal static class ArrayExtensions
{
    public static byte[] Also(this byte[] bytes, Action<byte[]> change)
    {
        change(bytes);
        return bytes;
    }
}
