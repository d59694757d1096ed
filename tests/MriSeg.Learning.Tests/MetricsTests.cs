using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class MetricsTests(TorchRuntimeFixture fixture)
{
    private static byte[] Mask(int height, int width, params (int Y, int X)[] on)
    {
        var mask = new byte[height * width];
        foreach (var (y, x) in on)
        {
            mask[(y * width) + x] = 1;
        }

        return mask;
    }

    private static (int, int)[] Block(int y0, int y1, int x0, int x1) =>
        [.. from y in Enumerable.Range(y0, y1 - y0 + 1) from x in Enumerable.Range(x0, x1 - x0 + 1) select (y, x)];

    [Fact]
    public void Dice_and_iou_by_hand()
    {
        byte[] prediction = [1, 1, 0, 0, 1];
        byte[] truth = [1, 0, 1, 0, 1];

        // |P| = 3, |T| = 3, |P∩T| = 2, |P∪T| = 4.
        Assert.Equal(2.0 * 2 / 6, SegmentationMetrics.Dice(prediction, truth), 15);
        Assert.Equal(2.0 / 4, SegmentationMetrics.IoU(prediction, truth), 15);
        Assert.Equal(1.0, SegmentationMetrics.Dice(truth, truth));
        Assert.Equal(0.0, SegmentationMetrics.Dice([0, 0, 1], [1, 0, 0]));

        // Any non-zero byte is foreground.
        Assert.Equal(1.0, SegmentationMetrics.Dice([255, 0], [1, 0]));
        Assert.Throws<ArgumentException>(() => SegmentationMetrics.Dice([1], [1, 0]));
    }

    [Fact]
    public void Empty_masks_follow_the_brats_convention()
    {
        byte[] empty = [0, 0, 0, 0];
        byte[] some = [0, 1, 0, 0];
        Assert.Equal(1.0, SegmentationMetrics.Dice(empty, empty));
        Assert.Equal(1.0, SegmentationMetrics.IoU(empty, empty));
        Assert.Equal(0.0, SegmentationMetrics.Dice(some, empty)); // a false positive on a tumour-free patient
        Assert.Equal(0.0, SegmentationMetrics.Dice(empty, some)); // a missed tumour
        Assert.Equal(0.0, SegmentationMetrics.IoU(some, empty));

        // HD95: 0 when both are empty; the grid diagonal when one is.
        Assert.Equal(0.0, SegmentationMetrics.Hd95(empty, empty, 1, 2, 2));
        Assert.Equal(Math.Sqrt(8), SegmentationMetrics.Hd95(some, empty, 1, 2, 2), 12);
        Assert.Equal(Math.Sqrt(8), SegmentationMetrics.Hd95(empty, some, 1, 2, 2), 12);
        Assert.Equal(Math.Sqrt(16 + 16 + 1), SegmentationMetrics.EmptyMaskHd95(2, 4, 4), 12);
    }

    [Fact]
    public void Hd95_of_two_points_is_their_distance()
    {
        var truth = Mask(5, 5, (2, 2));
        var prediction = Mask(5, 5, (2, 4));
        Assert.Equal(2.0, SegmentationMetrics.Hd95(prediction, truth, 1, 5, 5), 12);
        var diagonal = Mask(5, 5, (0, 0));
        Assert.Equal(Math.Sqrt(8), SegmentationMetrics.Hd95(diagonal, truth, 1, 5, 5), 12);
    }

    [Fact]
    public void Hd95_uses_surfaces_and_interpolated_percentiles()
    {
        // Truth: a 3x3 block; its surface is the 8-pixel ring (the centre is interior).
        // Prediction: the block shifted right by one, plus an isolated pixel far away at (6, 6).
        var truth = Mask(7, 7, Block(1, 3, 1, 3));
        var prediction = Mask(7, 7, [.. Block(1, 3, 2, 4), (6, 6)]);

        // prediction → truth surface: four ring pixels on it (0), four one away (1), (6,6) at √18 from (3,3):
        // sorted [0,0,0,0,1,1,1,1,√18], rank 8·0.95 = 7.6 → 1 + 0.6·(√18 − 1). truth → prediction: at most 1.
        var expected = 1 + (0.6 * (Math.Sqrt(18) - 1));
        Assert.Equal(expected, SegmentationMetrics.Hd95(prediction, truth, 1, 7, 7), 12);
        Assert.Equal(expected, SegmentationMetrics.Hd95(truth, prediction, 1, 7, 7), 12);

        // Identical masks: 0; a one-pixel shift of the block alone: 1.
        Assert.Equal(0.0, SegmentationMetrics.Hd95(truth, truth, 1, 7, 7));
        Assert.Equal(1.0, SegmentationMetrics.Hd95(Mask(7, 7, Block(1, 3, 2, 4)), truth, 1, 7, 7), 12);
    }

    [Fact]
    public void Hd95_stacks_slices_one_pixel_apart()
    {
        // Three 4x4 slices: truth on slice 0, prediction at the same pixel on slice 2.
        var truth = new byte[3 * 16];
        var prediction = new byte[3 * 16];
        truth[(0 * 16) + 5] = 1;
        prediction[(2 * 16) + 5] = 1;
        Assert.Equal(2.0, SegmentationMetrics.Hd95(prediction, truth, 3, 4, 4), 12);
    }

    [Fact]
    public void Distance_transform_agrees_with_brute_force_on_random_masks()
    {
        var random = new Random(17);
        for (var trial = 0; trial < 25; trial++)
        {
            var (d, h, w) = (1 + random.Next(4), 3 + random.Next(12), 3 + random.Next(12));
            var n = d * h * w;
            var a = new byte[n];
            var b = new byte[n];
            for (var i = 0; i < n; i++)
            {
                a[i] = random.NextDouble() < 0.3 ? (byte)1 : (byte)0;
                b[i] = random.NextDouble() < 0.2 ? (byte)1 : (byte)0;
            }

            a[random.Next(n)] = 1;
            b[random.Next(n)] = 1;
            Assert.Equal(BruteForceHd95(a, b, d, h, w), SegmentationMetrics.Hd95(a, b, d, h, w), 10);
        }
    }

    /// <summary>The definition, with O(|A|·|B|) nearest-point search.</summary>
    private static double BruteForceHd95(byte[] a, byte[] b, int d, int h, int w)
    {
        var grid = new Grid(d, h, w);
        var sa = SegmentationMetrics.Surface(a, grid);
        var sb = SegmentationMetrics.Surface(b, grid);
        List<(int Z, int Y, int X)> Points(bool[] s) =>
            [.. from z in Enumerable.Range(0, d) from y in Enumerable.Range(0, h) from x in Enumerable.Range(0, w) where s[grid.Index(z, y, x)] select (z, y, x)];
        double[] Directed(List<(int Z, int Y, int X)> from, List<(int Z, int Y, int X)> to) =>
            [.. from.Select(p => to.Min(q => Math.Sqrt(Math.Pow(p.Z - q.Z, 2) + Math.Pow(p.Y - q.Y, 2) + Math.Pow(p.X - q.X, 2))))];
        var (pa, pb) = (Points(sa), Points(sb));
        return Math.Max(SegmentationMetrics.Percentile(Directed(pa, pb), 0.95), SegmentationMetrics.Percentile(Directed(pb, pa), 0.95));
    }

    [Fact]
    public void Surfaces_are_face_connected_borders_with_the_grid_edge_as_background()
    {
        var grid = new Grid(1, 5, 5);
        var block = Mask(5, 5, Block(0, 2, 0, 2));
        var surface = SegmentationMetrics.Surface(block, grid);

        // Only (1,1) is interior: (0,*) and (*,0) touch the grid edge.
        Assert.Equal(8, surface.Count(s => s));
        Assert.False(surface[(1 * 5) + 1]);
    }

    [Fact]
    public void Scores_are_per_patient_over_all_its_slices_and_means_weigh_patients_equally()
    {
        // Three patients of 2x2 slices: A has two slices with tumour, B none and nothing predicted, C none but a false positive.
        var masks = new byte[]
        {
            1, 1, 0, 0, // A slice 0
            0, 0, 1, 0, // A slice 1
            0, 0, 0, 0, // B
            0, 0, 0, 0, // C
        };
        var predicted = new byte[]
        {
            1, 0, 0, 0, // A: 1 of 2 on slice 0
            0, 0, 1, 1, // A: the tumour pixel and one more on slice 1
            0, 0, 0, 0,
            0, 1, 0, 0,
        };
        var data = new SliceDataset(new float[4 * 4], masks, [0, 0, 1, 2], 2, 2, ["flair"], LabelScheme.WholeTumour, ["A", "B", "C"]);
        var result = SegmentationEvaluator.Score(predicted, data);
        var byId = result.Patients.ToDictionary(p => p.PatientId);

        // A over both slices: |P| = 3, |T| = 3, |P∩T| = 2 → Dice 2/3, IoU 2/4.
        Assert.Equal(2.0 / 3, byId["A"].Dice[0], 12);
        Assert.Equal(0.5, byId["A"].IoU[0], 12);
        Assert.Equal(2, byId["A"].Slices);
        Assert.True(byId["A"].HasTumour);
        Assert.Equal((3, 3), (byId["A"].TumourPixels, byId["A"].PredictedPixels));
        Assert.Equal((0, 1), (byId["C"].TumourPixels, byId["C"].PredictedPixels));
        Assert.Equal(1.0, byId["B"].Dice[0]);
        Assert.Equal(0.0, byId["B"].Hd95[0]);
        Assert.Equal(0.0, byId["C"].Dice[0]);
        Assert.Equal(Math.Sqrt(8), byId["C"].Hd95[0], 12);
        Assert.False(byId["C"].HasTumour);

        Assert.Equal(3, result.Summary.Patients);
        Assert.Equal(4, result.Summary.Slices);
        Assert.Equal(((2.0 / 3) + 1 + 0) / 3, result.Summary.Dice, 12);
        Assert.Equal((0.5 + 1 + 0) / 3, result.Summary.IoU, 12);
        Assert.Equal((byId["A"].Hd95[0] + 0 + Math.Sqrt(8)) / 3, result.Summary.Hd95, 12);
        Assert.Equal(["WT"], result.Summary.Channels);
    }

    [Fact]
    public void Evaluator_predicts_every_slice_with_the_model()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 5, slicesPerPatient: 3, size: 16, channels: 1, seed: 3);
        using var model = new UNet2d(new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 }, generator: new Generator(1));

        // A last-layer bias of +100 makes every pixel tumour; −100 none.
        var bias = model.OrderedParameters()[^1];
        using (no_grad())
        {
            bias.fill_(100);
        }

        var all = SegmentationEvaluator.Predict(model, data, new EvaluationOptions { BatchSize = 4 });
        Assert.All(all, v => Assert.Equal(1, v));
        using (no_grad())
        {
            bias.fill_(-100);
        }

        var result = SegmentationEvaluator.Evaluate(model, data, new EvaluationOptions { BatchSize = 4, MirrorAveraging = true });
        Assert.Equal(5, result.Summary.Patients);
        foreach (var p in result.Patients)
        {
            Assert.Equal(p.HasTumour ? 0.0 : 1.0, p.Dice[0]);
        }

        using var wrong = new UNet2d(new UNetConfig { InChannels = 2, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 });
        Assert.Contains("channels", Assert.Throws<ArgumentException>(() => SegmentationEvaluator.Predict(wrong, data)).Message, StringComparison.Ordinal);
    }
}
