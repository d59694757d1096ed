using Aspire.Hosting.ApplicationModel;

namespace MriSeg.AppHost;

/// <summary>Which Azurite service a resource runs; each is its own process and endpoint.</summary>
public enum AzuriteService
{
    Blob,
    Table,
}

/// <summary>
/// An Azurite service (from npm, see the project file) as an executable resource whose connection
/// string is an Azure Storage account connection string for the emulator's well-known account.
/// Container resources cannot run here (no Docker engine), hence an executable.
/// </summary>
public sealed class AzuriteResource(string name, string command, string workingDirectory, AzuriteService service)
    : ExecutableResource(name, command, workingDirectory), IResourceWithConnectionString
{
    // The emulator's published development account (documented by Microsoft; not a secret).
    private const string Account = "devstoreaccount1";
    private const string AccountKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    public AzuriteService Service { get; } = service;
    public string EndpointName => Service == AzuriteService.Blob ? "blob" : "table";
    public EndpointReference Endpoint => new(this, EndpointName);

    // 127.0.0.1, not localhost: with a host name Azurite expects the account in the host and rejects uploads.
    public ReferenceExpression ConnectionStringExpression => ReferenceExpression.Create(
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={AccountKey};{(Service == AzuriteService.Blob ? "BlobEndpoint" : "TableEndpoint")}=http://127.0.0.1:{Endpoint.Property(EndpointProperty.Port)}/{Account};");
}

public static class AzuriteResourceExtensions
{
    /// <summary>
    /// Adds one Azurite service. <paramref name="location"/> holds its data (one folder may serve both
    /// services: their database files differ).
    /// </summary>
    public static IResourceBuilder<AzuriteResource> AddAzurite(
        this IDistributedApplicationBuilder builder, string name, AzuriteService service, string location)
    {
        var azuriteDir = Path.Combine(builder.AppHostDirectory, "azurite");
        var program = Path.Combine(azuriteDir, "node_modules", ".bin", service == AzuriteService.Blob ? "azurite-blob" : "azurite-table");
        if (!File.Exists(program))
        {
            throw new InvalidOperationException(
                $"Azurite is not installed at {program}. Building the AppHost installs it from npm: run 'dotnet build MriSeg.AppHost' (needs Node.js and npm).");
        }

        Directory.CreateDirectory(location);
        var resource = new AzuriteResource(name, program, azuriteDir, service);
        var prefix = service == AzuriteService.Blob ? "--blob" : "--table";
        return builder.AddResource(resource)
            .WithHttpEndpoint(name: resource.EndpointName)
            .WithArgs(context =>
            {
                context.Args.Add($"{prefix}Host");
                context.Args.Add("127.0.0.1");
                context.Args.Add($"{prefix}Port");
                context.Args.Add(resource.Endpoint.Property(EndpointProperty.TargetPort));
                context.Args.Add("--location");
                context.Args.Add(location);
                // The 12.30 storage clients speak an API version newer than Azurite 3.37 knows.
                context.Args.Add("--skipApiVersionCheck");
                // A request log to the console for every health probe would drown the rest.
                context.Args.Add("--silent");
            })
            // Azurite answers 400 on "GET /": that answer means it is up.
            .WithHttpHealthCheck("/", statusCode: 400, endpointName: resource.EndpointName);
    }
}
