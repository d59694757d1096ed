using System.CommandLine;
using MriSeg.Cli.Endpoints;

namespace MriSeg.Cli.Infrastructure;

/// <summary>What a running command needs: its parsed values, its output, and the services' addresses.</summary>
internal sealed class CommandContext
{
    private readonly CliApp app;
    private readonly HashSet<string> warned = [];
    private readonly HashSet<string> noted = [];

    /// <summary>The process's environment as the app sees it (tests substitute it).</summary>
    public CliEnvironment Environment => app.Environment;

    public CommandContext(ParseResult parseResult, CliApp app)
    {
        this.app = app;
        ParseResult = parseResult;
        var config = parseResult.InvocationConfiguration;
        Output = new Output(
            config.Output,
            config.Error,
            json: parseResult.GetValue(app.Globals.Json),
            verbose: parseResult.GetValue(app.Globals.Verbose),
            stdoutIsTerminal: app.Environment.StdoutIsTerminal ?? IsConsole(config.Output, System.Console.Out, System.Console.IsOutputRedirected),
            stderrIsTerminal: app.Environment.StderrIsTerminal ?? IsConsole(config.Error, System.Console.Error, System.Console.IsErrorRedirected));
    }

    public ParseResult ParseResult { get; }
    public Output Output { get; }
    public bool Json => Output.Json;

    public T? GetValue<T>(Option<T> option) => ParseResult.GetValue(option);

    public T? GetValue<T>(Argument<T> argument) => ParseResult.GetValue(argument);

    /// <summary>
    /// The services' gRPC addresses (--endpoint, else the endpoints file, else development ports).
    /// Resolved afresh on each call, so a command that waits sees a file the AppHost writes meanwhile;
    /// each warning is shown once.
    /// </summary>
    public EndpointResolution ResolveEndpoints()
    {
        var overrides = ParseResult.GetValue(app.Globals.Endpoint) ?? [];
        var resolution = EndpointResolver.Resolve(overrides, app.Environment.LocateEndpointsFile());
        foreach (var warning in resolution.Warnings.Where(warned.Add))
        {
            Output.Warn(warning);
        }

        foreach (var line in resolution.Endpoints.Select(e => $"{e.Service}: {e.Address} ({e.Source})").Where(noted.Add))
        {
            Output.Verbose(line);
        }

        return resolution;
    }

    private static bool IsConsole(TextWriter writer, TextWriter console, bool redirected) =>
        ReferenceEquals(writer, console) && !redirected;
}
