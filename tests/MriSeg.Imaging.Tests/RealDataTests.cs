using MriSeg.Testing;
using System.IO.Compression;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Slices;

namespace MriSeg.Imaging.Tests;

/// <summary>
/// The real BraTS data beside the repository (../shared/data, or $MRISEG_REAL_DATA). The constants were
/// counted once from the files (and cross-checked with an independent decoder); the tests skip with a visible
/// reason where the data is absent.
/// </summary>
[Trait("Category", "RealData")]
public sealed class RealDataTests
{
    private const string Brats21Case = "brats21-volume/BraTS2021_00006";

    // Voxels per label in BraTS2021_00006_seg.nii.gz (240 x 240 x 155 = 8,928,000 voxels).
    private static readonly Dictionary<int, long> Brats21LabelCounts = new()
    {
        [0] = 8_790_089,
        [1] = 25_506,
        [2] = 85_957,
        [4] = 26_448,
    };

    // Whole-tumour voxels in brats18-volumes/<case>/GT_W.nii.gz, and in its axial slice 77 (the slice the
    // brats20-slices PNGs were cut from: the same counts appear there).
    private static readonly Dictionary<string, (long Volume, long Slice77)> GtWholeTumour = new()
    {
        ["BraTS20_Training_001"] = (211_979, 4_428),
        ["BraTS20_Training_022"] = (68_118, 396),
        ["BraTS20_Training_032"] = (26_500, 0),
    };

    // Whole-tumour pixels (seg > 0) of some brats20-slices PNGs.
    private static readonly Dictionary<string, int> SliceWholeTumour = new()
    {
        ["brats_A/preprocessed/BraTS20_Training_001"] = 4_428,
        ["brats_A/preprocessed/BraTS20_Training_022"] = 396,
        ["brats_A/preprocessed/BraTS20_Training_032"] = 0,
        ["brats_B/preprocessed/BraTS20_Training_100"] = 2_898,
        ["brats_B/preprocessed/BraTS20_Training_150"] = 3_560,
    };

    [Fact]
    public void Brats2021_case_reads_with_int16_images_and_the_expected_label_counts()
    {
        var folder = RealData.Require(Brats21Case);
        var c = BratsVolumeCase.Load(folder);
        Assert.Equal(new GridSize(240, 240, 155), c.Size);
        foreach (var m in Brats.Modalities)
        {
            var v = c.Image(m);
            Assert.Equal(NiftiDatatype.Int16, v.SourceDatatype);
            Assert.Equal("LPS", v.StorageOrientation.StorageCodes);
            Assert.Equal(AffineSource.Sform, v.AffineSource);
            Assert.Equal(new Spacing(1, 1, 1), v.Spacing);
            Assert.True(v.Data.Max() > 100, $"{m}: max {v.Data.Max()}");
            Assert.Equal(0f, v.Data.Min());

            // Canonical RAS+: every affine column points along +x, +y, +z.
            Assert.True(v.Affine.ApproximatelyEquals(Affine.FromRows([1, 0, 0, -239, 0, 1, 0, 0, 0, 0, 1, 0]), 1e-4), v.Affine.ToString());
        }

        var seg = c.Seg!;
        Assert.Equal(NiftiDatatype.UInt8, seg.SourceDatatype);
        Assert.Equal(Brats21LabelCounts, CountLabels(seg.Data));

        // The tumour sits where the images have signal (not in the zero background).
        var flair = c.Image(Modality.Flair).Data;
        for (var i = 0; i < seg.Data.Length; i++)
        {
            if (seg.Data[i] > 0 && flair[i] <= 0)
            {
                Assert.Fail($"label at voxel {i} on zero FLAIR");
            }
        }
    }

    [Fact]
    public void Brats2021_label_counts_are_the_same_from_gzip_and_from_the_decompressed_file()
    {
        var folder = RealData.Require(Brats21Case);
        var gz = Path.Combine(folder, "BraTS2021_00006_seg.nii.gz");
        using var temp = new TempFolder();
        var plain = temp.File("seg.nii");
        using (var input = new GZipStream(File.OpenRead(gz), CompressionMode.Decompress))
        using (var output = File.Create(plain))
        {
            input.CopyTo(output);
        }

        var fromGz = NiftiReader.Read(gz);
        var fromPlain = NiftiReader.Read(plain);
        Assert.Equal(Brats21LabelCounts, CountLabels(fromGz.Data));
        Voxels.Same(fromGz.Data, fromPlain.Data);

        // And through a forward-only stream, as a blob download would deliver it.
        Voxels.Same(fromGz.Data, NiftiReader.Read(new TrickleStream(File.ReadAllBytes(gz)), "download").Data);
    }

    [Fact]
    public void Brats18_whole_tumour_masks_are_float32_zero_one_with_the_expected_counts()
    {
        var root = RealData.Require("brats18-volumes");
        foreach (var (name, expected) in GtWholeTumour)
        {
            var gt = NiftiReader.Read(Path.Combine(root, name, "GT_W.nii.gz"));
            Assert.Equal(NiftiDatatype.Float32, gt.SourceDatatype);
            Assert.Equal(new GridSize(240, 240, 155), gt.Size);
            Assert.Equal(AffineSource.Sform, gt.AffineSource); // sform_code 2, qform_code 0
            Assert.Equal("LPS", gt.StorageOrientation.StorageCodes);
            var counts = CountLabels(gt.Data);
            Assert.Equal([0, 1], counts.Keys.Order());
            Assert.Equal(expected.Volume, counts[1]);

            long slice = 0;
            for (var y = 0; y < 240; y++)
            {
                for (var x = 0; x < 240; x++)
                {
                    slice += gt[x, y, 77] > 0 ? 1 : 0;
                }
            }

            Assert.Equal(expected.Slice77, slice);
        }

        // One image too: raw float32 scanner intensities on the same grid.
        var flair = NiftiReader.Read(Path.Combine(root, "BraTS20_Training_001", "FLAIR.nii.gz"));
        Assert.Equal(NiftiDatatype.Float32, flair.SourceDatatype);
        Assert.True(flair.Data.Max() > 1, "FLAIR is not normalised");
        Assert.True(flair.Affine.ApproximatelyEquals(NiftiReader.Read(Path.Combine(root, "BraTS20_Training_001", "GT_W.nii.gz")).Affine, 1e-6));
    }

    [Fact]
    public void Brats20_slice_pngs_give_the_expected_whole_tumour_pixels()
    {
        var root = RealData.Require("brats20-slices");
        foreach (var (relative, expected) in SliceWholeTumour)
        {
            var c = BratsSliceCase.Load(Path.Combine(root, relative));
            Assert.Equal(expected, c.WholeTumourPixels);
            Assert.True(c.Image(Modality.Flair).CountAbove(0) > 10_000, c.CaseId);
            var values = c.Seg.Pixels.Distinct().Order().ToArray();
            Assert.True(values.Length == 1 ? values[0] == 0 : values[0] == 0 && values[^1] == 255, string.Join(",", values));
        }

        Assert.Equal(99, BratsSliceCase.FindCases(Path.Combine(root, "brats_A", "preprocessed")).Count);
    }

    private static Dictionary<int, long> CountLabels(float[] data)
    {
        var counts = new Dictionary<int, long>();
        foreach (var v in data)
        {
            if (MathF.Round(v) != v)
            {
                Assert.Fail($"non-integer label {v}");
            }

            var k = (int)v;
            counts[k] = counts.GetValueOrDefault(k) + 1;
        }

        return counts;
    }
}
