namespace MriSeg.Cli.Infrastructure;

/// <summary>
/// A failure to report to the user as one line (bad input, a service that said no, a broken file):
/// the message is the whole story, so no stack trace is shown even with --verbose.
/// </summary>
internal sealed class CliException(string message, Exception? inner = null, int exitCode = ExitCodes.Failure)
    : Exception(message, inner)
{
    public int ExitCode { get; } = exitCode;
}

internal static class ExitCodes
{
    public const int Success = 0;
    /// <summary>The command ran and the answer is "no" (a service down), or it failed; also System.CommandLine's parse errors.</summary>
    public const int Failure = 1;
    /// <summary>Ctrl+C, as shells report SIGINT.</summary>
    public const int Cancelled = 130;
}
