namespace MriSeg.Contracts;

/// <summary>
/// The five MriSeg services: their resource names (Aspire, service discovery, the endpoints file)
/// and the gRPC service each one hosts. One place, so the AppHost, the services and the CLI agree.
/// </summary>
public static class ServiceCatalog
{
    public const string Preprocess = "preprocess";
    public const string Packaging = "packaging";
    public const string KeyBroker = "keybroker";
    public const string Trainer = "trainer";
    public const string ModelVault = "modelvault";

    /// <summary>Endpoint names every service declares: gRPC over cleartext HTTP/2, and HTTP/1.1 for health and curl.</summary>
    public const string GrpcEndpoint = "grpc";
    public const string HttpEndpoint = "http";

    /// <summary>Aspire connection-string names of the storage every service uses.</summary>
    public const string BlobConnection = "blobs";
    public const string TableConnection = "tables";

    public static IReadOnlyList<ServiceInfo> All { get; } =
    [
        new(Preprocess, V1.Preprocess.Descriptor.FullName, 5111, 5112, "de-identified slice shards from BraTS volumes or slice folders (data providers)"),
        new(Packaging, V1.Packaging.Descriptor.FullName, 5121, 5122, "sealed packages: encrypt, sign, verify, key hand-off"),
        new(KeyBroker, V1.KeyBroker.Descriptor.FullName, 5131, 5132, "key import, attestation, release policies, privacy budgets, audit"),
        new(Trainer, V1.Trainer.Descriptor.FullName, 5141, 5142, "the clean-room DP training run"),
        new(ModelVault, V1.ModelVault.Descriptor.FullName, 5151, 5152, "model pull, registry and segmentation (model consumer)"),
    ];

    public static ServiceInfo Get(string name) =>
        All.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown service '{name}'. Known: {string.Join(", ", All.Select(s => s.Name))}.", nameof(name));
}

/// <param name="Name">Resource name, lower case.</param>
/// <param name="GrpcService">Fully qualified gRPC service name, e.g. <c>mriseg.v1.Trainer</c>.</param>
/// <param name="DevGrpcPort">
/// Development port of the gRPC endpoint: each service's appsettings.json names it, and the AppHost's
/// proxy listens there, so a client finds a local AppHost without the endpoints file.
/// </param>
/// <param name="DevHttpPort">Development port of the HTTP/1.1 endpoint (health).</param>
/// <param name="Purpose">One line for people.</param>
public sealed record ServiceInfo(string Name, string GrpcService, int DevGrpcPort, int DevHttpPort, string Purpose);
