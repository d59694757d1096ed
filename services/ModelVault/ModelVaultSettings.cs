using MriSeg.Contracts;
using System.Globalization;
using MriSeg.CleanRoom.Consumer;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Parties;
using MriSeg.ServiceDefaults;

namespace MriSeg.ModelVault;

/// <summary>
/// The ModelVault's settings (section <c>ModelVault</c>), with their environment-dependent defaults resolved once at start.
/// The vault runs on the model consumer's (TDC's) premises and acts as that one party. The README's ModelVault section lists them.
/// </summary>
public sealed class ModelVaultSettings
{
    public const string Section = "ModelVault";

    /// <summary>The consumer's party id when none is configured.</summary>
    public const string DefaultConsumer = "tdc";

    /// <summary>Service discovery's name of the KeyBroker's gRPC endpoint (the AppHost's reference).</summary>
    public const string DefaultKeyBrokerAddress = "http://_grpc.keybroker";

    /// <summary>The development attestation authority the KeyBroker serves on its HTTP/1.1 port under the AppHost.</summary>
    public const string DefaultDevelopmentIssuer = "http://localhost:5132/dev-attestation";

    /// <summary>The audience of the party tokens the vault's callers send (the KeyBroker's is <see cref="PartyTokens.DefaultAudience"/>).</summary>
    public const string CallerAudience = PartyTokens.ModelVaultAudience;

    /// <summary>The named HttpClient that fetches attestation authorities' OpenID metadata and keys.</summary>
    public const string MetadataClientName = "attestation-metadata";

    /// <summary><c>ModelVault:Consumer</c>: the TDC party id the vault serves (default <c>tdc</c>); its outputs are in the container of that name.</summary>
    public string Consumer { get; init; } = DefaultConsumer;

    /// <summary>
    /// <c>ModelVault:KeysDirectory</c>: the folder of signing keys, <c>&lt;party&gt;.key</c> (PKCS#8 PEM), as Packaging's
    /// <c>Packaging:KeysDirectory</c> holds them (on the TDC's premises both services use the same folder). Default in
    /// Development: <c>.mriseg/keys</c> in the repository (as Packaging's); unset otherwise.
    /// </summary>
    public string? KeysDirectory { get; init; }

    /// <summary>
    /// The consumer's signing key (PKCS#8 PEM) that authenticates the vault to the KeyBroker as the consumer (to import and
    /// later release the consumer's own output key): <c>ModelVault:PartyKeyPath</c>, else <c>&lt;KeysDirectory&gt;/&lt;Consumer&gt;.key</c>; null when neither
    /// is set (PullModel and CreateOutputKey then answer FAILED_PRECONDITION).
    /// </summary>
    public string? PartyKeyPath { get; init; }

    /// <summary>
    /// Who may call the vault, besides the consumer itself (a token signed by the consumer's own party key,
    /// <see cref="PartyKeyPath"/>, as party <see cref="Consumer"/>, is always accepted): <c>ModelVault:Callers:N:Party</c>
    /// and <c>ModelVault:Callers:N:PublicKeyPath</c> (a SubjectPublicKeyInfo PEM, as <c>mriseg keygen</c> writes
    /// <c>PREFIX.pub</c>), e.g. the consumer's ML engineers, each with a key of their own. Every call carries
    /// "authorization: Bearer &lt;party token&gt;" for audience <see cref="CallerAudience"/>.
    /// </summary>
    public IReadOnlyList<VaultCaller> Callers { get; init; } = [];

    /// <summary><c>ModelVault:KeyBrokerAddress</c>: the KeyBroker's gRPC address (default <see cref="DefaultKeyBrokerAddress"/>).</summary>
    public string KeyBrokerAddress { get; init; } = DefaultKeyBrokerAddress;

    /// <summary>
    /// <c>ModelVault:KeyBrokerAdminToken</c>: the operator's admin token, sent only when CreateOutputKey must register the
    /// consumer with a KeyBroker that requires it for first registrations. Unset: trust on first use. Never logged.
    /// </summary>
    public string? KeyBrokerAdminToken { get; init; }

    /// <summary><c>ModelVault:KeyBrokerTimeoutSeconds</c>: the longest a key release may take (default 30 s).</summary>
    public TimeSpan KeyBrokerTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// <c>ModelVault:Audience</c>: the KeyBroker's audience (its <c>KeyBroker:Audience</c>), named by the vault's party tokens and
    /// accepted in attestation tokens (default <see cref="PartyTokens.DefaultAudience"/>).
    /// </summary>
    public string Audience { get; init; } = PartyTokens.DefaultAudience;

    /// <summary>
    /// <c>ModelVault:ModelsDirectory</c>: where registered models' files are kept, <c>&lt;dir&gt;/&lt;model-id&gt;/</c>
    /// (default <c>.mriseg/models</c> in the repository, else <c>MriSeg/models</c> in the user's local application data).
    /// </summary>
    public required string ModelsDirectory { get; init; }

    /// <summary><c>ModelVault:RegistryTable</c>: the registry's table (default <see cref="ModelRegistry.DefaultTableName"/>).</summary>
    public string RegistryTable { get; init; } = ModelRegistry.DefaultTableName;

    /// <summary>
    /// <c>ModelVault:AllowedMeasurements</c> (a list): trainer code measurements (hex) whose outputs the vault accepts. A pull
    /// may name one (<c>expected_code_measurement</c>), which must then be in the list; with an empty list a pull must name
    /// the measurement it expects.
    /// </summary>
    public IReadOnlyList<string> AllowedMeasurements { get; init; } = [];

    /// <summary>
    /// The attestation authorities whose tokens the vault accepts: <c>ModelVault:Attestation:Authorities:N:Issuer</c>
    /// (with <c>RequireAudience</c>, default true, and <c>AllowHttp</c>, default false), plus the development authority when
    /// <c>ModelVault:DevelopmentAuthority:Enabled</c> (default: Development only) at <c>ModelVault:DevelopmentAuthority:Issuer</c>.
    /// </summary>
    public IReadOnlyList<TrustedAuthority> Authorities { get; init; } = [];

    /// <summary>The development authority's issuer when it is trusted, else null.</summary>
    public string? DevelopmentIssuer { get; init; }

    /// <summary><c>ModelVault:Attestation:MetadataRefreshMinutes</c> (default 720) and <c>MetadataMinimumRefreshSeconds</c> (default 300).</summary>
    public IssuerKeyCacheOptions Metadata { get; init; } = new();

    /// <summary>
    /// <c>ModelVault:AllowLocalPaths</c>: whether Segment may read an input at a path on the service's machine (default: in
    /// Development only). Blob locations and inline data are always allowed.
    /// </summary>
    public bool AllowLocalPaths { get; init; }

    /// <summary><c>ModelVault:MaxConcurrentSegmentations</c>: segmentations run at once; further calls wait (default 2).</summary>
    public int MaxConcurrentSegmentations { get; init; } = 2;

    /// <summary><c>ModelVault:MaxBlobInputMegabytes</c>: the most a Segment's blob input (a case folder's blobs) may hold (default 1024).</summary>
    public long MaxBlobInputBytes { get; init; } = 1024L * 1024 * 1024;

    public static ModelVaultSettings From(IConfiguration configuration, IHostEnvironment environment)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        ArgumentNullException.ThrowIfNull(environment);
        var section = configuration.GetSection(Section);
        var development = environment.IsDevelopment();
        var root = environment.ContentRootPath;

        var consumer = section["Consumer"] is { Length: > 0 } c ? c : DefaultConsumer;
        if (!Ids.IsPartyId(consumer))
        {
            throw new InvalidOperationException($"{Section}:Consumer '{Ids.Printable(consumer)}' is not a party id ({Ids.PartyIdRule})");
        }

        var keys = section["KeysDirectory"] is { Length: > 0 } k ? Path.GetFullPath(k, root)
            : development ? DevelopmentFolders.Resolve(root, "keys") : null;
        var partyKey = section["PartyKeyPath"] is { Length: > 0 } p ? Path.GetFullPath(p, root)
            : keys is not null ? Path.Combine(keys, consumer + ".key") : null;

        var callers = new List<VaultCaller>();
        foreach (var entry in section.GetSection("Callers").GetChildren())
        {
            var party = entry["Party"];
            if (!Ids.IsPartyId(party))
            {
                throw new InvalidOperationException($"{entry.Path}:Party '{Ids.Printable(party)}' is not a party id ({Ids.PartyIdRule})");
            }

            var pem = entry["PublicKeyPath"] is { Length: > 0 } pub ? Path.GetFullPath(pub, root)
                : throw new InvalidOperationException($"{entry.Path}:PublicKeyPath is required (the caller's public key, PEM)");
            if (party == consumer || callers.Any(x => x.Party == party))
            {
                throw new InvalidOperationException($"{entry.Path}:Party '{party}' is listed twice (the consumer '{consumer}' itself is always a caller, with its party key)");
            }

            callers.Add(new VaultCaller(party!, pem));
        }

        var measurements = new List<string>();
        foreach (var entry in section.GetSection("AllowedMeasurements").GetChildren())
        {
            var value = (entry.Value ?? "").Trim();
            if (!IsMeasurement(value))
            {
                throw new InvalidOperationException($"{entry.Path} '{Ids.Printable(value)}' is not a code measurement (hex digits)");
            }

            measurements.Add(value.ToLowerInvariant());
        }

        var authorities = new List<TrustedAuthority>();
        foreach (var entry in section.GetSection("Attestation:Authorities").GetChildren())
        {
            var issuer = entry["Issuer"] ?? throw new InvalidOperationException($"{entry.Path}:Issuer is required");
            authorities.Add(new TrustedAuthority(issuer, entry.GetValue("RequireAudience", true), entry.GetValue("AllowHttp", false)));
        }

        string? devIssuer = null;
        if (section.GetValue("DevelopmentAuthority:Enabled", development))
        {
            devIssuer = section["DevelopmentAuthority:Issuer"] is { Length: > 0 } i ? i : DefaultDevelopmentIssuer;
            var dev = new TrustedAuthority(devIssuer, requireAudience: false, allowHttp: true);
            if (!authorities.Any(a => a.Issuer == dev.Issuer))
            {
                authorities.Add(dev);
            }
        }

        return new ModelVaultSettings
        {
            Consumer = consumer,
            KeysDirectory = keys,
            PartyKeyPath = partyKey,
            Callers = callers,
            KeyBrokerAddress = section["KeyBrokerAddress"] is { Length: > 0 } address ? address : DefaultKeyBrokerAddress,
            KeyBrokerAdminToken = section["KeyBrokerAdminToken"] is { Length: > 0 } admin ? admin : null,
            KeyBrokerTimeout = TimeSpan.FromSeconds(Math.Clamp(section.GetValue("KeyBrokerTimeoutSeconds", 30), 1, 600)),
            Audience = section["Audience"] is { Length: > 0 } audience ? audience : PartyTokens.DefaultAudience,
            ModelsDirectory = section["ModelsDirectory"] is { Length: > 0 } models ? Path.GetFullPath(models, root) : DevelopmentFolders.Resolve(root, "models"),
            RegistryTable = section["RegistryTable"] is { Length: > 0 } table ? table : ModelRegistry.DefaultTableName,
            AllowedMeasurements = measurements,
            Authorities = authorities,
            DevelopmentIssuer = devIssuer,
            Metadata = new IssuerKeyCacheOptions
            {
                RefreshInterval = TimeSpan.FromMinutes(Math.Max(0, section.GetValue("Attestation:MetadataRefreshMinutes", 720))),
                MinimumRefreshInterval = TimeSpan.FromSeconds(Math.Max(0, section.GetValue("Attestation:MetadataMinimumRefreshSeconds", 300))),
            },
            AllowLocalPaths = section.GetValue("AllowLocalPaths", development),
            MaxConcurrentSegmentations = Math.Max(1, section.GetValue("MaxConcurrentSegmentations", 2)),
            MaxBlobInputBytes = Math.Max(1, section.GetValue("MaxBlobInputMegabytes", 1024L)) * 1024 * 1024,
        };
    }

    /// <summary>A code measurement as written: hex digits, 16 to 256 of them.</summary>
    public static bool IsMeasurement(string? text) =>
        text is { Length: >= 16 and <= 256 } && text.All(char.IsAsciiHexDigit);

    /// <summary>One line for the start-up log.</summary>
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"consumer {Consumer}, party key {PartyKeyPath ?? "(not set: PullModel needs ModelVault:PartyKeyPath or ModelVault:KeysDirectory)"}, models in {ModelsDirectory} (table {RegistryTable}), KeyBroker at {KeyBrokerAddress}, "
        + $"allowed measurements: {(AllowedMeasurements.Count == 0 ? "none (each pull names its own)" : string.Join(", ", AllowedMeasurements.Select(m => m[..Math.Min(16, m.Length)] + "…")))}, "
        + $"trusted attestation authorities: {(Authorities.Count == 0 ? "none" : string.Join(", ", Authorities.Select(a => a.Issuer)))}, local paths allowed: {AllowLocalPaths}, "
        + $"callers: {string.Join(", ", Callers.Select(c => c.Party).Prepend(Consumer))}");
}

/// <summary>A party allowed to call the vault, with the public key its tokens must verify under.</summary>
public sealed record VaultCaller(string Party, string PublicKeyPath);
