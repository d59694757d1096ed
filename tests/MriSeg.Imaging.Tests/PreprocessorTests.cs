using System.Text;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Preprocessing;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace MriSeg.Imaging.Tests;

/// <summary>Small phantom datasets written once for the pre-processor tests: the same cases stored LPS (as BraTS) and RAS.</summary>
public sealed class PhantomSetFixture : IDisposable
{
    public static readonly PhantomOptions Options = new() { Size = new GridSize(48, 48, 24), Seed = 77 };

    private readonly string _root = Directory.CreateTempSubdirectory("mriseg-preprocess-tests-").FullName;

    public PhantomSetFixture()
    {
        Lps = Path.Combine(_root, "lps");
        Ras = Path.Combine(_root, "ras");
        Cases = new PhantomGenerator(Options).WriteDataset(Lps, 2, 2);
        new PhantomGenerator(Options with { StorageOrientation = "RAS" }).WriteDataset(Ras, 2, 2);
    }

    public string Lps { get; }

    public string Ras { get; }

    public IReadOnlyList<PhantomCaseInfo> Cases { get; }

    public PhantomCase Generate(string caseId)
    {
        var info = Cases.Single(c => c.CaseId == caseId);
        return new PhantomGenerator(Options).Generate(info.Site, info.Patient);
    }

    /// <summary>A writable copy of the LPS dataset.</summary>
    public string CopyTo(string folder)
    {
        var target = Path.Combine(folder, "copy");
        foreach (var file in Directory.GetFiles(Lps, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(target, Path.GetRelativePath(Lps, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
        }

        return target;
    }

    public void Dispose() => Directory.Delete(_root, recursive: true);
}

public sealed class PreprocessorTests(PhantomSetFixture phantoms) : IClassFixture<PhantomSetFixture>
{
    private static readonly PseudonymKey Key = new(Encoding.ASCII.GetBytes("a provider's test secret"));

    private static PreprocessOptions Options(int size = PreprocessOptions.NativeSize, double share = 1, LabelScheme labels = LabelScheme.WholeTumour) =>
        new() { PseudonymKey = Key, Size = size, TumourFreeShare = share, Labels = labels, MaxDegreeOfParallelism = 2 };

    private static Task<PreprocessResult> Run(string input, PreprocessOptions options, IProgress<PreprocessProgress>? progress = null) =>
        new Preprocessor(options).RunAsync(input, progress, TestContext.Current.CancellationToken);

    [Fact]
    public async Task At_native_size_every_tumour_voxel_of_every_region_survives()
    {
        var result = await Run(phantoms.Lps, Options(labels: LabelScheme.BratsRegions, share: 0));
        var d = result.Dataset;
        Assert.Equal(4, d.PatientIds.Count);
        Assert.Equal((48, 48), (d.Height, d.Width));
        Assert.Equal(["WT", "TC", "ET"], d.Labels.Channels());
        var byPatient = d.SlicesByPatient();
        foreach (var c in result.Cases)
        {
            var phantom = phantoms.Generate(c.CaseId);
            var slices = byPatient[d.PatientIds.ToList().IndexOf(c.Pseudonym)];
            long wt = 0, tc = 0, et = 0;
            foreach (var s in slices)
            {
                var mask = d.Mask(s);
                wt += mask[..d.Plane].Count((byte)1);
                tc += mask.Slice(d.Plane, d.Plane).Count((byte)1);
                et += mask.Slice(2 * d.Plane, d.Plane).Count((byte)1);
            }

            var (n1, n2, n4) = (phantom.Count(1), phantom.Count(2), phantom.Count(4));
            Assert.Equal((n1 + n2 + n4, n1 + n4, n4), (wt, tc, et));

            // Share 0: exactly the slices with tumour.
            Assert.Equal(Enumerable.Range(0, 24).Count(z => phantom.Labels.AsSpan(z * 48 * 48, 48 * 48).ContainsAnyExcept((byte)0)), slices.Length);
            Assert.Equal(slices.Length, c.TumourSlices);
        }
    }

    [Fact]
    public async Task Slices_are_the_documented_transform_of_the_volume_and_zero_outside_the_brain()
    {
        var result = await Run(phantoms.Lps, Options());
        var d = result.Dataset;
        var c = result.Cases[0];
        var phantom = phantoms.Generate(c.CaseId);
        var (nx, ny, nz) = (phantom.Size.X, phantom.Size.Y, phantom.Size.Z);
        var slices = d.SlicesByPatient()[0];

        // All brain slices, bottom to top: the slices where any modality or the labels are non-zero.
        var brainZ = Enumerable.Range(0, nz).Where(z => Brats.Modalities.Any(m => phantom.Image(m).AsSpan(z * nx * ny, nx * ny).ContainsAnyExcept((short)0))).ToArray();
        Assert.Equal(brainZ.Length, slices.Length);
        for (var m = 0; m < 4; m++)
        {
            var image = phantom.Image(Brats.Modalities[m]);
            var (sum, squares, n) = (0.0, 0.0, 0L);
            var pairs = new List<(float Voxel, float Output)>();
            for (var j = 0; j < slices.Length; j++)
            {
                var output = d.Image(slices[j]).Slice(m * d.Plane, d.Plane);
                for (var h = 0; h < d.Height; h++)
                {
                    for (var w = 0; w < d.Width; w++)
                    {
                        // Rows run along -x (patient right to left), columns along -y (anterior to posterior).
                        var (x, y, z) = (nx - 1 - h, ny - 1 - w, brainZ[j]);
                        var index = x + (nx * (y + (ny * z)));
                        var brain = Brats.Modalities.Any(mm => phantom.Image(mm)[index] != 0);
                        var value = output[(h * d.Width) + w];
                        if (!brain)
                        {
                            Assert.Equal(0f, value);
                            continue;
                        }

                        (sum, squares, n) = (sum + value, squares + (value * value), n + 1);
                        pairs.Add((image[index], value));
                    }
                }
            }

            var mean = sum / n;
            Assert.InRange(mean, -0.03, 0.03);
            Assert.InRange(Math.Sqrt((squares / n) - (mean * mean)), 0.97, 1.03);

            // Inside the clipping range (strictly between the lowest and highest output) the output is one linear
            // function of the voxel: (v - mean) / std.
            var (lowest, highest) = (pairs.Min(p => p.Output), pairs.Max(p => p.Output));
            var inner = pairs.Where(p => p.Output > lowest && p.Output < highest).ToList();
            var (a, b) = (inner.MinBy(p => p.Voxel), inner.MaxBy(p => p.Voxel));
            var slope = (b.Output - a.Output) / (b.Voxel - a.Voxel);
            Assert.True(slope > 0);
            Assert.All(inner, p => Assert.Equal(a.Output + (slope * (p.Voxel - a.Voxel)), p.Output, 2e-3));
        }
    }

    [Fact]
    public async Task The_storage_order_of_the_files_does_not_change_a_single_byte_of_the_shard()
    {
        foreach (var size in new[] { PreprocessOptions.NativeSize, 32 })
        {
            var lps = await Run(phantoms.Lps, Options(size, share: 0.5, labels: LabelScheme.BratsRegions));
            var ras = await Run(phantoms.Ras, Options(size, share: 0.5, labels: LabelScheme.BratsRegions));
            Assert.Equal(DatasetShard.ToBytes(lps.Dataset), DatasetShard.ToBytes(ras.Dataset));
        }
    }

    [Fact]
    public async Task Results_depend_neither_on_parallelism_nor_on_case_names_order_and_patients_sort_by_pseudonym()
    {
        var progress = new List<PreprocessProgress>();
        var serial = await Run(phantoms.Lps, Options(32, 0.25) with { MaxDegreeOfParallelism = 1 }, new SyncProgress(progress.Add));
        var parallel = await Run(phantoms.Lps, Options(32, 0.25) with { MaxDegreeOfParallelism = 4 });
        Assert.Equal(DatasetShard.ToBytes(serial.Dataset), DatasetShard.ToBytes(parallel.Dataset));
        Assert.Equal(serial.Dataset.PatientIds.Order(StringComparer.Ordinal), serial.Dataset.PatientIds);
        Assert.Equal(serial.Cases.Select(c => c.Pseudonym), serial.Dataset.PatientIds);
        Assert.All(serial.Dataset.PatientIds, id => Assert.Matches("^[0-9a-f]{32}$", id));

        // Progress: one report per case, the last one complete.
        Assert.Equal(4, progress.Count);
        Assert.Equal([1, 2, 3, 4], progress.Select(p => p.CasesDone));
        Assert.Equal(serial.Summary.Slices, progress[^1].Slices);
        Assert.All(progress, p => Assert.Equal(4, p.CasesTotal));
    }

    [Fact]
    public async Task Pseudonyms_are_stable_under_one_key_and_change_with_the_key()
    {
        var a = await Run(phantoms.Lps, Options(16, 0));
        var b = await Run(phantoms.Lps, Options(16, 0));
        var other = await Run(phantoms.Lps, Options(16, 0) with { PseudonymKey = new PseudonymKey(Encoding.ASCII.GetBytes("another provider's secret")) });
        Assert.Equal(a.Dataset.PatientIds, b.Dataset.PatientIds);
        Assert.All(a.Cases, c => Assert.Equal(Key.Pseudonym(c.CaseId), c.Pseudonym));
        Assert.Empty(a.Dataset.PatientIds.Intersect(other.Dataset.PatientIds));
    }

    [Fact]
    public async Task The_tumour_free_share_chooses_between_tumour_slices_only_and_all_brain_slices()
    {
        var none = (await Run(phantoms.Lps, Options(share: 0))).Summary;
        var some = (await Run(phantoms.Lps, Options(share: 0.5))).Summary;
        var all = (await Run(phantoms.Lps, Options(share: 1))).Summary;
        Assert.True(none.Slices < some.Slices && some.Slices < all.Slices, $"{none.Slices} {some.Slices} {all.Slices}");
        Assert.Equal(none.Slices, none.TumourSlices);
        Assert.Equal(none.TumourSlices, all.TumourSlices);

        // Resized, a tiny tumour can vanish from its slice's mask: the slice stays (chosen at native resolution).
        var small = (await Run(phantoms.Lps, Options(16, 0))).Summary;
        Assert.Equal(none.Slices, small.Slices);
        Assert.True(small.TumourSlices <= small.Slices);
    }

    [Fact]
    public async Task The_shard_round_trips_and_holds_no_case_name_path_or_header_text()
    {
        using var temp = new TempFolder();
        var input = phantoms.CopyTo(temp.Path);

        // Free text in a header, as scanners write it, must not reach the shard.
        var flair = Directory.GetFiles(input, "*_flair.nii.gz", SearchOption.AllDirectories)[0];
        var v = NiftiReader.Read(flair);
        NiftiWriter.Write(flair, v, NiftiDatatype.Int16, new NiftiWriteOptions { Description = "DOE^JOHN 19700101 scan 2021-03-04" });

        var result = await Run(input, Options(32, 0.25, LabelScheme.BratsRegions));
        var path = temp.File("shard.safetensors");
        DatasetShard.Save(path, result.Dataset);
        var bytes = File.ReadAllBytes(path);
        var forbidden = phantoms.Cases.Select(c => c.CaseId)
            .Concat(["Phantom", "site-", "DOE^JOHN", "19700101", "2021-03-04", temp.Path, Path.GetFileName(temp.Path)]);
        foreach (var text in forbidden)
        {
            Assert.True(bytes.AsSpan().IndexOf(Encoding.UTF8.GetBytes(text)) < 0, $"\"{text}\" is in the shard");
            Assert.True(bytes.AsSpan().IndexOf(Encoding.Unicode.GetBytes(text)) < 0, $"\"{text}\" (UTF-16) is in the shard");
        }

        var back = DatasetShard.Load(path);
        var d = result.Dataset;
        Assert.Equal(d.Masks, back.Masks);
        Assert.Equal(d.PatientIndex, back.PatientIndex);
        Assert.Equal(d.PatientIds, back.PatientIds);
        Assert.Equal(d.Modalities, back.Modalities);
        Assert.Equal(d.Provenance, back.Provenance);
        Assert.Equal(new DatasetProvenance("brats-volumes", "zscore-brain-p0.5-p99.5", "tumour+0.25@crop-32"), back.Provenance);
        for (var i = 0; i < d.Images.Length; i++)
        {
            // float16: 11 significant bits.
            Assert.True(Math.Abs(d.Images[i] - back.Images[i]) <= Math.Max(1e-7, Math.Abs(d.Images[i]) / 1024), $"image value {i}: {d.Images[i]} vs {back.Images[i]}");
        }

        var meta = Formats.SafeTensors.ReadHeader(bytes).Metadata;
        Assert.Equal("4", meta["patient_count"]);
        Assert.Equal(d.Count.ToString(System.Globalization.CultureInfo.InvariantCulture), meta["slice_count"]);
        Assert.Equal("32x32", meta["size"]);
        Assert.Equal("flair,t1,t1ce,t2", meta["modalities"]);
        Assert.Equal("WT,TC,ET", meta["label_channels"]);
    }

    [Fact]
    public async Task A_case_lacking_a_file_or_with_a_broken_one_is_skipped_with_the_reason_or_fails_in_strict_mode()
    {
        using var temp = new TempFolder();
        var input = phantoms.CopyTo(temp.Path);
        var ids = phantoms.Cases.Select(c => c.CaseId).Order(StringComparer.Ordinal).ToArray();
        string CaseFile(string id, string suffix) => Directory.GetFiles(input, $"{id}_{suffix}.nii.gz", SearchOption.AllDirectories).Single();
        File.Delete(CaseFile(ids[0], "t2"));
        var flair = CaseFile(ids[1], "flair");
        File.WriteAllBytes(flair, File.ReadAllBytes(flair)[..400]);
        var seg = CaseFile(ids[2], "seg");
        var labels = NiftiReader.Read(seg);
        var data = labels.Data.ToArray();
        data[data.Length / 2] = 5;
        NiftiWriter.WriteLike(seg, labels, data, NiftiDatatype.UInt8);

        var result = await Run(input, Options(16, 0.25));
        Assert.Equal(1, result.Summary.Patients);
        Assert.Equal(ids[3], Assert.Single(result.Cases).CaseId);
        Assert.Equal(4, result.Summary.CasesFound);
        var skipped = result.Summary.Skipped.ToDictionary(s => s.CaseId, s => s.Reason);
        Assert.Equal($"missing t2 (expected {ids[0]}_t2.nii.gz)", skipped[ids[0]]);
        Assert.StartsWith($"{ids[1]}_flair.nii.gz: ", skipped[ids[1]]);
        Assert.StartsWith($"{ids[2]}_seg.nii.gz: voxel ", skipped[ids[2]]);
        Assert.Contains("has label 5", skipped[ids[2]]);

        // Strict: the first problem stops the run, naming its case.
        var e = await Assert.ThrowsAsync<PreprocessException>(() => Run(input, Options(16) with { Strict = true, MaxDegreeOfParallelism = 1 }));
        Assert.Equal(ids[0], e.CaseId);
        Assert.Equal($"case {ids[0]}: missing t2 (expected {ids[0]}_t2.nii.gz)", e.Message);

        // Without t2 among the modalities, the first case is fine.
        var noT2 = await Run(input, Options(16) with { Modalities = [Modality.Flair, Modality.T1, Modality.T1ce] });
        Assert.Equal(2, noT2.Summary.Patients);
        Assert.Equal(3, noT2.Dataset.Channels);

        // Nothing usable: an error that names the first reason.
        var none = await Assert.ThrowsAsync<PreprocessException>(() => Run(Path.Combine(input, "site-0"), Options(16)));
        Assert.Contains($"case {ids[0]}: missing t2", none.Message);
    }

    [Fact]
    public async Task Crop_pad_and_resize_centre_the_brain_box_in_a_square_and_keep_the_orientation()
    {
        // A brain box x 10..29, y 5..44 on one slice of a 50 x 50 x 3 RAS grid, values 1 + x + 100 y. In the plane the
        // box is 20 rows (x) by 40 columns (y): padded to 40 x 40 with 10 rows above, so at --size 40 nothing is resampled.
        using var temp = new TempFolder();
        var folder = Path.Combine(temp.Path, "Box_01");
        Directory.CreateDirectory(folder);
        var size = new GridSize(50, 50, 3);
        var image = new float[size.Count];
        var seg = new byte[size.Count];
        for (var y = 5; y <= 44; y++)
        {
            for (var x = 10; x <= 29; x++)
            {
                image[size.Index(x, y, 1)] = 1 + x + (100 * y);
            }
        }

        seg[size.Index(13, 40, 1)] = 4; // near the right (x small) and anterior (y large) corner
        NiftiWriter.Write(Path.Combine(folder, "Box_01_flair.nii.gz"), image, size, Affine.Identity, NiftiDatatype.Float32);
        NiftiWriter.Write(Path.Combine(folder, "Box_01_seg.nii.gz"), seg, size, Affine.Identity);

        var result = await Run(folder, Options(40, 1, LabelScheme.BratsRegions) with { Modalities = [Modality.Flair] });
        var d = result.Dataset;
        Assert.Equal(1, d.Count);
        Assert.Equal((40, 40), (d.Height, d.Width));
        var plane = d.Image(0);
        var values = new List<(float Voxel, float Output)>();
        for (var h = 0; h < 40; h++)
        {
            for (var w = 0; w < 40; w++)
            {
                var inside = h is >= 10 and < 30;
                var output = plane[(h * 40) + w];
                if (!inside)
                {
                    Assert.Equal(0f, output);
                    continue;
                }

                var (x, y) = (29 - (h - 10), 44 - w);
                values.Add((1 + x + (100 * y), output));
            }
        }

        // Monotone in the voxel value: every pixel came from the voxel the layout says.
        var ordered = values.OrderBy(v => v.Voxel).Select(v => v.Output).ToArray();
        for (var i = 1; i < ordered.Length; i++)
        {
            Assert.True(ordered[i] >= ordered[i - 1]);
        }

        // The enhancing voxel (x 13, y 40): row 10 + (29 - 13) = 26, column 44 - 40 = 4; in all three regions.
        var mask = d.Mask(0);
        for (var k = 0; k < 3; k++)
        {
            Assert.Equal(1, mask[(k * 1600) + (26 * 40) + 4]);
            Assert.Equal(1, mask.Slice(k * 1600, 1600).Count((byte)1));
        }

        // Half the size: everything halves, the tumour stays in the same quadrant.
        var small = (await Run(folder, Options(20, 1) with { Modalities = [Modality.Flair] })).Dataset;
        var wt = small.Mask(0);
        var at = wt.IndexOf((byte)1);
        Assert.Equal((13, 2), (at / 20, at % 20));
        Assert.True(small.Image(0)[..(5 * 20)].IndexOfAnyExcept(0f) < 0, "the padding rows stay zero");
    }

    [Fact]
    public async Task The_brats_2023_numbering_and_whole_tumour_masks_are_understood()
    {
        using var temp = new TempFolder();
        var size = new GridSize(16, 16, 4);
        var image = new short[size.Count];
        Array.Fill(image, (short)100);
        var labels = new byte[size.Count];
        labels[size.Index(3, 3, 1)] = 1;
        labels[size.Index(4, 3, 1)] = 2;
        labels[size.Index(5, 3, 1)] = 3; // enhancing tumour in the 2023 numbering
        var brats = Path.Combine(temp.Path, "v2023", "BraTS-GLI-00001-000");
        Directory.CreateDirectory(brats);
        foreach (var s in new[] { "t2f", "t1n", "t1c", "t2w" })
        {
            NiftiWriter.Write(Path.Combine(brats, $"BraTS-GLI-00001-000-{s}.nii.gz"), image, size, Affine.Identity);
        }

        NiftiWriter.Write(Path.Combine(brats, "BraTS-GLI-00001-000-seg.nii.gz"), labels, size, Affine.Identity);
        var d = (await Run(Path.Combine(temp.Path, "v2023"), Options(labels: LabelScheme.BratsRegions))).Dataset;
        var tumour = Enumerable.Range(0, d.Count).Single(d.HasTumour);
        var m = d.Mask(tumour);
        Assert.Equal((3, 2, 1), (m[..d.Plane].Count((byte)1), m.Slice(d.Plane, d.Plane).Count((byte)1), m.Slice(2 * d.Plane, d.Plane).Count((byte)1)));

        // Named volumes with a float whole-tumour mask: fine for wt, refused (with the reason) for brats.
        var named = Path.Combine(temp.Path, "named", "Patient_7");
        Directory.CreateDirectory(named);
        var floats = Array.ConvertAll(image, v => (float)v);
        NiftiWriter.Write(Path.Combine(named, "FLAIR.nii.gz"), floats, size, Affine.Identity, NiftiDatatype.Float32);
        NiftiWriter.Write(Path.Combine(named, "T1.nii.gz"), floats, size, Affine.Identity, NiftiDatatype.Float32);
        NiftiWriter.Write(Path.Combine(named, "GT_W.nii.gz"), Array.ConvertAll(labels, l => l > 0 ? 1f : 0f), size, Affine.Identity, NiftiDatatype.Float32);
        var twoModalities = Options() with { Modalities = [Modality.Flair, Modality.T1] };
        var wt = await Run(Path.Combine(temp.Path, "named"), twoModalities);
        Assert.Equal("named-volumes", wt.Dataset.Provenance.SourceLayout);
        Assert.Equal(3, Enumerable.Range(0, wt.Dataset.Count).Sum(i => wt.Dataset.Mask(i).Count((byte)1)));
        var refused = await Assert.ThrowsAsync<PreprocessException>(() => Run(Path.Combine(temp.Path, "named"), twoModalities with { Labels = LabelScheme.BratsRegions }));
        Assert.Contains("case Patient_7: labels brats need a BraTS label map", refused.Message);
        Assert.Contains("GT_W.nii.gz", refused.Message);
        var missing = await Assert.ThrowsAsync<PreprocessException>(() => Run(Path.Combine(temp.Path, "named"), Options()));
        Assert.Contains("case Patient_7: missing t1ce (expected T1ce.nii.gz)", missing.Message);
    }

    [Fact]
    public async Task Png_slice_cases_give_their_own_pixels_and_whole_tumour_at_native_size()
    {
        using var temp = new TempFolder();
        var folder = Path.Combine(temp.Path, "BraTS20_Training_900");
        Directory.CreateDirectory(folder);
        const int W = 40, H = 30;
        bool Brain(int x, int y) => (((x - 20) * (x - 20)) / 300.0) + (((y - 15) * (y - 15)) / 150.0) < 1;
        bool Tumour(int x, int y) => (x - 25) * (x - 25) + ((y - 12) * (y - 12)) < 9;
        void Save(string suffix, Func<int, int, byte> value)
        {
            using var png = new Image<Rgba32>(W, H);
            for (var y = 0; y < H; y++)
            {
                for (var x = 0; x < W; x++)
                {
                    var v = value(x, y);
                    png[x, y] = new Rgba32(v, v, v, 255);
                }
            }

            png.SaveAsPng(Path.Combine(folder, $"BraTS20_Training_900_{suffix}.png"));
        }

        foreach (var s in new[] { "flair", "t1", "t1ce", "t2" })
        {
            Save(s, (x, y) => Brain(x, y) ? (byte)(50 + x + y) : (byte)0);
        }

        Save("seg", (x, y) => Tumour(x, y) ? (byte)255 : (byte)0);
        var d = (await Run(temp.Path, Options(share: 0))).Dataset;
        Assert.Equal("brats-png-slices", d.Provenance.SourceLayout);
        Assert.Equal((1, H, W), (d.Count, d.Height, d.Width));
        var inside = new List<(int Value, float Output)>();
        for (var y = 0; y < H; y++)
        {
            for (var x = 0; x < W; x++)
            {
                // Rows and columns as in the PNG.
                Assert.Equal(Tumour(x, y) ? 1 : 0, d.Mask(0)[(y * W) + x]);
                var output = d.Image(0)[(y * W) + x];
                if (Brain(x, y))
                {
                    inside.Add((50 + x + y, output));
                }
                else
                {
                    Assert.Equal(0f, output);
                }
            }
        }

        var ordered = inside.OrderBy(p => p.Value).ToList();
        for (var i = 1; i < ordered.Count; i++)
        {
            Assert.True(ordered[i].Output >= ordered[i - 1].Output);
        }

        Assert.Equal(0, inside.Average(p => (double)p.Output), 0.05);

        var refused = await Assert.ThrowsAsync<PreprocessException>(() => Run(temp.Path, Options(labels: LabelScheme.BratsRegions)));
        Assert.Contains("PNG slice layout carries only whole tumour", refused.Message);
    }

    [Fact]
    public void Options_are_checked()
    {
        Assert.Throws<ArgumentException>(() => new Preprocessor(Options(7)));
        Assert.Throws<ArgumentException>(() => new Preprocessor(Options(share: 1.5)));
        Assert.Throws<ArgumentException>(() => new Preprocessor(Options() with { Modalities = [] }));
        Assert.Throws<ArgumentException>(() => new Preprocessor(Options() with { Modalities = [Modality.T1, Modality.T1] }));
        Assert.Equal([Modality.T2, Modality.Flair, Modality.T1ce], PreprocessOptions.ParseModalities("t2, FLAIR,t1gd"));
        Assert.Throws<ArgumentException>(() => PreprocessOptions.ParseModalities("flair,pd"));
    }

    private sealed class SyncProgress(Action<PreprocessProgress> report) : IProgress<PreprocessProgress>
    {
        private readonly Lock _gate = new();

        public void Report(PreprocessProgress value)
        {
            lock (_gate)
            {
                report(value);
            }
        }
    }
}
