using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Tests;

public sealed class NiftiRoundTripTests
{
    private static readonly GridSize Size = new(5, 4, 3);

    /// <summary>Values every datatype can hold exactly, with a few extremes of each.</summary>
    private static float[] ValuesFor(NiftiDatatype type)
    {
        var v = new float[Size.Count];
        for (var i = 0; i < v.Length; i++)
        {
            v[i] = type switch
            {
                NiftiDatatype.UInt8 => (i * 7) % 256,
                NiftiDatatype.Int16 => (i * 1031) - 30000,
                NiftiDatatype.Int32 => (i * 100_003) - 3_000_000,
                _ => (float)((i * 0.37) - 11.1),
            };
        }

        (v[0], v[^1]) = type switch
        {
            NiftiDatatype.UInt8 => (0f, 255f),
            NiftiDatatype.Int16 => (short.MinValue, short.MaxValue),
            NiftiDatatype.Int32 => (-16_777_216f, 16_777_216f), // exactly representable in float
            _ => (float.MinValue, float.MaxValue),
        };
        return v;
    }

    public static TheoryData<NiftiDatatype, string> EveryDatatypeAndExtension()
    {
        var data = new TheoryData<NiftiDatatype, string>();
        foreach (var t in Enum.GetValues<NiftiDatatype>())
        {
            data.Add(t, ".nii");
            data.Add(t, ".nii.gz");
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(EveryDatatypeAndExtension))]
    public void Write_then_read_gives_back_every_voxel(NiftiDatatype type, string extension)
    {
        using var temp = new TempFolder();
        var path = temp.File("v" + extension);
        var values = ValuesFor(type);
        var affine = Affine.Diagonal(0.9, 1.1, 2.5, -10, 20, 30);
        NiftiWriter.Write(path, values, Size, affine, type);

        var raw = File.ReadAllBytes(path);
        Assert.Equal(extension.EndsWith(".gz", StringComparison.Ordinal), NiftiReader.IsGzip(raw));

        var v = NiftiReader.Read(path);
        Assert.Equal(type, v.SourceDatatype);
        Assert.Equal(Size, v.Size);
        Assert.Equal(values, v.Data);
        Assert.True(v.Affine.ApproximatelyEquals(affine, 1e-5), v.Affine.ToString());
        Assert.Equal(new Spacing(0.9, 1.1, 2.5), Round(v.Spacing));
        Assert.True(v.StorageOrientation.IsIdentity);
        Assert.Equal(AffineSource.Sform, v.AffineSource);
        Assert.Equal(1, v.Header!.Version);
    }

    [Fact]
    public void Typed_writers_for_int16_and_uint8_round_trip()
    {
        using var temp = new TempFolder();
        var shorts = Enumerable.Range(0, (int)Size.Count).Select(i => (short)((i * 977) - 20000)).ToArray();
        var bytes = Enumerable.Range(0, (int)Size.Count).Select(i => (byte)(i * 3)).ToArray();
        NiftiWriter.Write(temp.File("s.nii.gz"), shorts, Size, Affine.Identity);
        NiftiWriter.Write(temp.File("b.nii"), bytes, Size, Affine.Identity);
        Assert.Equal(shorts.Select(s => (float)s), NiftiReader.Read(temp.File("s.nii.gz")).Data);
        Assert.Equal(NiftiDatatype.Int16, NiftiReader.Read(temp.File("s.nii.gz")).SourceDatatype);
        Assert.Equal(bytes.Select(b => (float)b), NiftiReader.Read(temp.File("b.nii")).Data);
    }

    [Fact]
    public void Integer_writing_rounds_and_rejects_values_out_of_range()
    {
        using var temp = new TempFolder();
        var values = new float[Size.Count];
        values[3] = 2.6f;
        NiftiWriter.Write(temp.File("r.nii"), values, Size, Affine.Identity, NiftiDatatype.UInt8);
        Assert.Equal(3f, NiftiReader.Read(temp.File("r.nii")).Data[3]);

        values[7] = 256;
        var e = Assert.Throws<ArgumentException>(() => NiftiWriter.Write(temp.File("x.nii"), values, Size, Affine.Identity, NiftiDatatype.UInt8));
        Assert.Contains("voxel 7", e.Message, StringComparison.Ordinal);
        values[7] = float.NaN;
        Assert.Throws<ArgumentException>(() => NiftiWriter.Write(temp.File("x.nii"), values, Size, Affine.Identity, NiftiDatatype.Int16));
        Assert.False(File.Exists(temp.File("x.nii")));
        Assert.Empty(Directory.GetFiles(temp.Path, "*.tmp"));
    }

    [Fact]
    public void Gzip_is_detected_by_magic_bytes_not_by_extension()
    {
        using var temp = new TempFolder();
        var values = ValuesFor(NiftiDatatype.Float32);
        NiftiWriter.Write(temp.File("a.nii.gz"), values, Size, Affine.Identity, NiftiDatatype.Float32);
        NiftiWriter.Write(temp.File("b.nii"), values, Size, Affine.Identity, NiftiDatatype.Float32);
        File.Move(temp.File("a.nii.gz"), temp.File("compressed-but-named.nii"));
        File.Move(temp.File("b.nii"), temp.File("plain-but-named.nii.gz"));
        Assert.Equal(values, NiftiReader.Read(temp.File("compressed-but-named.nii")).Data);
        Assert.Equal(values, NiftiReader.Read(temp.File("plain-but-named.nii.gz")).Data);

        // The writer can be told explicitly too.
        NiftiWriter.Write(temp.File("c.nii"), values, Size, Affine.Identity, NiftiDatatype.Float32, new NiftiWriteOptions { Gzip = true });
        Assert.True(NiftiReader.IsGzip(File.ReadAllBytes(temp.File("c.nii"))));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Reads_from_a_forward_only_stream_with_short_reads(bool gzip)
    {
        var file = new NiftiBuilder { Datatype = 4 }.WithValues(Bytes.Ramp(24, -12)).Build();
        var v = NiftiReader.Read(new TrickleStream(gzip ? Bytes.Gzip(file) : file), "download");
        Assert.Equal(Bytes.Ramp(24, -12).Select(d => (float)d), v.Data);
        Assert.Equal("download", v.SourceName);
    }

    public static TheoryData<int, short> VersionsAndDatatypes()
    {
        var data = new TheoryData<int, short>();
        foreach (var version in new[] { 1, 2 })
        {
            foreach (short t in new short[] { 2, 4, 8, 16, 64 })
            {
                data.Add(version, t);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(VersionsAndDatatypes))]
    public void Big_endian_and_little_endian_files_read_the_same(int version, short datatype)
    {
        var values = Bytes.Ramp(24, datatype == 2 ? 0 : -5, datatype is 16 or 64 ? 0.5 : 3);
        var le = new NiftiBuilder { Version = version, Datatype = datatype, LittleEndian = true }.WithValues(values).Build();
        var be = new NiftiBuilder { Version = version, Datatype = datatype, LittleEndian = false }.WithValues(values).Build();
        var a = NiftiReader.Read(new MemoryStream(le), "le");
        var b = NiftiReader.Read(new MemoryStream(be), "be");
        Assert.Equal(values.Select(d => (float)d), a.Data);
        Assert.Equal(a.Data, b.Data);
        Assert.True(a.Header!.IsLittleEndian);
        Assert.False(b.Header!.IsLittleEndian);
        Assert.Equal(version, b.Header.Version);
        Assert.Equal((NiftiDatatype)datatype, b.SourceDatatype);
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, false)]
    [InlineData(true, true)]
    public void Nifti2_files_written_by_hand_are_read(bool littleEndian, bool gzip)
    {
        // A NIfTI-2 file with an int64 vox_offset past a 16-byte extension, a sform with a flip, and scaling.
        var extension = new byte[16];
        var builder = new NiftiBuilder
        {
            Version = 2,
            LittleEndian = littleEndian,
            Datatype = 4,
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            Pixdim = [1, 2, 3, 4, 1, 1, 1, 1],
            VoxOffset = 544 + 16,
            SclSlope = 0.5,
            SclInter = 10,
            SformCode = 2,
            Srow = [-2, 0, 0, 6, 0, 3, 0, -3, 0, 0, 4, 8],
        }.WithValues(Bytes.Ramp(24, -12));
        var file = builder.Build();
        extension[0] = 1; // "extension present" flag bytes and an extension body: both skipped
        extension.CopyTo(file, 540);
        var v = NiftiReader.Read(new MemoryStream(gzip ? Bytes.Gzip(file) : file), "n2");
        Assert.Equal(2, v.Header!.Version);
        Assert.Equal(560, v.Header.VoxOffset);
        Assert.Equal(new GridSize(4, 3, 2), v.Size);
        Assert.Equal(new Spacing(2, 3, 4), v.Spacing);

        // x was stored right-to-left: canonical x = 3 - stored i.
        for (var k = 0; k < 2; k++)
        {
            for (var j = 0; j < 3; j++)
            {
                for (var i = 0; i < 4; i++)
                {
                    var stored = -12 + i + (4 * (j + (3 * k)));
                    Assert.Equal((float)((stored * 0.5) + 10), v[3 - i, j, k]);
                }
            }
        }

        Assert.Equal("LAS", v.StorageOrientation.StorageCodes);
        Assert.True(v.Affine.ApproximatelyEquals(Affine.FromRows([2, 0, 0, 0, 0, 3, 0, -3, 0, 0, 4, 8])), v.Affine.ToString());
    }

    [Theory]
    [InlineData(2.0, -5.0, true)]
    [InlineData(0.0, 7.0, false)] // slope 0: no scaling, the intercept is ignored too
    [InlineData(double.NaN, 3.0, false)] // nibabel's "unscaled" marker
    [InlineData(1.0, 0.0, false)]
    [InlineData(1.0, 2.5, true)]
    public void Scaling_is_applied_unless_the_slope_says_none(double slope, double inter, bool scaled)
    {
        var raw = Bytes.Ramp(24, -10);
        var file = new NiftiBuilder { Datatype = 4, SclSlope = slope, SclInter = inter }.WithValues(raw).Build();
        var v = NiftiReader.Read(new MemoryStream(file), "scaled");
        var expected = raw.Select(r => scaled ? (float)((r * slope) + inter) : (float)r);
        Assert.Equal(expected, v.Data);
        Assert.Equal(scaled, v.Header!.HasScaling);
    }

    [Fact]
    public void Scaling_of_uint8_gives_fractional_values()
    {
        var file = new NiftiBuilder { Datatype = 2, SclSlope = 0.25, SclInter = -1 }.WithValues(Bytes.Ramp(24)).Build();
        var v = NiftiReader.Read(new MemoryStream(file), "u8");
        Assert.Equal(Bytes.Ramp(24).Select(r => (float)((r * 0.25) - 1)), v.Data);
    }

    [Fact]
    public void A_4d_file_with_a_single_volume_and_lower_dimensional_files_are_fine()
    {
        var fourD = new NiftiBuilder { Dim = [4, 4, 3, 2, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(24)).Build();
        Assert.Equal(new GridSize(4, 3, 2), NiftiReader.Read(new MemoryStream(fourD), "4d").Size);

        // dim[0] = 2: the stale dim[3] beyond dim[0] is ignored.
        var twoD = new NiftiBuilder { Dim = [2, 4, 3, 99, 1, 1, 1, 1] }.WithValues(Bytes.Ramp(12)).Build();
        var v = NiftiReader.Read(new MemoryStream(twoD), "2d");
        Assert.Equal(new GridSize(4, 3, 1), v.Size);
        Assert.Equal(Bytes.Ramp(12).Select(d => (float)d), v.Data);
    }

    [Fact]
    public void Trailing_bytes_after_the_voxels_are_ignored()
    {
        var file = new NiftiBuilder().WithValues(Bytes.Ramp(24)).Build();
        var plain = file.Concat(new byte[1000]).ToArray();
        var gz = Bytes.Gzip(file).Concat("garbage after the gzip member"u8.ToArray()).ToArray();
        var gzInside = Bytes.Gzip(file.Concat(new byte[100_000]).ToArray()); // a long decompressed tail, not read to its end
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), NiftiReader.Read(new MemoryStream(plain), "p").Data);
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), NiftiReader.Read(new MemoryStream(gz), "g").Data);
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), NiftiReader.Read(new MemoryStream(gzInside), "t").Data);
    }

    [Fact]
    public void Non_finite_voxels_can_be_replaced_on_request()
    {
        var values = Bytes.Ramp(24);
        values[2] = double.NaN;
        values[5] = double.PositiveInfinity;
        var file = new NiftiBuilder().WithValues(values).Build();
        var v = NiftiReader.Read(new MemoryStream(file), "nan",
            new NiftiReadOptions { NonFinite = NonFiniteVoxelPolicy.Replace, NonFiniteReplacement = -1 });
        Assert.Equal(2, v.ReplacedNonFiniteVoxels);
        Assert.Equal(-1f, v.Data[2]);
        Assert.Equal(-1f, v.Data[5]);
        Assert.Equal(3f, v.Data[3]);
    }

    [Fact]
    public void Header_only_reading_reports_the_fields()
    {
        var file = new NiftiBuilder { Datatype = 4, Dim = [3, 4, 3, 2, 1, 1, 1, 1], QformCode = 1, SformCode = 2 }.WithValues(Bytes.Ramp(24)).Build();
        var h = NiftiReader.ReadHeader(new MemoryStream(file), "h");
        Assert.Equal(NiftiDatatype.Int16, h.Datatype);
        Assert.Equal(new GridSize(4, 3, 2), h.StorageSize);
        Assert.Equal(352, h.VoxOffset);
        Assert.Equal((1, 2), (h.QformCode, h.SformCode));
    }

    [Fact]
    public void The_writer_stores_the_same_geometry_in_qform_and_sform()
    {
        using var temp = new TempFolder();

        // An oblique affine with a reflection (qfac = −1) and anisotropic spacing.
        var angle = 0.3;
        var affine = Affine.FromRows([
            1.2 * Math.Cos(angle), -0.8 * Math.Sin(angle), 0, 5,
            1.2 * Math.Sin(angle), 0.8 * Math.Cos(angle), 0, -7,
            0, 0, -3, 11,
        ]);
        NiftiWriter.Write(temp.File("q.nii"), new float[Size.Count], Size, affine, NiftiDatatype.Float32);
        var bytes = File.ReadAllBytes(temp.File("q.nii"));
        var viaSform = NiftiReader.Read(new MemoryStream(bytes), "s", new NiftiReadOptions { Canonicalize = false });
        bytes[254] = 0; // sform_code = 0: the reader must fall back to the qform
        var viaQform = NiftiReader.Read(new MemoryStream(bytes), "q", new NiftiReadOptions { Canonicalize = false });
        Assert.Equal(AffineSource.Sform, viaSform.AffineSource);
        Assert.Equal(AffineSource.Qform, viaQform.AffineSource);
        Assert.True(viaSform.Affine.ApproximatelyEquals(affine, 1e-5), viaSform.Affine.ToString());
        Assert.True(viaQform.Affine.ApproximatelyEquals(affine, 1e-5), viaQform.Affine.ToString());
        Assert.Equal(-1, viaQform.Header!.Pixdim[0]);
    }

    [Fact]
    public void Writing_like_an_input_restores_its_stored_grid_voxel_for_voxel()
    {
        using var temp = new TempFolder();

        // An input stored in the BraTS orientation (LPS) with a marker.
        var file = new NiftiBuilder
        {
            Datatype = 4,
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            Srow = [-1, 0, 0, 3, 0, -1, 0, 2, 0, 0, 1, 0],
        }.WithValues(Bytes.Ramp(24)).Build();
        File.WriteAllBytes(temp.File("input.nii"), file);
        var input = NiftiReader.Read(temp.File("input.nii"));
        Assert.Equal("LPS", input.StorageOrientation.StorageCodes);

        // A "segmentation" computed in the canonical grid: here the canonical data itself.
        NiftiWriter.WriteLike(temp.File("mask.nii.gz"), input, input.Data, NiftiDatatype.UInt8);
        var raw = NiftiReader.Read(temp.File("mask.nii.gz"), new NiftiReadOptions { Canonicalize = false });
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), raw.Data); // the input's stored order
        Assert.True(raw.Affine.ApproximatelyEquals(input.StorageAffine, 1e-6));
        Assert.True(input.StorageAffine.ApproximatelyEquals(Affine.FromRows([-1, 0, 0, 3, 0, -1, 0, 2, 0, 0, 1, 0]), 1e-9));
        Assert.Equal(input.Data, NiftiReader.Read(temp.File("mask.nii.gz")).Data);
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), input.ToStorageOrder());
    }

    private static Spacing Round(Spacing s) => new(Math.Round(s.X, 5), Math.Round(s.Y, 5), Math.Round(s.Z, 5));
}
