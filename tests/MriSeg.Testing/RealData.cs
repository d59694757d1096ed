using Xunit;

namespace MriSeg.Testing;

/// <summary>
/// The real BraTS data (and accountant reference vectors) beside the repository, ../shared/data, or at
/// $MRISEG_REAL_DATA. It is never copied into the repository; tests that need it skip with the reason
/// where it is absent (trait Category=RealData).
/// </summary>
public static class RealData
{
    public const string EnvironmentVariable = "MRISEG_REAL_DATA";

    /// <summary>The data root, or null with the reason it was not found.</summary>
    public static (string? Root, string Reason) Locate()
    {
        var fromEnv = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(fromEnv))
        {
            return Directory.Exists(fromEnv) ? (fromEnv, "") : (null, $"{EnvironmentVariable}={fromEnv} does not exist");
        }

        if (RepositoryLayout.FindRoot() is not { } root)
        {
            return (null, $"no MriSeg.sln above {AppContext.BaseDirectory} to locate ../shared/data from, and {EnvironmentVariable} is not set");
        }

        var data = Path.GetFullPath(Path.Combine(root, "..", "shared", "data"));
        return Directory.Exists(data) ? (data, "") : (null, $"{data} (../shared/data beside the repository) does not exist and {EnvironmentVariable} is not set");
    }

    /// <summary>The path of a file or folder under the data root, or skips the test with the reason.</summary>
    public static string Require(string relative)
    {
        var (root, reason) = Locate();
        if (root is null)
        {
            Assert.Skip($"real data not found: {reason}");
        }

        var path = Path.Combine(root, relative);
        if (!Directory.Exists(path) && !File.Exists(path))
        {
            Assert.Skip($"real data incomplete: {path} is missing");
        }

        return path;
    }
}
