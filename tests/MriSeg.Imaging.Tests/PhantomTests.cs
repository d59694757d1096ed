using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;

namespace MriSeg.Imaging.Tests;

public sealed class PhantomTests
{
    // A smaller grid than the default keeps the unit tests fast; one test uses the default size.
    private static readonly PhantomOptions Small = new() { Size = new GridSize(64, 64, 32) };

    [Fact]
    public void The_same_seed_gives_identical_cases_and_identical_file_bytes()
    {
        var g = new PhantomGenerator(Small);
        var a = g.Generate(1, 3);
        var b = new PhantomGenerator(Small).Generate(1, 3);
        Assert.Equal(a.Labels, b.Labels);
        foreach (var m in Brats.Modalities)
        {
            Assert.Equal(a.Image(m), b.Image(m));
        }

        using var temp = new TempFolder();
        var first = g.WriteCase(a, Path.Combine(temp.Path, "first"));
        var second = g.WriteCase(b, Path.Combine(temp.Path, "second"));
        var names = Directory.GetFiles(first.Folder).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(
            ["Phantom_S01_003_flair.nii.gz", "Phantom_S01_003_seg.nii.gz", "Phantom_S01_003_t1.nii.gz", "Phantom_S01_003_t1ce.nii.gz", "Phantom_S01_003_t2.nii.gz"],
            names);
        foreach (var name in names)
        {
            Assert.Equal(File.ReadAllBytes(Path.Combine(first.Folder, name!)), File.ReadAllBytes(Path.Combine(second.Folder, name!)));
        }
    }

    [Fact]
    public void Results_do_not_depend_on_thread_scheduling()
    {
        using var temp = new TempFolder();
        var serial = new PhantomGenerator(Small with { MaxDegreeOfParallelism = 1 }).WriteSite(Path.Combine(temp.Path, "serial"), 2, 4, cancellationToken: TestContext.Current.CancellationToken);
        var parallel = new PhantomGenerator(Small with { MaxDegreeOfParallelism = 4 }).WriteSite(Path.Combine(temp.Path, "parallel"), 2, 4, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(serial.Select(c => c.CaseId), parallel.Select(c => c.CaseId));
        for (var i = 0; i < serial.Count; i++)
        {
            foreach (var file in Directory.GetFiles(serial[i].Folder))
            {
                Assert.Equal(File.ReadAllBytes(file), File.ReadAllBytes(Path.Combine(parallel[i].Folder, Path.GetFileName(file))));
            }
        }
    }

    [Fact]
    public void Different_seeds_and_patients_give_different_cases()
    {
        var a = new PhantomGenerator(Small).Generate(0, 0);
        Assert.NotEqual(a.Labels, new PhantomGenerator(Small).Generate(0, 1).Labels);
        Assert.NotEqual(a.Labels, new PhantomGenerator(Small with { Seed = 99 }).Generate(0, 0).Labels);
    }

    [Fact]
    public void Different_sites_have_different_intensities()
    {
        var g = new PhantomGenerator(Small);
        var means = Enumerable.Range(0, 3).Select(site =>
        {
            var c = g.Generate(site, 5);
            return Brats.Modalities.Select(m => BrainMean(c, m)).ToArray();
        }).ToArray();

        // Every pair of sites differs by more than 20% in mean brain intensity, in every modality.
        for (var a = 0; a < 3; a++)
        {
            for (var b = a + 1; b < 3; b++)
            {
                for (var m = 0; m < 4; m++)
                {
                    var ratio = Math.Max(means[a][m], means[b][m]) / Math.Min(means[a][m], means[b][m]);
                    Assert.True(ratio > 1.2, $"sites {a} and {b}, {(Modality)m}: {means[a][m]:F0} vs {means[b][m]:F0}");
                }
            }
        }

        // And their scanner profiles differ beyond scale: noise, blur, contrast.
        var profiles = Enumerable.Range(0, 3).Select(g.Site).ToArray();
        Assert.Equal(3, profiles.Select(p => Math.Round(p.NoiseSigma, 4)).Distinct().Count());
        Assert.Equal(3, profiles.Select(p => Math.Round(p.BlurSigmaVoxels, 4)).Distinct().Count());
        Assert.Equal(3, profiles.Select(p => Math.Round(p.Gamma[0], 4)).Distinct().Count());
    }

    [Fact]
    public void Labels_are_brats_labels_and_most_cases_have_all_three_classes()
    {
        var g = new PhantomGenerator(Small);
        var cases = Enumerable.Range(0, 12).Select(p => g.Generate(p % 3, p)).ToArray();
        var withAllThree = 0;
        foreach (var c in cases)
        {
            var bad = Array.FindIndex(c.Labels, l => !Brats.IsValidLabel(l));
            Assert.True(bad < 0, $"{c.CaseId}: label {(bad < 0 ? 0 : c.Labels[bad])} at voxel {bad}");
            Assert.True(c.Count(Brats.Oedema) > 0 && c.Count(Brats.Enhancing) > 0, c.CaseId);
            if (c.Count(Brats.NecroticCore) > 0 && c.Count(Brats.Oedema) > 0 && c.Count(Brats.Enhancing) > 0)
            {
                withAllThree++;
            }
        }

        Assert.True(withAllThree >= 9, $"{withAllThree} of 12 cases have labels 1, 2 and 4");

        // Sizes vary.
        var wholeTumour = cases.Select(c => c.Labels.Count(l => l > 0)).ToArray();
        Assert.True(wholeTumour.Max() > 2 * wholeTumour.Min(), string.Join(", ", wholeTumour));
    }

    [Fact]
    public void Brains_are_skull_stripped_on_a_zero_background_and_tumours_lie_inside()
    {
        var c = new PhantomGenerator(Small).Generate(0, 2);
        var flair = c.Image(Modality.Flair);
        var brain = flair.Count(v => v > 0);
        Assert.InRange(brain / (double)flair.Length, 0.08, 0.35); // a brain fills about 15% of a BraTS field of view
        foreach (var m in Brats.Modalities)
        {
            var image = c.Image(m);
            Assert.True(image.Min() >= 0, $"{m}: negative intensity");

            // Every modality shares one brain mask; the grid's corners are background.
            for (var i = 0; i < image.Length; i++)
            {
                if ((image[i] > 0) != (flair[i] > 0))
                {
                    Assert.Fail($"{m}: voxel {i} differs from FLAIR's brain mask");
                }
            }

            Assert.Equal(0, image[0]);
            Assert.Equal(0, image[^1]);
        }

        for (var i = 0; i < c.Labels.Length; i++)
        {
            if (c.Labels[i] > 0 && flair[i] == 0)
            {
                Assert.Fail($"tumour voxel {i} outside the brain");
            }
        }
    }

    [Fact]
    public void Contrasts_are_brats_like_and_the_tumour_is_learnable_but_not_by_a_threshold()
    {
        var g = new PhantomGenerator(Small);
        var thresholdDice = new List<double>();
        foreach (var (site, patient) in new[] { (0, 1), (1, 4), (2, 7), (0, 10) })
        {
            var c = g.Generate(site, patient);
            var name = c.CaseId;

            // Oedema bright in FLAIR and T2; enhancing rim bright in T1ce; necrotic core dark in T1ce.
            AssertRatio(c, Modality.Flair, Brats.Oedema, 0, 1.15, double.MaxValue);
            AssertRatio(c, Modality.T2, Brats.Oedema, 0, 1.15, double.MaxValue);
            AssertRatio(c, Modality.T1ce, Brats.Enhancing, 0, 1.3, double.MaxValue);
            AssertRatio(c, Modality.T1, Brats.Enhancing, 0, 0, 1.0);
            if (c.Count(Brats.NecroticCore) > 0)
            {
                // (0.9, not lower: at this test's coarse 3.75 mm voxels partial volume mixes core and rim.)
                AssertRatio(c, Modality.T1ce, Brats.NecroticCore, Brats.Enhancing, 0, 0.9);
            }

            thresholdDice.Add(BestFlairThresholdDice(c));
        }

        // The best global FLAIR threshold, chosen with the truth in hand, finds much of the tumour but not all
        // of it: the bias field, noise, fading oedema and FLAIR-bright non-tumour lesions make the intensity
        // distributions overlap (about 0.65 to 0.92 here; a real BraTS 2021 case gives 0.95).
        Assert.All(thresholdDice, d => Assert.InRange(d, 0.4, 0.95));
        Assert.True(thresholdDice.Average() < 0.9, string.Join(", ", thresholdDice.Select(d => d.ToString("F2", System.Globalization.CultureInfo.InvariantCulture))));
    }

    [Fact]
    public void Written_cases_read_back_as_brats_layout_volumes_in_the_canonical_grid()
    {
        // The default size (128 x 128 x 64), stored LPS like BraTS, read back through the NIfTI reader.
        var g = new PhantomGenerator();
        var c = g.Generate(2, 1);
        using var temp = new TempFolder();
        var info = g.WriteCase(c, temp.Path);
        Assert.Equal(c.Count(Brats.Oedema), info.OedemaVoxels);

        var read = BratsVolumeCase.Load(info.Folder);
        Assert.Equal("Phantom_S02_001", read.CaseId);
        Assert.Equal(new GridSize(128, 128, 64), read.Size);
        foreach (var m in Brats.Modalities)
        {
            var v = read.Image(m);
            Assert.Equal(NiftiDatatype.Int16, v.SourceDatatype);
            Assert.Equal("LPS", v.StorageOrientation.StorageCodes);
            Voxels.Same(Array.ConvertAll(c.Image(m), s => (float)s), v.Data);
        }

        Assert.Equal(NiftiDatatype.UInt8, read.Seg!.SourceDatatype);
        Voxels.Same(Array.ConvertAll(c.Labels, l => (float)l), read.Seg.Data);
        Assert.True(read.Seg.Affine.ApproximatelyEquals(g.CanonicalAffine, 1e-4), read.Seg.Affine.ToString());
        Assert.Equal(new Spacing(240.0 / 128, 240.0 / 128, 155.0 / 64).X, read.Seg.Spacing.X, 5);
    }

    private static void AssertRatio(PhantomCase c, Modality m, byte label, byte reference, double min, double max)
    {
        var ratio = Mean(c, m, label) / Mean(c, m, reference);
        Assert.True(ratio > min && ratio < max, $"{c.CaseId} {m}: label {label} / label {reference} = {ratio:F2}, expected in ({min}, {max})");
    }

    private static double BrainMean(PhantomCase c, Modality m)
    {
        var image = c.Image(m);
        return image.Where(v => v > 0).Average(v => (double)v);
    }

    private static double Mean(PhantomCase c, Modality m, byte label)
    {
        var image = c.Image(m);
        double sum = 0;
        long n = 0;
        for (var i = 0; i < image.Length; i++)
        {
            if (image[i] > 0 && c.Labels[i] == label)
            {
                sum += image[i];
                n++;
            }
        }

        return sum / n;
    }

    private static double BestFlairThresholdDice(PhantomCase c)
    {
        // Sweep every threshold at once through per-intensity counts of tumour and non-tumour voxels.
        var flair = c.Image(Modality.Flair);
        var max = flair.Max();
        var tumour = new long[max + 2];
        var other = new long[max + 2];
        for (var i = 0; i < flair.Length; i++)
        {
            (c.Labels[i] > 0 ? tumour : other)[flair[i]]++;
        }

        long tp = tumour.Sum(), fp = other.Sum(), total = tp;
        var best = 0.0;
        for (var t = 0; t <= max; t++)
        {
            // Predicted tumour: intensity >= t.
            best = Math.Max(best, 2.0 * tp / ((2 * tp) + fp + (total - tp)));
            tp -= tumour[t];
            fp -= other[t];
        }

        return best;
    }
}
