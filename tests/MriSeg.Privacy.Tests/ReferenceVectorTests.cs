using System.Diagnostics;
using System.Globalization;

namespace MriSeg.Privacy.Tests;

/// <summary>Agreement with Opacus 1.5.4 (RDPAccountant, PRVAccountant, get_noise_multiplier).</summary>
[Trait("Category", "RealData")]
public sealed class ReferenceVectorTests
{
    private static void Log(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    [Fact]
    public void Rdp_matches_every_vector_within_half_a_percent_with_the_same_order()
    {
        var table = ReferenceData.TableOrSkip();
        double maxRel = 0.0;
        var failures = new List<string>();
        foreach (var v in table)
        {
            var r = RdpAccountant.ComputeEpsilon(v.Q, v.Sigma, v.Steps, v.Delta);
            double rel = Math.Abs(r.Epsilon / v.Rdp - 1.0);
            maxRel = Math.Max(maxRel, rel);
            if (rel > 0.005 || r.Order != v.RdpAlpha)
            {
                failures.Add($"{v}: eps {r.Epsilon} (order {r.Order}) vs {v.Rdp} (order {v.RdpAlpha})");
            }
        }

        Log($"RDP: {table.Count} vectors, max relative error {maxRel:E2}");
        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
        Assert.True(table.Count >= 60);
    }

    [Fact]
    public void Prv_matches_every_finite_vector_within_three_percent_and_never_far_below()
    {
        var table = ReferenceData.TableOrSkip();
        double maxRel = 0.0;
        var failures = new List<string>();
        var sw = Stopwatch.StartNew();
        foreach (var v in table.Where(v => v.Prv is not null))
        {
            var p = PrvAccountant.ComputeEpsilon(v.Q, v.Sigma, v.Steps, v.Delta);
            double rel = (p.Epsilon / v.Prv!.Value) - 1.0;
            maxRel = Math.Max(maxRel, Math.Abs(rel));
            if (Math.Abs(rel) > 0.03 || p.Fallback is not null)
            {
                failures.Add($"{v}: eps {p.Epsilon} vs {v.Prv} ({rel:P3}) {p.Fallback}");
            }
        }

        Log($"PRV: max relative error {maxRel:E2} over the finite vectors, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
    }

    /// <summary>
    /// Opacus returns ∞ for these because exp(t) overflows for t &gt; 709 on its grid, not because ε is
    /// infinite (RDP bounds it by ~800). Our grid for them would exceed MaxGridPoints, so the accountant
    /// reports the RDP ε — a finite, valid upper bound — and says so.
    /// </summary>
    [Fact]
    public void Prv_infinite_vectors_get_the_finite_rdp_upper_bound_with_a_note()
    {
        var table = ReferenceData.TableOrSkip();
        var infinite = table.Where(v => v.Prv is null).ToList();
        Assert.NotEmpty(infinite);
        foreach (var v in infinite)
        {
            var p = PrvAccountant.ComputeEpsilon(v.Q, v.Sigma, v.Steps, v.Delta);
            Assert.True(double.IsFinite(p.Epsilon), v.ToString());
            Assert.NotNull(p.Fallback);
            Assert.Equal(v.Rdp, p.Epsilon, 1e-9 * v.Rdp);

            var strict = new PrvOptions { FallbackToRdp = false };
            Assert.Throws<InvalidOperationException>(() => PrvAccountant.ComputeEpsilon(v.Q, v.Sigma, v.Steps, v.Delta, strict));
        }
    }

    [Fact]
    public void Calibration_reaches_opacus_targets_to_a_tenth_of_a_percent()
    {
        var cases = ReferenceData.CalibrationsOrSkip();
        Assert.NotEmpty(cases);
        foreach (var c in cases)
        {
            var kind = AccountantKinds.Parse(c.Accountant);
            var sw = Stopwatch.StartNew();
            var r = NoiseCalibration.FindNoiseMultiplier(c.TargetEpsilon, c.Delta, c.Q, c.Steps, kind);
            sw.Stop();
            double Eps(double sigma) => kind == AccountantKind.Rdp
                ? RdpAccountant.ComputeEpsilon(c.Q, sigma, c.Steps, c.Delta).Epsilon
                : PrvAccountant.ComputeEpsilon(c.Q, sigma, c.Steps, c.Delta).Epsilon;

            double atSigma = Eps(r.NoiseMultiplier);
            double below = Eps(r.NoiseMultiplier * (1 - 0.001));
            Log(string.Create(CultureInfo.InvariantCulture,
                $"{c.Accountant} target {c.TargetEpsilon}: sigma {r.NoiseMultiplier:F6} (Opacus {c.Sigma}), eps {atSigma:F5}, eps(0.999 sigma) {below:F5}, {r.Evaluations} evaluations, {sw.Elapsed.TotalMilliseconds:F0} ms"));
            Assert.True(atSigma <= c.TargetEpsilon, $"{c}: eps({r.NoiseMultiplier}) = {atSigma}");
            Assert.True(below > c.TargetEpsilon, $"{c}: eps(0.999 sigma) = {below}");

            // Opacus stops within 0.01 of the target, so its sigma is at least ours and close to it.
            Assert.True(r.NoiseMultiplier <= c.Sigma * 1.001, $"{c}: ours {r.NoiseMultiplier}");
            Assert.True(r.NoiseMultiplier >= c.Sigma * 0.98, $"{c}: ours {r.NoiseMultiplier}");
        }
    }
}
