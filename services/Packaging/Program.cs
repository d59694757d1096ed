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
builder.Services.AddSingleton<BrokerRegistrations>();
builder.Services.AddTransient<KeyHandOff>();
// HandOffKey's KeyBroker client: the broker's grpc endpoint through service discovery (the AppHost's reference).
builder.Services.AddGrpcClient<MriSeg.Contracts.V1.KeyBroker.KeyBrokerClient>(options => options.Address = new Uri(settings.KeyBrokerAddress));

var app = builder.Build();
app.Logger.LogInformation(
    "Packaging: key folder {KeysDirectory}, create missing owner keys: {CreateOwnerKeys}, local paths allowed: {AllowLocalPaths}, KeyBroker at {KeyBroker} (admin token for registrations: {AdminToken})",
    settings.KeysDirectory ?? "(not set: Seal needs Packaging:KeysDirectory)", settings.CreateOwnerKeys, settings.AllowLocalPaths,
    settings.KeyBrokerAddress, settings.KeyBrokerAdminToken is null ? "none" : "set");
app.MapGrpcHosting<PackagingService>();
app.Run();
