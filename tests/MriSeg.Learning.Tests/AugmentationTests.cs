using MriSeg.Learning.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class AugmentationTests(TorchRuntimeFixture fixture)
{
    /// <summary>A batch of asymmetric images (brain = non-zero square) and masks.</summary>
    private static (Tensor Images, Tensor Masks) Batch(int n, int channels = 2, int size = 16)
    {
        using var generator = new Generator(3);
        var images = randn([n, channels, size, size], generator: generator);
        var brain = zeros([n, 1, size, size]);
        brain[.., .., 2..14, 1..13] = 1;
        var masks = (rand([n, 1, size, size], generator: generator) > 0.7).to(ScalarType.Float32) * brain;
        return ((images * brain).DetachFromDisposeScope(), masks.DetachFromDisposeScope());
    }

    [Fact]
    public void Disabled_augmentation_returns_the_batch_unchanged()
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        var (x, y) = Batch(4);
        var (ax, ay) = new SliceAugmenter(AugmentationConfig.None, 1).Apply(x, y);
        Assert.True(ax.equal(x).all().item<bool>());
        Assert.True(ay.equal(y).all().item<bool>());
    }

    [Fact]
    public void Flips_mirror_image_and_mask_together_exactly()
    {
        using var scope = NewDisposeScope();
        var (x, y) = Batch(64);
        var config = AugmentationConfig.None with { HorizontalFlip = true };
        var (ax, ay) = new SliceAugmenter(config, 5).Apply(x, y);
        int mirrored = 0, kept = 0;
        for (var i = 0; i < 64; i++)
        {
            var sameImage = ax[i].allclose(x[i], 1e-5, 1e-5);
            var flippedImage = ax[i].allclose(x[i].flip(2), 1e-5, 1e-5);
            Assert.True(sameImage ^ flippedImage, $"slice {i} is neither the input nor its mirror");
            Assert.True(ay[i].equal(flippedImage ? y[i].flip(2) : y[i]).all().item<bool>(), $"slice {i}: the mask did not follow the image");
            (mirrored, kept) = flippedImage ? (mirrored + 1, kept) : (mirrored, kept + 1);
        }

        Assert.InRange(mirrored, 16, 48);
        Assert.InRange(kept, 16, 48);
    }

    [Fact]
    public void Rotation_and_scaling_keep_masks_binary_and_the_background_zero()
    {
        using var scope = NewDisposeScope();
        var (x, y) = Batch(16);
        var config = new AugmentationConfig { RotationDegrees = 30, Scale = 0.2, IntensityScale = 0.2, IntensityShift = 0.5 };
        var (ax, ay) = new SliceAugmenter(config, 9).Apply(x, y);
        Assert.Equal(x.shape, ax.shape);
        Assert.True((ay.eq(0) | ay.eq(1)).all().item<bool>(), "nearest resampling must keep masks 0/1");
        Assert.False(ax.allclose(x), "nothing changed");

        // Pixels where every channel is 0 (outside the brain or the field of view) stay 0 despite the intensity offset.
        var background = ax.eq(0).all(1, keepdim: true);
        Assert.True(background.sum().item<long>() > 16 * 16 * 2, "no background left to check");
        Assert.True(ax.masked_select(background.expand_as(ax)).eq(0).all().item<bool>());

        // Each copy draws its own transform: two identical slices come out different.
        var twins = x[0..1].expand(2, -1, -1, -1).contiguous();
        var (tx, _) = new SliceAugmenter(config, 2).Apply(twins, y[0..1].expand(2, -1, -1, -1).contiguous());
        Assert.False(tx[0].allclose(tx[1]));
    }

    [Fact]
    public void Elastic_deformation_is_a_smooth_displacement_bounded_by_its_magnitude()
    {
        using var scope = NewDisposeScope();
        const int size = 48, n = 8;
        const double magnitude = 3;

        // Channels hold each pixel's own x and y (+1, so nothing is 0): bilinear sampling of a ramp returns the sampled
        // position exactly, so output minus own position is the displacement the augmenter applied there.
        var coordinates = arange(1, size + 1, dtype: ScalarType.Float32);
        var xs = coordinates.view(1, 1, 1, size).expand(n, 1, size, size);
        var ys = coordinates.view(1, 1, size, 1).expand(n, 1, size, size);
        var images = cat([xs, ys], 1).contiguous();
        var masks = (images[.., 0..1] > size / 2).to(ScalarType.Float32);
        var config = AugmentationConfig.None with { ElasticPixels = magnitude, ElasticControlPoints = 4 };
        var (ax, ay) = new SliceAugmenter(config, 7).Apply(images, masks);

        var inner = 5..(size - 5); // away from the edges, where sampling may leave the field of view
        var displacement = (ax - images)[.., .., inner, inner];
        var largest = displacement.abs().max().item<float>();
        Assert.InRange(largest, 0.3 * magnitude, 1.3 * magnitude); // it moves pixels, by about the configured amount at most (bicubic may overshoot a little)
        Assert.True(displacement.abs().mean().item<float>() > 0.1 * magnitude, "hardly anything moved");

        // Smooth: neighbouring pixels move almost alike (the field varies over control points 16 pixels apart).
        var stepX = (displacement[.., .., .., 1..] - displacement[.., .., .., ..^1]).abs().max().item<float>();
        var stepY = (displacement[.., .., 1.., ..] - displacement[.., .., ..^1, ..]).abs().max().item<float>();
        Assert.True(Math.Max(stepX, stepY) < 0.5 * magnitude, $"neighbours differ by up to {Math.Max(stepX, stepY)} px");

        // The mask moves with the image and stays binary; every slice draws its own field; a seed repeats its draws.
        Assert.True((ay.eq(0) | ay.eq(1)).all().item<bool>());
        var maskFollows = ay[.., 0, inner, inner].eq((ax[.., 0, inner, inner] > (size / 2) + 0.5).to(ScalarType.Float32)).to(ScalarType.Float32).mean().item<float>();
        Assert.True(maskFollows > 0.97f, $"the mask agrees with the warped image on only {maskFollows:P1} of pixels");
        Assert.False(displacement[0].allclose(displacement[1]));
        var (again, _) = new SliceAugmenter(config, 7).Apply(images, masks);
        Assert.True(again.equal(ax).all().item<bool>());
    }

    [Fact]
    public void Intensity_jitter_is_a_per_channel_gain_and_offset_on_brain_pixels()
    {
        using var scope = NewDisposeScope();
        var (x, y) = Batch(8, channels: 3);
        var config = AugmentationConfig.None with { IntensityScale = 0.3, IntensityShift = 0.4 };
        var (ax, ay) = new SliceAugmenter(config, 4).Apply(x, y);
        Assert.True(ay.equal(y).all().item<bool>());
        var brain = x.ne(0).any(1, keepdim: true);
        for (var i = 0; i < 8; i++)
        {
            for (var c = 0; c < 3; c++)
            {
                // Fit out = a·in + b on two brain pixels and check it holds everywhere in the brain.
                var inside = brain[i, 0];
                var input = x[i, c].masked_select(inside);
                var result = ax[i, c].masked_select(inside);
                var a = ((result[1] - result[0]) / (input[1] - input[0])).item<float>();
                var b = (result[0] - (a * input[0])).item<float>();
                Assert.InRange(a, 0.7f - 1e-4f, 1.3f + 1e-4f);
                Assert.InRange(b, -0.4f - 1e-4f, 0.4f + 1e-4f);
                Assert.True(result.allclose((input * a) + b, 1e-4, 1e-4));
            }
        }
    }

    [Fact]
    public void Tumour_paste_moves_a_shrunk_donor_tumour_into_the_brain_of_a_slice_with_tumour()
    {
        using var scope = NewDisposeScope();
        const int size = 32;

        // Slice 0: brain in the left half only (value 1), its own 2x2 tumour. Slice 1: brain everywhere (value 5), a
        // 12x12 tumour of value 9. Slice 2: brain everywhere (value 3), no tumour: it must never receive one.
        var x = zeros([3, 2, size, size]);
        var y = zeros([3, 1, size, size]);
        x[0, .., .., 0..16] = 1;
        y[0, .., 4..6, 4..6] = 1;
        x[1] = 5;
        x[1, .., 10..22, 10..22] = 9;
        y[1, .., 10..22, 10..22] = 1;
        x[2] = 3;
        var config = AugmentationConfig.None with { TumourPaste = 1, TumourPasteMinScale = 0.4 };
        var pastedSizes = new List<long>();
        for (var seed = 0; seed < 40; seed++)
        {
            var (ax, ay) = new SliceAugmenter(config, seed).Apply(x, y);
            Assert.True((ay.eq(0) | ay.eq(1)).all().item<bool>(), "labels must stay 0/1");
            Assert.True(ax[2].equal(x[2]).all().item<bool>() && ay[2].equal(y[2]).all().item<bool>(), $"seed {seed}: a tumour-free slice received a tumour");

            // Slice 0 keeps its own tumour and gains the donor's only inside its brain; only pasted pixels change, to
            // the donor's intensities (slice 1's 5..9; slice 2 has no tumour to give).
            Assert.True(ay[0].ge(y[0]).all().item<bool>(), $"seed {seed}: a tumour label was lost");
            var changed = ax[0].ne(x[0]).any(0);
            var added = ay[0, 0].gt(0.5).logical_and(y[0, 0].lt(0.5));
            Assert.False(changed.logical_and(ay[0, 0].lt(0.5)).any().item<bool>(), $"seed {seed}: pixels outside the pasted tumour changed");
            Assert.False(changed.logical_and(x[0, 0].eq(0)).any().item<bool>(), $"seed {seed}: tumour pasted outside the brain");
            Assert.False(added.logical_and(changed.logical_not()).any().item<bool>(), $"seed {seed}: a label was added without the donor's pixels");
            var pasted = ax[0, 0].masked_select(changed);
            Assert.True(pasted.ge(5 - 1e-4).all().item<bool>() && pasted.le(9 + 1e-4).all().item<bool>(), $"seed {seed}: pasted pixels are not the donor's");
            pastedSizes.Add(changed.sum().item<long>());
        }

        // Tumours land in many draws, shrunk to various sizes (the donor's is 144 pixels; at scale 0.4, about 23).
        Assert.True(pastedSizes.Count(s => s > 0) >= 8, $"too few pastes landed: {string.Join(',', pastedSizes)}");
        Assert.True(pastedSizes.Max() <= 144, $"a pasted tumour grew: {pastedSizes.Max()}");
        Assert.Contains(pastedSizes, s => s is > 0 and < 70);
        Assert.True(new SliceAugmenter(AugmentationConfig.None with { TumourPaste = 0 }, 1).Apply(x, y).Images.equal(x).all().item<bool>());
    }

    [Fact]
    public void Tumour_paste_is_refused_under_differential_privacy()
    {
        var error = Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "augmentation": { "tumour_paste": 0.3 } }"""));
        Assert.Contains("tumour_paste", error.Message, StringComparison.Ordinal);
        Assert.Contains("per-patient privacy", error.Message, StringComparison.Ordinal);
        var plain = TrainingConfig.FromJson("""{ "privacy": { "mode": "non_private" }, "augmentation": { "tumour_paste": 0.3 } }""");
        Assert.Equal(0.3, plain.Augmentation.TumourPaste);
        Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "privacy": { "mode": "non_private" }, "augmentation": { "tumour_paste": 1.5 } }"""));
    }
}
