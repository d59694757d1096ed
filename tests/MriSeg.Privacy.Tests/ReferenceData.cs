using MriSeg.Testing;
using System.Text.Json;

namespace MriSeg.Privacy.Tests;

/// <summary>One row of the Opacus 1.5.4 table; <see cref="Prv"/> is null where Opacus returned "inf".</summary>
internal sealed record ReferenceVector(double Q, double Sigma, long Steps, double Delta, double Rdp, double RdpAlpha, double? Prv)
{
    public override string ToString() => $"q={Q} sigma={Sigma} steps={Steps} delta={Delta}";
}

/// <summary>One Opacus get_noise_multiplier result.</summary>
internal sealed record ReferenceCalibration(string Accountant, double TargetEpsilon, double Delta, double Q, long Steps, double Sigma, double AchievedEpsilon);

/// <summary>
/// The Opacus 1.5.4 test vectors in ../shared/data/accountant (beside the repository root, the folder
/// holding MriSeg.sln) or under $MRISEG_REAL_DATA. Tests that need them skip with the reason when absent.
/// </summary>
internal static class ReferenceData
{
    public const string RelativePath = "accountant/opacus-1.5.4-reference.json";

    private static readonly Lazy<(IReadOnlyList<ReferenceVector> Table, IReadOnlyList<ReferenceCalibration> Calibrations)?> Loaded =
        new(() => FindFile(out _) is { } path ? Parse(path) : null);

    public static IReadOnlyList<ReferenceVector> TableOrSkip() => LoadOrSkip().Table;

    public static IReadOnlyList<ReferenceCalibration> CalibrationsOrSkip() => LoadOrSkip().Calibrations;

    /// <summary>The reference file, or null with where it was looked for.</summary>
    public static string? FindFile(out string searched)
    {
        var (root, reason) = RealData.Locate();
        if (root is null)
        {
            searched = reason;
            return null;
        }

        searched = Path.Combine(root, RelativePath);
        return File.Exists(searched) ? searched : null;
    }

    private static (IReadOnlyList<ReferenceVector> Table, IReadOnlyList<ReferenceCalibration> Calibrations) LoadOrSkip()
    {
        var loaded = Loaded.Value;
        if (loaded is null)
        {
            FindFile(out string searched);
            Assert.Skip($"Opacus reference vectors not found (looked at: {searched}); set {RealData.EnvironmentVariable} to the data folder.");
        }

        return loaded.Value;
    }

    private static (IReadOnlyList<ReferenceVector>, IReadOnlyList<ReferenceCalibration>) Parse(string path)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var table = new List<ReferenceVector>();
        foreach (var row in doc.RootElement.GetProperty("table").EnumerateArray())
        {
            var prv = row.GetProperty("prv");
            double? prvValue = prv.ValueKind == JsonValueKind.Number ? prv.GetDouble()
                : prv.GetString() is "inf" or "Infinity" ? null
                : throw new FormatException($"Unexpected prv value {prv}");
            table.Add(new ReferenceVector(
                row.GetProperty("q").GetDouble(),
                row.GetProperty("sigma").GetDouble(),
                row.GetProperty("steps").GetInt64(),
                row.GetProperty("delta").GetDouble(),
                row.GetProperty("rdp").GetDouble(),
                row.GetProperty("rdp_alpha").GetDouble(),
                prvValue));
        }

        var calibrations = new List<ReferenceCalibration>();
        if (doc.RootElement.TryGetProperty("noise_multiplier", out var nm))
        {
            foreach (var row in nm.EnumerateArray())
            {
                calibrations.Add(new ReferenceCalibration(
                    row.GetProperty("accountant").GetString()!,
                    row.GetProperty("target_eps").GetDouble(),
                    row.GetProperty("delta").GetDouble(),
                    row.GetProperty("q").GetDouble(),
                    row.GetProperty("steps").GetInt64(),
                    row.GetProperty("sigma").GetDouble(),
                    row.GetProperty("achieved_eps").GetDouble()));
            }
        }

        return (table, calibrations);
    }
}
