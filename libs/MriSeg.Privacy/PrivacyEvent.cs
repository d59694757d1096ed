using MriSeg.Privacy.Rdp;

namespace MriSeg.Privacy;

/// <summary>
/// A run of <see cref="Steps"/> identical steps of the Poisson-subsampled Gaussian mechanism.
/// </summary>
/// <param name="SampleRate">Poisson sampling rate q ∈ [0, 1] (expected batch size / number of patients).</param>
/// <param name="NoiseMultiplier">σ: noise standard deviation divided by the clipping norm.</param>
/// <param name="Steps">Number of steps (≥ 0).</param>
public readonly record struct PrivacyEvent(double SampleRate, double NoiseMultiplier, long Steps)
{
    /// <summary>Throws when a field is out of range.</summary>
    public void Validate()
    {
        SampledGaussianRdp.Validate(SampleRate, NoiseMultiplier);
        if (Steps < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Steps), Steps, "Steps must be >= 0.");
        }
    }
}

/// <summary>Which accountant computes ε.</summary>
public enum AccountantKind
{
    /// <summary>Rényi DP with Opacus's default orders and the optimal conversion.</summary>
    Rdp,

    /// <summary>Privacy random variables composed numerically with an FFT (Gopi, Lee, Wutschitz 2021).</summary>
    Prv,
}

/// <summary>Names of <see cref="AccountantKind"/> as the CLI spells them ("rdp", "prv").</summary>
public static class AccountantKinds
{
    /// <summary>The CLI name of an accountant.</summary>
    public static string ToName(this AccountantKind kind) => kind switch
    {
        AccountantKind.Rdp => "rdp",
        AccountantKind.Prv => "prv",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>Parses "rdp" or "prv" (case-insensitive).</summary>
    public static bool TryParse(string? name, out AccountantKind kind)
    {
        switch (name?.Trim().ToUpperInvariant())
        {
            case "RDP":
                kind = AccountantKind.Rdp;
                return true;
            case "PRV":
                kind = AccountantKind.Prv;
                return true;
            default:
                kind = default;
                return false;
        }
    }

    /// <summary>Parses "rdp" or "prv" (case-insensitive); throws <see cref="FormatException"/> otherwise.</summary>
    public static AccountantKind Parse(string name) =>
        TryParse(name, out var kind) ? kind : throw new FormatException($"Unknown accountant '{name}': expected 'rdp' or 'prv'.");
}
