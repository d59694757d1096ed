using MriSeg.Privacy.Numerics;

namespace MriSeg.Privacy.Tests;

public sealed class FftTests
{
    private static (double[] Re, double[] Im) Pack(double[] x)
    {
        int n = x.Length / 2;
        var re = new double[n + 1];
        var im = new double[n + 1];
        for (int j = 0; j < n; j++)
        {
            re[j] = x[2 * j];
            im[j] = x[(2 * j) + 1];
        }

        return (re, im);
    }

    [Theory]
    [InlineData(4)]
    [InlineData(8)]
    [InlineData(64)]
    [InlineData(512)]
    [InlineData(16384)] // beyond one cache block: exercises the full passes
    public void Forward_matches_a_direct_dft(int m)
    {
        var rnd = new Random(m);
        var x = Enumerable.Range(0, m).Select(_ => rnd.NextDouble() - 0.5).ToArray();
        var fft = new RealFft(m);
        var (re, im) = Pack(x);
        fft.Forward(re, im);
        int n = m / 2;
        var ks = m <= 512 ? Enumerable.Range(0, n + 1) : new[] { 0, 1, 2, 3, 777, n / 2, n - 1, n };
        foreach (int k in ks)
        {
            // Direct DFT with exact angle reduction (k·t mod m).
            double sr = 0, si = 0;
            for (int t = 0; t < m; t++)
            {
                double angle = -2.0 * Math.PI * (((long)k * t) % m) / m;
                sr += x[t] * Math.Cos(angle);
                si += x[t] * Math.Sin(angle);
            }

            int p = fft.SpectrumIndex(k);
            Assert.True(Math.Abs(sr - re[p]) < 1e-10 * Math.Sqrt(m) && Math.Abs(si - im[p]) < 1e-10 * Math.Sqrt(m), $"k={k}: ({re[p]}, {im[p]}) vs ({sr}, {si})");
        }
    }

    [Theory]
    [InlineData(4)]
    [InlineData(1024)]
    [InlineData(1 << 16)]
    public void Inverse_undoes_forward(int m)
    {
        var rnd = new Random(7);
        var x = Enumerable.Range(0, m).Select(_ => rnd.NextDouble()).ToArray();
        var fft = new RealFft(m);
        var (re, im) = Pack(x);
        fft.Forward(re, im);
        fft.Inverse(re, im);
        for (int j = 0; j < m / 2; j++)
        {
            Assert.Equal(x[2 * j], re[j], 1e-13);
            Assert.Equal(x[(2 * j) + 1], im[j], 1e-13);
        }
    }

    [Fact]
    public void Pointwise_product_is_circular_convolution()
    {
        const int m = 256;
        var rnd = new Random(3);
        var a = Enumerable.Range(0, m).Select(_ => rnd.NextDouble()).ToArray();
        var b = Enumerable.Range(0, m).Select(_ => rnd.NextDouble()).ToArray();
        var fft = new RealFft(m);
        var (ar, ai) = Pack(a);
        var (br, bi) = Pack(b);
        fft.Forward(ar, ai);
        fft.Forward(br, bi);
        for (int k = 0; k <= m / 2; k++)
        {
            double r = (ar[k] * br[k]) - (ai[k] * bi[k]);
            double i = (ar[k] * bi[k]) + (ai[k] * br[k]);
            ar[k] = r;
            ai[k] = i;
        }

        fft.Inverse(ar, ai);
        for (int t = 0; t < m; t++)
        {
            double expected = 0;
            for (int s = 0; s < m; s++)
            {
                expected += a[s] * b[(t - s + m) % m];
            }

            double got = (t & 1) == 0 ? ar[t / 2] : ai[t / 2];
            Assert.Equal(expected, got, 1e-10);
        }
    }

    [Fact]
    public void Rejects_lengths_that_are_not_powers_of_two()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new RealFft(6));
        Assert.Throws<ArgumentOutOfRangeException>(() => new RealFft(2));
    }

    [Fact]
    public void Log_space_helpers()
    {
        Assert.Equal(Math.Log(Math.Exp(1.0) + Math.Exp(2.0)), LogMath.LogAddExp(1.0, 2.0), 1e-14);
        Assert.Equal(5.0, LogMath.LogAddExp(double.NegativeInfinity, 5.0));
        Assert.Equal(1e-20, LogMath.Log1P(1e-20));
        Assert.Equal(1e-20, LogMath.ExpM1(1e-20));
        Assert.Equal(Math.Exp(0.3) - 1, LogMath.ExpM1(0.3), 1e-15);
        Assert.Equal(1000.0, LogMath.LogExpM1(1000.0), 1e-12);

        // log erfc: the direct branch and the asymptotic branch meet smoothly at 20.
        foreach (double x in new[] { -3.0, 0.0, 1.0, 5.0, 19.999 })
        {
            Assert.Equal(Math.Log(LogMath.Erfc(x)), LogMath.LogErfc(x), 1e-12 * Math.Max(1, Math.Abs(LogMath.LogErfc(x))));
        }

        double below = LogMath.LogErfc(20.0 - 1e-9);
        double above = LogMath.LogErfc(20.0);
        Assert.Equal(below, above, 1e-6);
        Assert.Equal(-(30.0 * 30.0) - Math.Log(30.0 * Math.Sqrt(Math.PI)), LogMath.LogErfc(30.0), 1e-3);
        Assert.Equal(LogMath.LogErfc(3.0) + 9.0, LogMath.LogErfcx(3.0), 1e-12);
        Assert.Equal(LogMath.LogErfcx(20.0 - 1e-9), LogMath.LogErfcx(20.0), 1e-9);

        // Alternating-series acceleration: 1 - 1/2 + 1/3 - ... = log 2.
        Assert.Equal(Math.Log(2.0), LogMath.AlternatingSum(k => 1.0 / (k + 1), 30), 1e-14);
    }
}
