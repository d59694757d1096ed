namespace MriSeg.Learning.Torch;

/// <summary>What the C++ runtime this process uses provides.</summary>
/// <param name="Path">The libstdc++ file, or null when none was found.</param>
/// <param name="HowFound">"mapped in this process", "LD_LIBRARY_PATH" or "standard folder".</param>
/// <param name="Versions">The GLIBCXX_/CXXABI_ versions it defines (empty when not found or unreadable).</param>
/// <param name="Error">Why it could not be read, if it could not.</param>
public sealed record LibStdCxxFinding(string? Path, string HowFound, IReadOnlyList<string> Versions, string? Error)
{
    /// <summary>True when the library was read and defines <paramref name="versionName"/>.</summary>
    public bool Defines(string versionName) => Versions.Contains(versionName, StringComparer.Ordinal);

    /// <summary>The newest GLIBCXX_ version defined, for messages.</summary>
    public string? NewestGlibcxx => Versions
        .Where(v => v.StartsWith("GLIBCXX_", StringComparison.Ordinal))
        .Select(v => (Name: v, Key: ParseVersion(v["GLIBCXX_".Length..])))
        .OrderByDescending(v => v.Key)
        .Select(v => v.Name)
        .FirstOrDefault();

    /// <summary>One line for logs and error messages.</summary>
    public string Describe(string versionName) => Path is null
        ? $"no libstdc++.so.6 found ({Error})"
        : Error is not null
            ? $"{Path} ({HowFound}) could not be read: {Error}"
            : $"{Path} ({HowFound}) {(Defines(versionName) ? "defines" : "lacks")} {versionName}; newest is {NewestGlibcxx ?? "none"}";

    private static Version ParseVersion(string text) => Version.TryParse(text.Contains('.', StringComparison.Ordinal) ? text : text + ".0", out var v) ? v : new Version(0, 0);
}

/// <summary>Finds and reads the libstdc++.so.6 that the dynamic loader binds for this process.</summary>
public static class SystemLibStdCxx
{
    private static readonly string[] StandardFolders =
    [
        "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib",
    ];

    /// <summary>Locates libstdc++.so.6 and lists the versions it defines.</summary>
    public static LibStdCxxFinding Probe()
    {
        var (path, how) = Locate();
        if (path is null)
        {
            return new LibStdCxxFinding(null, "not found", [], "searched /proc/self/maps, LD_LIBRARY_PATH and " + string.Join(", ", StandardFolders));
        }

        try
        {
            return new LibStdCxxFinding(path, how, ElfVersionInfo.Read(path).Definitions, null);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return new LibStdCxxFinding(path, how, [], ex.Message);
        }
    }

    private static (string? Path, string How) Locate()
    {
        // The runtime (libcoreclr) links libstdc++ itself, so the copy already mapped is the one any
        // later dlopen binds by soname; only if it is not mapped, search as ld.so would.
        var mapped = FromProcMaps();
        if (mapped is not null)
        {
            return (mapped, "mapped in this process");
        }

        var ldLibraryPath = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "";
        foreach (var folder in ldLibraryPath.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = System.IO.Path.Combine(folder, "libstdc++.so.6");
            if (File.Exists(candidate))
            {
                return (candidate, "LD_LIBRARY_PATH");
            }
        }

        foreach (var folder in StandardFolders)
        {
            var candidate = System.IO.Path.Combine(folder, "libstdc++.so.6");
            if (File.Exists(candidate))
            {
                return (candidate, "standard folder");
            }
        }

        return (null, "not found");
    }

    private static string? FromProcMaps()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                var slash = line.IndexOf('/', StringComparison.Ordinal);
                if (slash < 0)
                {
                    continue;
                }

                var file = line[slash..];
                if (System.IO.Path.GetFileName(file).StartsWith("libstdc++.so", StringComparison.Ordinal) && File.Exists(file))
                {
                    return file;
                }
            }
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // No procfs (e.g. a restricted container): fall back to the folder search.
        }

        return null;
    }
}
