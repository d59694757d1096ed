using Azure.Data.Tables;
using Azure.Identity;
using Azure.Security.KeyVault.Secrets;
using MriSeg.Contracts;
using MriSeg.KeyBroker;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Storage;
using MriSeg.ServiceDefaults;

var builder = WebApplication.CreateBuilder(args);
builder.AddServiceDefaults();
builder.AddStorageClients();
builder.AddGrpcHosting();
builder.Services.AddGrpc().AddServiceOptions<KeyBrokerService>(options => options.Interceptors.Add<PartyAuthInterceptor>());

var settings = KeyBrokerSettings.From(builder.Configuration, builder.Environment);
string? keysDirectory = null;
BrokerKeyMaterial brokerKeys;
if (settings.Kek.Source == KeyEncryptionKeySourceKind.File)
{
    // Development: every broker key in files under KeyBroker:KeysDirectory.
    keysDirectory = settings.KeysDirectory ?? throw new InvalidOperationException(
        "KeyBroker:KeysDirectory is not set: the folder of the broker's keys (import wrapping key, key-encryption key) is required outside Development, "
        + "unless KeyBroker:Kek:Source is keyvault");
    brokerKeys = BrokerKeyMaterial.LoadOrCreate(keysDirectory, settings.CreateKeys, out _);
}
else
{
    // The cloud, with no persistent disk: the key-encryption key is a Key Vault secret read with the workload's managed
    // identity (AZURE_CLIENT_ID); the other broker keys are in table storage, wrapped under it (BrokerKeyring).
    var secrets = new SecretClient(settings.Kek.VaultUri!, new DefaultAzureCredential());
    var tables = StorageConnection.CreateTableClient(builder.Configuration.GetConnectionString(ServiceCatalog.TableConnection)!);
    brokerKeys = await BrokerKeyMaterial.LoadOrCreateAsync(new KeyVaultKeyEncryptionKeySource(secrets, settings.Kek.SecretName, settings.Kek.Create),
        new TableRecordStore(tables), settings.CreateKeys, TimeProvider.System, CancellationToken.None);
}

DevelopmentAttestationAuthority? devAuthority = null;
var authorities = new List<TrustedAuthority>(settings.Authorities);
if (settings.DevelopmentAuthorityEnabled)
{
    devAuthority = brokerKeys.CreateDevelopmentSigningKey() is { } signingKey
        ? new DevelopmentAttestationAuthority(settings.DevelopmentIssuer, signingKey, tokenLifetime: settings.DevelopmentTokenLifetime, audience: settings.Engine.Audience)
        : DevelopmentAttestationAuthority.LoadOrCreate(settings.DevelopmentIssuer, Path.Combine(keysDirectory!, BrokerKeyMaterial.DevelopmentSigningKeyFile),
            tokenLifetime: settings.DevelopmentTokenLifetime, audience: settings.Engine.Audience);
    authorities.Add(devAuthority.AsTrusted());
}

builder.Services.AddSingleton(settings);
if (devAuthority is not null)
{
    builder.Services.AddSingleton(devAuthority);
}

builder.Services.AddSingleton(brokerKeys);
builder.Services.AddSingleton(TimeProvider.System);
builder.Services.AddHttpClient("attestation-metadata", http => http.Timeout = TimeSpan.FromSeconds(30));
builder.Services.AddSingleton<IRecordStore>(services => new TableRecordStore(services.GetRequiredService<TableServiceClient>()));
builder.Services.AddSingleton<IIssuerKeySource>(services =>
{
    var remote = new OpenIdIssuerKeyCache(services.GetRequiredService<IHttpClientFactory>().CreateClient("attestation-metadata"), settings.Metadata,
        services.GetRequiredService<TimeProvider>(), services.GetRequiredService<ILogger<OpenIdIssuerKeyCache>>());
    var local = new Dictionary<string, IIssuerKeySource>(StringComparer.Ordinal);
    if (devAuthority is not null)
    {
        local[devAuthority.Issuer] = devAuthority; // its keys are in-process: no request to itself
    }

    return new CompositeIssuerKeySource(local, remote);
});
builder.Services.AddSingleton(services => new AttestationVerifier(new AttestationOptions
{
    Audience = settings.Engine.Audience,
    ClockSkew = settings.Engine.ClockSkew,
    Authorities = authorities,
}, services.GetRequiredService<IIssuerKeySource>(), services.GetRequiredService<TimeProvider>()));
builder.Services.AddSingleton(services => new KeyBrokerEngine(settings.Engine, services.GetRequiredService<IRecordStore>(), brokerKeys,
    services.GetRequiredService<AttestationVerifier>(), services.GetRequiredService<TimeProvider>(), services.GetRequiredService<ILogger<KeyBrokerEngine>>()));

var app = builder.Build();
app.Logger.LogInformation(
    "KeyBroker: keys {Keys}{Created}, key-encryption key {KekSource} (wrapping under {KekId}), broker key {WrapKeyId}, registration {Registration}, trusted attestation authorities: {Authorities}",
    keysDirectory is null ? $"in table storage ({BrokerKeyring.Table}), wrapped under the key-encryption key" : "in " + keysDirectory,
    brokerKeys.Created ? " (created missing keys)" : "", brokerKeys.KekDescription, brokerKeys.KekId, brokerKeys.WrapKeyId, settings.Engine.Registration,
    string.Join(", ", authorities.Select(a => a.Issuer)));
if (devAuthority is not null)
{
    app.Logger.LogWarning("Development attestation authority enabled at {Issuer}: it attests software measurements only (not hardware-backed). Never enable it in production.", devAuthority.Issuer);
    app.MapDevelopmentAuthority(devAuthority);
}

if (settings.Engine.Registration == MriSeg.KeyRelease.Parties.RegistrationMode.AdminToken && settings.Engine.AdminToken is null)
{
    app.Logger.LogWarning("KeyBroker:Registration is AdminToken but KeyBroker:AdminToken is not set: no new party can register");
}

app.MapGrpcHosting<KeyBrokerService>();
app.Run();
