using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using MriSeg.Testing;

namespace MriSeg.Infra.Tests;

/// <summary>Build-time values the project file stamps into this assembly.</summary>
internal static class BuildInfo
{
    public static string? Get(string key) =>
        typeof(BuildInfo).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == key)?.Value is { Length: > 0 } value ? value : null;

    public static string Require(string key) =>
        Get(key) ?? throw new InvalidOperationException($"assembly metadata {key} is missing: rebuild tests/MriSeg.Infra.Tests.");
}

/// <summary>The Bicep CLI from the NuGet package that the project file downloads (PackageDownload).</summary>
internal static class BicepCli
{
    /// <summary>Why the CLI cannot run here (the package holds a linux-x64 binary), or null.</summary>
    public static string? UnsupportedPlatform =>
        OperatingSystem.IsLinux() && RuntimeInformation.OSArchitecture == Architecture.X64
            ? null
            : $"the Bicep CLI package used here is for linux-x64; this is {RuntimeInformation.RuntimeIdentifier}";

    /// <summary>The bicep executable in the NuGet packages folder.</summary>
    public static string Locate()
    {
        var package = BuildInfo.Require("MriSeg.BicepCliPackage").ToLowerInvariant();
        var version = BuildInfo.Require("MriSeg.BicepCliVersion");
        var roots = new[]
            {
                BuildInfo.Get("MriSeg.NuGetPackageRoot"),
                Environment.GetEnvironmentVariable("NUGET_PACKAGES"),
                Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"),
            }
            .Where(r => !string.IsNullOrWhiteSpace(r))
            .Select(r => Path.Combine(r!, package, version, "tools", "bicep"))
            .ToList();
        var bicep = roots.FirstOrDefault(File.Exists)
            ?? throw new FileNotFoundException(
                $"the Bicep CLI was not found at {string.Join(" or ", roots)}: restore tests/MriSeg.Infra.Tests (its PackageDownload fetches it).");

        // NuGet does not always keep the executable bit when it extracts a package.
        var mode = OperatingSystem.IsWindows() ? UnixFileMode.UserExecute : File.GetUnixFileMode(bicep);
        if (!OperatingSystem.IsWindows() && !mode.HasFlag(UnixFileMode.UserExecute))
        {
            File.SetUnixFileMode(bicep, mode | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }

        return bicep;
    }
}

/// <summary>The outcome of a child process.</summary>
internal sealed record ProcessResult(int ExitCode, string StandardOutput, string StandardError)
{
    public string Describe() => $"exit code {ExitCode}\nstdout:\n{StandardOutput}\nstderr:\n{StandardError}";
}

internal static class ChildProcess
{
    public static async Task<ProcessResult> RunAsync(string fileName, IEnumerable<string> arguments, string workingDirectory, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {fileName}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{fileName} {string.Join(' ', start.ArgumentList)} did not finish within {timeout.TotalSeconds:0} s");
        }

        return new ProcessResult(process.ExitCode, await stdout, await stderr);
    }
}

/// <summary>Paths of the deployment files in the repository.</summary>
internal static class Infra
{
    public static string Root => RepositoryLayout.Root;
    public static string Folder => Path.Combine(Root, "infra");

    /// <summary>A path relative to the repository root ('/' separators) made absolute.</summary>
    public static string InRepository(string relative) => Path.GetFullPath(Path.Combine(Root, relative));

    /// <summary>Every .bicep file under infra/, relative to the repository root with '/' separators.</summary>
    public static IReadOnlyList<string> BicepFiles() =>
        Directory.EnumerateFiles(Folder, "*.bicep", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(Root, f).Replace('\\', '/'))
            .Order(StringComparer.Ordinal)
            .ToList();
}
