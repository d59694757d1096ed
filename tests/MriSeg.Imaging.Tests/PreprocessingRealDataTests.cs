using System.Text;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Testing;

namespace MriSeg.Imaging.Tests;

/// <summary>
/// The pre-processor on the real BraTS data beside the repository (skipped with the reason where it is absent).
/// Counts as in <see cref="RealDataTests"/>: they were counted from the files with an independent decoder.
/// </summary>
[Trait("Category", "RealData")]
public sealed class PreprocessingRealDataTests
{
    private static readonly PseudonymKey Key = new(Encoding.ASCII.GetBytes("provider A's real-data test key"));

    private static PreprocessOptions Native(double share = 1) =>
        new() { PseudonymKey = Key, Size = PreprocessOptions.NativeSize, TumourFreeShare = share, MaxDegreeOfParallelism = 2 };

    private static Task<PreprocessResult> Run(string input, PreprocessOptions options) =>
        new Preprocessor(options).RunAsync(input, null, TestContext.Current.CancellationToken);

    private static long Count(SliceDataset d, int channel)
    {
        long n = 0;
        for (var i = 0; i < d.Count; i++)
        {
            n += d.Mask(i).Slice(channel * d.Plane, d.Plane).Count((byte)1);
        }

        return n;
    }

    [Fact]
    public async Task Brats2021_tumour_regions_survive_extraction_voxel_for_voxel()
    {
        var folder = RealData.Require("brats21-volume/BraTS2021_00006");
        var result = await Run(folder, Native(share: 0) with { Labels = LabelScheme.BratsRegions });
        var d = result.Dataset;
        Assert.Equal((240, 240, 4), (d.Height, d.Width, d.Channels));
        Assert.Equal(25_506 + 85_957 + 26_448, Count(d, 0));
        Assert.Equal(25_506 + 26_448, Count(d, 1));
        Assert.Equal(26_448, Count(d, 2));
        Assert.Equal(d.Count, d.TumourSlices);
        Assert.Equal(Key.Pseudonym("BraTS2021_00006"), Assert.Single(d.PatientIds));
    }

    [Fact]
    public async Task Brats2021_the_tumour_stays_in_the_left_hemisphere_and_the_front_of_the_brain()
    {
        var folder = RealData.Require("brats21-volume/BraTS2021_00006");

        // Where the tumour is, from the files: world (RAS mm) centroids of tumour and brain.
        var seg = NiftiReader.Read(Path.Combine(folder, "BraTS2021_00006_seg.nii.gz"));
        var flair = NiftiReader.Read(Path.Combine(folder, "BraTS2021_00006_flair.nii.gz"));
        var (tumour, brain) = (Centroid(seg, v => v > 0), Centroid(flair, v => v != 0));
        var tumourOnTheRight = tumour.X > brain.X; // RAS: +x is the patient's right
        var tumourInFront = tumour.Y > brain.Y;    // +y is anterior
        Assert.False(tumourOnTheRight, "BraTS2021_00006's tumour is in the left hemisphere");
        Assert.True(tumourInFront, "BraTS2021_00006's tumour is in the front of the brain");

        foreach (var size in new[] { PreprocessOptions.NativeSize, 128 })
        {
            var d = (await Run(folder, Native() with { Size = size })).Dataset;

            // Rows run from the patient's right to left, columns from anterior to posterior.
            var (tumourRow, tumourColumn) = PlaneCentroid<byte>(d, i => d.Mask(i), 0);
            var (brainRow, brainColumn) = PlaneCentroid<float>(d, i => d.Image(i), 0f);
            Assert.Equal(tumourOnTheRight, tumourRow < brainRow);
            Assert.Equal(tumourInFront, tumourColumn < brainColumn);
        }
    }

    [Fact]
    public async Task Volumes_and_the_png_slices_cut_from_them_give_the_same_slice()
    {
        var volumes = RealData.Require("brats18-volumes");
        var slices = RealData.Require("brats20-slices/brats_A/preprocessed");
        foreach (var (id, tumourPixels) in new[] { ("BraTS20_Training_001", 4_428), ("BraTS20_Training_022", 396) })
        {
            var options = Native() with { Modalities = [Modality.Flair, Modality.T1] };
            var fromVolume = (await Run(Path.Combine(volumes, id), options)).Dataset;
            var fromPng = (await Run(Path.Combine(slices, id), options)).Dataset;
            Assert.Equal(fromVolume.PatientIds, fromPng.PatientIds); // one case id, one pseudonym, whatever the layout

            // The PNGs are axial slice 77; with all brain slices kept, it is the volume's slice number
            // (brain slices below 77).
            var flair = NiftiReader.Read(Path.Combine(volumes, id, "FLAIR.nii.gz"));
            var t1 = NiftiReader.Read(Path.Combine(volumes, id, "T1.nii.gz"));
            var plane = 240 * 240;
            var index = Enumerable.Range(0, 77).Count(z => flair.Data.AsSpan(z * plane, plane).ContainsAnyExcept(0f) || t1.Data.AsSpan(z * plane, plane).ContainsAnyExcept(0f));

            Assert.Equal(tumourPixels, fromPng.Mask(0).Count((byte)1));
            Assert.True(fromVolume.Mask(index).SequenceEqual(fromPng.Mask(0)), $"{id}: the masks differ");
            var a = fromVolume.Image(index)[..plane];
            var b = fromPng.Image(0)[..plane];
            var sameFootprint = 0;
            for (var i = 0; i < plane; i++)
            {
                sameFootprint += (a[i] != 0) == (b[i] != 0) ? 1 : 0;
            }

            Assert.True(sameFootprint > plane - 50, $"{id}: the brain footprints differ in {plane - sameFootprint} pixels");
        }
    }

    [Fact]
    public async Task Named_volumes_keep_their_whole_tumour_counts_and_a_missing_modality_is_named()
    {
        var root = RealData.Require("brats18-volumes");
        var result = await Run(root, Native(share: 0) with { Modalities = [Modality.Flair, Modality.T1] });
        Assert.Equal("named-volumes", result.Dataset.Provenance.SourceLayout);
        var byCase = result.Cases.ToDictionary(c => c.CaseId);
        var d = result.Dataset;
        var slicesByPatient = d.SlicesByPatient();
        foreach (var (id, voxels) in new[] { ("BraTS20_Training_001", 211_979L), ("BraTS20_Training_022", 68_118L), ("BraTS20_Training_032", 26_500L) })
        {
            var p = d.PatientIds.ToList().IndexOf(byCase[id].Pseudonym);
            Assert.Equal(voxels, slicesByPatient[p].Sum(s => (long)d.Mask(s)[..d.Plane].Count((byte)1)));
        }

        // The default modalities include T1ce, which these folders lack.
        var e = await Assert.ThrowsAsync<PreprocessException>(() => Run(root, Native()));
        Assert.Contains("case BraTS20_Training_001: missing t1ce (expected T1ce.nii.gz)", e.Message);
        var strict = await Assert.ThrowsAsync<PreprocessException>(() => Run(root, Native() with { Strict = true, MaxDegreeOfParallelism = 1 }));
        Assert.Equal("BraTS20_Training_001", strict.CaseId);
    }

    [Fact]
    public async Task Png_slices_keep_their_tumour_pixels_and_pseudonyms_depend_only_on_key_and_case()
    {
        var root = RealData.Require("brats20-slices");
        var folders = new[] { "brats_A/preprocessed/BraTS20_Training_001", "brats_A/preprocessed/BraTS20_Training_022", "brats_A/preprocessed/BraTS20_Training_032", "brats_B/preprocessed/BraTS20_Training_100", "brats_B/preprocessed/BraTS20_Training_150" };
        var cases = folders.Select(f => CaseDiscovery.ReadCase(Path.Combine(root, f))!).ToList();
        var expected = new Dictionary<string, int>
        {
            ["BraTS20_Training_001"] = 4_428,
            ["BraTS20_Training_022"] = 396,
            ["BraTS20_Training_032"] = 0,
            ["BraTS20_Training_100"] = 2_898,
            ["BraTS20_Training_150"] = 3_560,
        };

        var first = await new Preprocessor(Native()).RunAsync(cases, null, TestContext.Current.CancellationToken);
        var again = await new Preprocessor(Native() with { MaxDegreeOfParallelism = 1 }).RunAsync(cases, null, TestContext.Current.CancellationToken);
        var otherKey = await new Preprocessor(Native() with { PseudonymKey = PseudonymKey.Generate() }).RunAsync(cases, null, TestContext.Current.CancellationToken);
        var d = first.Dataset;
        Assert.Equal(5, d.Count);
        foreach (var c in first.Cases)
        {
            var slice = d.PatientIds.ToList().IndexOf(c.Pseudonym);
            Assert.Equal(expected[c.CaseId], d.Mask(slice).Count((byte)1));
        }

        Assert.Equal(DatasetShard.ToBytes(d), DatasetShard.ToBytes(again.Dataset));
        Assert.Empty(d.PatientIds.Intersect(otherKey.Dataset.PatientIds));

        // The tumour-free default drops or keeps the tumour-free case by its pseudonym's draw: never the others.
        var defaults = await new Preprocessor(Native(share: 0.25)).RunAsync(cases, null, TestContext.Current.CancellationToken);
        Assert.InRange(defaults.Summary.Patients, 4, 5);
        Assert.Equal(4, defaults.Summary.TumourSlices);
    }

    [Fact]
    public async Task The_real_shard_holds_normalised_brains_and_no_case_name()
    {
        var folder = RealData.Require("brats21-volume/BraTS2021_00006");
        var result = await Run(folder, Native());
        var d = result.Dataset;

        // Inside the brain (everything outside it is exactly 0), per channel: mean 0 and standard deviation 1.
        var stats = new (double Sum, double Squares, long N)[d.Channels];
        for (var i = 0; i < d.Count; i++)
        {
            var image = d.Image(i);
            for (var c = 0; c < d.Channels; c++)
            {
                foreach (var v in image.Slice(c * d.Plane, d.Plane))
                {
                    if (v != 0)
                    {
                        stats[c] = (stats[c].Sum + v, stats[c].Squares + ((double)v * v), stats[c].N + 1);
                    }
                }
            }
        }

        foreach (var (sum, squares, n) in stats)
        {
            var mean = sum / n;
            Assert.InRange(mean, -0.03, 0.03);
            Assert.InRange(Math.Sqrt((squares / n) - (mean * mean)), 0.96, 1.04);
        }

        var bytes = DatasetShard.ToBytes(d);
        foreach (var text in new[] { "BraTS2021_00006", "BraTS", "00006", "brats21-volume" })
        {
            Assert.True(bytes.AsSpan().IndexOf(Encoding.UTF8.GetBytes(text)) < 0, $"\"{text}\" is in the shard");
        }
    }

    private static (double X, double Y, double Z) Centroid(Volume v, Func<float, bool> inside)
    {
        double x = 0, y = 0, z = 0;
        long n = 0;
        for (var k = 0; k < v.Size.Z; k++)
        {
            for (var j = 0; j < v.Size.Y; j++)
            {
                for (var i = 0; i < v.Size.X; i++)
                {
                    if (inside(v.Data[v.Size.Index(i, j, k)]))
                    {
                        (x, y, z, n) = (x + i, y + j, z + k, n + 1);
                    }
                }
            }
        }

        // Voxel to world through the affine (canonical grid: RAS+).
        var (ci, cj, ck) = (x / n, y / n, z / n);
        var a = v.Affine;
        return ((a[0, 0] * ci) + (a[0, 1] * cj) + (a[0, 2] * ck) + a[0, 3], (a[1, 0] * ci) + (a[1, 1] * cj) + (a[1, 2] * ck) + a[1, 3], (a[2, 0] * ci) + (a[2, 1] * cj) + (a[2, 2] * ck) + a[2, 3]);
    }

    private delegate ReadOnlySpan<T> Plane<T>(int slice);

    private static (double Row, double Column) PlaneCentroid<T>(SliceDataset d, Plane<T> plane, T background)
        where T : IEquatable<T>
    {
        double r = 0, c = 0;
        long n = 0;
        for (var s = 0; s < d.Count; s++)
        {
            var values = plane(s);
            for (var i = 0; i < d.Plane; i++)
            {
                if (!values[i].Equals(background))
                {
                    (r, c, n) = (r + (i / d.Width), c + (i % d.Width), n + 1);
                }
            }
        }

        return (r / n, c / n);
    }
}
