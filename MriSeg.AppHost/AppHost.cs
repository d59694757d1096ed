using Microsoft.Extensions.DependencyInjection;
using MriSeg.AppHost;
using MriSeg.Contracts;

var builder = DistributedApplication.CreateBuilder(args);

var repositoryRoot = Path.GetFullPath(Path.Combine(builder.AppHostDirectory, ".."));
var storageLocation = builder.Configuration["MriSeg:StorageLocation"] is { Length: > 0 } configured
    ? Path.GetFullPath(configured)
    : Path.Combine(repositoryRoot, ".mriseg", "azurite");

// The services' own key folders (the KeyBroker's import, key-encryption and development-authority keys; the owners'
// signing keys Packaging holds): `.mriseg/` in the repository unless MriSeg:KeysLocation says otherwise (tests give a
// temporary one). Outside Development the services require them to be named, and the AppHost runs them as a local system.
var keysLocation = builder.Configuration["MriSeg:KeysLocation"] is { Length: > 0 } keysConfigured
    ? Path.GetFullPath(keysConfigured)
    : Path.Combine(repositoryRoot, ".mriseg");

IResourceBuilder<IResourceWithConnectionString> blobs, tables;
if (builder.ExecutionContext.IsPublishMode)
{
    // The manifest describes the Azure deployment (infra/): the deployed storage account, no Azurite.
    (blobs, tables) = CloudStorage.Add(builder);
}
else
{
    blobs = builder.AddAzurite(ServiceCatalog.BlobConnection, AzuriteService.Blob, storageLocation);
    tables = builder.AddAzurite(ServiceCatalog.TableConnection, AzuriteService.Table, storageLocation);
}

IResourceBuilder<ProjectResource> AddService<TProject>(string name) where TProject : IProjectMetadata, new()
{
    var service = builder.AddProject<TProject>(name)
        .WithReference(blobs).WaitFor(blobs)
        .WithReference(tables).WaitFor(tables)
        .WithHttpHealthCheck("/health", endpointName: ServiceCatalog.HttpEndpoint);
    if (builder.ExecutionContext.IsRunMode)
    {
        // The services have no launch profiles: without this they would run as Production under a Development AppHost.
        // A local run takes the AppHost's environment, so the services' documented development defaults apply
        // (trust-on-first-use registration, the development attestation authority, owner keys made on first use).
        service.WithEnvironment("DOTNET_ENVIRONMENT", builder.Environment.EnvironmentName)
            .WithEnvironment("ASPNETCORE_ENVIRONMENT", builder.Environment.EnvironmentName);
    }

    return service;
}

var keyBroker = AddService<Projects.MriSeg_KeyBroker>(ServiceCatalog.KeyBroker);
AddService<Projects.MriSeg_Preprocess>(ServiceCatalog.Preprocess);
var packaging = AddService<Projects.MriSeg_Packaging>(ServiceCatalog.Packaging).WithReference(keyBroker);
if (builder.ExecutionContext.IsRunMode)
{
    keyBroker.WithEnvironment("KeyBroker__KeysDirectory", Path.Combine(keysLocation, "keybroker"));
    packaging.WithEnvironment("Packaging__KeysDirectory", Path.Combine(keysLocation, "keys"));
}

AddService<Projects.MriSeg_Trainer>(ServiceCatalog.Trainer).WithReference(keyBroker);
AddService<Projects.MriSeg_ModelVault>(ServiceCatalog.ModelVault).WithReference(keyBroker);

var endpointsFile = builder.Configuration["MriSeg:EndpointsFile"] is { Length: > 0 } file
    ? Path.GetFullPath(file)
    : Path.Combine(repositoryRoot, EndpointsFile.RelativePath);
if (builder.ExecutionContext.IsRunMode)
{
    builder.Services.AddHostedService(services => new EndpointsFileWriter(services, endpointsFile));
}

builder.Build().Run();
