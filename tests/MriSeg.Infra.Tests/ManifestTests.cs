using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace MriSeg.Infra.Tests;

/// <summary>
/// Publishes the AppHost's manifest once, as azd would:
/// <c>dotnet run --project MriSeg.AppHost --no-build -- --publisher manifest --output-path &lt;file&gt;</c>.
/// </summary>
public sealed class PublishedManifest : IAsyncLifetime
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);
    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("mriseg-manifest-");

    public JsonObject Resources { get; private set; } = null!;
    internal ProcessResult Run { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        var output = Path.Combine(_work.FullName, "aspire-manifest.json");
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";
        Run = await ChildProcess.RunAsync(
            dotnet,
            ["run", "--project", Infra.InRepository("MriSeg.AppHost/MriSeg.AppHost.csproj"), "--no-build",
             "-c", BuildInfo.Require("MriSeg.Configuration"),
             "--", "--publisher", "manifest", "--output-path", output],
            Infra.Root,
            Timeout);
        if (Run.ExitCode != 0 || !File.Exists(output))
        {
            throw new InvalidOperationException("publishing the AppHost manifest failed: " + Run.Describe());
        }

        Resources = JsonNode.Parse(await File.ReadAllTextAsync(output))!["resources"]!.AsObject();
    }

    public ValueTask DisposeAsync()
    {
        try
        {
            _work.Delete(recursive: true);
        }
        catch (IOException)
        {
        }

        return ValueTask.CompletedTask;
    }
}

/// <summary>
/// The AppHost's manifest (its model of the system in publish mode) and infra/ describe the same
/// deployment: the same five services with the same ports and references, the same storage.
/// </summary>
public sealed partial class ManifestTests(PublishedManifest manifest) : IClassFixture<PublishedManifest>
{
    private readonly ServicesCatalog _catalog = ServicesCatalog.Load();

    private IEnumerable<KeyValuePair<string, JsonNode?>> OfType(string type) =>
        manifest.Resources.Where(r => r.Value?["type"]?.GetValue<string>() == type);

    private JsonObject Project(string name) =>
        manifest.Resources[name] as JsonObject ?? throw new Xunit.Sdk.XunitException($"the manifest has no resource {name}");

    [Fact]
    public void Manifest_projects_are_the_services_infra_deploys()
    {
        var projects = OfType("project.v0").Select(r => r.Key).Order().ToList();
        Assert.Equal(_catalog.Services.Select(s => s.Name).Order().ToList(), projects);
        Assert.Equal(["keybroker", "modelvault", "packaging", "preprocess", "trainer"], projects);
    }

    [Fact]
    public void Manifest_has_no_local_only_resources()
    {
        // No Azurite (executables) or containers in publish mode: only projects, the storage parameter
        // and the connection strings derived from it.
        var others = manifest.Resources.Where(r => r.Value?["type"]?.GetValue<string>() != "project.v0")
            .Select(r => $"{r.Key} ({r.Value?["type"]})").Order().ToList();
        var expected = _catalog.Connections.Keys.Append(_catalog.StorageResource)
            .Select(k => $"{k} ({manifest.Resources[k]?["type"]})").Order().ToList();
        Assert.Equal(expected, others);
        Assert.Empty(OfType("executable.v0"));
        Assert.Empty(OfType("container.v0"));
        Assert.Empty(OfType("container.v1"));
    }

    [Fact]
    public void Storage_is_the_deployed_account_reached_by_service_uri()
    {
        Assert.Equal("parameter.v0", manifest.Resources[_catalog.StorageResource]?["type"]?.GetValue<string>());
        foreach (var (name, service) in _catalog.Connections)
        {
            var connection = manifest.Resources[name]?["connectionString"]?.GetValue<string>();
            Assert.Equal($"https://{{{_catalog.StorageResource}.value}}.{service}.core.windows.net/", connection);
        }
    }

    [Theory]
    [InlineData("preprocess")]
    [InlineData("packaging")]
    [InlineData("keybroker")]
    [InlineData("trainer")]
    [InlineData("modelvault")]
    public void Service_ports_references_and_connections_match_infra(string name)
    {
        var deployed = Assert.Single(_catalog.Services, s => s.Name == name);
        var project = Project(name);

        var grpc = project["bindings"]?["grpc"];
        var http = project["bindings"]?["http"];
        Assert.Equal(deployed.GrpcPort, grpc?["targetPort"]?.GetValue<int>());
        Assert.Equal("http2", grpc?["transport"]?.GetValue<string>());
        Assert.Equal(deployed.HttpPort, http?["targetPort"]?.GetValue<int>());

        var env = project["env"]!.AsObject().Select(e => e.Key).ToList();
        var references = env.Select(k => ServiceReference().Match(k)).Where(m => m.Success)
            .Select(m => m.Groups[1].Value).Distinct().Order().ToList();
        Assert.Equal(deployed.References.Order().ToList(), references);

        var connections = env.Where(k => k.StartsWith("ConnectionStrings__", StringComparison.Ordinal))
            .Select(k => k["ConnectionStrings__".Length..]).Order().ToList();
        Assert.Equal(_catalog.Connections.Keys.Order().ToList(), connections);
    }

    [GeneratedRegex(@"^services__([a-z0-9-]+)__")]
    private static partial Regex ServiceReference();
}
