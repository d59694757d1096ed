using MriSeg.Privacy.Rdp;

namespace MriSeg.Privacy;

/// <summary>ε and the Rényi order that attains it.</summary>
/// <param name="Epsilon">The (ε, δ) bound.</param>
/// <param name="Order">The optimal order α (NaN when ε is infinite).</param>
public readonly record struct RdpEpsilon(double Epsilon, double Order);

/// <summary>
/// Rényi-DP accountant of the Poisson-subsampled Gaussian mechanism, as Opacus 1.5.4's RDPAccountant:
/// RDP is additive over steps and runs; ε comes from the optimal conversion over
/// <see cref="SampledGaussianRdp.DefaultOrders"/> (or the orders given).
/// </summary>
public sealed class RdpAccountant : PrivacyAccountantBase
{
    private readonly double[] _orders;
    private readonly Dictionary<(double Q, double Sigma), double[]> _perStepCache = [];

    /// <summary>Creates an accountant over the default orders or <paramref name="orders"/> (each &gt; 1).</summary>
    public RdpAccountant(IEnumerable<double>? orders = null)
    {
        _orders = orders is null ? [.. SampledGaussianRdp.DefaultOrders] : [.. orders];
        if (_orders.Length == 0 || _orders.Any(a => double.IsNaN(a) || a <= 1.0))
        {
            throw new ArgumentException("Orders must be non-empty and each > 1.", nameof(orders));
        }
    }

    /// <inheritdoc />
    public override AccountantKind Kind => AccountantKind.Rdp;

    /// <summary>The Rényi orders this accountant evaluates.</summary>
    public IReadOnlyList<double> Orders => _orders;

    /// <summary>ε spent so far for δ, with the optimal order.</summary>
    public static RdpEpsilon ComputeEpsilon(double sampleRate, double noiseMultiplier, long steps, double delta)
    {
        var accountant = new RdpAccountant();
        accountant.Compose(sampleRate, noiseMultiplier, steps);
        return accountant.GetPrivacySpent(delta);
    }

    /// <summary>Total RDP of the history at each order (sum of steps × per-step RDP).</summary>
    public double[] GetTotalRdp()
    {
        var total = new double[_orders.Length];
        foreach (var e in History)
        {
            if (!_perStepCache.TryGetValue((e.SampleRate, e.NoiseMultiplier), out var perStep))
            {
                perStep = SampledGaussianRdp.Compute(e.SampleRate, e.NoiseMultiplier, _orders);
                _perStepCache[(e.SampleRate, e.NoiseMultiplier)] = perStep;
            }

            for (int i = 0; i < total.Length; i++)
            {
                // 0 * inf must stay 0 (a run of 0 steps never reaches here, but q = 0 gives 0 RDP).
                total[i] += perStep[i] == 0.0 ? 0.0 : e.Steps * perStep[i];
            }
        }

        return total;
    }

    /// <summary>ε spent so far for δ, and the optimal order.</summary>
    public RdpEpsilon GetPrivacySpent(double delta)
    {
        ValidateDelta(delta);
        if (History.Count == 0)
        {
            return new RdpEpsilon(0.0, double.NaN);
        }

        var (eps, order) = RdpConversion.ToEpsilon(_orders, GetTotalRdp(), delta);
        return new RdpEpsilon(eps, order);
    }

    /// <inheritdoc />
    public override double GetEpsilon(double delta) => GetPrivacySpent(delta).Epsilon;

    /// <inheritdoc />
    public override IPrivacyAccountant Clone()
    {
        var copy = new RdpAccountant(_orders);
        foreach (var (key, value) in _perStepCache)
        {
            copy._perStepCache[key] = value; // per-step RDP depends only on (q, σ) and the orders
        }

        return CopyHistoryTo(copy);
    }
}
