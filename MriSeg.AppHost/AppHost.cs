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
var preprocess = AddService<Projects.MriSeg_Preprocess>(ServiceCatalog.Preprocess);
var packaging = AddService<Projects.MriSeg_Packaging>(ServiceCatalog.Packaging).WithReference(keyBroker);
var trainer = AddService<Projects.MriSeg_Trainer>(ServiceCatalog.Trainer).WithReference(keyBroker);
var modelVault = AddService<Projects.MriSeg_ModelVault>(ServiceCatalog.ModelVault).WithReference(keyBroker);
IResourceBuilder<ProjectResource>[] services = [preprocess, packaging, keyBroker, trainer, modelVault];
if (builder.ExecutionContext.IsRunMode)
{
    keyBroker.WithEnvironment("KeyBroker__KeysDirectory", Path.Combine(keysLocation, "keybroker"));

    // Packaging holds every local party's signing key (hospitals and the consumer); the consumer's ModelVault uses the
    // same folder for the consumer's key, as both run on the consumer's premises. The clean room keeps its own.
    packaging.WithEnvironment("Packaging__KeysDirectory", Path.Combine(keysLocation, "keys"));
    modelVault.WithEnvironment("ModelVault__KeysDirectory", Path.Combine(keysLocation, "keys"));
    trainer.WithEnvironment("Trainer__PartyKeyPath", Path.Combine(keysLocation, "cleanroom", "party.key"));

    // The development attestation authority lives in the KeyBroker at /dev-attestation; its issuer URL is the KeyBroker's
    // HTTP endpoint as allocated for this run (ports may be randomised, as in tests), told to everyone who uses it.
    var issuer = ReferenceExpression.Create($"{keyBroker.GetEndpoint(ServiceCatalog.HttpEndpoint)}/dev-attestation");
    keyBroker.WithEnvironment("KeyBroker__DevelopmentAuthority__Issuer", issuer);
    trainer.WithEnvironment("Trainer__AttestationIssuer", issuer);
    modelVault.WithEnvironment("ModelVault__DevelopmentAuthority__Issuer", issuer);
}

// The main job: once every service is healthy, `mriseg scenario run` plays three hospitals and a model consumer through
// the six phases (outputs in ./output/<run-id>/). MRISEG_SCENARIO=off starts the services alone; MRISEG_SCENARIO_ARGS adds
// arguments (e.g. "--patients 50 --epochs 3").
if (builder.ExecutionContext.IsRunMode && !string.Equals(builder.Configuration["MRISEG_SCENARIO"], "off", StringComparison.OrdinalIgnoreCase))
{
    var scenario = builder.AddProject<Projects.MriSeg_Cli>("scenario")
        .WithReference(blobs)
        .WithEnvironment("DOTNET_ENVIRONMENT", builder.Environment.EnvironmentName)
        .WithArgs(context =>
        {
            context.Args.Add("scenario");
            context.Args.Add("run");
            context.Args.Add("--out");
            context.Args.Add(Path.Combine(repositoryRoot, "output"));
            // The consumer's party key (Packaging makes it at the consumer's first hand-off) signs the calls to the ModelVault.
            context.Args.Add("--party-key");
            context.Args.Add(Path.Combine(keysLocation, "keys", "tdc.key"));
            foreach (var service in services)
            {
                context.Args.Add("--endpoint");
                context.Args.Add(ReferenceExpression.Create($"{service.Resource.Name}={service.GetEndpoint(ServiceCatalog.GrpcEndpoint)}"));
            }

            foreach (var extra in (builder.Configuration["MRISEG_SCENARIO_ARGS"] ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                context.Args.Add(extra);
            }
        });
    foreach (var service in services)
    {
        scenario.WaitFor(service);
    }
}

var endpointsFile = builder.Configuration["MriSeg:EndpointsFile"] is { Length: > 0 } file
    ? Path.GetFullPath(file)
    : Path.Combine(repositoryRoot, EndpointsFile.RelativePath);
if (builder.ExecutionContext.IsRunMode)
{
    builder.Services.AddHostedService(services => new EndpointsFileWriter(services, endpointsFile));
}

builder.Build().Run();
