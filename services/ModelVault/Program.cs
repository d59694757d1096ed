using Azure.Data.Tables;
using MriSeg.CleanRoom.Consumer;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Parties;
using MriSeg.ModelVault;
using MriSeg.ServiceDefaults;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();

var settings = ModelVaultSettings.From(builder.Configuration, builder.Environment);
builder.Services.AddSingleton(settings);
builder.Services.AddSingleton(services => new ModelRegistry(services.GetRequiredService<TableServiceClient>(), settings.ModelsDirectory, settings.RegistryTable));
// Attestation authorities' signing keys (OpenID metadata and JWKS), cached per issuer as the KeyBroker caches them.
builder.Services.AddHttpClient(ModelVaultSettings.MetadataClientName, http => http.Timeout = TimeSpan.FromSeconds(30));
builder.Services.AddSingleton<IIssuerKeySource>(services => new OpenIdIssuerKeyCache(
    services.GetRequiredService<IHttpClientFactory>().CreateClient(ModelVaultSettings.MetadataClientName), settings.Metadata, TimeProvider.System,
    services.GetRequiredService<ILogger<OpenIdIssuerKeyCache>>()));
// The consumer's own output key comes from the KeyBroker: its grpc endpoint through service discovery (the AppHost's reference).
builder.Services.AddGrpcClient<MriSeg.Contracts.V1.KeyBroker.KeyBrokerClient>(options => options.Address = new Uri(settings.KeyBrokerAddress));
builder.Services.AddTransient<ConsumerParty>();
// Every call is authenticated: a party token of the consumer or of a listed caller (ModelVault:Callers).
builder.Services.AddSingleton<VaultCallers>();
builder.Services.AddSingleton(services => new PartyTokenValidator(
    services.GetRequiredService<VaultCallers>(), new PartyTokenOptions { Audience = ModelVaultSettings.CallerAudience }, TimeProvider.System));
builder.Services.AddGrpc().AddServiceOptions<ModelVaultService>(options => options.Interceptors.Add<CallerAuthInterceptor>());
builder.Services.AddSingleton<Segmentations>();

var app = builder.Build();
app.Logger.LogInformation("ModelVault: {Settings}", settings.Describe());
if (settings.DevelopmentIssuer is not null)
{
    app.Logger.LogWarning("ModelVault trusts the development attestation authority {Issuer}: it attests software measurements only. Never in production.", settings.DevelopmentIssuer);
}

app.MapGrpcHosting<ModelVaultService>();
app.Run();
