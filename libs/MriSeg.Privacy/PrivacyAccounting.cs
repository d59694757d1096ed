using System.Text.Json;
using System.Text.Json.Serialization;

namespace MriSeg.Privacy;

/// <summary>ε of (q, σ, steps) at δ, as the CLI prints it (<c>mriseg accountant ... --json</c>).</summary>
/// <param name="Epsilon">ε (an upper bound).</param>
/// <param name="Accountant">"rdp" or "prv".</param>
/// <param name="Q">Sample rate.</param>
/// <param name="Sigma">Noise multiplier.</param>
/// <param name="Steps">Number of steps.</param>
/// <param name="Delta">δ.</param>
/// <param name="Order">RDP: the optimal Rényi order.</param>
/// <param name="EpsilonEstimate">PRV: the point estimate ε̂(δ) (below <see cref="Epsilon"/>).</param>
/// <param name="EpsilonLower">PRV: the lower end of the error band.</param>
/// <param name="Note">Set when the PRV accountant had to report the RDP bound, with the reason.</param>
public sealed record EpsilonReport(
    double Epsilon,
    string Accountant,
    double Q,
    double Sigma,
    long Steps,
    double Delta,
    double? Order = null,
    double? EpsilonEstimate = null,
    double? EpsilonLower = null,
    string? Note = null)
{
    /// <summary>Compact JSON: {"epsilon":…,"accountant":…,…}.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, PrivacyJsonContext.Default.EpsilonReport);
}

/// <summary>σ for a target ε, as the CLI prints it (<c>mriseg accountant --target-epsilon ... --json</c>).</summary>
/// <param name="Sigma">Smallest noise multiplier found (within the relative tolerance) with ε ≤ target.</param>
/// <param name="Epsilon">ε reached at <see cref="Sigma"/>.</param>
/// <param name="TargetEpsilon">The target.</param>
/// <param name="Accountant">"rdp" or "prv".</param>
/// <param name="Q">Sample rate.</param>
/// <param name="Steps">Number of steps.</param>
/// <param name="Delta">δ.</param>
/// <param name="RelativeTolerance">σ is within this relative distance of the smallest σ reaching the target.</param>
public sealed record NoiseReport(
    double Sigma,
    double Epsilon,
    double TargetEpsilon,
    string Accountant,
    double Q,
    long Steps,
    double Delta,
    double RelativeTolerance)
{
    /// <summary>Compact JSON: {"sigma":…,"epsilon":…,…}.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, PrivacyJsonContext.Default.NoiseReport);
}

/// <summary>How many steps fit a budget.</summary>
/// <param name="Steps">Largest number of steps with ε ≤ budget.</param>
/// <param name="Epsilon">ε after that many steps.</param>
/// <param name="EpsilonBudget">The budget.</param>
/// <param name="Accountant">"rdp" or "prv".</param>
/// <param name="Q">Sample rate.</param>
/// <param name="Sigma">Noise multiplier.</param>
/// <param name="Delta">δ.</param>
public sealed record StepsReport(
    long Steps,
    double Epsilon,
    double EpsilonBudget,
    string Accountant,
    double Q,
    double Sigma,
    double Delta)
{
    /// <summary>Compact JSON: {"steps":…,"epsilon":…,…}.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, PrivacyJsonContext.Default.StepsReport);
}

/// <summary>
/// Facade for the <c>mriseg accountant</c> command: plain arguments in, JSON-friendly records out.
/// Arguments out of range throw <see cref="ArgumentOutOfRangeException"/> with a one-line message.
/// </summary>
public static class PrivacyAccounting
{
    /// <summary><c>--q Q --sigma S --steps N --delta D [--accountant rdp|prv]</c>.</summary>
    public static EpsilonReport ComputeEpsilon(
        double sampleRate,
        double noiseMultiplier,
        long steps,
        double delta,
        AccountantKind accountant = AccountantKind.Rdp,
        PrvOptions? prvOptions = null)
    {
        if (accountant == AccountantKind.Rdp)
        {
            var r = RdpAccountant.ComputeEpsilon(sampleRate, noiseMultiplier, steps, delta);
            return new EpsilonReport(r.Epsilon, accountant.ToName(), sampleRate, noiseMultiplier, steps, delta,
                Order: double.IsNaN(r.Order) ? null : r.Order);
        }

        var p = PrvAccountant.ComputeEpsilon(sampleRate, noiseMultiplier, steps, delta, prvOptions);
        return new EpsilonReport(p.Epsilon, accountant.ToName(), sampleRate, noiseMultiplier, steps, delta,
            EpsilonEstimate: double.IsNaN(p.EpsilonEstimate) ? null : p.EpsilonEstimate,
            EpsilonLower: p.Fallback is null ? p.EpsilonLower : null,
            Note: p.Fallback);
    }

    /// <summary><c>--target-epsilon E --q Q --steps N --delta D [--accountant rdp|prv]</c>.</summary>
    public static NoiseReport CalibrateNoise(
        double targetEpsilon,
        double sampleRate,
        long steps,
        double delta,
        AccountantKind accountant = AccountantKind.Rdp,
        double relativeTolerance = 1e-3,
        PrvOptions? prvOptions = null)
    {
        var r = NoiseCalibration.FindNoiseMultiplier(targetEpsilon, delta, sampleRate, steps, accountant, relativeTolerance, prvOptions);
        return new NoiseReport(r.NoiseMultiplier, r.Epsilon, targetEpsilon, accountant.ToName(), sampleRate, steps, delta, relativeTolerance);
    }

    /// <summary>Budget: how many steps at (q, σ) keep ε ≤ budget.</summary>
    public static StepsReport MaxSteps(
        double epsilonBudget,
        double sampleRate,
        double noiseMultiplier,
        double delta,
        AccountantKind accountant = AccountantKind.Rdp,
        PrvOptions? prvOptions = null)
    {
        long steps = PrivacyBudget.MaxSteps(accountant, sampleRate, noiseMultiplier, delta, epsilonBudget, prvOptions: prvOptions);
        double eps = ComputeEpsilon(sampleRate, noiseMultiplier, steps, delta, accountant, prvOptions).Epsilon;
        return new StepsReport(steps, eps, epsilonBudget, accountant.ToName(), sampleRate, noiseMultiplier, delta);
    }
}

/// <summary>Source-generated JSON for the reports (camelCase, nulls omitted, ∞ written as "Infinity").</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(EpsilonReport))]
[JsonSerializable(typeof(NoiseReport))]
[JsonSerializable(typeof(StepsReport))]
public sealed partial class PrivacyJsonContext : JsonSerializerContext;
