using System.Globalization;
using System.Numerics;
using MriSeg.Privacy.Numerics;

namespace MriSeg.Privacy.Prv;

/// <summary>
/// Numerical composition of privacy random variables (Gopi, Lee, Wutschitz, "Numerical Composition of
/// Differential Privacy", NeurIPS 2021), with the error parameters of Opacus 1.5.4's PRVAccountant.
/// </summary>
/// <remarks>
/// <list type="number">
/// <item>Domain: L = max(ε_RDP(history; δ_err/4), max_k ε_RDP(one step of run k; δ_err/(8N)), ε_err) + 3
/// (remark 5.6 of the paper) and mesh h = ε_err / sqrt(N·log(12/δ_err)/2), N the total number of steps;
/// the grid is t_j = j·h for j from ⌊-L/h⌋ to ⌈L/h⌉.</item>
/// <item>Each step's PRV is truncated to the domain and discretised: bin j gets the probability of
/// [t_j - h/2, t_j + h/2]; the grid of that run is then shifted by (continuous mean − discrete mean) so the
/// discretisation keeps the mean, which is what makes its rounding errors cancel over compositions.</item>
/// <item>Composition: the pmfs live on one power-of-two circular grid (at least the domain); the
/// spectrum of the composition is Π_k FFT(pmf_k)^(n_k), inverted once; the circular index of the sum is
/// mapped back to the absolute grid index.</item>
/// <item>ε: δ(ε) = Σ_{t_j &gt; ε} p_j (1 - e^(ε - t_j)) is inverted exactly on the discrete distribution with
/// tail sums kept relative to the current grid point (no overflow for large ε);
/// the reported bound is ε(δ - δ_err) + ε_err (Opacus's eps_upper).</item>
/// </list>
/// </remarks>
internal static class PrvComposition
{
    private const double MachineEpsilon = 2.220446049250313e-16;
    private const double TailCutoff = 1e-30;

    public static PrvEpsilon ComputeEpsilon(IReadOnlyList<PrivacyEvent> history, double delta, PrvOptions options)
    {
        double epsError = options.EpsilonError;
        double deltaError = options.DeltaError ?? delta / 1000.0;
        if (!(epsError > 0.0))
        {
            throw new ArgumentOutOfRangeException(nameof(options), epsError, "EpsilonError must be > 0.");
        }

        if (!(deltaError > 0.0) || deltaError >= delta)
        {
            throw new ArgumentOutOfRangeException(nameof(options), deltaError, "DeltaError must be in (0, delta).");
        }

        // Runs that leak nothing (q = 0 or σ = ∞) are dropped; σ = 0 with q > 0 leaks everything.
        var runs = new List<PrivacyEvent>();
        foreach (var e in history)
        {
            if (e.Steps == 0 || e.SampleRate == 0.0 || double.IsPositiveInfinity(e.NoiseMultiplier))
            {
                continue;
            }

            if (e.NoiseMultiplier == 0.0)
            {
                return PrvEpsilon.Infinite(epsError, deltaError);
            }

            runs.Add(e);
        }

        if (runs.Count == 0)
        {
            return new PrvEpsilon(0.0, 0.0, 0.0, epsError, deltaError, 0.0, 0.0, 0, null);
        }

        long totalSteps = runs.Sum(e => e.Steps);

        // Domain half-width from RDP tail bounds (remark 5.6).
        var all = new RdpAccountant();
        all.Compose(runs);
        double l = all.GetEpsilon(deltaError / 4.0);
        foreach (var e in runs)
        {
            l = Math.Max(l, RdpAccountant.ComputeEpsilon(e.SampleRate, e.NoiseMultiplier, 1, deltaError / (8.0 * totalSteps)).Epsilon);
        }

        l = Math.Max(l, epsError) + 3.0;
        double dt = epsError / Math.Sqrt(totalSteps * Math.Log(12.0 / deltaError) / 2.0);

        // Valid (looser) upper bound reported when the PRV computation cannot run.
        double RdpBound() => RdpAccountantFor(runs).GetEpsilon(delta);

        if (double.IsInfinity(l))
        {
            return PrvEpsilon.Infinite(epsError, deltaError);
        }

        double jMinD = Math.Floor(-l / dt);
        double jMaxD = Math.Ceiling(l / dt);
        double sizeD = jMaxD - jMinD + 1.0;
        if (sizeD > options.MaxGridPoints || sizeD > (1L << 30))
        {
            return Fallback(options, RdpBound, epsError, deltaError, dt, l, (long)Math.Min(sizeD, long.MaxValue),
                string.Create(CultureInfo.InvariantCulture, $"the PRV grid would need {sizeD:0} points (mesh {dt:G3} over [-{l:G4}, {l:G4}]), more than MaxGridPoints = {options.MaxGridPoints}"));
        }

        long jMin = (long)jMinD;
        long jMax = (long)jMaxD;
        long size = jMax - jMin + 1;
        int m = (int)Math.Max(64, BitOperations.RoundUpToPowerOf2((ulong)size));
        if (MachineEpsilon * m > delta - deltaError)
        {
            return Fallback(options, RdpBound, epsError, deltaError, dt, l, m,
                string.Create(CultureInfo.InvariantCulture, $"delta - delta_error = {delta - deltaError:G3} is below the floating-point noise of a {m}-point FFT"));
        }

        var fft = new RealFft(m);
        int n = m / 2;
        double[]? accRe = null;
        double[]? accIm = null;
        double totalShift = 0.0;
        foreach (var e in runs)
        {
            var re = new double[n + 1];
            var im = new double[n + 1];
            double shift = Discretise(new SubsampledGaussianPrv(e.SampleRate, e.NoiseMultiplier), jMin, jMax, dt, re, im);
            if (!(Math.Abs(shift) < dt / 2.0))
            {
                return Fallback(options, RdpBound, epsError, deltaError, dt, l, m,
                    string.Create(CultureInfo.InvariantCulture, $"the discretised mean of (q={e.SampleRate}, sigma={e.NoiseMultiplier}) is off by {shift:G3}, more than half the mesh"));
            }

            totalShift += e.Steps * shift;
            fft.Forward(re, im);
            Power(re, im, n, e.Steps);
            if (accRe is null || accIm is null)
            {
                accRe = re;
                accIm = im;
            }
            else
            {
                for (int k = 0; k <= n; k++)
                {
                    double r = (accRe[k] * re[k]) - (accIm[k] * im[k]);
                    double i = (accRe[k] * im[k]) + (accIm[k] * re[k]);
                    accRe[k] = r;
                    accIm[k] = i;
                }
            }
        }

        fft.Inverse(accRe!, accIm!);
        var (upper, estimate, lower) = InvertDelta(accRe!, accIm!, m, jMin, totalSteps, dt, totalShift,
            delta - deltaError, delta, delta + deltaError);
        return new PrvEpsilon(
            Math.Max(upper, 0.0) + epsError,
            Math.Max(estimate, 0.0),
            Math.Max(lower - epsError, 0.0),
            epsError,
            deltaError,
            dt,
            l,
            m,
            null);
    }

    private static RdpAccountant RdpAccountantFor(IEnumerable<PrivacyEvent> runs)
    {
        var rdp = new RdpAccountant();
        rdp.Compose(runs);
        return rdp;
    }

    private static PrvEpsilon Fallback(PrvOptions options, Func<double> rdpBound, double epsError, double deltaError,
        double dt, double l, long points, string reason)
    {
        if (!options.FallbackToRdp)
        {
            throw new InvalidOperationException($"PRV accountant cannot run: {reason}.");
        }

        double eps = rdpBound();
        return new PrvEpsilon(eps, double.NaN, 0.0, epsError, deltaError, dt, l, points,
            $"{reason}; reporting the RDP bound instead (a valid, looser upper bound)");
    }

    /// <summary>
    /// Writes the truncated, discretised pmf into the packed arrays (index a = j - jMin: even a in re,
    /// odd a in im) and returns the mean correction (continuous mean - discrete mean).
    /// </summary>
    internal static double Discretise(SubsampledGaussianPrv prv, long jMin, long jMax, double dt, double[] re, double[] im)
    {
        double tMin = jMin * dt;
        double tMax = jMax * dt;
        double mass = prv.Mass(tMin, tMax);
        if (!(mass > 0.0))
        {
            throw new InvalidOperationException("The PRV has no mass on the domain.");
        }

        double lower = prv.LowerSupport;
        long jStart = jMin;
        if (!double.IsNegativeInfinity(lower))
        {
            jStart = Math.Max(jMin, (long)Math.Floor((lower / dt) + 0.5));
        }

        var discreteMean = new CompensatedSum();
        double edge = Math.Max(tMin, (jStart - 0.5) * dt);
        prv.Cdf(edge, out double fLo, out double sLo);
        for (long j = jStart; j <= jMax; j++)
        {
            double hi = Math.Min(tMax, (j + 0.5) * dt);
            prv.Cdf(hi, out double fHi, out double sHi);
            double p = (fHi <= 0.5 ? fHi - fLo : sLo - sHi) / mass;
            if (p > 0.0)
            {
                long a = j - jMin;
                if ((a & 1) == 0)
                {
                    re[a >> 1] = p;
                }
                else
                {
                    im[a >> 1] = p;
                }

                discreteMean.Add(j * dt * p);
            }

            if (sHi < TailCutoff && j < jMax)
            {
                // The rest of the upper tail (below 1e-30) goes to the top bin: never optimistic, and it
                // saves evaluating the CDF over a range that carries nothing.
                prv.Cdf(tMax, out _, out double sMax);
                double rest = Math.Max(sHi - sMax, 0.0) / mass;
                if (rest > 0.0)
                {
                    long a = jMax - jMin;
                    if ((a & 1) == 0)
                    {
                        re[a >> 1] += rest;
                    }
                    else
                    {
                        im[a >> 1] += rest;
                    }

                    discreteMean.Add(jMax * dt * rest);
                }

                break;
            }

            fLo = fHi;
            sLo = sHi;
        }

        double continuousMean = prv.PartialMean(tMin, tMax) / mass;
        return continuousMean - discreteMean.Value;
    }

    /// <summary>X[k] ← X[k]^steps for k = 0..n, in polar form; magnitudes that underflow become 0.</summary>
    private static void Power(double[] re, double[] im, int n, long steps)
    {
        if (steps == 1)
        {
            return;
        }

        // |X|^steps < 1e-320 when |X|² < exp(-2·737/steps).
        double r2Min = Math.Exp(-2.0 * 737.0 / steps);
        for (int k = 0; k <= n; k++)
        {
            double x = re[k];
            double y = im[k];
            double r2 = (x * x) + (y * y);
            if (r2 < r2Min)
            {
                re[k] = 0.0;
                im[k] = 0.0;
                continue;
            }

            double magnitude = Math.Exp(0.5 * steps * Math.Log(r2));
            double angle = steps * Math.Atan2(y, x);
            var (s, c) = Math.SinCos(angle);
            re[k] = magnitude * c;
            im[k] = magnitude * s;
        }
    }

    /// <summary>
    /// Solves δ(ε) = target on the composed discrete PRV for three targets at once, walking down from the
    /// top of the circular window. Returns ε for (target1, target2, target3).
    /// </summary>
    private static (double, double, double) InvertDelta(double[] re, double[] im, int m, long jMin, long totalSteps,
        double dt, double shift, double target1, double target2, double target3)
    {
        Span<double> targets = [target1, target2, target3];
        Span<double> eps = [double.NaN, double.NaN, double.NaN];
        int open = 3;
        double decay = Math.Exp(-dt);

        // Circular index of absolute grid index J is (J - totalSteps·jMin) mod m.
        long jTop = jMin + m - 1;
        long offset = (long)(((Int128)jTop - ((Int128)totalSteps * jMin)) % m);
        int idx = (int)(offset < 0 ? offset + m : offset);

        var s1 = new CompensatedSum(); // Σ_{k ≥ J} p_k
        double s2 = 0.0; // Σ_{k ≥ J} p_k e^{-(t_k - t_J)}
        double prevS1 = 0.0;
        double prevS2 = 0.0;
        for (long j = jTop; j >= jMin && open > 0; j--)
        {
            double p = (idx & 1) == 0 ? re[idx >> 1] : im[idx >> 1];
            if (p < 0.0)
            {
                p = 0.0; // FFT round-off; dropping it can only raise δ(ε)
            }

            s1.Add(p);
            s2 = (s2 * decay) + p;
            double s1v = s1.Value;
            double deltaHere = s1v - s2; // δ(t_J)
            for (int i = 0; i < 3; i++)
            {
                if (double.IsNaN(eps[i]) && deltaHere > targets[i])
                {
                    // δ(t_J) > target ≥ δ(t_{J+1}): ε in (t_J, t_{J+1}].
                    double tNext = ((j + 1) * dt) + shift;
                    eps[i] = tNext + Math.Log((prevS1 - targets[i]) / prevS2);
                    open--;
                }
            }

            prevS1 = s1v;
            prevS2 = s2;
            idx = idx == 0 ? m - 1 : idx - 1;
        }

        for (int i = 0; i < 3; i++)
        {
            if (double.IsNaN(eps[i]))
            {
                // δ stays below the target over the whole window: ε is at most the bottom of the window.
                double tBottom = (jMin * dt) + shift;
                double ratio = (prevS1 - targets[i]) / prevS2;
                eps[i] = ratio > 0.0 ? tBottom + Math.Log(ratio) : double.NegativeInfinity;
            }
        }

        return (eps[0], eps[1], eps[2]);
    }
}
