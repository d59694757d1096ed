using MriSeg.Contracts;

namespace MriSeg.Cli.Tests;

/// <summary>Parsing, errors and `mriseg endpoints`, run in-process.</summary>
public sealed class CliTests : IDisposable
{
    private readonly TempFolder temp = new();

    public void Dispose() => temp.Dispose();

    [Fact]
    public async Task An_unknown_option_is_System_CommandLines_error_on_stderr_and_not_zero()
    {
        var run = await CliRun.RunAsync("services", "--json", "--bogus");

        Assert.NotEqual(0, run.ExitCode);
        Assert.Contains("Unrecognized command or argument '--bogus'", run.Stderr);
        Assert.Equal("", run.Stdout);
    }

    [Fact]
    public async Task A_malformed_endpoint_is_rejected_before_anything_runs()
    {
        var run = await CliRun.RunAsync("services", "--json", "--endpoint", "trainer:5141");

        Assert.NotEqual(0, run.ExitCode);
        var line = Assert.Single(run.StderrLines);
        Assert.Equal("--endpoint 'trainer:5141': expected NAME=URL, e.g. trainer=http://localhost:5141.", line);
        Assert.Equal("", run.Stdout);
    }

    [Fact]
    public async Task A_malformed_endpoints_file_is_one_line_on_stderr_without_a_stack_trace()
    {
        var path = Path.Combine(temp.Path, "endpoints.json");
        File.WriteAllText(path, "[1, 2");

        var run = await CliRun.RunAsync(WithFile(path), "endpoints", "--json");

        Assert.Equal(1, run.ExitCode);
        var line = Assert.Single(run.StderrLines);
        Assert.StartsWith($"error: {path}: not a valid endpoints file", line);
        Assert.DoesNotContain(" at ", run.Stderr);
        Assert.Equal("", run.Stdout);
    }

    [Fact]
    public async Task Endpoints_shows_each_address_and_its_source_as_json()
    {
        var path = Path.Combine(temp.Path, "endpoints.json");
        new EndpointsFile
        {
            ProcessId = Environment.ProcessId,
            Services = new(StringComparer.OrdinalIgnoreCase)
            {
                [ServiceCatalog.Packaging] = new() { [ServiceCatalog.GrpcEndpoint] = "http://127.0.0.1:6200" },
            },
        }.Write(path);

        var run = await CliRun.RunAsync(WithFile(path), "--json", "endpoints", "--endpoint", "trainer=http://127.0.0.1:6300");

        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.Json();
        Assert.Equal(path, json.GetProperty("file").GetString());
        Assert.Equal("used", json.GetProperty("fileState").GetString());
        var bySource = json.GetProperty("endpoints").EnumerateArray()
            .ToDictionary(e => e.GetProperty("service").GetString()!, e => (e.GetProperty("source").GetString(), e.GetProperty("address").GetString()));
        Assert.Equal(("override", "http://127.0.0.1:6300"), bySource[ServiceCatalog.Trainer]);
        Assert.Equal(("file", "http://127.0.0.1:6200"), bySource[ServiceCatalog.Packaging]);
        Assert.Equal(("dev-port", "http://localhost:5151"), bySource[ServiceCatalog.ModelVault]);
        // The services missing from the file are warned about on stderr, never on stdout.
        Assert.Equal(3, run.StderrLines.Count(l => l.StartsWith("warning: ", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Endpoints_for_people_names_the_file_and_the_sources()
    {
        var path = Path.Combine(temp.Path, "absent.json");

        var run = await CliRun.RunAsync(WithFile(path), "endpoints");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains(path, run.Stdout);
        Assert.Contains("development port", run.Stdout);
        Assert.Contains("http://localhost:5141", run.Stdout);
    }

    [Fact]
    public async Task No_command_is_an_error()
    {
        var run = await CliRun.RunAsync();

        Assert.NotEqual(0, run.ExitCode);
        Assert.NotEqual("", run.Stderr);
    }

    private static CliEnvironment WithFile(string path) => new() { LocateEndpointsFile = () => new EndpointsFileLocation(path, Explicit: false) };
}
