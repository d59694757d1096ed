using System.Text.Json.Nodes;

namespace MriSeg.Infra.Tests;

/// <summary>One service as infra/services.json describes its deployment.</summary>
internal sealed record DeployedService(string Name, string Host, int GrpcPort, int HttpPort, IReadOnlyList<string> References);

/// <summary>
/// infra/services.json: the services main.bicep deploys (it loads this file), their ports, references
/// and storage connections. The tests hold the AppHost's manifest and azure.yaml against it.
/// </summary>
internal sealed class ServicesCatalog
{
    public const string RelativePath = "infra/services.json";

    private ServicesCatalog(JsonObject json)
    {
        Json = json;
        var storage = json["storage"]!.AsObject();
        StorageResource = storage["resource"]!.GetValue<string>();
        Connections = storage["connections"]!.AsObject().ToDictionary(p => p.Key, p => p.Value!.GetValue<string>());
        Services = json["services"]!.AsObject()
            .Select(p => new DeployedService(
                p.Key,
                p.Value!["host"]!.GetValue<string>(),
                p.Value["grpcPort"]!.GetValue<int>(),
                p.Value["httpPort"]!.GetValue<int>(),
                p.Value["references"]!.AsArray().Select(r => r!.GetValue<string>()).ToList()))
            .ToList();
    }

    public JsonObject Json { get; }

    /// <summary>The AppHost parameter naming the storage account ("storage").</summary>
    public string StorageResource { get; }

    /// <summary>Connection-string name to storage service: blobs → blob, tables → table.</summary>
    public IReadOnlyDictionary<string, string> Connections { get; }

    public IReadOnlyList<DeployedService> Services { get; }

    public static ServicesCatalog Load() =>
        new(JsonNode.Parse(File.ReadAllText(Infra.InRepository(RelativePath)))!.AsObject());
}
