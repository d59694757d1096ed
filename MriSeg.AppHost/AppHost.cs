using Microsoft.Extensions.DependencyInjection;
using MriSeg.AppHost;
using MriSeg.Contracts;

var builder = DistributedApplication.CreateBuilder(args);

var repositoryRoot = Path.GetFullPath(Path.Combine(builder.AppHostDirectory, ".."));
var storageLocation = builder.Configuration["MriSeg:StorageLocation"] is { Length: > 0 } configured
    ? Path.GetFullPath(configured)
    : Path.Combine(repositoryRoot, ".mriseg", "azurite");

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

IResourceBuilder<ProjectResource> AddService<TProject>(string name) where TProject : IProjectMetadata, new() =>
    builder.AddProject<TProject>(name)
        .WithReference(blobs).WaitFor(blobs)
        .WithReference(tables).WaitFor(tables)
        .WithHttpHealthCheck("/health", endpointName: ServiceCatalog.HttpEndpoint);

var keyBroker = AddService<Projects.MriSeg_KeyBroker>(ServiceCatalog.KeyBroker);
AddService<Projects.MriSeg_Preprocess>(ServiceCatalog.Preprocess);
AddService<Projects.MriSeg_Packaging>(ServiceCatalog.Packaging).WithReference(keyBroker);
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
