using System.Security.Cryptography;
using System.Text;

namespace MriSeg.CleanRoom;

/// <summary>
/// The software measurement of a trainer build: SHA-256 over the sorted list of its code files (relative path,
/// length and SHA-256 of each .dll, .so, .json file of the application folder) and its configuration bytes.
/// The development attestation authority vouches for this value; on a confidential VM the hardware measurement
/// of the image takes its place. A changed binary or configuration changes it.
/// </summary>
public static class SoftwareMeasurement
{
    private static readonly string[] MeasuredExtensions = [".dll", ".so", ".json"];

    /// <summary>Measures the files of <paramref name="applicationDirectory"/> (recursively) and the configuration.</summary>
    /// <returns>Lower-case hex SHA-256.</returns>
    public static string Compute(string applicationDirectory, ReadOnlySpan<byte> configuration)
    {
        ArgumentException.ThrowIfNullOrEmpty(applicationDirectory);
        var root = Path.GetFullPath(applicationDirectory);
        var files = Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Where(f => MeasuredExtensions.Contains(Path.GetExtension(f), StringComparer.OrdinalIgnoreCase))
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .Order(StringComparer.Ordinal)
            .ToList();
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData("mriseg.measurement.v1\n"u8);
        foreach (var relative in files)
        {
            var full = Path.Combine(root, relative);
            using var stream = File.OpenRead(full);
            var digest = Convert.ToHexStringLower(SHA256.HashData(stream));
            hash.AppendData(Encoding.UTF8.GetBytes($"{relative}\t{stream.Length}\t{digest}\n"));
        }

        hash.AppendData("configuration\n"u8);
        hash.AppendData(SHA256.HashData(configuration));
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Measures the running application (its base directory) with the given configuration.</summary>
    public static string OfCurrentApplication(ReadOnlySpan<byte> configuration) => Compute(AppContext.BaseDirectory, configuration);
}
