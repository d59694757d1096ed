using MriSeg.Privacy.Numerics;

namespace MriSeg.Privacy.Prv;

/// <summary>
/// Privacy random variable of one step of the Poisson-subsampled Gaussian mechanism (Gopi, Lee,
/// Wutschitz 2021, appendix B): Y = ℓ(X) with X ~ P = (1-q)·N(0,σ²) + q·N(1,σ²) and the privacy loss
/// ℓ(x) = log(P(x)/Q(x)) = log(1 - q + q·exp((2x-1)/(2σ²))) against Q = N(0,σ²) (the "remove" pair,
/// as in Opacus and the authors' prv_accountant).
/// </summary>
/// <remarks>
/// ℓ is increasing, so P(Y ≤ t) = P(X ≤ σ²z + ½) with z = log((eᵗ - (1-q))/q) for t &gt; log(1-q):
/// F(t) = q·Φ((σ²z - ½)/σ) + (1-q)·Φ((σ²z + ½)/σ), and F(t) = 0 for t ≤ log(1-q).
/// </remarks>
internal sealed class SubsampledGaussianPrv
{
    private static readonly double Sqrt2 = Math.Sqrt(2.0);

    private readonly double _q;
    private readonly double _sigma;
    private readonly double _logQ;
    private readonly double _log1mQ;
    private readonly double _twoSqrt2Sigma;
    private readonly double _twoSigma2;

    public SubsampledGaussianPrv(double sampleRate, double noiseMultiplier)
    {
        if (!(sampleRate > 0.0 && sampleRate <= 1.0))
        {
            throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "Sample rate must be in (0, 1].");
        }

        if (!(noiseMultiplier > 0.0) || double.IsPositiveInfinity(noiseMultiplier))
        {
            throw new ArgumentOutOfRangeException(nameof(noiseMultiplier), noiseMultiplier, "Noise multiplier must be positive and finite.");
        }

        _q = sampleRate;
        _sigma = noiseMultiplier;
        _logQ = Math.Log(sampleRate);
        _log1mQ = sampleRate == 1.0 ? double.NegativeInfinity : LogMath.Log1P(-sampleRate);
        _twoSqrt2Sigma = 2.0 * Sqrt2 * noiseMultiplier;
        _twoSigma2 = 2.0 * noiseMultiplier * noiseMultiplier;
    }

    /// <summary>Smallest value Y can take: log(1-q) (−∞ when q = 1).</summary>
    public double LowerSupport => _log1mQ;

    /// <summary>z(t) = log((eᵗ - (1-q))/q); −∞ at or below the support.</summary>
    public double Z(double t)
    {
        if (_q == 1.0)
        {
            return t;
        }

        double u = t - _log1mQ;
        if (!(u > 0.0))
        {
            return double.NegativeInfinity;
        }

        return _log1mQ + LogMath.LogExpM1(u) - _logQ;
    }

    /// <summary>
    /// F(t) = P(Y ≤ t) and S(t) = 1 - F(t); the smaller of the two is computed directly so that both
    /// tails keep their relative precision.
    /// </summary>
    public void Cdf(double t, out double cdf, out double sf)
    {
        double z = Z(t);
        if (double.IsNegativeInfinity(z))
        {
            cdf = 0.0;
            sf = 1.0;
            return;
        }

        if (double.IsPositiveInfinity(z))
        {
            cdf = 1.0;
            sf = 0.0;
            return;
        }

        double a1 = ((_twoSigma2 * z) - 1.0) / _twoSqrt2Sigma;
        double a2 = ((_twoSigma2 * z) + 1.0) / _twoSqrt2Sigma;
        if (a1 >= 0.0)
        {
            sf = (0.5 * _q * LogMath.Erfc(a1)) + (0.5 * (1.0 - _q) * LogMath.Erfc(a2));
            cdf = 1.0 - sf;
        }
        else
        {
            cdf = (0.5 * _q * LogMath.Erfc(-a1)) + (0.5 * (1.0 - _q) * LogMath.Erfc(-a2));
            sf = 1.0 - cdf;
        }
    }

    /// <summary>P(a ≤ Y ≤ b).</summary>
    public double Mass(double a, double b)
    {
        Cdf(a, out double fa, out double sa);
        Cdf(b, out double fb, out double sb);
        return fb <= 0.5 ? fb - fa : sa - sb;
    }

    /// <summary>
    /// E[Y · 1{a ≤ Y ≤ b}], integrated in x (where the density is a smooth Gaussian mixture) with
    /// composite 10-point Gauss-Legendre on panels of width min(σ, σ²)/4.
    /// </summary>
    public double PartialMean(double a, double b)
    {
        double sigma = _sigma;
        double xLo = -40.0 * sigma;
        double xHi = 1.0 + (40.0 * sigma);
        double za = Z(a);
        double zb = Z(b);
        if (!double.IsNegativeInfinity(za))
        {
            xLo = Math.Max(xLo, (sigma * sigma * za) + 0.5);
        }

        if (double.IsNegativeInfinity(zb))
        {
            return 0.0;
        }

        xHi = Math.Min(xHi, (sigma * sigma * zb) + 0.5);
        if (!(xHi > xLo))
        {
            return 0.0;
        }

        double h = Math.Min(sigma, sigma * sigma) / 4.0;
        int panels = (int)Math.Clamp(Math.Ceiling((xHi - xLo) / h), 64, 2_000_000);
        double invSigma = 1.0 / sigma;
        double norm = invSigma / Math.Sqrt(2.0 * Math.PI);
        return GaussLegendre.Integrate(
            x =>
            {
                double u0 = x * invSigma;
                double u1 = (x - 1.0) * invSigma;
                double density = norm * (((1.0 - _q) * Math.Exp(-0.5 * u0 * u0)) + (_q * Math.Exp(-0.5 * u1 * u1)));
                if (density == 0.0)
                {
                    return 0.0;
                }

                double w = ((2.0 * x) - 1.0) / _twoSigma2;
                double loss = _q == 1.0 ? w : LogMath.LogAddExp(_log1mQ, _logQ + w);
                return loss * density;
            },
            xLo,
            xHi,
            panels);
    }
}
