namespace MriSeg.Privacy;

/// <summary>Outcome of <see cref="NoiseCalibration.FindNoiseMultiplier"/>.</summary>
/// <param name="NoiseMultiplier">σ found: ε(σ) ≤ target.</param>
/// <param name="Epsilon">ε at <see cref="NoiseMultiplier"/>.</param>
/// <param name="LowerNoiseMultiplier">A σ' ≥ σ·(1 - tolerance) with ε(σ') &gt; target, so σ is within the
/// relative tolerance of the smallest σ that reaches the target.</param>
/// <param name="LowerEpsilon">ε at <see cref="LowerNoiseMultiplier"/> (&gt; target).</param>
/// <param name="Accountant">Accountant used.</param>
/// <param name="Evaluations">Number of ε evaluations.</param>
public sealed record NoiseCalibrationResult(
    double NoiseMultiplier,
    double Epsilon,
    double LowerNoiseMultiplier,
    double LowerEpsilon,
    AccountantKind Accountant,
    int Evaluations);

/// <summary>
/// Smallest noise multiplier σ that keeps (q, σ, steps) within a target (ε, δ), by bracketing and
/// geometric bisection on ε(σ), which decreases with σ.
/// </summary>
public static class NoiseCalibration
{
    private const double MaxSigma = 1e4;
    private const double MinSigma = 1e-4;

    /// <summary>
    /// Finds σ with ε(σ) ≤ <paramref name="targetEpsilon"/> and ε(σ') &gt; target for some
    /// σ' ≥ σ·(1 - <paramref name="relativeTolerance"/>/2).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An argument is out of range, or the target cannot be
    /// reached with σ ≤ 10⁴ (RDP with δ fixed has a floor of about 0.1; PRV reports at least EpsilonError).</exception>
    public static NoiseCalibrationResult FindNoiseMultiplier(
        double targetEpsilon,
        double delta,
        double sampleRate,
        long steps,
        AccountantKind accountant = AccountantKind.Rdp,
        double relativeTolerance = 1e-3,
        PrvOptions? prvOptions = null)
    {
        if (!(targetEpsilon > 0.0) || double.IsPositiveInfinity(targetEpsilon))
        {
            throw new ArgumentOutOfRangeException(nameof(targetEpsilon), targetEpsilon, "Target epsilon must be positive and finite.");
        }

        if (!(delta > 0.0 && delta < 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(delta), delta, "delta must be in (0, 1).");
        }

        if (!(sampleRate >= 0.0 && sampleRate <= 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "Sample rate must be in [0, 1].");
        }

        if (steps < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(steps), steps, "Steps must be >= 0.");
        }

        if (!(relativeTolerance > 0.0 && relativeTolerance < 0.5))
        {
            throw new ArgumentOutOfRangeException(nameof(relativeTolerance), relativeTolerance, "Tolerance must be in (0, 0.5).");
        }

        double floor = (prvOptions ?? PrvOptions.Default).EpsilonError;
        if (accountant == AccountantKind.Prv && targetEpsilon <= floor)
        {
            throw new ArgumentOutOfRangeException(nameof(targetEpsilon), targetEpsilon,
                $"The prv accountant reports at least its EpsilonError ({floor}); the target must be above it.");
        }

        if (sampleRate == 0.0 || steps == 0)
        {
            return new NoiseCalibrationResult(0.0, 0.0, 0.0, 0.0, accountant, 0);
        }

        int evaluations = 0;
        double Epsilon(double sigma)
        {
            evaluations++;
            return accountant == AccountantKind.Rdp
                ? RdpAccountant.ComputeEpsilon(sampleRate, sigma, steps, delta).Epsilon
                : PrvAccountant.ComputeEpsilon(sampleRate, sigma, steps, delta, prvOptions).Epsilon;
        }

        // Starting point and bracket growth: PRV starts from the (cheap) RDP answer, which it rarely beats by
        // more than 10 %; RDP starts from 1 and doubles.
        double start = 1.0;
        double factor = 2.0;
        if (accountant == AccountantKind.Prv)
        {
            try
            {
                start = FindNoiseMultiplier(targetEpsilon, delta, sampleRate, steps, AccountantKind.Rdp, relativeTolerance).NoiseMultiplier;
                factor = 1.1;
            }
            catch (ArgumentOutOfRangeException)
            {
                // Below RDP's floor; PRV may still reach it.
            }
        }

        double hi = start;
        double epsHi = Epsilon(hi);
        double lo;
        double epsLo;
        if (epsHi <= targetEpsilon)
        {
            lo = hi / factor;
            epsLo = Epsilon(lo);
            while (epsLo <= targetEpsilon)
            {
                hi = lo;
                epsHi = epsLo;
                lo /= factor;
                if (lo < MinSigma)
                {
                    // ε stays within the target even with almost no noise.
                    return new NoiseCalibrationResult(hi, epsHi, 0.0, double.PositiveInfinity, accountant, evaluations);
                }

                epsLo = Epsilon(lo);
            }
        }
        else
        {
            lo = hi;
            epsLo = epsHi;
            hi *= factor;
            epsHi = Epsilon(hi);
            while (epsHi > targetEpsilon)
            {
                lo = hi;
                epsLo = epsHi;
                hi *= factor;
                if (hi > MaxSigma)
                {
                    throw new ArgumentOutOfRangeException(
                        nameof(targetEpsilon),
                        targetEpsilon,
                        $"The {accountant.ToName()} accountant cannot reach epsilon = {targetEpsilon} at delta = {delta} with sigma <= {MaxSigma}.");
                }

                epsHi = Epsilon(hi);
            }
        }

        // Invariant: ε(lo) > target ≥ ε(hi). Stop when hi/lo ≤ 1 + tol/2, leaving room for round-off.
        while (hi / lo > 1.0 + (relativeTolerance / 2.0))
        {
            double mid = Math.Sqrt(lo * hi);
            double epsMid = Epsilon(mid);
            if (epsMid <= targetEpsilon)
            {
                hi = mid;
                epsHi = epsMid;
            }
            else
            {
                lo = mid;
                epsLo = epsMid;
            }
        }

        return new NoiseCalibrationResult(hi, epsHi, lo, epsLo, accountant, evaluations);
    }
}
