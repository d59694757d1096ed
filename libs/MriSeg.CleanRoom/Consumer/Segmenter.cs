using System.Buffers.Binary;
using System.Globalization;
using System.Text.RegularExpressions;
using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Imaging.Slices;
using MriSeg.Learning.Model;
using MriSeg.Learning.Training;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Processing;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.CleanRoom.Consumer;

/// <summary>One region's predicted volume.</summary>
/// <param name="Region">The label channel ("wt", "tc", "et").</param>
/// <param name="Voxels">Voxels (pixels for a PNG slice) in the region.</param>
/// <param name="CubicMillimetres">Voxels × the voxel volume (PNG: 1 mm² pixels, 1 mm thick).</param>
public sealed record RegionStat(string Region, long Voxels, double CubicMillimetres);

/// <summary>A segmentation: the mask written, its regions, the overlay.</summary>
/// <param name="MaskPath">The mask file (NIfTI in the input's stored grid, or PNG).</param>
/// <param name="Regions">Per-region volumes.</param>
/// <param name="OverlayPath">The overlay PNG, when asked for.</param>
/// <param name="OverlaySlice">The slice shown in the overlay (canonical z; 0 for PNG).</param>
/// <param name="Slices">Slices the model ran on.</param>
public sealed record SegmentationResult(string MaskPath, IReadOnlyList<RegionStat> Regions, string? OverlayPath, int OverlaySlice, int Slices);

/// <summary>
/// Segments a case with a model folder (model.safetensors + config.json/model.json): the input is normalised by the
/// training pre-processor itself (<see cref="Preprocessor"/>, with an empty label map and every brain slice selected, so
/// brain mask, robust z-score, crop to the brain, padding to a square and resize are the training data's), the U-Net
/// runs on the slices in batches, probabilities are resized back to the crop (bilinear, align_corners=False),
/// thresholded, and placed back into the input's grid (the inverse of the crop, pad, resize and plane orientation).
/// </summary>
public sealed class Segmenter : IDisposable
{
    private readonly UNet2d _model;

    /// <summary>Loads the model folder <paramref name="modelDirectory"/>.</summary>
    /// <exception cref="FormatException">The folder holds no model manifest or weights that fit it.</exception>
    public Segmenter(string modelDirectory)
    {
        Manifest = TrainingOutputs.ReadManifest(modelDirectory) ?? throw new FormatException($"{modelDirectory} has no {TrainingOutputs.ManifestFileName}");
        _model = UNetModelFile.Load(modelDirectory);
        _model.eval();
    }

    /// <summary>The model's manifest.</summary>
    public ModelManifest Manifest { get; }

    /// <summary>Slices per forward pass.</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>
    /// Resolves the model's input files from <paramref name="input"/>: a case folder (any ingestion layout), one file of
    /// a case folder (its siblings give the other modalities), comma-separated files in the model's channel order, or a
    /// single file for a one-channel model.
    /// </summary>
    public IReadOnlyList<string> ResolveInputs(string input) => ResolveInputs(input, Manifest.Input.Modalities);

    /// <summary>
    /// As <see cref="ResolveInputs(string)"/>, for a model whose input channels are <paramref name="modalityNames"/>
    /// (model.json's <c>input.modalities</c>, or a registered model's record), without loading it.
    /// </summary>
    public static IReadOnlyList<string> ResolveInputs(string input, IReadOnlyList<string> modalityNames)
    {
        ArgumentException.ThrowIfNullOrEmpty(input);
        ArgumentNullException.ThrowIfNull(modalityNames);
        var modalities = PreprocessOptions.ParseModalities(string.Join(',', modalityNames));
        if (input.Contains(',', StringComparison.Ordinal))
        {
            var files = input.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return files.Length == modalities.Count ? files
                : throw new ArgumentException($"{files.Length} files given; the model takes {modalities.Count} channels ({string.Join(", ", modalityNames)})");
        }

        if (File.Exists(input) && modalities.Count == 1)
        {
            return [input];
        }

        var folder = Directory.Exists(input) ? input : Path.GetDirectoryName(Path.GetFullPath(input))!;
        var c = CaseDiscovery.ReadCase(folder) ?? throw new ArgumentException($"{input}: no recognised case files (e.g. <case>_flair.nii.gz, FLAIR.nii.gz, <case>_flair.png)");
        return [.. modalities.Select(m => c.Files.TryGetValue(SourceLayouts.Role(m), out var p) ? p
            : throw new ArgumentException($"{folder}: no {m} image for the model's channel {m}"))];
    }

    /// <summary>Segments the case whose channel files are <paramref name="files"/> (NIfTI or PNG); writes the mask to <paramref name="maskPath"/>.</summary>
    public async Task<SegmentationResult> SegmentAsync(IReadOnlyList<string> files, string maskPath, string? overlayPath = null, double threshold = 0.5,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(files);
        var modalities = Modalities();
        if (files.Count != modalities.Count)
        {
            throw new ArgumentException($"{files.Count} input files; the model takes {modalities.Count} channels");
        }

        if (!(threshold > 0 && threshold < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(threshold), threshold, "the threshold must be in (0, 1)");
        }

        var png = files[0].EndsWith(".png", StringComparison.OrdinalIgnoreCase);
        var temp = Directory.CreateTempSubdirectory("mriseg-segment-").FullName;
        try
        {
            // The input grid (canonical RAS+ for volumes; as stored for PNG) and an empty label map on it.
            Grid grid;
            string labelPath;
            if (png)
            {
                var slices = files.Select(ReadPng).ToArray();
                if (slices.Any(s => s.Width != slices[0].Width || s.Height != slices[0].Height))
                {
                    throw new ArgumentException("the PNG slices differ in size");
                }

                grid = new Grid(slices[0].Width, slices[0].Height, 1, false, [.. slices.Select(s => Array.ConvertAll(s.Pixels, p => (float)p))], null, new Spacing(1, 1, 1));
                labelPath = Path.Combine(temp, "case_seg.png");
                using (var zero = new Image<L8>(grid.N0, grid.N1))
                {
                    await zero.SaveAsPngAsync(labelPath, cancellationToken).ConfigureAwait(false);
                }
            }
            else
            {
                var volumes = files.Select(f => NiftiReader.Read(f)).ToArray();
                foreach (var v in volumes)
                {
                    if (v.Size != volumes[0].Size)
                    {
                        throw new ArgumentException($"{v.SourceName}: grid {v.Size} differs from {volumes[0].SourceName}'s {volumes[0].Size}");
                    }
                }

                grid = new Grid(volumes[0].Size.X, volumes[0].Size.Y, volumes[0].Size.Z, true, [.. volumes.Select(v => v.Data)], volumes[0], volumes[0].Spacing);
                labelPath = Path.Combine(temp, "case_seg.nii.gz");
                NiftiWriter.Write(labelPath, new byte[volumes[0].Data.Length], volumes[0].Size, volumes[0].Affine);
            }

            // Normalised slices, exactly as training data were made.
            var roles = new Dictionary<CaseFileRole, string> { [CaseFileRole.WholeTumourMask] = labelPath };
            for (var m = 0; m < modalities.Count; m++)
            {
                roles[SourceLayouts.Role(modalities[m])] = Path.GetFullPath(files[m]);
            }

            var (low, high) = Percentiles(Manifest.Input.Normalisation);
            var options = new PreprocessOptions
            {
                Size = Manifest.Input.Height,
                Modalities = modalities,
                Labels = LabelScheme.WholeTumour,
                TumourFreeShare = 1,
                PseudonymKey = PseudonymKey.Generate(),
                Strict = true,
                MaxDegreeOfParallelism = 1,
                LowerPercentile = low,
                UpperPercentile = high,
            };
            var source = new SourceCase("case", temp, png ? SourceLayout.PngSlices : SourceLayout.BratsVolumes, roles);
            var data = (await new Preprocessor(options).RunAsync([source], cancellationToken: cancellationToken).ConfigureAwait(false)).Dataset;
            var geometry = SliceGeometry.Of(grid);
            if (data.Count != geometry.Slices.Count)
            {
                throw new InvalidOperationException($"the pre-processor gave {data.Count} slices, the brain spans {geometry.Slices.Count}");
            }

            // Probabilities per slice, back to the input grid.
            var channels = Manifest.Input.LabelChannels;
            var masks = channels.Select(_ => new byte[grid.Count]).ToArray();
            var probabilities = Predict(data, threshold);
            var size = data.Height;
            for (var s = 0; s < data.Count; s++)
            {
                for (var k = 0; k < channels.Count; k++)
                {
                    var plane = probabilities.AsSpan(((s * channels.Count) + k) * size * size, size * size);
                    geometry.PlaceBack(plane, size, geometry.Slices[s], threshold, masks[k]);
                }
            }

            var voxelVolume = grid.Spacing.X * grid.Spacing.Y * grid.Spacing.Z;
            var regions = channels.Select((c, k) =>
            {
                var n = (long)masks[k].AsSpan().Count((byte)1);
                return new RegionStat(c, n, n * voxelVolume);
            }).ToList();

            // The mask: WT as 1; with BraTS regions, labels 2 (oedema), 1 (core) and 4 (enhancing).
            var labels = new float[grid.Count];
            for (var i = 0; i < labels.Length; i++)
            {
                labels[i] = channels.Count == 3
                    ? (masks[2][i] != 0 ? 4 : masks[1][i] != 0 ? 1 : masks[0][i] != 0 ? 2 : 0)
                    : masks[0][i];
            }

            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(maskPath))!);
            if (png)
            {
                using var image = new Image<L8>(grid.N0, grid.N1);
                for (var y = 0; y < grid.N1; y++)
                {
                    for (var x = 0; x < grid.N0; x++)
                    {
                        image[x, y] = new L8(masks[0][(y * grid.N0) + x] != 0 ? (byte)255 : (byte)0);
                    }
                }

                await image.SaveAsPngAsync(maskPath, cancellationToken).ConfigureAwait(false);
            }
            else
            {
                NiftiWriter.WriteLike(maskPath, grid.Like!, labels, NiftiDatatype.UInt8);
            }

            var z = OverlaySlice(masks[0], grid);
            if (overlayPath is not null)
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(overlayPath))!);
                Overlay.Write(overlayPath, grid, z, masks[0]);
            }

            return new SegmentationResult(maskPath, regions, overlayPath, z, data.Count);
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }

    /// <inheritdoc />
    public void Dispose() => _model.Dispose();

    private IReadOnlyList<Modality> Modalities() => PreprocessOptions.ParseModalities(string.Join(',', Manifest.Input.Modalities));

    /// <summary>
    /// Probabilities on the model's grid, with the model's recipe's test-time mirror averaging and its small-region
    /// removal (<see cref="EvaluationConfig"/>), so that a segmentation is what the recipe's evaluation scored.
    /// </summary>
    private float[] Predict(SliceDataset data, double threshold)
    {
        var evaluation = Manifest.Training?.Config?.Evaluation ?? new EvaluationConfig();
        var k = _model.Config.OutChannels;
        var result = new float[data.Count * k * data.Plane];
        var per = data.Channels * data.Plane;
        using var _ = no_grad();
        for (var start = 0; start < data.Count; start += BatchSize)
        {
            using var scope = NewDisposeScope();
            var n = Math.Min(BatchSize, data.Count - start);
            var x = tensor(data.Images.AsSpan(start * per, n * per).ToArray(), [n, data.Channels, data.Height, data.Width]).to(_model.ParameterDType, _model.ParameterDevice);
            var p = Learning.Metrics.SegmentationEvaluator.Probabilities(_model, x, evaluation.MirrorAveraging).to(ScalarType.Float32).cpu();
            p.data<float>().CopyTo(result, start * k * data.Plane);
        }

        Learning.Metrics.SmallRegions.SuppressEach(result, data.Height, data.Width, threshold, evaluation.MinRegionPixels);

        return result;
    }

    /// <summary>The percentiles of a normalisation name such as <c>zscore-brain-p0.5-p99.5</c>.</summary>
    internal static (double Low, double High) Percentiles(string normalisation)
    {
        if (normalisation is null or "unknown")
        {
            // Data whose provenance was not recorded (synthetic shards): the pre-processor's defaults.
            return (0.5, 99.5);
        }

        var m = Regex.Match(normalisation, @"^zscore-brain-p([0-9.]+)-p([0-9.]+)$", RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
        return m.Success
            ? (double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture), double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture))
            : throw new FormatException($"the model was trained with normalisation '{normalisation}', which inference does not know (zscore-brain-pL-pH)");
    }

    /// <summary>The middle slice of the predicted tumour's extent (the grid's middle slice when nothing is predicted).</summary>
    internal static int OverlaySlice(byte[] mask, Grid grid)
    {
        var plane = grid.N0 * grid.N1;
        var withTumour = Enumerable.Range(0, grid.Nz).Where(z => mask.AsSpan(z * plane, plane).Contains((byte)1)).ToList();
        return withTumour.Count > 0 ? withTumour[withTumour.Count / 2] : grid.Nz / 2;
    }

    private static GraySlice ReadPng(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var (w, h) = bytes.Length >= 24 ? (BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20))) : (1, 1);
        return PngSliceReader.Read(bytes, Path.GetFileName(path), w, h);
    }
}

/// <summary>A case's grid: n0 fastest, then n1, then slices; volumes in canonical RAS+, PNG as stored.</summary>
internal sealed record Grid(int N0, int N1, int Nz, bool VolumeOrientation, float[][] Images, Volume? Like, Spacing Spacing)
{
    public int Count => N0 * N1 * Nz;
}

/// <summary>
/// The pre-processor's plane geometry for a case without labels: the crop is the brain's bounding box (any channel
/// non-zero) over all slices, centred in a square of side max(bh, bw) and resized to S×S; a volume's plane rows run
/// along −i0 and columns along −i1, a PNG's rows along i1 and columns along i0. <see cref="PlaceBack"/> inverts it.
/// </summary>
internal sealed class SliceGeometry
{
    private SliceGeometry(Grid grid, int i0a, int i0b, int i1a, int i1b, IReadOnlyList<int> slices)
    {
        GridOf = grid;
        (I0a, I0b, I1a, I1b) = (i0a, i0b, i1a, i1b);
        Slices = slices;
        (Bh, Bw) = grid.VolumeOrientation ? (i0b - i0a + 1, i1b - i1a + 1) : (i1b - i1a + 1, i0b - i0a + 1);
        Side = Math.Max(Bh, Bw);
        (PadH, PadW) = ((Side - Bh) / 2, (Side - Bw) / 2);
    }

    public Grid GridOf { get; }

    public int I0a { get; }

    public int I0b { get; }

    public int I1a { get; }

    public int I1b { get; }

    public int Bh { get; }

    public int Bw { get; }

    public int Side { get; }

    public int PadH { get; }

    public int PadW { get; }

    /// <summary>The slices with brain, ascending (those the pre-processor selects when every brain slice is kept).</summary>
    public IReadOnlyList<int> Slices { get; }

    public static SliceGeometry Of(Grid grid)
    {
        int i0a = int.MaxValue, i0b = -1, i1a = int.MaxValue, i1b = -1;
        var slices = new List<int>();
        for (var z = 0; z < grid.Nz; z++)
        {
            var any = false;
            for (var i1 = 0; i1 < grid.N1; i1++)
            {
                for (var i0 = 0; i0 < grid.N0; i0++)
                {
                    var at = (((z * grid.N1) + i1) * grid.N0) + i0;
                    if (grid.Images.Any(im => im[at] != 0))
                    {
                        any = true;
                        (i0a, i0b, i1a, i1b) = (Math.Min(i0a, i0), Math.Max(i0b, i0), Math.Min(i1a, i1), Math.Max(i1b, i1));
                    }
                }
            }

            if (any)
            {
                slices.Add(z);
            }
        }

        return slices.Count == 0 ? throw new ArgumentException("no brain: every image is zero everywhere") : new SliceGeometry(grid, i0a, i0b, i1a, i1b, slices);
    }

    /// <summary>Resizes an S×S probability plane to the square (bilinear, align_corners=False), thresholds it and writes the crop's voxels of slice <paramref name="z"/>.</summary>
    public void PlaceBack(ReadOnlySpan<float> plane, int size, int z, double threshold, byte[] mask)
    {
        var g = GridOf;
        var scale = (double)size / Side;
        for (var h = PadH; h < PadH + Bh; h++)
        {
            var (y0, y1, fy) = Source(h, scale, size);
            for (var w = PadW; w < PadW + Bw; w++)
            {
                var (x0, x1, fx) = Source(w, scale, size);
                var p = ((1 - fy) * (((1 - fx) * plane[(y0 * size) + x0]) + (fx * plane[(y0 * size) + x1])))
                    + (fy * (((1 - fx) * plane[(y1 * size) + x0]) + (fx * plane[(y1 * size) + x1])));
                int i0, i1;
                if (g.VolumeOrientation)
                {
                    (i0, i1) = (I0b - (h - PadH), I1b - (w - PadW));
                }
                else
                {
                    (i0, i1) = (I0a + (w - PadW), I1a + (h - PadH));
                }

                mask[(((z * g.N1) + i1) * g.N0) + i0] = p > threshold ? (byte)1 : (byte)0;
            }
        }
    }

    /// <summary>PyTorch's source index for output <paramref name="o"/> (align_corners=False): the two neighbours and the weight.</summary>
    private static (int Lo, int Hi, double Frac) Source(int o, double scale, int inSize)
    {
        var src = Math.Max(0, ((o + 0.5) * scale) - 0.5);
        var lo = Math.Min((int)src, inSize - 1);
        return (lo, Math.Min(lo + 1, inSize - 1), src - lo);
    }
}

/// <summary>The overlay: the first channel's slice in grey with the predicted contour (boundary pixels) in red.</summary>
internal static class Overlay
{
    public static void Write(string path, Grid grid, int z, byte[] mask)
    {
        var plane = grid.N0 * grid.N1;
        var image = grid.Images[0].AsSpan(z * plane, plane);
        var nonZero = image.ToArray().Where(v => v != 0).Order().ToArray();
        var (lo, hi) = nonZero.Length > 0 ? (nonZero[(int)(nonZero.Length * 0.01)], nonZero[(int)((nonZero.Length - 1) * 0.99)]) : (0f, 1f);
        var range = hi > lo ? hi - lo : 1;

        // Display: volumes with anterior up and the patient's right on the left (radiological); PNG as stored.
        var (width, height) = grid.VolumeOrientation ? (grid.N0, grid.N1) : (grid.N0, grid.N1);
        using var png = new Image<Rgb24>(width, height);
        for (var r = 0; r < height; r++)
        {
            for (var c = 0; c < width; c++)
            {
                var (i0, i1) = grid.VolumeOrientation ? (width - 1 - c, height - 1 - r) : (c, r);
                var at = (i1 * grid.N0) + i0;
                var g = (byte)Math.Clamp((image[at] - lo) / range * 255, 0, 255);
                png[c, r] = Boundary(mask, z * plane, grid, i0, i1) ? new Rgb24(255, 0, 0) : new Rgb24(g, g, g);
            }
        }

        // Small inputs (64x64 phantoms) are enlarged, pixel for pixel, so the contour can be seen.
        var scale = Math.Max(1, (MinimumSide + Math.Max(width, height) - 1) / Math.Max(width, height));
        if (scale > 1)
        {
            png.Mutate(x => x.Resize(width * scale, height * scale, KnownResamplers.NearestNeighbor));
        }

        png.SaveAsPng(path);
    }

    /// <summary>The overlay's smallest longer side, in pixels.</summary>
    public const int MinimumSide = 256;

    /// <summary>A mask pixel with a 4-neighbour outside the mask (or at the border).</summary>
    internal static bool Boundary(byte[] mask, int offset, Grid grid, int i0, int i1)
    {
        bool At(int a, int b) => a >= 0 && b >= 0 && a < grid.N0 && b < grid.N1 && mask[offset + (b * grid.N0) + a] != 0;
        return At(i0, i1) && (!At(i0 - 1, i1) || !At(i0 + 1, i1) || !At(i0, i1 - 1) || !At(i0, i1 + 1));
    }
}
