using MriSeg.Privacy.Prv;

namespace MriSeg.Privacy;

/// <summary>Settings of the PRV accountant; the defaults are Opacus 1.5.4's.</summary>
public sealed record PrvOptions
{
    /// <summary>Additive error allowed on ε (Opacus: eps_error = 0.01).</summary>
    public double EpsilonError { get; init; } = 0.01;

    /// <summary>Error allowed on δ; null means δ/1000 (Opacus's default).</summary>
    public double? DeltaError { get; init; }

    /// <summary>
    /// Largest discretisation grid (points over [-L, L]) the accountant will build; beyond it (ε in the
    /// hundreds, where Opacus overflows to ∞) it reports the RDP bound or throws, see <see cref="FallbackToRdp"/>.
    /// 2^25 points need about 270 MB.
    /// </summary>
    public long MaxGridPoints { get; init; } = 1L << 25;

    /// <summary>
    /// When the PRV computation cannot run (grid too large, δ too small for double precision), report the
    /// RDP ε (a valid upper bound) and say so in <see cref="PrvEpsilon.Fallback"/>; false throws instead.
    /// </summary>
    public bool FallbackToRdp { get; init; } = true;

    /// <summary>Opacus's defaults.</summary>
    public static PrvOptions Default { get; } = new();
}

/// <summary>Result of the PRV accountant.</summary>
/// <param name="Epsilon">The reported ε: an upper bound, ε̂(δ - δ_err) + ε_err (Opacus's eps_upper).</param>
/// <param name="EpsilonEstimate">ε̂(δ) of the discretised composition (NaN after a fallback).</param>
/// <param name="EpsilonLower">Lower bound ε̂(δ + δ_err) - ε_err, clamped at 0.</param>
/// <param name="EpsilonError">ε_err used.</param>
/// <param name="DeltaError">δ_err used.</param>
/// <param name="MeshSize">Grid spacing h.</param>
/// <param name="DomainHalfWidth">L: the domain is [-L, L].</param>
/// <param name="GridPoints">Points of the FFT grid.</param>
/// <param name="Fallback">Null when the PRV computation ran; otherwise why the RDP bound was reported.</param>
public sealed record PrvEpsilon(
    double Epsilon,
    double EpsilonEstimate,
    double EpsilonLower,
    double EpsilonError,
    double DeltaError,
    double MeshSize,
    double DomainHalfWidth,
    long GridPoints,
    string? Fallback)
{
    internal static PrvEpsilon Infinite(double epsError, double deltaError) =>
        new(double.PositiveInfinity, double.PositiveInfinity, double.PositiveInfinity, epsError, deltaError, 0.0, double.PositiveInfinity, 0, null);
}

/// <summary>
/// Tight numerical accountant (privacy random variables composed with an FFT), like Opacus 1.5.4's
/// PRVAccountant. <see cref="GetEpsilon"/> reports the upper end of the error band, so it never
/// under-reports the true ε by more than the numerical tolerance of the method.
/// </summary>
public sealed class PrvAccountant : PrivacyAccountantBase
{
    private (double Delta, PrvEpsilon Result)? _cache;

    /// <summary>Creates an accountant with Opacus's defaults or <paramref name="options"/>.</summary>
    public PrvAccountant(PrvOptions? options = null)
    {
        Options = options ?? PrvOptions.Default;
    }

    /// <inheritdoc />
    public override AccountantKind Kind => AccountantKind.Prv;

    /// <summary>The settings.</summary>
    public PrvOptions Options { get; }

    /// <summary>ε of <paramref name="steps"/> steps with the PRV accountant.</summary>
    public static PrvEpsilon ComputeEpsilon(double sampleRate, double noiseMultiplier, long steps, double delta, PrvOptions? options = null)
    {
        var accountant = new PrvAccountant(options);
        accountant.Compose(sampleRate, noiseMultiplier, steps);
        return accountant.GetPrivacySpent(delta);
    }

    /// <summary>ε spent so far for δ, with its error band.</summary>
    public PrvEpsilon GetPrivacySpent(double delta)
    {
        ValidateDelta(delta);
        if (_cache is { } cached && cached.Delta == delta)
        {
            return cached.Result;
        }

        var result = PrvComposition.ComputeEpsilon(History, delta, Options);
        _cache = (delta, result);
        return result;
    }

    /// <inheritdoc />
    public override double GetEpsilon(double delta) => GetPrivacySpent(delta).Epsilon;

    /// <inheritdoc />
    public override IPrivacyAccountant Clone() => CopyHistoryTo(new PrvAccountant(Options));

    /// <inheritdoc />
    protected override void OnHistoryChanged() => _cache = null;
}
