using MriSeg.Privacy.Rdp;

namespace MriSeg.Privacy;

/// <summary>
/// Budget guard for training: how many more steps at (q, σ) keep the ledger's ε within a budget. Training
/// must stop after that many steps; one more would exceed the budget.
/// </summary>
public static class PrivacyBudget
{
    /// <summary>Upper limit on the answer when the budget never runs out (q = 0, or σ = ∞).</summary>
    public const long DefaultStepLimit = 1_000_000_000;

    /// <summary>
    /// The largest N ≥ 0 such that ε(<paramref name="spent"/> + N steps at (q, σ)) ≤ budget, or 0 when even
    /// N = 0 exceeds it; capped at <paramref name="limit"/>.
    /// </summary>
    public static long MaxSteps(
        AccountantKind accountant,
        double sampleRate,
        double noiseMultiplier,
        double delta,
        double epsilonBudget,
        IEnumerable<PrivacyEvent>? spent = null,
        long limit = DefaultStepLimit,
        PrvOptions? prvOptions = null)
    {
        PrivacyAccountantBase ledger = accountant == AccountantKind.Rdp ? new RdpAccountant() : new PrvAccountant(prvOptions);
        if (spent is not null)
        {
            ledger.Compose(spent);
        }

        return ledger.RemainingSteps(sampleRate, noiseMultiplier, delta, epsilonBudget, limit);
    }

    /// <summary>
    /// How many more steps at (q, σ) this ledger can take and stay within the budget (see
    /// <see cref="MaxSteps"/>). The accountant itself is not changed.
    /// </summary>
    public static long RemainingSteps(
        this IPrivacyAccountant accountant,
        double sampleRate,
        double noiseMultiplier,
        double delta,
        double epsilonBudget,
        long limit = DefaultStepLimit)
    {
        ArgumentNullException.ThrowIfNull(accountant);
        new PrivacyEvent(sampleRate, noiseMultiplier, 0).Validate();
        if (double.IsNaN(epsilonBudget) || epsilonBudget < 0.0)
        {
            throw new ArgumentOutOfRangeException(nameof(epsilonBudget), epsilonBudget, "The budget must be >= 0.");
        }

        if (limit < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(limit), limit, "The limit must be >= 0.");
        }

        if (accountant is RdpAccountant rdp)
        {
            return RdpRemainingSteps(rdp, sampleRate, noiseMultiplier, delta, epsilonBudget, limit);
        }

        double EpsilonAfter(long n)
        {
            var copy = accountant.Clone();
            copy.Compose(sampleRate, noiseMultiplier, n);
            return copy.GetEpsilon(delta);
        }

        // RDP bounds the true ε from above, so its answer is a good first guess for tighter accountants.
        var rdpLedger = new RdpAccountant();
        foreach (var e in accountant.History)
        {
            rdpLedger.Compose(e);
        }

        long guess = Math.Max(1, RdpRemainingSteps(rdpLedger, sampleRate, noiseMultiplier, delta, epsilonBudget, limit));
        return SearchLastWithin(EpsilonAfter, epsilonBudget, guess, limit);
    }

    /// <summary>True when <paramref name="steps"/> more steps at (q, σ) stay within the budget.</summary>
    public static bool CanTakeSteps(
        this IPrivacyAccountant accountant,
        double sampleRate,
        double noiseMultiplier,
        double delta,
        double epsilonBudget,
        long steps = 1)
    {
        ArgumentNullException.ThrowIfNull(accountant);
        var copy = accountant.Clone();
        copy.Compose(sampleRate, noiseMultiplier, steps);
        return copy.GetEpsilon(delta) <= epsilonBudget;
    }

    private static long RdpRemainingSteps(RdpAccountant ledger, double q, double sigma, double delta, double budget, long limit)
    {
        // RDP is linear in the number of steps: ε(N) = min_α conv(R_spent(α) + N·r(α)).
        var orders = ledger.Orders;
        double[] spentRdp = ledger.GetTotalRdp();
        double[] perStep = SampledGaussianRdp.Compute(q, sigma, orders);
        var total = new double[orders.Count];
        double EpsilonAfter(long n)
        {
            for (int i = 0; i < total.Length; i++)
            {
                total[i] = spentRdp[i] + (perStep[i] == 0.0 ? 0.0 : n * perStep[i]);
            }

            return RdpConversion.ToEpsilon(orders, total, delta).Epsilon;
        }

        return SearchLastWithin(EpsilonAfter, budget, 1, limit);
    }

    /// <summary>
    /// Largest n in [0, limit] with f(n) ≤ budget for a non-decreasing f (0 when f(0) &gt; budget):
    /// exponential bracketing from <paramref name="guess"/>, then interpolation with bisection safeguards.
    /// </summary>
    internal static long SearchLastWithin(Func<long, double> f, double budget, long guess, long limit)
    {
        guess = Math.Clamp(guess, 0, limit);
        long lo; // f(lo) ≤ budget
        double fLo;
        long hi; // f(hi) > budget
        double fHi;
        double fGuess = f(guess);
        if (fGuess <= budget)
        {
            lo = guess;
            fLo = fGuess;
            if (lo == limit)
            {
                return limit;
            }

            hi = Math.Min(limit, Math.Max(lo + 1, lo + (lo / 4)));
            fHi = f(hi);
            while (fHi <= budget)
            {
                if (hi == limit)
                {
                    return limit;
                }

                lo = hi;
                fLo = fHi;
                hi = Math.Min(limit, Math.Max(hi + 1, hi * 2));
                fHi = f(hi);
            }
        }
        else
        {
            hi = guess;
            fHi = fGuess;
            if (hi == 0)
            {
                return 0;
            }

            lo = hi - Math.Max(1, hi / 4);
            fLo = f(lo);
            while (fLo > budget)
            {
                if (lo == 0)
                {
                    return 0;
                }

                hi = lo;
                fHi = fLo;
                lo /= 2;
                fLo = f(lo);
            }
        }

        bool bisectNext = false;
        while (hi - lo > 1)
        {
            long mid;
            if (!bisectNext && double.IsFinite(fHi) && fHi > fLo)
            {
                double fraction = (budget - fLo) / (fHi - fLo);
                mid = lo + (long)Math.Round(fraction * (hi - lo));
                mid = Math.Clamp(mid, lo + 1, hi - 1);
            }
            else
            {
                mid = lo + ((hi - lo) / 2);
            }

            long width = hi - lo;
            double fMid = f(mid);
            if (fMid <= budget)
            {
                lo = mid;
                fLo = fMid;

                // Interpolation tends to land just inside; probe the next step to close the bracket.
                if (hi - lo > 1)
                {
                    double fNext = f(lo + 1);
                    if (fNext > budget)
                    {
                        hi = lo + 1;
                        fHi = fNext;
                    }
                    else
                    {
                        lo++;
                        fLo = fNext;
                    }
                }
            }
            else
            {
                hi = mid;
                fHi = fMid;
                if (hi - lo > 1)
                {
                    double fPrev = f(hi - 1);
                    if (fPrev <= budget)
                    {
                        lo = hi - 1;
                        fLo = fPrev;
                    }
                    else
                    {
                        hi--;
                        fHi = fPrev;
                    }
                }
            }

            // Fall back to bisection when interpolation failed to halve the bracket.
            bisectNext = (hi - lo) * 2 > width;
        }

        return lo;
    }
}
