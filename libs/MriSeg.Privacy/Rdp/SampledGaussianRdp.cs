using MriSeg.Privacy.Numerics;

namespace MriSeg.Privacy.Rdp;

/// <summary>
/// Rényi differential privacy of one step of the Poisson-subsampled Gaussian mechanism
/// (sampling rate q, noise multiplier σ, L2 sensitivity 1), following Mironov, Talwar and Zhang,
/// "Rényi Differential Privacy of the Sampled Gaussian Mechanism" (2019).
/// </summary>
/// <remarks>
/// <para>RDP(α) = log(A_α)/(α-1) with A_α = E_{z~N(0,σ²)}[((1-q) + q·exp((2z-1)/(2σ²)))^α].</para>
/// <para>Integer α: the binomial expansion
/// A_α = Σ_{i=0..α} C(α,i) (1-q)^(α-i) q^i exp((i²-i)/(2σ²)), summed in log space.</para>
/// <para>Fractional α: the integral is split at z₀ = σ² log(1/q - 1) + 1/2, where q·μ₁/μ₀ = 1-q, and each
/// half is expanded with the generalised binomial series:
/// A₀ = Σ_i C(α,i) (1-q)^(α-i) q^i exp((i²-i)/(2σ²)) · ½erfc((i-z₀)/(√2σ)) and
/// A₁ = Σ_i C(α,i) (1-q)^i q^(α-i) exp((j²-j)/(2σ²)) · ½erfc((z₀-j)/(√2σ)) with j = α-i.
/// Past i &gt; α the terms alternate in sign; see <see cref="LogAFractional"/> for how the tail is summed.</para>
/// </remarks>
public static class SampledGaussianRdp
{
    private const double TermCutoff = -32.0; // log(relative size) below which the series is cut (1.3e-14)
    private const int MaxSeriesTerms = 20_000_000;

    /// <summary>
    /// Opacus 1.5.4's default RDP orders: 1 + x/10 for x = 1..99, then the integers 12..63.
    /// </summary>
    public static IReadOnlyList<double> DefaultOrders { get; } = BuildDefaultOrders();

    /// <summary>RDP ε(α) of one step.</summary>
    /// <param name="sampleRate">Poisson sampling rate q ∈ [0, 1].</param>
    /// <param name="noiseMultiplier">σ ≥ 0 (noise standard deviation over clipping norm).</param>
    /// <param name="order">Rényi order α &gt; 1 (may be +∞).</param>
    public static double Compute(double sampleRate, double noiseMultiplier, double order)
    {
        Validate(sampleRate, noiseMultiplier);
        if (double.IsNaN(order) || order <= 1.0)
        {
            throw new ArgumentOutOfRangeException(nameof(order), order, "Rényi order must be > 1.");
        }

        double q = sampleRate;
        double sigma = noiseMultiplier;
        if (q == 0.0)
        {
            return 0.0;
        }

        if (sigma == 0.0 || double.IsPositiveInfinity(order))
        {
            return double.PositiveInfinity;
        }

        if (double.IsPositiveInfinity(sigma))
        {
            return 0.0;
        }

        if (q == 1.0)
        {
            return order / (2.0 * sigma * sigma);
        }

        double logA = Math.Floor(order) == order && order <= int.MaxValue
            ? LogAInteger(q, sigma, (int)order)
            : LogAFractional(q, sigma, order);
        return Math.Max(logA, 0.0) / (order - 1.0);
    }

    /// <summary>RDP of one step at each of <paramref name="orders"/>.</summary>
    public static double[] Compute(double sampleRate, double noiseMultiplier, IReadOnlyList<double> orders)
    {
        ArgumentNullException.ThrowIfNull(orders);
        var result = new double[orders.Count];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = Compute(sampleRate, noiseMultiplier, orders[i]);
        }

        return result;
    }

    internal static void Validate(double sampleRate, double noiseMultiplier)
    {
        if (double.IsNaN(sampleRate) || sampleRate < 0.0 || sampleRate > 1.0)
        {
            throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "Sample rate must be in [0, 1].");
        }

        if (double.IsNaN(noiseMultiplier) || noiseMultiplier < 0.0)
        {
            throw new ArgumentOutOfRangeException(nameof(noiseMultiplier), noiseMultiplier, "Noise multiplier must be >= 0.");
        }
    }

    internal static double LogAInteger(double q, double sigma, int alpha)
    {
        double logQ = Math.Log(q);
        double log1mQ = LogMath.Log1P(-q);
        double twoSigma2 = 2.0 * sigma * sigma;
        var logTerms = new double[alpha + 1];
        double logBinom = 0.0; // log C(alpha, 0)
        double max = double.NegativeInfinity;
        for (int i = 0; i <= alpha; i++)
        {
            if (i > 0)
            {
                logBinom += Math.Log(alpha - i + 1) - Math.Log(i);
            }

            double t = logBinom + (i * logQ) + ((alpha - i) * log1mQ) + (((double)i * i - i) / twoSigma2);
            logTerms[i] = t;
            max = Math.Max(max, t);
        }

        double sum = 0.0;
        foreach (double t in logTerms)
        {
            sum += Math.Exp(t - max);
        }

        return max + Math.Log(sum);
    }

    /// <summary>
    /// log A_α for fractional α. Term i of A₀ + A₁ is C(α,i)·(s₀(i) + s₁(i)) with
    /// s₀(i) = (1-q)^(α-i) q^i exp((i²-i)/(2σ²)) ½erfc((i-z₀)/(√2σ)) and
    /// s₁(i) = (1-q)^i q^(α-i) exp((j²-j)/(2σ²)) ½erfc((z₀-j)/(√2σ)), j = α-i, each evaluated in log space.
    /// Writing erfc(u) = exp(-u²)·erfcx(u), the Gaussian factors cancel exactly and
    /// s₀(i) + s₁(i) = ½(1-q)^α exp(-z₀²/(2σ²)) [erfcx((i-z₀)/(√2σ)) + erfcx((i-α+z₀)/(√2σ))]; erfcx and
    /// |C(α,i)| (i &gt; α) are completely monotone, so past i₀ = ⌊α⌋+1, where the signs of C(α,i) start to
    /// alternate, the tail is an alternating series of moments. It is summed to ~1e-18 from 40 terms with the
    /// Cohen-Villegas-Zagier acceleration; the plain series needs up to 10⁵ terms when σ is small or q
    /// large. (The terms themselves are computed in the original form: the erfcx form would add and
    /// subtract z₀²/(2σ²), which loses precision when z₀ ≫ σ and A_α is within 1e-11 of 1.)
    /// </summary>
    internal static double LogAFractional(double q, double sigma, double alpha)
    {
        const int TailTerms = 40;
        double logQ = Math.Log(q);
        double log1mQ = LogMath.Log1P(-q);
        double twoSigma2 = 2.0 * sigma * sigma;
        double sqrt2Sigma = Math.Sqrt(2.0) * sigma;
        double z0 = (sigma * sigma * (log1mQ - logQ)) + 0.5;
        const double LogHalf = -0.69314718055994530942;
        int i0 = (int)Math.Floor(alpha) + 1;

        // log(|C(alpha, i)| (s0(i) + s1(i))) for i = 0 .. i0 + TailTerms - 1.
        int count = i0 + TailTerms;
        var logTerms = new double[count];
        double logAbsBinom = 0.0;
        for (int i = 0; i < count; i++)
        {
            if (i > 0)
            {
                logAbsBinom += Math.Log(Math.Abs(alpha - (i - 1))) - Math.Log(i);
            }

            double j = alpha - i;
            double logS0 = (i * logQ) + (j * log1mQ) + (((double)i * i - i) / twoSigma2)
                + LogHalf + LogMath.LogErfc((i - z0) / sqrt2Sigma);
            double logS1 = (j * logQ) + (i * log1mQ) + ((j * j - j) / twoSigma2)
                + LogHalf + LogMath.LogErfc((z0 - j) / sqrt2Sigma);
            logTerms[i] = logAbsBinom + LogMath.LogAddExp(logS0, logS1);
        }

        double scale = double.NegativeInfinity;
        for (int i = 0; i <= i0; i++)
        {
            scale = Math.Max(scale, logTerms[i]);
        }

        double head = 0.0;
        for (int i = 0; i < i0; i++)
        {
            head += Math.Exp(logTerms[i] - scale);
        }

        double tailLead = logTerms[i0];
        double tail = LogMath.AlternatingSum(k => Math.Exp(logTerms[i0 + k] - tailLead), TailTerms);
        double total = head + (Math.Exp(tailLead - scale) * tail);
        if (!(total > 0.0))
        {
            throw new InvalidOperationException(
                $"RDP series lost precision (q={q}, sigma={sigma}, alpha={alpha}).");
        }

        return scale + Math.Log(total);
    }

    /// <summary>
    /// log A_α for fractional α by summing the two binomial series term by term until the terms are
    /// below 1e-14 of the sum (slow when σ is small or q large). Kept to cross-check
    /// <see cref="LogAFractional"/>.
    /// </summary>
    internal static double LogAFractionalPlainSeries(double q, double sigma, double alpha)
    {
        double logQ = Math.Log(q);
        double log1mQ = LogMath.Log1P(-q);
        double twoSigma2 = 2.0 * sigma * sigma;
        double sqrt2Sigma = Math.Sqrt(2.0) * sigma;
        double z0 = (sigma * sigma * (log1mQ - logQ)) + 0.5;
        const double LogHalf = -0.69314718055994530942;

        // Signed sum kept as scaled * exp(logScale) so that neither overflow nor underflow occurs.
        double logScale = double.NegativeInfinity;
        double scaled = 0.0;
        double logAbsBinom = 0.0;
        int sign = 1;
        for (int i = 0; ; i++)
        {
            if (i > 0)
            {
                double factor = alpha - (i - 1);
                if (factor < 0)
                {
                    sign = -sign;
                }

                logAbsBinom += Math.Log(Math.Abs(factor)) - Math.Log(i);
            }

            double j = alpha - i;
            double logS0 = logAbsBinom + (i * logQ) + (j * log1mQ) + (((double)i * i - i) / twoSigma2)
                + LogHalf + LogMath.LogErfc((i - z0) / sqrt2Sigma);
            double logS1 = logAbsBinom + (j * logQ) + (i * log1mQ) + ((j * j - j) / twoSigma2)
                + LogHalf + LogMath.LogErfc((z0 - j) / sqrt2Sigma);
            double logTerm = LogMath.LogAddExp(logS0, logS1);

            if (logTerm > logScale)
            {
                scaled = (scaled * Math.Exp(logScale - logTerm)) + sign;
                logScale = logTerm;
            }
            else
            {
                scaled += sign * Math.Exp(logTerm - logScale);
            }

            if (i > alpha + 1 && logTerm - (logScale + Math.Log(Math.Abs(scaled))) < TermCutoff)
            {
                break;
            }

            if (i >= MaxSeriesTerms)
            {
                throw new InvalidOperationException(
                    $"RDP series did not converge (q={q}, sigma={sigma}, alpha={alpha}).");
            }
        }

        return logScale + Math.Log(scaled);
    }

    private static double[] BuildDefaultOrders()
    {
        var orders = new List<double>(151);
        for (int x = 1; x < 100; x++)
        {
            orders.Add(1.0 + (x / 10.0));
        }

        for (int a = 12; a < 64; a++)
        {
            orders.Add(a);
        }

        return [.. orders];
    }
}
