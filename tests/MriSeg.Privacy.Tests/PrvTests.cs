using MriSeg.Privacy.Numerics;
using MriSeg.Privacy.Prv;

namespace MriSeg.Privacy.Tests;

public sealed class PrvTests
{
    private static double Phi(double x) => 0.5 * LogMath.Erfc(-x / Math.Sqrt(2.0));

    /// <summary>Exact ε of N compositions of the Gaussian mechanism (q = 1): μ = √N/σ (Balle and Wang 2018).</summary>
    private static double GaussianEpsilon(double sigma, long steps, double delta)
    {
        double mu = Math.Sqrt(steps) / sigma;
        double DeltaOf(double eps) => Phi((-eps / mu) + (mu / 2)) - (Math.Exp(eps) * Phi((-eps / mu) - (mu / 2)));
        double lo = 0, hi = 100;
        for (int i = 0; i < 200; i++)
        {
            double mid = 0.5 * (lo + hi);
            if (DeltaOf(mid) > delta)
            {
                lo = mid;
            }
            else
            {
                hi = mid;
            }
        }

        return hi;
    }

    [Theory]
    [InlineData(1.0, 1L, 1e-5)]
    [InlineData(2.0, 100L, 1e-5)]
    [InlineData(5.0, 1000L, 1e-6)]
    [InlineData(0.8, 10L, 1e-3)]
    public void Full_batch_matches_the_exact_gaussian_curve(double sigma, long steps, double delta)
    {
        double exact = GaussianEpsilon(sigma, steps, delta);
        var p = PrvAccountant.ComputeEpsilon(1.0, sigma, steps, delta);
        Assert.Null(p.Fallback);
        Assert.True(p.EpsilonLower <= exact && exact <= p.Epsilon, $"exact {exact}, band [{p.EpsilonLower}, {p.Epsilon}]");
        Assert.Equal(exact, p.EpsilonEstimate, 2e-3);
        Assert.Equal(exact + 0.01, p.Epsilon, 5e-3);
    }

    [Fact]
    public void Cdf_and_mean_agree_with_direct_integration()
    {
        var prv = new SubsampledGaussianPrv(0.05, 0.9);
        double lower = prv.LowerSupport;
        Assert.Equal(Math.Log(0.95), lower, 1e-15);
        prv.Cdf(lower - 1e-3, out double f0, out double s0);
        Assert.Equal(0.0, f0);
        Assert.Equal(1.0, s0);
        prv.Cdf(60, out double f1, out double s1);
        Assert.Equal(1.0, f1);
        Assert.True(s1 >= 0 && s1 < 1e-300);

        // E[Y] = KL(P || Q) >= 0 and E[exp(-Y)] = 1 (Y is a privacy loss); check the first with the partial mean.
        double mean = prv.PartialMean(-50, 50);
        Assert.True(mean > 0 && mean < 0.05, mean.ToString());
        double viaCdf = 0;
        double h = 1e-4;
        for (double t = lower; t < 20; t += h)
        {
            viaCdf += (t + (h / 2)) * prv.Mass(t, t + h);
        }

        Assert.Equal(mean, viaCdf, 1e-8);
    }

    [Fact]
    public void Discretisation_keeps_the_mean_and_total_mass()
    {
        var prv = new SubsampledGaussianPrv(0.01, 1.0);
        double dt = 1e-3;
        long jMin = -5000, jMax = 5000;
        int n = 8192;
        var re = new double[n + 1];
        var im = new double[n + 1];
        double shift = PrvComposition.Discretise(prv, jMin, jMax, dt, re, im);
        Assert.True(Math.Abs(shift) < dt / 2);
        Assert.Equal(1.0, re.Sum() + im.Sum(), 1e-12);
    }

    [Fact]
    public void Splitting_a_run_gives_the_same_epsilon()
    {
        var whole = PrvComposition.ComputeEpsilon([new PrivacyEvent(0.02, 1.0, 1000)], 1e-5, PrvOptions.Default);
        var split = PrvComposition.ComputeEpsilon([new PrivacyEvent(0.02, 1.0, 300), new PrivacyEvent(0.02, 1.0, 700)], 1e-5, PrvOptions.Default);
        Assert.Equal(whole.Epsilon, split.Epsilon, 1e-6);
    }

    [Fact]
    public void Heterogeneous_history_is_order_free_and_between_its_parts_and_rdp()
    {
        var a = new PrivacyEvent(0.01, 0.9, 500);
        var b = new PrivacyEvent(0.05, 1.5, 200);
        double ab = PrvComposition.ComputeEpsilon([a, b], 1e-5, PrvOptions.Default).Epsilon;
        double ba = PrvComposition.ComputeEpsilon([b, a], 1e-5, PrvOptions.Default).Epsilon;
        Assert.Equal(ab, ba, 1e-6);

        double onlyA = PrvComposition.ComputeEpsilon([a], 1e-5, PrvOptions.Default).Epsilon;
        double onlyB = PrvComposition.ComputeEpsilon([b], 1e-5, PrvOptions.Default).Epsilon;
        Assert.True(ab > Math.Max(onlyA, onlyB));

        var rdp = new RdpAccountant();
        rdp.Compose([a, b]);
        Assert.True(ab <= rdp.GetEpsilon(1e-5) + 0.01, $"prv {ab} rdp {rdp.GetEpsilon(1e-5)}");

        var ledger = new PrvAccountant();
        ledger.Compose(a.SampleRate, a.NoiseMultiplier, a.Steps);
        ledger.Compose(b.SampleRate, b.NoiseMultiplier, b.Steps);
        Assert.Equal(ab, ledger.GetEpsilon(1e-5), 1e-12);
    }

    [Fact]
    public void Epsilon_grows_with_steps_and_sample_rate_and_falls_with_noise()
    {
        double Eps(double q, double s, long n) => PrvAccountant.ComputeEpsilon(q, s, n, 1e-5).Epsilon;
        double previous = 0;
        foreach (long n in new long[] { 1, 10, 100, 1000 })
        {
            double e = Eps(0.02, 1.0, n);
            Assert.True(e > previous, $"steps {n}");
            previous = e;
        }

        previous = 0;
        foreach (double q in new[] { 0.005, 0.02, 0.1, 0.5 })
        {
            double e = Eps(q, 1.0, 100);
            Assert.True(e > previous, $"q {q}");
            previous = e;
        }

        previous = double.PositiveInfinity;
        foreach (double s in new[] { 0.6, 0.9, 1.3, 2.0, 5.0 })
        {
            double e = Eps(0.02, s, 100);
            Assert.True(e < previous, $"sigma {s}");
            previous = e;
        }
    }

    [Fact]
    public void Prv_is_tighter_than_rdp_but_reports_the_upper_end_of_its_band()
    {
        var p = PrvAccountant.ComputeEpsilon(0.01, 1.0, 1000, 1e-5);
        double rdp = RdpAccountant.ComputeEpsilon(0.01, 1.0, 1000, 1e-5).Epsilon;
        Assert.True(p.EpsilonLower < p.EpsilonEstimate && p.EpsilonEstimate < p.Epsilon);
        Assert.True(p.Epsilon - p.EpsilonEstimate >= 0.01);
        Assert.True(p.Epsilon < rdp);
    }

    [Fact]
    public void Trivial_and_degenerate_histories()
    {
        Assert.Equal(0.0, new PrvAccountant().GetEpsilon(1e-5));
        Assert.Equal(0.0, PrvAccountant.ComputeEpsilon(0.0, 1.0, 1000, 1e-5).Epsilon);
        Assert.Equal(double.PositiveInfinity, PrvAccountant.ComputeEpsilon(0.1, 0.0, 10, 1e-5).Epsilon);

        // A grid cap forces the RDP fallback, which is flagged and equals RDP's epsilon.
        var capped = PrvAccountant.ComputeEpsilon(0.01, 1.0, 1000, 1e-5, new PrvOptions { MaxGridPoints = 1000 });
        Assert.NotNull(capped.Fallback);
        Assert.Equal(RdpAccountant.ComputeEpsilon(0.01, 1.0, 1000, 1e-5).Epsilon, capped.Epsilon, 1e-12);
        Assert.Throws<InvalidOperationException>(() => PrvAccountant.ComputeEpsilon(0.01, 1.0, 1000, 1e-5, new PrvOptions { MaxGridPoints = 1000, FallbackToRdp = false }));
    }

    [Fact]
    public void Cached_result_is_dropped_when_the_history_changes()
    {
        var ledger = new PrvAccountant();
        ledger.Compose(0.02, 1.0, 100);
        double first = ledger.GetEpsilon(1e-5);
        Assert.Equal(first, ledger.GetEpsilon(1e-5));
        ledger.Step(0.02, 1.0);
        Assert.True(ledger.GetEpsilon(1e-5) > first);
        var copy = (PrvAccountant)ledger.Clone();
        Assert.Equal(ledger.History, copy.History);
        ledger.Reset();
        Assert.Equal(0.0, ledger.GetEpsilon(1e-5));
        Assert.Equal(101, copy.TotalSteps);
    }
}
