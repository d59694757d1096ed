using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MriSeg.Learning.Training;

/// <summary>
/// Random per-slice augmentation on a batch: one resampling (flips, rotation, isotropic scale and, when on, a smooth
/// elastic displacement field; bilinear for images, nearest for masks, zero outside the field of view) and a
/// per-channel intensity gain and offset on brain pixels (where any channel is non-zero; the background stays 0 as
/// pre-processing leaves it), then, when on (non-private only), tumour copy-paste between the batch's slices. Each
/// slice of the batch, including each augmented copy of the same slice, draws its own parameters.
/// </summary>
public sealed class SliceAugmenter
{
    private readonly AugmentationConfig _config;
    private readonly Random _random;

    /// <summary>Creates an augmenter whose draws follow <paramref name="seed"/>.</summary>
    public SliceAugmenter(AugmentationConfig config, int seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        _config = config;
        _random = new Random(seed);
    }

    /// <summary>
    /// Augments images [n, C, H, W] and masks [n, K, H, W] (floating, 0/1) together; returns new tensors in the
    /// caller's dispose scope (the inputs are not changed). With augmentation off, returns the inputs' aliases.
    /// </summary>
    public (Tensor Images, Tensor Masks) Apply(Tensor images, Tensor masks)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(masks);
        if (!_config.IsEnabled || images.shape[0] == 0)
        {
            return (images.alias(), masks.alias());
        }

        var (n, c, h, w) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3]);
        Tensor outImages = images, outMasks = masks;
        if (_config.IsGeometric)
        {
            var theta = new float[n * 6];
            for (var i = 0; i < n; i++)
            {
                var fx = _config.HorizontalFlip && _random.NextDouble() < 0.5 ? -1.0 : 1.0;
                var fy = _config.VerticalFlip && _random.NextDouble() < 0.5 ? -1.0 : 1.0;
                var angle = (2 * _random.NextDouble() - 1) * _config.RotationDegrees * Math.PI / 180;
                var scale = 1 + ((2 * _random.NextDouble() - 1) * _config.Scale);
                var (sin, cos) = Math.SinCos(angle);

                // Output → input sampling in normalised coordinates; the aspect terms keep the rotation rigid in pixels.
                theta[(6 * i) + 0] = (float)(cos * fx / scale);
                theta[(6 * i) + 1] = (float)(-sin * fy / scale * h / w);
                theta[(6 * i) + 3] = (float)(sin * fx / scale * w / h);
                theta[(6 * i) + 4] = (float)(cos * fy / scale);
            }

            var t = tensor(theta, [n, 2, 3]).to(images.dtype, images.device);
            var grid = F.affine_grid(t, [n, c, h, w], align_corners: false);
            if (_config.ElasticPixels > 0)
            {
                grid += ElasticField(n, h, w).to(images.dtype, images.device);
            }

            outImages = F.grid_sample(images, grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Zeros, align_corners: false);
            outMasks = F.grid_sample(masks, grid.to(masks.dtype), GridSampleMode.Nearest, GridSamplePaddingMode.Zeros, align_corners: false);
        }

        if (_config.IntensityScale > 0 || _config.IntensityShift > 0)
        {
            var gains = new float[n * c];
            var offsets = new float[n * c];
            for (var i = 0; i < gains.Length; i++)
            {
                gains[i] = (float)(1 + ((2 * _random.NextDouble() - 1) * _config.IntensityScale));
                offsets[i] = (float)((2 * _random.NextDouble() - 1) * _config.IntensityShift);
            }

            var brain = BrainMask(outImages).to(images.dtype);
            var gain = tensor(gains, [n, c, 1, 1]).to(images.dtype, images.device);
            var offset = tensor(offsets, [n, c, 1, 1]).to(images.dtype, images.device);
            outImages = (outImages * gain) + (offset * brain);
        }

        if (_config.TumourPaste > 0 && n > 1)
        {
            (outImages, outMasks) = PasteTumours(outImages, outMasks);
        }

        return (ReferenceEquals(outImages, images) ? images.alias() : outImages, ReferenceEquals(outMasks, masks) ? masks.alias() : outMasks);
    }

    /// <summary>
    /// Tumour copy-paste: each chosen slice with tumour takes the tumour of another slice of the batch (its donor), shrunk and
    /// moved at random, where it falls inside the receiving slice's brain; the donor's pixels replace the receiver's
    /// there, in every channel, and the pasted tumour joins the receiver's labels.
    /// </summary>
    private (Tensor Images, Tensor Masks) PasteTumours(Tensor images, Tensor masks)
    {
        var (n, c, h, w) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3]);
        var donors = new long[n];
        var chosen = new float[n];
        var theta = new float[n * 6];
        for (var i = 0; i < n; i++)
        {
            donors[i] = (i + 1 + _random.NextInt64(n - 1)) % n;
            chosen[i] = _random.NextDouble() < _config.TumourPaste ? 1 : 0;
            var scale = _config.TumourPasteMinScale + ((1 - _config.TumourPasteMinScale) * _random.NextDouble());

            // Output → input: coordinates divided by the scale shrink the donor's content; the offset moves it.
            theta[(6 * i) + 0] = (float)(1 / scale);
            theta[(6 * i) + 2] = (float)((2 * _random.NextDouble()) - 1);
            theta[(6 * i) + 4] = (float)(1 / scale);
            theta[(6 * i) + 5] = (float)((2 * _random.NextDouble()) - 1);
        }

        var index = tensor(donors, device: images.device);
        var t = tensor(theta, [n, 2, 3]).to(images.dtype, images.device);
        var grid = F.affine_grid(t, [n, c, h, w], align_corners: false);
        var donorImages = F.grid_sample(images.index_select(0, index), grid, GridSampleMode.Bilinear, GridSamplePaddingMode.Zeros, align_corners: false);
        var donorMasks = F.grid_sample(masks.index_select(0, index), grid.to(masks.dtype), GridSampleMode.Nearest, GridSamplePaddingMode.Zeros, align_corners: false);
        var brain = BrainMask(images);

        // Only slices that already hold tumour receive one: the tumour-free slices are the model's only lesson in
        // predicting nothing (pasting into them too raised false alarms on tumour-free patients, 0.95 → 0.76).
        var hasTumour = masks.gt(0.5).flatten(1).any(1).reshape(n, 1, 1, 1);
        var take = tensor(chosen, [n, 1, 1, 1]).to(images.device).gt(0).logical_and(hasTumour);
        var region = donorMasks.gt(0.5).any(1, keepdim: true).logical_and(brain).logical_and(take);
        return (where(region, donorImages, images), where(region, maximum(masks, donorMasks), masks));
    }

    /// <summary>Brain pixels, [n, 1, H, W] boolean: where any channel is non-zero (pre-processing leaves the background 0).</summary>
    private static Tensor BrainMask(Tensor images) => images.ne(0).any(1, keepdim: true);

    /// <summary>
    /// A smooth random displacement per slice, [n, H, W, 2] in grid_sample's normalised (x, y) units: control points
    /// uniform in ± <see cref="AugmentationConfig.ElasticPixels"/> pixels, interpolated bicubically over the slice.
    /// </summary>
    private Tensor ElasticField(long n, long h, long w)
    {
        var g = _config.ElasticControlPoints;
        var points = new float[n * 2 * g * g];
        for (var i = 0; i < points.Length; i++)
        {
            points[i] = (float)((2 * _random.NextDouble()) - 1);
        }

        // Pixels to normalised units: the field of view spans 2 over w (x) and over h (y) pixels.
        var toNormalised = tensor(new[] { (float)(2 * _config.ElasticPixels / w), (float)(2 * _config.ElasticPixels / h) }, [1, 2, 1, 1]);
        var coarse = tensor(points, [n, 2, g, g]) * toNormalised;
        return F.interpolate(coarse, [h, w], mode: InterpolationMode.Bicubic, align_corners: true).permute(0, 2, 3, 1);
    }
}
