using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>
/// Robust z-score parameters of one modality inside the brain: the values are clipped to their lower and upper
/// percentiles, and the mean and standard deviation are those of the clipped values.
/// </summary>
/// <param name="Low">The lower clipping value (the lower percentile).</param>
/// <param name="High">The upper clipping value.</param>
/// <param name="Mean">Mean of the clipped values.</param>
/// <param name="StdDev">Standard deviation of the clipped values (population).</param>
internal readonly record struct IntensityStats(float Low, float High, double Mean, double StdDev)
{
    private const int Bins = 1 << 14;

    /// <summary>1 / standard deviation, or 1 when the brain is (almost) constant, so that a flat image maps to zeros.</summary>
    public float Scale => StdDev > 1e-6 * Math.Max(1, Math.Abs(Mean)) ? (float)(1 / StdDev) : 1f;

    /// <summary>The normalised value of an intensity.</summary>
    public float Normalise(float v) => (float)((Math.Clamp(v, Low, High) - Mean) * Scale);

    /// <summary>
    /// The rank of a percentile among n sorted values: floor(p / 100 · (n − 1)) (the "lower" interpolation of numpy).
    /// </summary>
    public static long Rank(double percentile, long n) => Math.Clamp((long)Math.Floor(percentile / 100 * (n - 1)), 0, n - 1);

    /// <summary>
    /// Computes the statistics of <paramref name="values"/>, whose minimum and maximum are given (exact order
    /// statistics: a histogram finds the bins holding the two ranks, and only those bins' values are sorted).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static IntensityStats Compute(ReadOnlySpan<float> values, float min, float max, double lowerPercentile, double upperPercentile, Scratch scratch)
    {
        var n = values.Length;
        if (n == 0)
        {
            return new IntensityStats(0, 0, 0, 0);
        }

        if (min == max)
        {
            return new IntensityStats(min, max, min, 0);
        }

        var lowRank = Rank(lowerPercentile, n);
        var highRank = Rank(upperPercentile, n);
        var histogram = scratch.Histogram;
        Array.Clear(histogram);
        var scale = (float)((Bins - 1) / ((double)max - min));
        foreach (var v in values)
        {
            histogram[Bin(v, min, scale)]++;
        }

        var (lowBin, lowBefore) = FindBin(histogram, lowRank);
        var (highBin, highBefore) = FindBin(histogram, highRank);

        // One pass gathers the values of both bins (the low bin's first, then the high bin's, when they differ).
        var lowCount = histogram[lowBin];
        var members = scratch.BinValues(lowCount + (highBin != lowBin ? histogram[highBin] : 0));
        int kl = 0, kh = lowCount;
        foreach (var v in values)
        {
            var b = Bin(v, min, scale);
            if (b == lowBin)
            {
                members[kl++] = v;
            }
            else if (b == highBin)
            {
                members[kh++] = v;
            }
        }

        var lowMembers = members.AsSpan(0, lowCount);
        lowMembers.Sort();
        var low = lowMembers[(int)(lowRank - lowBefore)];
        float high;
        if (highBin == lowBin)
        {
            high = lowMembers[(int)(highRank - lowBefore)];
        }
        else
        {
            var highMembers = members.AsSpan(lowCount, kh - lowCount);
            highMembers.Sort();
            high = highMembers[(int)(highRank - highBefore)];
        }

        var (sum, squares) = ClippedSums(values, low, high);
        var mean = sum / n;
        var variance = Math.Max(0, (squares / n) - (mean * mean));
        return new IntensityStats(low, high, mean + low, Math.Sqrt(variance));
    }

    /// <summary>Computes the statistics of <paramref name="values"/> (see the overload taking their range).</summary>
    public static IntensityStats Compute(ReadOnlySpan<float> values, double lowerPercentile, double upperPercentile, Scratch scratch)
    {
        var (min, max) = MinMax(values);
        return Compute(values, min, max, lowerPercentile, upperPercentile, scratch);
    }

    /// <summary>The minimum and maximum of the values (+inf and -inf when there are none).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static (float Min, float Max) MinMax(ReadOnlySpan<float> values)
    {
        var i = 0;
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        if (Vector256.IsHardwareAccelerated && values.Length >= 8)
        {
            var vmin = Vector256.Create(float.PositiveInfinity);
            var vmax = Vector256.Create(float.NegativeInfinity);
            for (; i <= values.Length - 8; i += 8)
            {
                var v = Vector256.Create(values[i..]);
                vmin = Vector256.Min(vmin, v);
                vmax = Vector256.Max(vmax, v);
            }

            for (var k = 0; k < 8; k++)
            {
                min = Math.Min(min, vmin[k]);
                max = Math.Max(max, vmax[k]);
            }
        }

        for (; i < values.Length; i++)
        {
            min = Math.Min(min, values[i]);
            max = Math.Max(max, values[i]);
        }

        return (min, max);
    }

    /// <summary>Σ c and Σ c² over c = clamp(v, low, high) − low, in double precision.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (double Sum, double Squares) ClippedSums(ReadOnlySpan<float> values, float low, float high)
    {
        var i = 0;
        double sum = 0, squares = 0;
        if (Vector256.IsHardwareAccelerated && values.Length >= 8)
        {
            var vlow = Vector256.Create(low);
            var vhigh = Vector256.Create(high);
            var s = Vector256<double>.Zero;
            var q = Vector256<double>.Zero;
            for (; i <= values.Length - 8; i += 8)
            {
                var c = Vector256.Min(Vector256.Max(Vector256.Create(values[i..]), vlow), vhigh) - vlow;
                var (a, b) = Vector256.Widen(c);
                s += a + b;
                q += (a * a) + (b * b);
            }

            sum = Vector256.Sum(s);
            squares = Vector256.Sum(q);
        }

        for (; i < values.Length; i++)
        {
            double c = Math.Clamp(values[i], low, high) - low;
            sum += c;
            squares += c * c;
        }

        return (sum, squares);
    }

    private static int Bin(float v, float min, float scale) => Math.Min(Bins - 1, (int)((v - min) * scale));

    /// <summary>The bin holding the value of rank <paramref name="rank"/>, and how many values lie in lower bins.</summary>
    private static (int Bin, long Before) FindBin(int[] histogram, long rank)
    {
        long before = 0;
        for (var b = 0; b < histogram.Length; b++)
        {
            if (before + histogram[b] > rank)
            {
                return (b, before);
            }

            before += histogram[b];
        }

        throw new InvalidOperationException("rank beyond the histogram");
    }

    /// <summary>Reusable buffers of one worker.</summary>
    internal sealed class Scratch
    {
        private float[] _binValues = new float[1024];

        public int[] Histogram { get; } = new int[Bins];

        public float[] BinValues(int count)
        {
            if (_binValues.Length < count)
            {
                _binValues = new float[Math.Max(count, _binValues.Length * 2)];
            }

            return _binValues;
        }
    }
}
