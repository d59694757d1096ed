using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class SmallRegionsTests(TorchRuntimeFixture fixture)
{
    private const int Size = 12;

    /// <summary>A 12x12 plane of background 0.1 with the given pixels set to <paramref name="value"/>.</summary>
    private static float[] Plane(float value, params (int Y, int X)[] on)
    {
        var plane = Enumerable.Repeat(0.1f, Size * Size).ToArray();
        foreach (var (y, x) in on)
        {
            plane[(y * Size) + x] = value;
        }

        return plane;
    }

    private static (int, int)[] Block(int y0, int y1, int x0, int x1) =>
        [.. from y in Enumerable.Range(y0, y1 - y0 + 1) from x in Enumerable.Range(x0, x1 - x0 + 1) select (y, x)];

    private static int Foreground(ReadOnlySpan<float> plane) => plane.ToArray().Count(v => v > 0.5f);

    [Fact]
    public void Regions_smaller_than_the_minimum_are_zeroed_and_nothing_else_changes()
    {
        // A 3x3 block (9 pixels), a 4x5 block (20) and a diagonal pair: one 8-connected region of 2.
        var plane = Plane(0.9f, [.. Block(0, 2, 0, 2), .. Block(6, 9, 6, 10), (0, 10), (1, 11)]);
        var before = plane.ToArray();

        Assert.Equal(2, new SmallRegions(Size, Size).Suppress(plane, 0.5, 10));

        Assert.Equal(20, Foreground(plane));
        for (var i = 0; i < plane.Length; i++)
        {
            var removed = Block(0, 2, 0, 2).Contains((i / Size, i % Size)) || i == 10 || i == Size + 11;
            Assert.Equal(removed ? 0f : before[i], plane[i]);
        }

        // A region of exactly the minimum stays.
        var nine = Plane(0.9f, Block(0, 2, 0, 2));
        Assert.Equal(0, new SmallRegions(Size, Size).Suppress(nine, 0.5, 9));
        Assert.Equal(9, Foreground(nine));
    }

    [Fact]
    public void Diagonal_neighbours_join_a_region_and_pixels_at_the_threshold_do_not()
    {
        // Ten pixels on a diagonal: one 8-connected region of 10, kept at minimum 10.
        var diagonal = Plane(0.9f, [.. Enumerable.Range(0, 10).Select(i => (i, i))]);
        Assert.Equal(0, new SmallRegions(Size, Size).Suppress(diagonal, 0.5, 10));
        Assert.Equal(10, Foreground(diagonal));

        // Two 5-pixel rows joined by a pixel exactly at the threshold: it is background (foreground is > threshold),
        // so they are two regions of 5, both removed at minimum 6, and the bridge pixel keeps its value.
        var bridged = Plane(0.9f, [.. Block(3, 3, 0, 4), .. Block(3, 3, 6, 10)]);
        bridged[(3 * Size) + 5] = 0.5f;
        Assert.Equal(2, new SmallRegions(Size, Size).Suppress(bridged, 0.5, 6));
        Assert.Equal(0, Foreground(bridged));
        Assert.Equal(0.5f, bridged[(3 * Size) + 5]);

        // Above the threshold it joins them: one region of 11.
        bridged = Plane(0.9f, [.. Block(3, 3, 0, 4), .. Block(3, 3, 6, 10)]);
        bridged[(3 * Size) + 5] = 0.51f;
        Assert.Equal(0, new SmallRegions(Size, Size).Suppress(bridged, 0.5, 6));
        Assert.Equal(11, Foreground(bridged));
    }

    [Fact]
    public void Each_plane_is_its_own_image()
    {
        // Plane 0's last row and plane 1's first row are adjacent in memory, not in space: two regions of 6.
        var planes = new float[2 * Size * Size];
        Plane(0.9f, Block(Size - 1, Size - 1, 0, 5)).CopyTo(planes, 0);
        Plane(0.9f, Block(0, 0, 0, 5)).CopyTo(planes, Size * Size);

        Assert.Equal(2, SmallRegions.SuppressEach(planes, Size, Size, 0.5, 7));
        Assert.DoesNotContain(planes, v => v > 0.5f);
        Assert.Equal(0, SmallRegions.SuppressEach(planes, Size, Size, 0.5, 0));
        Assert.Throws<ArgumentException>(() => SmallRegions.SuppressEach(new float[(Size * Size) + 1], Size, Size, 0.5, 7));
        Assert.Throws<ArgumentOutOfRangeException>(() => SmallRegions.SuppressEach(planes, Size, Size, 0.5, -1));
    }

    [Fact]
    public void The_evaluator_removes_small_regions_before_scoring()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 6, slicesPerPatient: 1, size: 16, channels: 1, seed: 3, tumourFreeShare: 0.5);
        Assert.Contains(data.SlicesByPatient(), s => !data.HasTumour(s[0]));
        using var model = new UNet2d(new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 }, generator: new Generator(1));

        // A last-layer bias of +100 predicts every pixel: one region of 256 per slice.
        using (no_grad())
        {
            model.OrderedParameters()[^1].fill_(100);
        }

        var kept = SegmentationEvaluator.Evaluate(model, data, new EvaluationConfig { MinRegionPixels = 256 }.ToOptions());
        Assert.All(kept.Patients, p => Assert.Equal(p.HasTumour ? 1 : 0, p.Dice[0] > 0 ? 1 : 0));

        // One pixel more and each slice's region goes: tumour-free patients now score 1, the others 0.
        var removed = SegmentationEvaluator.Evaluate(model, data, new EvaluationConfig { MinRegionPixels = 257 }.ToOptions());
        Assert.All(removed.Patients, p => Assert.Equal(p.HasTumour ? 0.0 : 1.0, p.Dice[0]));
        Assert.All(SegmentationEvaluator.Predict(model, data, new EvaluationOptions { MinRegionPixels = 257 }), v => Assert.Equal(0, v));
    }
}
