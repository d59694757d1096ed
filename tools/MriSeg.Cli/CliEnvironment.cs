using MriSeg.Contracts;

namespace MriSeg.Cli;

/// <summary>
/// What the CLI takes from its surroundings rather than from its arguments, so that tests can run it
/// in-process without touching environment variables, the repository's endpoints file or Ctrl+C.
/// </summary>
internal sealed record CliEnvironment
{
    /// <summary>The real process: endpoints file found as <see cref="EndpointsFile.DefaultPath"/> says, Ctrl+C cancels.</summary>
    public static CliEnvironment Process { get; } = new() { HandleTermination = true };

    /// <summary>For in-process callers: like <see cref="Process"/>, but leaves Ctrl+C to the host.</summary>
    public static CliEnvironment InProcess { get; } = new();

    /// <summary>Finds the endpoints file; null when there is none to look for.</summary>
    public Func<EndpointsFileLocation?> LocateEndpointsFile { get; init; } = EndpointsFileLocation.Default;

    /// <summary>Whether Ctrl+C / SIGTERM cancel the running command (System.CommandLine's handler).</summary>
    public bool HandleTermination { get; init; }

    /// <summary>Reads an environment variable (tests give their own).</summary>
    public Func<string, string?> GetEnvironmentVariable { get; init; } = Environment.GetEnvironmentVariable;

    /// <summary>Whether stdout/stderr are terminals; null: detect (true only for the real, unredirected console).</summary>
    public bool? StdoutIsTerminal { get; init; }
    public bool? StderrIsTerminal { get; init; }
}

/// <param name="Path">Full path of the endpoints file (it may not exist).</param>
/// <param name="Explicit">Named by the user (<c>$MRISEG_ENDPOINTS_FILE</c>): its absence deserves a warning.</param>
internal sealed record EndpointsFileLocation(string Path, bool Explicit)
{
    public static EndpointsFileLocation? Default()
    {
        var path = EndpointsFile.DefaultPath();
        if (path is null)
        {
            return null;
        }

        var explicitPath = !string.IsNullOrWhiteSpace(Environment.GetEnvironmentVariable(EndpointsFile.EnvironmentVariable));
        return new EndpointsFileLocation(path, explicitPath);
    }
}
