using System.Security.Cryptography;
using System.Text;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>
/// The software measurement a development attestation states for a trainer: SHA-256 over the sorted list of its
/// files (path relative to the root with '/' separators, and each file's SHA-256), so that any changed, added or
/// removed binary or configuration file changes it:
/// <code>measurement = SHA-256( "MriSeg.KeyRelease.v1 measurement\0" ‖ for each file in ordinal path order: path ‖ 0x00 ‖ SHA-256(file) )</code>
/// </summary>
public static class SoftwareMeasurement
{
    private static ReadOnlySpan<byte> Context => "MriSeg.KeyRelease.v1 measurement\0"u8;

    /// <summary>The measurement of every file below <paramref name="root"/> (recursively), lower-case hex.</summary>
    public static string OfDirectory(string root)
    {
        var files = Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => (Path: Path.GetRelativePath(root, f).Replace('\\', '/'), Full: f));
        return Of(files);
    }

    /// <summary>The measurement of the given files, named by their relative paths.</summary>
    public static string Of(IEnumerable<(string Path, string Full)> files)
    {
        ArgumentNullException.ThrowIfNull(files);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Context);
        foreach (var (path, full) in files.OrderBy(f => f.Path, StringComparer.Ordinal))
        {
            hash.AppendData(Encoding.UTF8.GetBytes(path));
            hash.AppendData([0]);
            using var stream = File.OpenRead(full);
            hash.AppendData(SHA256.HashData(stream));
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
