namespace MriSeg.Learning.Metrics;

/// <summary>
/// Overlap and surface-distance metrics of binary masks (any non-zero byte is foreground), with the BraTS
/// conventions for empty masks. A patient's masks are its slices stacked in dataset order: [depth, height, width].
/// </summary>
/// <remarks>
/// <para>Empty masks (BraTS convention, so a tumour-free patient is judged on false positives):</para>
/// <list type="bullet">
/// <item>Dice and IoU: 1 when truth and prediction are both empty; 0 when exactly one is empty.</item>
/// <item>HD95: 0 when both are empty; the grid diagonal √(H² + W² + (D − 1)²) in pixels when exactly one is
/// empty (the BraTS evaluation uses the diagonal of its volume, 373.13 mm, the same way).</item>
/// </list>
/// <para>
/// HD95 follows medpy's <c>hd95</c> (used by the BraTS toolkits): surfaces are the mask minus its erosion by the
/// face-connected neighbourhood (4-connected in plane, plus the neighbouring slices when there are several; the grid
/// border counts as background), each surface point's distance to the nearest surface point of the other mask
/// comes from an exact Euclidean distance transform, and HD95 = max of the two directed 95th percentiles
/// (linear interpolation, numpy's default). Distances are in pixels with slices one pixel apart: exact for
/// contiguous slices of isotropic data, an approximation for a selection of slices; one slice per patient is
/// plain 2-D HD95.
/// </para>
/// </remarks>
public static class SegmentationMetrics
{
    /// <summary>Dice = 2|P∩T| / (|P| + |T|); 1 when both are empty.</summary>
    public static double Dice(ReadOnlySpan<byte> prediction, ReadOnlySpan<byte> truth)
    {
        var (p, t, both) = Counts(prediction, truth);
        return p + t == 0 ? 1.0 : 2.0 * both / (p + t);
    }

    /// <summary>IoU (Jaccard) = |P∩T| / |P∪T|; 1 when both are empty.</summary>
    public static double IoU(ReadOnlySpan<byte> prediction, ReadOnlySpan<byte> truth)
    {
        var (p, t, both) = Counts(prediction, truth);
        var union = p + t - both;
        return union == 0 ? 1.0 : (double)both / union;
    }

    /// <summary>The HD95 reported when exactly one mask is empty: the grid diagonal √(H² + W² + (D − 1)²).</summary>
    public static double EmptyMaskHd95(int depth, int height, int width) =>
        Math.Sqrt(((double)height * height) + ((double)width * width) + ((double)(depth - 1) * (depth - 1)));

    /// <summary>95th-percentile symmetric Hausdorff distance in pixels of two [depth, height, width] masks.</summary>
    public static double Hd95(ReadOnlySpan<byte> prediction, ReadOnlySpan<byte> truth, int depth, int height, int width)
    {
        CheckGrid(prediction.Length, truth.Length, depth, height, width);
        var hasPrediction = prediction.ContainsAnyExcept((byte)0);
        var hasTruth = truth.ContainsAnyExcept((byte)0);
        if (!hasPrediction && !hasTruth)
        {
            return 0;
        }

        if (!hasPrediction || !hasTruth)
        {
            return EmptyMaskHd95(depth, height, width);
        }

        var grid = new Grid(depth, height, width);
        var predictionSurface = Surface(prediction, grid);
        var truthSurface = Surface(truth, grid);
        var toTruth = DirectedDistances(predictionSurface, truthSurface, grid);
        var toPrediction = DirectedDistances(truthSurface, predictionSurface, grid);
        return Math.Max(Percentile(toTruth, 0.95), Percentile(toPrediction, 0.95));
    }

    /// <summary>numpy.percentile with linear interpolation: value at rank (n − 1)·p of the sorted values (sorts in place).</summary>
    internal static double Percentile(double[] values, double p)
    {
        if (values.Length == 0)
        {
            throw new ArgumentException("no values", nameof(values));
        }

        Array.Sort(values);
        var rank = (values.Length - 1) * p;
        var low = (int)Math.Floor(rank);
        var high = Math.Min(low + 1, values.Length - 1);
        return values[low] + ((rank - low) * (values[high] - values[low]));
    }

    /// <summary>Foreground voxels with a face neighbour in the background or outside the grid.</summary>
    internal static bool[] Surface(ReadOnlySpan<byte> mask, Grid grid)
    {
        var (d, h, w) = (grid.Depth, grid.Height, grid.Width);
        var surface = new bool[mask.Length];
        for (var z = 0; z < d; z++)
        {
            for (var y = 0; y < h; y++)
            {
                for (var x = 0; x < w; x++)
                {
                    var i = grid.Index(z, y, x);
                    if (mask[i] == 0)
                    {
                        continue;
                    }

                    var interior = x > 0 && mask[i - 1] != 0 && x < w - 1 && mask[i + 1] != 0
                        && y > 0 && mask[i - w] != 0 && y < h - 1 && mask[i + w] != 0;
                    if (interior && d > 1)
                    {
                        var plane = h * w;
                        interior = z > 0 && mask[i - plane] != 0 && z < d - 1 && mask[i + plane] != 0;
                    }

                    surface[i] = !interior;
                }
            }
        }

        return surface;
    }

    /// <summary>Distance of every <paramref name="from"/> point to the nearest <paramref name="to"/> point.</summary>
    private static double[] DirectedDistances(bool[] from, bool[] to, Grid grid)
    {
        var squared = DistanceTransform.SquaredToNearest(to, grid);
        var distances = new List<double>();
        for (var i = 0; i < from.Length; i++)
        {
            if (from[i])
            {
                distances.Add(Math.Sqrt(squared[i]));
            }
        }

        return [.. distances];
    }

    private static (long Prediction, long Truth, long Both) Counts(ReadOnlySpan<byte> prediction, ReadOnlySpan<byte> truth)
    {
        if (prediction.Length != truth.Length)
        {
            throw new ArgumentException($"prediction has {prediction.Length} values, truth {truth.Length}.");
        }

        long p = 0, t = 0, both = 0;
        for (var i = 0; i < prediction.Length; i++)
        {
            var a = prediction[i] != 0;
            var b = truth[i] != 0;
            p += a ? 1 : 0;
            t += b ? 1 : 0;
            both += a && b ? 1 : 0;
        }

        return (p, t, both);
    }

    private static void CheckGrid(int predictionLength, int truthLength, int depth, int height, int width)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(depth, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        var n = (long)depth * height * width;
        if (predictionLength != n || truthLength != n)
        {
            throw new ArgumentException($"masks of {predictionLength} and {truthLength} values do not fill a {depth}x{height}x{width} grid.");
        }
    }
}

/// <summary>A [depth, height, width] grid, x fastest.</summary>
internal readonly record struct Grid(int Depth, int Height, int Width)
{
    public int Count => Depth * Height * Width;

    public int Index(int z, int y, int x) => (((z * Height) + y) * Width) + x;
}

/// <summary>
/// Exact squared Euclidean distance transform (Felzenszwalb and Huttenlocher 2012): the 1-D transform of a
/// sampled function by the lower envelope of parabolas, applied along x, then y, then z.
/// </summary>
internal static class DistanceTransform
{
    /// <summary>For every voxel, the squared distance in pixels to the nearest voxel where <paramref name="features"/> is true.</summary>
    public static double[] SquaredToNearest(bool[] features, Grid grid)
    {
        var f = new double[grid.Count];
        for (var i = 0; i < f.Length; i++)
        {
            f[i] = features[i] ? 0 : double.PositiveInfinity;
        }

        var longest = Math.Max(grid.Width, Math.Max(grid.Height, grid.Depth));
        var line = new double[longest];
        var output = new double[longest];
        var vertices = new int[longest];
        var bounds = new double[longest + 1];

        void Along(int count, int stride, int start)
        {
            for (var k = 0; k < count; k++)
            {
                line[k] = f[start + (k * stride)];
            }

            OneDimension(line.AsSpan(0, count), output.AsSpan(0, count), vertices, bounds);
            for (var k = 0; k < count; k++)
            {
                f[start + (k * stride)] = output[k];
            }
        }

        var (d, h, w) = (grid.Depth, grid.Height, grid.Width);
        for (var z = 0; z < d; z++)
        {
            for (var y = 0; y < h; y++)
            {
                Along(w, 1, grid.Index(z, y, 0));
            }
        }

        for (var z = 0; z < d; z++)
        {
            for (var x = 0; x < w; x++)
            {
                Along(h, w, grid.Index(z, 0, x));
            }
        }

        if (d > 1)
        {
            for (var y = 0; y < h; y++)
            {
                for (var x = 0; x < w; x++)
                {
                    Along(d, h * w, grid.Index(0, y, x));
                }
            }
        }

        return f;
    }

    /// <summary>d(q) = min_p (q − p)² + f(p) over the samples of a line.</summary>
    private static void OneDimension(ReadOnlySpan<double> f, Span<double> d, int[] v, double[] z)
    {
        var n = f.Length;
        var k = -1;
        for (var q = 0; q < n; q++)
        {
            if (double.IsPositiveInfinity(f[q]))
            {
                continue;
            }

            while (true)
            {
                if (k < 0)
                {
                    k = 0;
                    v[0] = q;
                    z[0] = double.NegativeInfinity;
                    z[1] = double.PositiveInfinity;
                    break;
                }

                var p = v[k];
                var s = ((f[q] + ((double)q * q)) - (f[p] + ((double)p * p))) / (2.0 * (q - p));
                if (s <= z[k])
                {
                    k--;
                    continue;
                }

                k++;
                v[k] = q;
                z[k] = s;
                z[k + 1] = double.PositiveInfinity;
                break;
            }
        }

        if (k < 0)
        {
            d.Fill(double.PositiveInfinity);
            return;
        }

        var j = 0;
        for (var q = 0; q < n; q++)
        {
            while (z[j + 1] < q)
            {
                j++;
            }

            var diff = q - v[j];
            d[q] = ((double)diff * diff) + f[v[j]];
        }
    }
}
