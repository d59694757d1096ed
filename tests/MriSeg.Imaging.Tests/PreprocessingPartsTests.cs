using System.Text;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;

namespace MriSeg.Imaging.Tests;

/// <summary>The pre-processor's parts: file names, discovery, pseudonyms, robust statistics, resampling, hole filling.</summary>
public sealed class PreprocessingPartsTests
{
    [Theory]
    [InlineData("BraTS2021_00006_flair.nii.gz", CaseFileRole.Flair, false, false)]
    [InlineData("BraTS2021_00006_t1.nii.gz", CaseFileRole.T1, false, false)]
    [InlineData("BraTS2021_00006_t1ce.nii", CaseFileRole.T1ce, false, false)]
    [InlineData("Brats18_2013_2_1_T1CE.NII.GZ", CaseFileRole.T1ce, false, false)]
    [InlineData("BraTS-GLI-00000-000-t2f.nii.gz", CaseFileRole.Flair, false, false)]
    [InlineData("BraTS-GLI-00000-000-t1c.nii.gz", CaseFileRole.T1ce, false, false)]
    [InlineData("BraTS-GLI-00000-000-t1n.nii.gz", CaseFileRole.T1, false, false)]
    [InlineData("BraTS-GLI-00000-000-t2w.nii.gz", CaseFileRole.T2, false, false)]
    [InlineData("BraTS20_Training_001_seg.nii.gz", CaseFileRole.BratsLabels, false, false)]
    [InlineData("W39_1998.09.19_Segm.nii", CaseFileRole.BratsLabels, false, false)]
    [InlineData("FLAIR.nii.gz", CaseFileRole.Flair, false, true)]
    [InlineData("T1.nii.gz", CaseFileRole.T1, false, true)]
    [InlineData("T1ce.nii.gz", CaseFileRole.T1ce, false, true)]
    [InlineData("T1_Gd.nii.gz", CaseFileRole.T1ce, false, true)]
    [InlineData("t2.nii", CaseFileRole.T2, false, true)]
    [InlineData("GT_W.nii.gz", CaseFileRole.WholeTumourMask, false, true)]
    [InlineData("BraTS20_Training_001_seg.png", CaseFileRole.BratsLabels, true, false)]
    [InlineData("BraTS20_Training_001_t1.PNG", CaseFileRole.T1, true, false)]
    public void File_names_of_the_three_layouts_and_their_variants_are_recognised(string name, CaseFileRole role, bool png, bool wholeStem)
    {
        var c = SourceLayouts.Classify(name);
        Assert.NotNull(c);
        Assert.Equal((role, png, wholeStem), c.Value);
    }

    [Theory]
    [InlineData("brain_mask.nii.gz")]
    [InlineData("mask.nii.gz")]
    [InlineData("BraTS2021_00006_flair.json")]
    [InlineData("._BraTS2021_00006_flair.nii.gz")]
    [InlineData("notes.txt")]
    [InlineData("BraTS2021_00006.nii.gz")]
    public void Other_files_are_ignored(string name) => Assert.Null(SourceLayouts.Classify(name));

    [Fact]
    public void Discovery_walks_down_to_case_folders_and_reports_problems_per_case()
    {
        using var temp = new TempFolder();
        void Touch(params string[] parts)
        {
            var path = Path.Combine([temp.Path, .. parts]);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllBytes(path, []);
        }

        foreach (var s in new[] { "flair", "t1", "t1ce", "t2", "seg" })
        {
            Touch("site-0", "Case_A", $"Case_A_{s}.nii.gz");
            Touch("site-1", "deeper", "Case_B", $"Case_B_{s}.nii.gz");
            Touch("site-1", "Case_A", $"Case_A_{s}.nii.gz"); // a second folder named Case_A
            Touch("pngs", "Slice_C", $"Slice_C_{s}.png");
        }

        Touch("named", "Patient_D", "FLAIR.nii.gz");
        Touch("named", "Patient_D", "T1.nii.gz");
        Touch("named", "Patient_D", "GT_W.nii.gz");
        Touch("named", "Patient_D", "readme.txt");
        Touch("mixed", "Case_E", "Case_E_flair.nii.gz");
        Touch("mixed", "Case_E", "Case_E_flair.nii");
        Touch("empty", "nothing-here", "notes.txt");

        var cases = CaseDiscovery.Discover(temp.Path);

        Assert.Equal(
            ["Case_E", "Patient_D", "Slice_C", "Case_A", "Case_A", "Case_B"],
            cases.Select(c => c.CaseId));
        var byFolder = cases.ToDictionary(c => Path.GetRelativePath(temp.Path, c.Folder));
        Assert.Equal(SourceLayout.BratsVolumes, byFolder[Path.Combine("site-0", "Case_A")].Layout);
        Assert.Null(byFolder[Path.Combine("site-0", "Case_A")].Problem);
        Assert.Contains("duplicate case id", byFolder[Path.Combine("site-1", "Case_A")].Problem);
        Assert.Equal(SourceLayout.NamedVolumes, byFolder[Path.Combine("named", "Patient_D")].Layout);
        Assert.Equal((Path.Combine(temp.Path, "named", "Patient_D", "GT_W.nii.gz"), CaseFileRole.WholeTumourMask), byFolder[Path.Combine("named", "Patient_D")].LabelFile);
        Assert.Equal(SourceLayout.PngSlices, byFolder[Path.Combine("pngs", "Slice_C")].Layout);
        Assert.Equal(5, byFolder[Path.Combine("pngs", "Slice_C")].Files.Count);
        Assert.Contains("2 files for Flair", byFolder[Path.Combine("mixed", "Case_E")].Problem);

        // One case folder given directly is one case.
        var one = Assert.Single(CaseDiscovery.Discover(Path.Combine(temp.Path, "site-1", "deeper", "Case_B")));
        Assert.Equal("Case_B", one.CaseId);
        Assert.Throws<PreprocessException>(() => CaseDiscovery.Discover(Path.Combine(temp.Path, "absent")));
        Assert.Empty(CaseDiscovery.Discover(Path.Combine(temp.Path, "empty")));
    }

    [Fact]
    public void Pseudonyms_are_the_truncated_hmac_sha256_of_the_case_id()
    {
        // Expected values computed independently with Python: hmac.new(key, case, sha256).hexdigest()[:32].
        var key = new PseudonymKey(Encoding.ASCII.GetBytes("0123456789abcdef-provider-A"));
        Assert.Equal("d605d8faccfd86e08ac0baea5938dc1e", key.Pseudonym("BraTS2021_00006"));
        Assert.Equal("f0b8ecc421965b1ac367649939e518d1", key.Pseudonym("BraTS20_Training_001"));
        Assert.Equal(key.Pseudonym("BraTS2021_00006"), new PseudonymKey(Encoding.ASCII.GetBytes("0123456789abcdef-provider-A")).Pseudonym("BraTS2021_00006"));
        Assert.NotEqual(key.Pseudonym("BraTS2021_00006"), new PseudonymKey(Encoding.ASCII.GetBytes("0123456789abcdef-provider-B")).Pseudonym("BraTS2021_00006"));
        Assert.Throws<ArgumentException>(() => new PseudonymKey(new byte[15]));
    }

    [Fact]
    public void Key_files_are_created_once_owner_only_and_read_back_to_the_same_key()
    {
        using var temp = new TempFolder();
        var path = temp.File("provider.key");
        var created = PseudonymKey.CreateFile(path);
        Assert.Throws<IOException>(() => PseudonymKey.CreateFile(path));
        Assert.Equal(created.Pseudonym("case"), PseudonymKey.Load(path).Pseudonym("case"));
        var text = File.ReadAllText(path);
        Assert.Matches("^[0-9a-f]{64}\n$", text);
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        }

        // A key given as text (the environment variable) equals the same text in a file, trailing newline or not.
        Assert.Equal(PseudonymKey.FromText(text.Trim()).Pseudonym("x"), PseudonymKey.Load(path).Pseudonym("x"));
        File.WriteAllText(temp.File("short.key"), "too short\n");
        Assert.Throws<ArgumentException>(() => PseudonymKey.Load(temp.File("short.key")));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(1000)]
    [InlineData(200_000)]
    public void Robust_statistics_equal_a_plain_sort_based_computation(int n)
    {
        var rng = new Random(n);
        var values = new float[n];
        for (var i = 0; i < n; i++)
        {
            // Skewed intensities with repeated values and a few huge outliers.
            values[i] = i % 97 == 0 ? 1e6f * (float)rng.NextDouble() : MathF.Round((float)(rng.NextDouble() * rng.NextDouble() * 3000));
        }

        var stats = IntensityStats.Compute(values, 0.5, 99.5, new IntensityStats.Scratch());

        var sorted = values.Order().ToArray();
        var low = sorted[(int)Math.Floor(0.005 * (n - 1))];
        var high = sorted[(int)Math.Floor(0.995 * (n - 1))];
        var clipped = values.Select(v => (double)Math.Clamp(v, low, high)).ToArray();
        var mean = clipped.Average();
        var std = Math.Sqrt(clipped.Select(c => (c - mean) * (c - mean)).Average());
        Assert.Equal(low, stats.Low);
        Assert.Equal(high, stats.High);
        Assert.Equal(mean, stats.Mean, 1e-6 * Math.Max(1, Math.Abs(mean)));
        Assert.Equal(std, stats.StdDev, 1e-6 * Math.Max(1, std));

        var normalised = values.Select(stats.Normalise).ToArray();
        if (std > 0)
        {
            Assert.Equal(0, normalised.Average(v => (double)v), 1e-4);
            Assert.Equal(1, Math.Sqrt(normalised.Average(v => (double)v * v)), 1e-4);
        }
    }

    [Fact]
    public void A_constant_brain_normalises_to_zeros()
    {
        var stats = IntensityStats.Compute(Enumerable.Repeat(42f, 100).ToArray(), 0.5, 99.5, new IntensityStats.Scratch());
        Assert.Equal(0f, stats.Normalise(42f));
        Assert.Equal(1f, stats.Scale);
    }

    [Fact]
    public void The_sampling_stride_is_one_for_small_boxes_and_coprime_to_the_row_length()
    {
        Assert.Equal(1, CaseProcessor.SampleStride(CaseProcessor.StatisticsSamples, 240));
        var k = CaseProcessor.SampleStride(240L * 240 * 155, 240);
        Assert.True(k > 1 && 240L * 240 * 155 / k <= CaseProcessor.StatisticsSamples + 1, $"{k}");
        Assert.Equal(1, Gcd(k, 240));

        static int Gcd(int a, int b) => b == 0 ? a : Gcd(b, a % b);
    }

    [Theory]
    [InlineData(7, 9, 16, 16)]
    [InlineData(160, 150, 128, 128)]
    [InlineData(12, 12, 12, 12)]
    [InlineData(5, 40, 3, 17)]
    public void Bilinear_resampling_matches_the_formula_and_comes_transposed(int rows, int columns, int outRows, int outColumns)
    {
        var rng = new Random(rows * 1000 + columns);
        var source = Enumerable.Range(0, rows * columns).Select(_ => (float)rng.NextDouble()).ToArray();
        var transposed = new float[outRows * outColumns];
        new SliceResampler(rows, columns, outRows, outColumns).BilinearTransposed(source, transposed);

        // PyTorch's interpolate(mode="bilinear", align_corners=False) without antialiasing, written out.
        static (int, int, double) At(int o, int n, int outN)
        {
            var c = Math.Max(0, ((o + 0.5) * n / outN) - 0.5);
            var i = Math.Min((int)Math.Floor(c), n - 1);
            return (i, Math.Min(i + 1, n - 1), c - i);
        }

        for (var r = 0; r < outRows; r++)
        {
            var (r0, r1, wr) = At(r, rows, outRows);
            for (var c = 0; c < outColumns; c++)
            {
                var (c0, c1, wc) = At(c, columns, outColumns);
                double V(int y, int x) => source[(y * columns) + x];
                var expected = ((1 - wr) * (((1 - wc) * V(r0, c0)) + (wc * V(r0, c1)))) + (wr * (((1 - wc) * V(r1, c0)) + (wc * V(r1, c1))));
                Assert.Equal(expected, transposed[(c * outRows) + r], 1e-5);
            }
        }
    }

    [Fact]
    public void Nearest_resampling_keeps_labels_and_halves_exactly()
    {
        var source = new byte[8 * 8];
        for (var i = 0; i < source.Length; i++)
        {
            source[i] = (byte)i;
        }

        var transposed = new byte[4 * 4];
        new SliceResampler(8, 8, 4, 4).NearestTransposed(source, transposed);
        for (var r = 0; r < 4; r++)
        {
            for (var c = 0; c < 4; c++)
            {
                Assert.Equal(source[(((2 * r) + 1) * 8) + (2 * c) + 1], transposed[(c * 4) + r]);
            }
        }
    }

    [Fact]
    public void Holes_enclosed_in_a_slice_are_filled_and_open_notches_are_not()
    {
        // 12 x 10 slice: a ring with a one-pixel hole at (5, 4) and an open notch reaching the border.
        const int N0 = 12, N1 = 10;
        var mask = new byte[N0 * N1 * 2];
        for (var y = 2; y <= 7; y++)
        {
            for (var x = 2; x <= 9; x++)
            {
                mask[x + (N0 * y)] = 1;
            }
        }

        mask[5 + (N0 * 4)] = 0; // hole
        mask[8 + (N0 * 5)] = 0; // notch: (8..9, 5) open to the right
        mask[9 + (N0 * 5)] = 0;
        var before = mask.ToArray();
        var stack = Array.Empty<int>();
        BrainMask.FillHoles(mask, N0, N1, new Box(2, 9, 2, 7), 0, 1, ref stack);

        Assert.Equal(1, mask[5 + (N0 * 4)]);
        Assert.Equal(0, mask[8 + (N0 * 5)]);
        Assert.Equal(0, mask[9 + (N0 * 5)]);
        before[5 + (N0 * 4)] = 1;
        Assert.Equal(before, mask);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(4, 4)]
    [InlineData(7, 13)]
    [InlineData(128, 181)]
    public void The_vectorised_transpose_equals_the_plain_one(int rows, int columns)
    {
        var source = Enumerable.Range(0, rows * columns).Select(i => (float)i).ToArray();
        var fast = new float[source.Length];
        SliceResampler.TransposeFloats(source, fast, rows, columns);
        for (var r = 0; r < rows; r++)
        {
            for (var c = 0; c < columns; c++)
            {
                Assert.Equal(source[(r * columns) + c], fast[(c * rows) + r]);
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Hole_filling_agrees_with_a_plain_flood_fill_on_random_blobs(int seed)
    {
        const int N0 = 37, N1 = 29, Z = 3;
        var rng = new Random(seed);
        var mask = new byte[N0 * N1 * Z];
        for (var i = 0; i < mask.Length; i++)
        {
            var (x, y) = (i % N0, (i / N0) % N1);
            var inside = x is > 2 and < 34 && y is > 1 and < 27;
            mask[i] = inside && rng.NextDouble() < 0.6 ? (byte)1 : (byte)0;
        }

        var expected = mask.ToArray();
        for (var z = 0; z < Z; z++)
        {
            // Reference: 4-connected flood of the background from the whole slice border.
            var outside = new bool[N0 * N1];
            var queue = new Queue<int>();
            for (var i = 0; i < N0 * N1; i++)
            {
                var (x, y) = (i % N0, i / N0);
                if ((x == 0 || y == 0 || x == N0 - 1 || y == N1 - 1) && expected[(z * N0 * N1) + i] == 0)
                {
                    outside[i] = true;
                    queue.Enqueue(i);
                }
            }

            while (queue.TryDequeue(out var p))
            {
                foreach (var q in new[] { p - 1, p + 1, p - N0, p + N0 })
                {
                    var neighbour = Math.Abs((q % N0) - (p % N0)) <= 1 && q >= 0 && q < N0 * N1;
                    if (neighbour && !outside[q] && expected[(z * N0 * N1) + q] == 0)
                    {
                        outside[q] = true;
                        queue.Enqueue(q);
                    }
                }
            }

            for (var i = 0; i < N0 * N1; i++)
            {
                if (!outside[i])
                {
                    expected[(z * N0 * N1) + i] = 1;
                }
            }
        }

        var stack = Array.Empty<int>();
        BrainMask.FillHoles(mask, N0, N1, new Box(3, 33, 2, 26), 0, Z - 1, ref stack);
        Assert.Equal(expected, mask);
    }

    [Fact]
    public void Slice_draws_are_uniform_deterministic_and_keyed_by_the_pseudonym()
    {
        var a = Enumerable.Range(0, 2000).Select(z => CaseProcessor.Draw("p1", z)).ToArray();
        Assert.Equal(a, Enumerable.Range(0, 2000).Select(z => CaseProcessor.Draw("p1", z)));
        Assert.NotEqual(a, Enumerable.Range(0, 2000).Select(z => CaseProcessor.Draw("p2", z)));
        Assert.All(a, d => Assert.InRange(d, 0, 1 - 1e-12));
        Assert.InRange(a.Count(d => d < 0.25), 400, 600);
    }
}

/// <summary>The reader's int16 route (unscaled uint8/int16 kept as int16) against its float route.</summary>
public sealed class CanonicalInt16ReadTests
{
    private static readonly GridSize Canonical = new(7, 5, 3);

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var codes in new[] { "RAS", "LPS", "LAI", "RPI", "PSL", "IRA" })
        {
            foreach (var type in new[] { "int16", "uint8", "float32", "int16-scaled" })
            {
                data.Add(codes, type);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_orientation_and_datatype_reads_to_the_same_canonical_values(string codes, string type)
    {
        using var temp = new TempFolder();
        var orientation = Reorientation.FromStorageCodes(codes);
        var canonical = new float[Canonical.Count];
        for (var i = 0; i < canonical.Length; i++)
        {
            canonical[i] = (i * 37) % 251;
        }

        var stored = orientation.ToStorage<float>(canonical, Canonical);
        var size = orientation.StorageSize(Canonical);
        var affine = orientation.StorageAffine(Affine.Diagonal(1, 2, 3, -4, -5, -6), Canonical);
        var path = temp.File("v.nii.gz");
        switch (type)
        {
            case "int16":
                NiftiWriter.Write(path, Array.ConvertAll(stored, v => (short)(v - 100)), size, affine);
                break;
            case "uint8":
                NiftiWriter.Write(path, Array.ConvertAll(stored, v => (byte)v), size, affine);
                break;
            case "float32":
                NiftiWriter.Write(path, stored, size, affine, NiftiDatatype.Float32);
                break;
            default:
                var builder = new NiftiBuilder
                {
                    Dim = [3, size.X, size.Y, size.Z, 1, 1, 1, 1],
                    Datatype = 4,
                    SclSlope = 0.5,
                    SclInter = 3,
                    Srow = [affine[0, 0], affine[0, 1], affine[0, 2], affine[0, 3], affine[1, 0], affine[1, 1], affine[1, 2], affine[1, 3], affine[2, 0], affine[2, 1], affine[2, 2], affine[2, 3]],
                }.WithValues([.. stored.Select(v => (double)v)]);
                File.WriteAllBytes(path, Bytes.Gzip(builder.Build()));
                break;
        }

        var expected = NiftiReader.Read(path);
        var read = NiftiReader.ReadCanonical(path, null, n => new float[n], n => new short[n]);
        Assert.Equal(expected.Size, read.Size);
        Assert.True(expected.Affine.ApproximatelyEquals(read.Affine, 1e-9));
        Assert.Equal(type is "int16" or "uint8", read.Shorts is not null);
        var values = read.Shorts is { } shorts ? Array.ConvertAll(shorts, v => (float)v) : read.Floats!;
        Voxels.Same(expected.Data, values);
    }

    /// <summary>
    /// Slices larger than the reader's 64 Ki-voxel block: a slice is read in several runs of rows (the last one
    /// shorter), each decompressed straight into its canonical place and reversed there for flipped axes.
    /// </summary>
    [Theory]
    [InlineData("RAS", "int16")]
    [InlineData("LPS", "int16")]
    [InlineData("LAS", "int16")]
    [InlineData("RPS", "int16")]
    [InlineData("LPI", "uint8")]
    public void Slices_of_several_blocks_read_to_the_same_canonical_values(string codes, string type)
    {
        using var temp = new TempFolder();
        var grid = new GridSize(300, 250, 2);
        var orientation = Reorientation.FromStorageCodes(codes);
        var canonical = new float[grid.Count];
        for (var i = 0; i < canonical.Length; i++)
        {
            canonical[i] = (i * 37) % 251;
        }

        var stored = orientation.ToStorage<float>(canonical, grid);
        var size = orientation.StorageSize(grid);
        var affine = orientation.StorageAffine(Affine.Diagonal(1, 2, 3, -4, -5, -6), grid);
        var path = temp.File("big.nii.gz");
        if (type == "int16")
        {
            NiftiWriter.Write(path, Array.ConvertAll(stored, v => (short)(v - 100)), size, affine);
        }
        else
        {
            NiftiWriter.Write(path, Array.ConvertAll(stored, v => (byte)v), size, affine);
        }

        var expected = NiftiReader.Read(path);
        var read = NiftiReader.ReadCanonical(path, null, n => new float[n], n => new short[n], n => new byte[n]);
        Assert.Equal(expected.Size, read.Size);
        var values = read.Shorts is { } shorts ? Array.ConvertAll(shorts, v => (float)v) : Array.ConvertAll(read.Bytes!, v => (float)v);
        Voxels.Same(expected.Data, values);
        Assert.Equal(canonical[12345] - (type == "int16" ? 100 : 0), values[12345]);
    }

    [Fact]
    public void The_int16_route_rejects_a_truncated_file_like_the_float_route()
    {
        using var temp = new TempFolder();
        var path = temp.File("t.nii");
        NiftiWriter.Write(path, new short[7 * 5 * 3], Canonical, Affine.Identity);
        File.WriteAllBytes(path, File.ReadAllBytes(path)[..^10]);
        var expected = Assert.Throws<NiftiFormatException>(() => NiftiReader.Read(path));
        var actual = Assert.Throws<NiftiFormatException>(() => NiftiReader.ReadCanonical(path, null, n => new float[n], n => new short[n]));
        Assert.Equal(expected.Message, actual.Message);
    }
}
