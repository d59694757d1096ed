using System.Text.RegularExpressions;

[assembly: AssemblyFixture(typeof(MriSeg.Infra.Tests.BicepBuild))]

namespace MriSeg.Infra.Tests;

/// <summary>
/// One <c>bicep build</c> and one <c>bicep lint</c> over every .bicep file under infra/ (each a single
/// process with <c>--pattern</c>: about 4 s each instead of 4 s per file), shared by all tests. Each
/// diagnostic line names its file, so every file still gets its own verdict.
/// </summary>
public sealed partial class BicepBuild : IAsyncLifetime
{
    private const string Pattern = "infra/**/*.bicep";
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);
    private readonly DirectoryInfo _output = Directory.CreateTempSubdirectory("mriseg-bicep-");

    internal ProcessResult Build { get; private set; } = null!;
    internal ProcessResult Lint { get; private set; } = null!;
    internal string? SkipReason { get; private set; }

    /// <summary>Diagnostics by file (repository-relative, '/' separators), from build and lint.</summary>
    internal IReadOnlyDictionary<string, IReadOnlyList<string>> Diagnostics { get; private set; } = new Dictionary<string, IReadOnlyList<string>>();

    /// <summary>Output lines that name no file (an error of the CLI itself, a bad configuration).</summary>
    internal IReadOnlyList<string> Unattributed { get; private set; } = [];

    public async ValueTask InitializeAsync()
    {
        if (BicepCli.UnsupportedPlatform is { } reason)
        {
            SkipReason = reason;
            return;
        }

        var bicep = BicepCli.Locate();
        Build = await ChildProcess.RunAsync(bicep, ["build", "--pattern", Pattern, "--outdir", _output.FullName], Infra.Root, Timeout);
        Lint = await ChildProcess.RunAsync(bicep, ["lint", "--pattern", Pattern], Infra.Root, Timeout);

        var byFile = new Dictionary<string, List<string>>(StringComparer.Ordinal);
        var unattributed = new List<string>();
        foreach (var (tool, result) in new[] { ("build", Build), ("lint", Lint) })
        {
            foreach (var line in (result.StandardError + "\n" + result.StandardOutput).Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (DiagnosticLine().Match(line) is { Success: true } match)
                {
                    var file = Path.GetRelativePath(Infra.Root, match.Groups["path"].Value).Replace('\\', '/');
                    (byFile.TryGetValue(file, out var list) ? list : byFile[file] = []).Add($"{tool}: {line}");
                }
                else
                {
                    unattributed.Add($"{tool}: {line}");
                }
            }
        }

        Diagnostics = byFile.ToDictionary(p => p.Key, p => (IReadOnlyList<string>)p.Value, StringComparer.Ordinal);
        Unattributed = unattributed;
    }

    /// <summary>The ARM JSON that <c>bicep build</c> wrote for a .bicep file (repository-relative path).</summary>
    internal string CompiledPath(string bicepFile)
    {
        var underInfra = Path.GetRelativePath(Infra.Folder, Infra.InRepository(bicepFile));
        return Path.Combine(_output.FullName, Path.ChangeExtension(underInfra, ".json"));
    }

    internal void SkipIfUnavailable()
    {
        if (SkipReason is not null)
        {
            Assert.Skip(SkipReason);
        }
    }

    public ValueTask DisposeAsync()
    {
        try
        {
            _output.Delete(recursive: true);
        }
        catch (IOException)
        {
        }

        return ValueTask.CompletedTask;
    }

    // "/path/to/file.bicep(12,5) : Warning no-unused-params: Parameter "x" is declared but never used. [...]"
    [GeneratedRegex(@"^(?<path>.+?\.bicep(param)?)\(\d+,\d+\) : (?<level>\w+) ")]
    private static partial Regex DiagnosticLine();
}
