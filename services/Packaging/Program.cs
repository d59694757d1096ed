using MriSeg.ServiceDefaults;
using MriSeg.Packaging;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var settings = PackagingSettings.From(builder.Configuration, builder.Environment);
builder.Services.AddSingleton(settings);
builder.Services.AddSingleton<OwnerKeyStore>();
builder.Services.AddSingleton<PartyRegistry>();

var app = builder.Build();
app.Logger.LogInformation(
    "Packaging: key folder {KeysDirectory}, create missing owner keys: {CreateOwnerKeys}, local paths allowed: {AllowLocalPaths}",
    settings.KeysDirectory ?? "(not set: Seal needs Packaging:KeysDirectory)", settings.CreateOwnerKeys, settings.AllowLocalPaths);
app.MapGrpcHosting<PackagingService>();
app.Run();
