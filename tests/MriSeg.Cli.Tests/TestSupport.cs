using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using MriSeg.Cli;

namespace MriSeg.Cli.Tests;

internal sealed record CliRun(int ExitCode, string Stdout, string Stderr)
{
    public static async Task<CliRun> RunAsync(CliEnvironment environment, params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var exitCode = await Cli.RunAsync(args, stdout, stderr, environment, TestContext.Current.CancellationToken);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>No endpoints file: tests must not depend on an AppHost the developer may be running.</summary>
    public static Task<CliRun> RunAsync(params string[] args) =>
        RunAsync(new CliEnvironment { LocateEndpointsFile = () => null }, args);

    public JsonElement Json() => JsonDocument.Parse(Stdout).RootElement;

    public string[] StderrLines => Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

internal static class Ports
{
    /// <summary>A loopback port that was free a moment ago and that nothing listens on now.</summary>
    public static int Closed()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

internal sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("mriseg-cli-test-").FullName;

    public void Dispose() => Directory.Delete(Path, recursive: true);
}
