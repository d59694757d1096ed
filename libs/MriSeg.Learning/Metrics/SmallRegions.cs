namespace MriSeg.Learning.Metrics;

/// <summary>
/// Post-processing of predicted probabilities: every region of foreground pixels (probability above the threshold,
/// 8-connected within one plane) smaller than a given size is set to probability 0. A few scattered pixels are the
/// typical false positive on a tumour-free slice, which the BraTS convention scores 0 for the whole patient.
/// </summary>
/// <remarks>
/// Working on probabilities rather than on the thresholded mask lets the segmenter suppress regions on the model's
/// grid and then resize: a removed region's pixels become 0 and its neighbours are at or below the threshold, so no
/// bilinear interpolation between them rises above it again.
/// </remarks>
public sealed class SmallRegions
{
    private readonly int _height;
    private readonly int _width;
    private readonly int[] _region;
    private readonly int[] _stack;
    private readonly List<int> _members = [];

    /// <summary>A suppressor for planes of <paramref name="height"/> × <paramref name="width"/> pixels (reusable, not thread-safe).</summary>
    public SmallRegions(int height, int width)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        _height = height;
        _width = width;
        _region = new int[height * width];
        _stack = new int[height * width];
    }

    /// <summary>
    /// <see cref="Suppress"/> on each of the consecutive <paramref name="height"/> × <paramref name="width"/> planes of
    /// <paramref name="planes"/> (slices × label channels); returns the regions removed. Nothing to do when
    /// <paramref name="minPixels"/> is 0 or 1.
    /// </summary>
    public static int SuppressEach(Span<float> planes, int height, int width, double threshold, int minPixels)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minPixels);
        if (minPixels <= 1)
        {
            return 0;
        }

        var plane = height * width;
        if (planes.Length % plane != 0)
        {
            throw new ArgumentException($"{planes.Length} values are not whole {height}x{width} planes", nameof(planes));
        }

        var suppressor = new SmallRegions(height, width);
        var removed = 0;
        for (var offset = 0; offset < planes.Length; offset += plane)
        {
            removed += suppressor.Suppress(planes.Slice(offset, plane), threshold, minPixels);
        }

        return removed;
    }

    /// <summary>
    /// Sets to 0 the probabilities of every 8-connected region of pixels above <paramref name="threshold"/> in
    /// <paramref name="plane"/> with fewer than <paramref name="minPixels"/> pixels; returns the regions removed.
    /// </summary>
    public int Suppress(Span<float> plane, double threshold, int minPixels)
    {
        if (plane.Length != _region.Length)
        {
            throw new ArgumentException($"{plane.Length} values for a {_height}x{_width} plane", nameof(plane));
        }

        ArgumentOutOfRangeException.ThrowIfNegative(minPixels);
        if (minPixels <= 1)
        {
            return 0;
        }

        Array.Clear(_region);
        var removed = 0;
        var label = 0;
        for (var start = 0; start < plane.Length; start++)
        {
            if (_region[start] != 0 || !(plane[start] > threshold))
            {
                continue;
            }

            // Depth-first flood fill; the explicit stack never holds a pixel twice, so plane size bounds it.
            label++;
            _members.Clear();
            var top = 0;
            _stack[top++] = start;
            _region[start] = label;
            while (top > 0)
            {
                var pixel = _stack[--top];
                _members.Add(pixel);
                var y = pixel / _width;
                var x = pixel - (y * _width);
                for (var ny = Math.Max(0, y - 1); ny <= Math.Min(_height - 1, y + 1); ny++)
                {
                    for (var nx = Math.Max(0, x - 1); nx <= Math.Min(_width - 1, x + 1); nx++)
                    {
                        var neighbour = (ny * _width) + nx;
                        if (_region[neighbour] == 0 && plane[neighbour] > threshold)
                        {
                            _region[neighbour] = label;
                            _stack[top++] = neighbour;
                        }
                    }
                }
            }

            if (_members.Count < minPixels)
            {
                foreach (var pixel in _members)
                {
                    plane[pixel] = 0;
                }

                removed++;
            }
        }

        return removed;
    }
}
