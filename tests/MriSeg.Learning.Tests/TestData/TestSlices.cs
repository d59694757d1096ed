using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Slices;

namespace MriSeg.Learning.Tests.TestData;

/// <summary>
/// TEST UTILITY, a stand-in for the pre-processor (libs/MriSeg.Imaging pre-processing replaces it): slice datasets
/// built in memory from generated phantoms or from the BraTS 2-D PNG slices, with a deliberately simple
/// normalisation. Not for production data: no de-identification, no robust statistics.
/// </summary>
internal static class TestSlices
{
    /// <summary>
    /// Phantom patients of <paramref name="sites"/> sites generated directly at <paramref name="size"/>² in plane and
    /// <paramref name="depth"/> axial slices; per volume and modality a z-score over the non-zero (brain) voxels; axial
    /// slices with brain, all those with tumour plus every <paramref name="tumourFreeEvery"/>-th tumour-free one
    /// (0: none); whole-tumour masks. Patient ids are the phantom case names.
    /// </summary>
    public static SliceDataset Phantoms(int sites, int patientsPerSite, int size = 64, int depth = 32, ulong seed = 2021, int tumourFreeEvery = 4,
        int firstPatient = 0)
    {
        var generator = new PhantomGenerator(new PhantomOptions { Size = new GridSize(size, size, depth), Seed = seed });
        var jobs = (from s in Enumerable.Range(0, sites) from p in Enumerable.Range(firstPatient, patientsPerSite) select (s, p)).ToArray();
        var parts = new (float[] Images, byte[] Masks, int Slices, string Id)[jobs.Length];
        Parallel.For(0, jobs.Length, i =>
        {
            var phantom = generator.Generate(jobs[i].s, jobs[i].p);
            parts[i] = SliceVolume(phantom, tumourFreeEvery);
        });

        var data = Join(parts, size, size, Brats.Modalities.Select(Brats.Suffix).ToArray(),
            new DatasetProvenance("phantoms", "zscore-brain-volume", tumourFreeEvery > 0 ? $"tumour+every-{tumourFreeEvery}" : "tumour"));

        // Generating 900 phantoms leaves about 1.4 GB of garbage that the GC keeps committed; give it back before training.
        parts = [];
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        return data;
    }

    /// <summary>
    /// The BraTS 2020 PNG slice cases under <paramref name="root"/> (one slice per patient), resized to
    /// <paramref name="size"/>² (bilinear images, nearest masks), each modality z-scored over its own non-zero pixels,
    /// whole-tumour masks (seg &gt; 0). Patient ids get <paramref name="idPrefix"/> so two providers never collide.
    /// </summary>
    public static SliceDataset BratsPng(string root, int size, string idPrefix)
    {
        var cases = BratsSliceCase.FindCases(root);
        var parts = new (float[] Images, byte[] Masks, int Slices, string Id)[cases.Count];
        Parallel.For(0, cases.Count, i =>
        {
            var c = BratsSliceCase.Load(cases[i]);
            var images = new float[4 * size * size];
            for (var m = 0; m < 4; m++)
            {
                var slice = c.Image(Brats.Modalities[m]);
                var resized = ResizeBilinear(Array.ConvertAll(slice.Pixels, v => (float)v), slice.Height, slice.Width, size, size);
                ZScoreNonZero(resized);
                resized.CopyTo(images, m * size * size);
            }

            var mask = ResizeNearest(c.WholeTumourMask(), c.Seg.Height, c.Seg.Width, size, size);
            parts[i] = (images, mask, 1, idPrefix + c.CaseId);
        });

        return Join(parts, size, size, Brats.Modalities.Select(Brats.Suffix).ToArray(),
            new DatasetProvenance("brats-png-slices", "zscore-brain-slice", "given"));
    }

    /// <summary>
    /// A fast synthetic task: <paramref name="channels"/>-channel <paramref name="size"/>² slices with a noisy "brain" disk
    /// (non-zero inside, 0 outside) and, in most slices, a brighter disk of random radius and position, the mask. About
    /// <paramref name="tumourFreeShare"/> of the patients have no tumour at all. Deterministic by <paramref name="seed"/>.
    /// </summary>
    public static SliceDataset Disks(int patients, int slicesPerPatient, int size = 16, int channels = 1, int seed = 7, double tumourFreeShare = 0.2,
        string idPrefix = "P")
    {
        var random = new Random(seed);
        var plane = size * size;
        var parts = new (float[] Images, byte[] Masks, int Slices, string Id)[patients];
        for (var p = 0; p < patients; p++)
        {
            var healthy = random.NextDouble() < tumourFreeShare;
            var images = new float[slicesPerPatient * channels * plane];
            var masks = new byte[slicesPerPatient * plane];
            var (cy, cx) = (size * (0.35 + (0.3 * random.NextDouble())), size * (0.35 + (0.3 * random.NextDouble())));
            for (var s = 0; s < slicesPerPatient; s++)
            {
                var radius = size * (0.12 + (0.12 * random.NextDouble()));
                for (var y = 0; y < size; y++)
                {
                    for (var x = 0; x < size; x++)
                    {
                        var brain = Math.Pow(y + 0.5 - (size / 2.0), 2) + Math.Pow(x + 0.5 - (size / 2.0), 2) < Math.Pow(size * 0.46, 2);
                        var tumour = !healthy && brain && Math.Pow(y + 0.5 - cy, 2) + Math.Pow(x + 0.5 - cx, 2) < radius * radius;
                        masks[(s * plane) + (y * size) + x] = tumour ? (byte)1 : (byte)0;
                        for (var c = 0; c < channels; c++)
                        {
                            var v = brain ? (float)((0.4 * Gaussian(random)) + (tumour ? 1.5 + (0.5 * c) : -0.3)) : 0f;
                            images[(((s * channels) + c) * plane) + (y * size) + x] = brain && v == 0 ? 1e-6f : v;
                        }
                    }
                }
            }

            parts[p] = (images, masks, slicesPerPatient, $"{idPrefix}{p:0000}");
        }

        string[] names = ["flair", "t1", "t1ce", "t2"];
        return Join(parts, size, size, names[..channels], new DatasetProvenance("synthetic-disks", "none", "all"));
    }

    private static double Gaussian(Random random) =>
        Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());

    private static (float[] Images, byte[] Masks, int Slices, string Id) SliceVolume(PhantomCase phantom, int tumourFreeEvery)
    {
        var (nx, ny, nz) = (phantom.Size.X, phantom.Size.Y, phantom.Size.Z);
        var plane = nx * ny;
        var volumes = Brats.Modalities.Select(m => Array.ConvertAll(phantom.Image(m), v => (float)v)).ToArray();
        foreach (var v in volumes)
        {
            ZScoreNonZero(v);
        }

        var chosen = new List<int>();
        var tumourFree = 0;
        for (var z = 0; z < nz; z++)
        {
            var brain = volumes[0].AsSpan(z * plane, plane).ContainsAnyExcept(0f);
            if (!brain)
            {
                continue;
            }

            if (phantom.Labels.AsSpan(z * plane, plane).ContainsAnyExcept((byte)0))
            {
                chosen.Add(z);
            }
            else if (tumourFreeEvery > 0 && tumourFree++ % tumourFreeEvery == 0)
            {
                chosen.Add(z);
            }
        }

        var images = new float[chosen.Count * 4 * plane];
        var masks = new byte[chosen.Count * plane];
        for (var s = 0; s < chosen.Count; s++)
        {
            var z = chosen[s];
            for (var m = 0; m < 4; m++)
            {
                volumes[m].AsSpan(z * plane, plane).CopyTo(images.AsSpan(((s * 4) + m) * plane));
            }

            var labels = phantom.Labels.AsSpan(z * plane, plane);
            for (var i = 0; i < plane; i++)
            {
                masks[(s * plane) + i] = labels[i] != 0 ? (byte)1 : (byte)0;
            }
        }

        return (images, masks, chosen.Count, phantom.CaseId);
    }

    private static SliceDataset Join((float[] Images, byte[] Masks, int Slices, string Id)[] parts, int height, int width, string[] modalities, DatasetProvenance provenance)
    {
        var images = new float[parts.Sum(p => p.Images.LongLength)];
        var masks = new byte[parts.Sum(p => p.Masks.LongLength)];
        var index = new int[parts.Sum(p => p.Slices)];
        long io = 0, mo = 0;
        var n = 0;
        for (var p = 0; p < parts.Length; p++)
        {
            parts[p].Images.CopyTo(images, io);
            parts[p].Masks.CopyTo(masks, mo);
            io += parts[p].Images.LongLength;
            mo += parts[p].Masks.LongLength;
            index.AsSpan(n, parts[p].Slices).Fill(p);
            n += parts[p].Slices;
        }

        return new SliceDataset(images, masks, index, height, width, modalities, LabelScheme.WholeTumour, [.. parts.Select(p => p.Id)], provenance);
    }

    /// <summary>In place: (v − mean)/std over the non-zero values; zeros stay zero.</summary>
    private static void ZScoreNonZero(float[] values)
    {
        double sum = 0, squares = 0;
        long count = 0;
        foreach (var v in values)
        {
            if (v != 0)
            {
                sum += v;
                squares += (double)v * v;
                count++;
            }
        }

        if (count < 2)
        {
            return;
        }

        var mean = sum / count;
        var std = Math.Sqrt(Math.Max(1e-12, (squares / count) - (mean * mean)));
        for (var i = 0; i < values.Length; i++)
        {
            if (values[i] != 0)
            {
                var z = (float)((values[i] - mean) / std);
                values[i] = z == 0 ? 1e-6f : z;
            }
        }
    }

    private static float[] ResizeBilinear(float[] source, int sh, int sw, int th, int tw)
    {
        var target = new float[th * tw];
        for (var y = 0; y < th; y++)
        {
            var fy = Math.Clamp(((y + 0.5) * sh / th) - 0.5, 0, sh - 1);
            var y0 = (int)fy;
            var y1 = Math.Min(y0 + 1, sh - 1);
            var wy = fy - y0;
            for (var x = 0; x < tw; x++)
            {
                var fx = Math.Clamp(((x + 0.5) * sw / tw) - 0.5, 0, sw - 1);
                var x0 = (int)fx;
                var x1 = Math.Min(x0 + 1, sw - 1);
                var wx = fx - x0;
                var top = (source[(y0 * sw) + x0] * (1 - wx)) + (source[(y0 * sw) + x1] * wx);
                var bottom = (source[(y1 * sw) + x0] * (1 - wx)) + (source[(y1 * sw) + x1] * wx);
                target[(y * tw) + x] = (float)((top * (1 - wy)) + (bottom * wy));
            }
        }

        return target;
    }

    private static byte[] ResizeNearest(byte[] source, int sh, int sw, int th, int tw)
    {
        var target = new byte[th * tw];
        for (var y = 0; y < th; y++)
        {
            var sy = Math.Min(sh - 1, (int)((y + 0.5) * sh / th));
            for (var x = 0; x < tw; x++)
            {
                var sx = Math.Min(sw - 1, (int)((x + 0.5) * sw / tw));
                target[(y * tw) + x] = source[(sy * sw) + sx];
            }
        }

        return target;
    }
}
