namespace MriSeg.Privacy.Rdp;

/// <summary>
/// Conversion of an RDP curve to (ε, δ)-DP with the improved bound of Balle, Barthe, Gaboardi, Hsu and
/// Sato, "Hypothesis testing interpretations and Rényi differential privacy" (2020), the conversion
/// Opacus 1.5.4 uses:
/// ε = min_α [ RDP(α) + log((α-1)/α) - (log δ + log α)/(α-1) ].
/// </summary>
public static class RdpConversion
{
    /// <summary>Smallest ε over the orders, and the order that attains it (the first one on ties).</summary>
    /// <returns>(ε, α); (+∞, NaN) when every order gives an infinite bound. ε is clamped at 0.</returns>
    public static (double Epsilon, double Order) ToEpsilon(IReadOnlyList<double> orders, IReadOnlyList<double> rdp, double delta)
    {
        ArgumentNullException.ThrowIfNull(orders);
        ArgumentNullException.ThrowIfNull(rdp);
        if (orders.Count != rdp.Count)
        {
            throw new ArgumentException("orders and rdp must have the same length.", nameof(rdp));
        }

        if (double.IsNaN(delta) || delta <= 0.0 || delta >= 1.0)
        {
            throw new ArgumentOutOfRangeException(nameof(delta), delta, "delta must be in (0, 1).");
        }

        double logDelta = Math.Log(delta);
        double best = double.PositiveInfinity;
        double bestOrder = double.NaN;
        for (int i = 0; i < orders.Count; i++)
        {
            double a = orders[i];
            double eps = rdp[i] + Math.Log((a - 1.0) / a) - ((logDelta + Math.Log(a)) / (a - 1.0));
            if (eps < best)
            {
                best = eps;
                bestOrder = a;
            }
        }

        return (Math.Max(best, 0.0), bestOrder);
    }
}
