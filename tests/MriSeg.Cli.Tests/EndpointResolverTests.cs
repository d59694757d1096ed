using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;

namespace MriSeg.Cli.Tests;

public sealed class EndpointResolverTests : IDisposable
{
    private readonly TempFolder temp = new();

    public void Dispose() => temp.Dispose();

    [Fact]
    public void An_override_beats_the_file_and_the_file_beats_the_development_port()
    {
        var file = WriteFile(new()
        {
            [ServiceCatalog.Trainer] = "http://127.0.0.1:6001",
            [ServiceCatalog.Packaging] = "http://127.0.0.1:6002",
        });

        var resolution = EndpointResolver.Resolve([Override("trainer=http://10.1.2.3:7000")], new(file, Explicit: false));

        Assert.Equal(EndpointsFileState.Used, resolution.FileState);
        Assert.Equal(file, resolution.File);
        AssertEndpoint(resolution, ServiceCatalog.Trainer, "http://10.1.2.3:7000/", EndpointSource.Override);
        AssertEndpoint(resolution, ServiceCatalog.Packaging, "http://127.0.0.1:6002/", EndpointSource.File);
        AssertEndpoint(resolution, ServiceCatalog.KeyBroker, "http://localhost:5131/", EndpointSource.DevPort);
        Assert.Equal(5, resolution.Endpoints.Count);
        Assert.Equal(ServiceCatalog.All.Select(s => s.GrpcService), resolution.Endpoints.Select(e => e.GrpcService));
        // The three services the file lacks fall back, and say so.
        Assert.Equal(3, resolution.Warnings.Count(w => w.Contains("development port", StringComparison.Ordinal)));
    }

    [Fact]
    public void Without_a_file_every_service_uses_its_development_port()
    {
        var resolution = EndpointResolver.Resolve([], null);

        Assert.Equal(EndpointsFileState.None, resolution.FileState);
        Assert.Empty(resolution.Warnings);
        foreach (var service in ServiceCatalog.All)
        {
            AssertEndpoint(resolution, service.Name, $"http://localhost:{service.DevGrpcPort}/", EndpointSource.DevPort);
        }
    }

    [Fact]
    public void A_missing_file_is_normal_unless_the_user_named_it()
    {
        var path = Path.Combine(temp.Path, "absent.json");

        var implicitResolution = EndpointResolver.Resolve([], new(path, Explicit: false));
        Assert.Equal(EndpointsFileState.Missing, implicitResolution.FileState);
        Assert.Empty(implicitResolution.Warnings);

        var explicitResolution = EndpointResolver.Resolve([], new(path, Explicit: true));
        Assert.Contains(explicitResolution.Warnings, w => w.Contains(path, StringComparison.Ordinal) && w.Contains(EndpointsFile.EnvironmentVariable, StringComparison.Ordinal));
        Assert.All(explicitResolution.Endpoints, e => Assert.Equal(EndpointSource.DevPort, e.Source));
    }

    [Fact]
    public void A_file_whose_writer_is_gone_is_still_used_with_a_warning()
    {
        var file = WriteFile(AllServices("http://127.0.0.1:6100"), processId: DeadProcessId());

        var resolution = EndpointResolver.Resolve([], new(file, Explicit: false));

        Assert.Equal(EndpointsFileState.Stale, resolution.FileState);
        var warning = Assert.Single(resolution.Warnings);
        Assert.Contains("no longer running", warning);
        Assert.All(resolution.Endpoints, e => Assert.Equal(EndpointSource.File, e.Source));
    }

    [Fact]
    public void A_malformed_file_is_an_error_naming_the_file()
    {
        var path = Path.Combine(temp.Path, "endpoints.json");
        File.WriteAllText(path, "{ this is not json");

        var e = Assert.Throws<CliException>(() => EndpointResolver.Resolve([], new(path, Explicit: false)));
        Assert.Contains(path, e.Message);
        Assert.Contains("not a valid endpoints file", e.Message);
    }

    [Fact]
    public void A_bad_address_in_the_file_is_an_error_naming_the_service()
    {
        var file = WriteFile(new() { [ServiceCatalog.Trainer] = "localhost:5141" });

        var e = Assert.Throws<CliException>(() => EndpointResolver.Resolve([], new(file, Explicit: false)));
        Assert.Contains("trainer", e.Message);
        Assert.Contains("localhost:5141", e.Message);
    }

    [Fact]
    public void When_every_service_is_overridden_the_file_is_not_read()
    {
        var path = Path.Combine(temp.Path, "endpoints.json");
        File.WriteAllText(path, "broken");
        var overrides = ServiceCatalog.All.Select(s => Override($"{s.Name}=http://127.0.0.1:1")).ToList();

        var resolution = EndpointResolver.Resolve(overrides, new(path, Explicit: false));

        Assert.Equal(EndpointsFileState.NotRead, resolution.FileState);
        Assert.All(resolution.Endpoints, e => Assert.Equal(EndpointSource.Override, e.Source));
    }

    [Fact]
    public void The_same_service_overridden_twice_is_rejected()
    {
        var e = Assert.Throws<CliException>(() =>
            EndpointResolver.Resolve([Override("trainer=http://a:1"), Override("TRAINER=http://b:2")], null));
        Assert.Contains("trainer", e.Message);
    }

    [Theory]
    [InlineData("trainer=http://localhost:9000", "trainer", "http://localhost:9000/")]
    [InlineData("ModelVault=https://mv.example:443/", "modelvault", "https://mv.example/")]
    [InlineData(" keybroker = http://[::1]:5131 ", "keybroker", "http://[::1]:5131/")]
    public void An_endpoint_override_parses_name_and_url(string text, string service, string url)
    {
        Assert.True(EndpointOverride.TryParse(text, out var value, out var error), error);
        Assert.Equal(service, value.Service);
        Assert.Equal(url, value.Address.ToString());
    }

    [Theory]
    [InlineData("trainer", "expected NAME=URL")]
    [InlineData("=http://localhost:1", "expected NAME=URL")]
    [InlineData("trainer=", "expected NAME=URL")]
    [InlineData("nosuch=http://localhost:1", "unknown service 'nosuch'")]
    [InlineData("trainer=localhost:5141", "not an absolute http:// or https:// URL")]
    [InlineData("trainer=ftp://localhost:5141", "not an absolute http:// or https:// URL")]
    [InlineData("trainer=/relative", "not an absolute http:// or https:// URL")]
    public void A_malformed_endpoint_override_is_rejected_with_a_reason(string text, string reason)
    {
        Assert.False(EndpointOverride.TryParse(text, out var value, out var error));
        Assert.Null(value);
        Assert.Contains(reason, error);
        Assert.StartsWith($"--endpoint '{text}'", error);
    }

    private static EndpointOverride Override(string text) =>
        EndpointOverride.TryParse(text, out var value, out var error) ? value : throw new ArgumentException(error);

    private static void AssertEndpoint(EndpointResolution resolution, string service, string address, EndpointSource source)
    {
        var endpoint = resolution.Get(service);
        Assert.Equal(address, endpoint.Address.ToString());
        Assert.Equal(source, endpoint.Source);
    }

    private static Dictionary<string, string> AllServices(string address) =>
        ServiceCatalog.All.ToDictionary(s => s.Name, _ => address);

    private string WriteFile(Dictionary<string, string> grpcAddresses, int? processId = null)
    {
        var path = Path.Combine(temp.Path, "endpoints.json");
        new EndpointsFile
        {
            ProcessId = processId ?? Environment.ProcessId,
            Services = grpcAddresses.ToDictionary(
                kv => kv.Key,
                kv => new Dictionary<string, string> { [ServiceCatalog.GrpcEndpoint] = kv.Value },
                StringComparer.OrdinalIgnoreCase),
        }.Write(path);
        return path;
    }

    /// <summary>A process id that no running process has (pid_max is at most 2^22 on Linux).</summary>
    private static int DeadProcessId() => int.MaxValue - 1;
}
