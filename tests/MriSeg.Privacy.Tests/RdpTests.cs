using MriSeg.Privacy.Rdp;

namespace MriSeg.Privacy.Tests;

public sealed class RdpTests
{
    [Fact]
    public void Default_orders_are_opacus_grid()
    {
        var orders = SampledGaussianRdp.DefaultOrders;
        Assert.Equal(151, orders.Count);
        Assert.Equal(1.1, orders[0]);
        Assert.Equal(10.9, orders[98]);
        Assert.Equal(12.0, orders[99]);
        Assert.Equal(63.0, orders[^1]);
    }

    [Theory]
    [InlineData(0.5, 2.0)]
    [InlineData(1.0, 2.5)]
    [InlineData(3.0, 7.3)]
    [InlineData(0.8, 32.0)]
    public void Full_batch_is_the_gaussian_mechanism(double sigma, double alpha)
    {
        double expected = alpha / (2 * sigma * sigma);
        Assert.Equal(expected, SampledGaussianRdp.Compute(1.0, sigma, alpha), 1e-12 * expected);

        // The general series (integer and fractional paths) tends to the same value as q -> 1.
        double nearOne = SampledGaussianRdp.Compute(1.0 - 1e-9, sigma, alpha);
        Assert.Equal(expected, nearOne, 1e-6 * expected);
    }

    [Fact]
    public void Trivial_cases()
    {
        Assert.Equal(0.0, SampledGaussianRdp.Compute(0.0, 1.0, 2.5));
        Assert.Equal(double.PositiveInfinity, SampledGaussianRdp.Compute(0.1, 0.0, 2.5));
        Assert.Equal(double.PositiveInfinity, SampledGaussianRdp.Compute(0.1, 1.0, double.PositiveInfinity));
        Assert.Throws<ArgumentOutOfRangeException>(() => SampledGaussianRdp.Compute(1.5, 1.0, 2.0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SampledGaussianRdp.Compute(0.1, -1.0, 2.0));
        Assert.Throws<ArgumentOutOfRangeException>(() => SampledGaussianRdp.Compute(0.1, 1.0, 1.0));

        var (eps, order) = RdpConversion.ToEpsilon([2.0, 3.0], [double.PositiveInfinity, double.PositiveInfinity], 1e-5);
        Assert.Equal(double.PositiveInfinity, eps);
        Assert.True(double.IsNaN(order));
        Assert.Equal(0.0, new RdpAccountant().GetEpsilon(1e-5));
    }

    [Theory]
    [InlineData(0.01, 0.5)]
    [InlineData(0.01, 1.0)]
    [InlineData(0.1, 0.8)]
    [InlineData(0.1, 3.0)]
    [InlineData(0.3, 1.2)]
    [InlineData(0.5, 5.0)]
    public void Accelerated_fractional_series_matches_the_plain_series(double q, double sigma)
    {
        foreach (double alpha in new[] { 1.1, 1.5, 2.3, 4.7, 10.9 })
        {
            double fast = SampledGaussianRdp.LogAFractional(q, sigma, alpha);
            double plain = SampledGaussianRdp.LogAFractionalPlainSeries(q, sigma, alpha);
            // The plain series stops at terms 1e-14 of the sum, so agreement is to ~1e-13 absolute in log A.
            Assert.True(Math.Abs(fast - plain) <= 1e-13 + (1e-10 * Math.Abs(plain)), $"alpha={alpha}: {fast} vs {plain}");
        }
    }

    [Theory]
    [InlineData(0.01, 1.0, 2)]
    [InlineData(0.1, 0.7, 3)]
    [InlineData(0.2, 2.0, 7)]
    public void Fractional_orders_are_continuous_at_integers(double q, double sigma, int alpha)
    {
        double atInteger = SampledGaussianRdp.Compute(q, sigma, alpha);
        double justAbove = SampledGaussianRdp.Compute(q, sigma, alpha + 1e-9);
        double justBelow = SampledGaussianRdp.Compute(q, sigma, alpha - 1e-9);
        Assert.Equal(atInteger, justAbove, 1e-6 * atInteger);
        Assert.Equal(atInteger, justBelow, 1e-6 * atInteger);
    }

    [Fact]
    public void Rdp_is_stable_where_the_series_is_extreme()
    {
        // Tiny q, large sigma (A_alpha barely above 1) and small sigma, large alpha (huge A_alpha).
        double tiny = SampledGaussianRdp.Compute(1e-4, 20.0, 1.5);
        Assert.True(tiny > 0 && tiny < 1e-10, tiny.ToString());
        double approx = 1.5 * 1e-8 / (2 * 400); // alpha q^2 / (2 sigma^2) to leading order
        Assert.Equal(approx, tiny, 0.05 * approx);

        double huge = SampledGaussianRdp.Compute(0.5, 0.2, 10.5);
        Assert.True(double.IsFinite(huge) && huge > 50, huge.ToString());
        double hugeInt = SampledGaussianRdp.Compute(0.5, 0.2, 63);
        Assert.True(double.IsFinite(hugeInt) && hugeInt > huge);
    }

    [Fact]
    public void Rdp_is_additive_over_steps_and_runs()
    {
        var orders = SampledGaussianRdp.DefaultOrders;
        double[] a = SampledGaussianRdp.Compute(0.01, 1.1, orders);
        double[] b = SampledGaussianRdp.Compute(0.05, 0.9, orders);

        var ledger = new RdpAccountant();
        ledger.Compose(0.01, 1.1, 300);
        ledger.Compose(0.05, 0.9, 20);
        for (int i = 0; i < 5; i++)
        {
            ledger.Step(0.05, 0.9);
        }

        Assert.Equal([new PrivacyEvent(0.01, 1.1, 300), new PrivacyEvent(0.05, 0.9, 25)], ledger.History);
        Assert.Equal(325, ledger.TotalSteps);
        double[] total = ledger.GetTotalRdp();
        for (int i = 0; i < orders.Count; i++)
        {
            double expected = (300 * a[i]) + (25 * b[i]);
            Assert.Equal(expected, total[i], 1e-12 * expected);
        }

        // Splitting a run does not change epsilon; the order of runs does not matter.
        var split = new RdpAccountant();
        split.Compose(0.05, 0.9, 25);
        split.Compose(0.01, 1.1, 100);
        split.Compose(0.01, 1.2, 0);
        split.Compose(0.01, 1.1, 200);
        Assert.Equal(ledger.GetEpsilon(1e-5), split.GetEpsilon(1e-5), 1e-12);
    }

    [Fact]
    public void Epsilon_grows_with_steps_and_sample_rate_and_falls_with_noise()
    {
        double Eps(double q, double s, long n) => RdpAccountant.ComputeEpsilon(q, s, n, 1e-5).Epsilon;
        double previous = 0;
        foreach (long n in new long[] { 1, 10, 100, 1000, 10_000 })
        {
            double e = Eps(0.02, 1.0, n);
            Assert.True(e > previous, $"steps {n}");
            previous = e;
        }

        previous = 0;
        foreach (double q in new[] { 0.001, 0.01, 0.05, 0.2, 1.0 })
        {
            double e = Eps(q, 1.0, 100);
            Assert.True(e > previous, $"q {q}");
            previous = e;
        }

        previous = double.PositiveInfinity;
        foreach (double s in new[] { 0.4, 0.6, 0.9, 1.3, 2.0, 5.0 })
        {
            double e = Eps(0.02, s, 100);
            Assert.True(e < previous, $"sigma {s}");
            previous = e;
        }
    }

    [Fact]
    public void Conversion_is_the_improved_bound_and_clamps_at_zero()
    {
        // One order: eps = rdp + log((a-1)/a) - (log delta + log a)/(a-1).
        var (eps, order) = RdpConversion.ToEpsilon([3.0], [2.0], 1e-5);
        double expected = 2.0 + Math.Log(2.0 / 3.0) - ((Math.Log(1e-5) + Math.Log(3.0)) / 2.0);
        Assert.Equal(expected, eps, 1e-12);
        Assert.Equal(3.0, order);

        var (zero, _) = RdpConversion.ToEpsilon([63.0], [0.0], 0.5);
        Assert.Equal(0.0, zero);
    }
}
