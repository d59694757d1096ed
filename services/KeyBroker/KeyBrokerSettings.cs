using MriSeg.Contracts;
using System.Globalization;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Parties;
using MriSeg.ServiceDefaults;

namespace MriSeg.KeyBroker;

/// <summary>
/// The KeyBroker's settings (section <c>KeyBroker</c>), with their environment-dependent defaults resolved once at start.
/// The README's KeyBroker section lists them.
/// </summary>
public sealed class KeyBrokerSettings
{
    public const string Section = "KeyBroker";

    /// <summary>Default issuer of the development authority: served on the broker's HTTP/1.1 port under the AppHost.</summary>
    public const string DefaultDevelopmentIssuer = "http://localhost:5132/dev-attestation";

    /// <summary>
    /// <c>KeyBroker:KeysDirectory</c>: with the file key-encryption key (<see cref="Kek"/>), the broker's own keys (import
    /// wrapping key, key-encryption key, development authority signing key), files 0600 in a 0700 folder. Default in
    /// Development: <c>.mriseg/keybroker</c> in the repository; required otherwise. Unused with the Key Vault source,
    /// where those keys live in table storage wrapped under the Key Vault KEK.
    /// </summary>
    public required string? KeysDirectory { get; init; }

    /// <summary>
    /// <c>KeyBroker:CreateKeys</c>: create missing broker keys at start (default: Development only): the key files, or
    /// with the Key Vault source the keyring in table storage (never over existing state).
    /// </summary>
    public bool CreateKeys { get; init; }

    /// <summary>
    /// <c>KeyBroker:Kek:Source</c> (<c>file</c>, the default, or <c>keyvault</c>), <c>…:VaultUri</c>, <c>…:SecretName</c>
    /// (default <c>mriseg-keybroker-kek</c>) and <c>…:Create</c> (create a missing secret at start; default false).
    /// </summary>
    public required KeyEncryptionKeyOptions Kek { get; init; }

    /// <summary>The engine's options (audience, skew, token lifetime, nonce lifetime, registration mode, admin token).</summary>
    public required KeyBrokerOptions Engine { get; init; }

    /// <summary>Attestation authorities trusted besides the development one (<c>KeyBroker:Attestation:Authorities</c>).</summary>
    public required IReadOnlyList<TrustedAuthority> Authorities { get; init; }

    /// <summary><c>KeyBroker:Attestation:MetadataRefreshMinutes</c> (default 720) and <c>MetadataMinimumRefreshSeconds</c> (default 300).</summary>
    public required IssuerKeyCacheOptions Metadata { get; init; }

    /// <summary><c>KeyBroker:DevelopmentAuthority:Enabled</c> (default: Development only).</summary>
    public bool DevelopmentAuthorityEnabled { get; init; }

    /// <summary><c>KeyBroker:DevelopmentAuthority:Issuer</c>: its issuer URL; its documents are served under that URL's path.</summary>
    public string DevelopmentIssuer { get; init; } = DefaultDevelopmentIssuer;

    /// <summary><c>KeyBroker:DevelopmentAuthority:TokenLifetimeSeconds</c> (default 300).</summary>
    public TimeSpan DevelopmentTokenLifetime { get; init; } = TimeSpan.FromMinutes(5);

    public static KeyBrokerSettings From(IConfiguration configuration, IHostEnvironment environment)
    {
        var section = configuration.GetSection(Section);
        var development = environment.IsDevelopment();
        var keys = section["KeysDirectory"];
        var registration = section["Registration"] is { Length: > 0 } mode
            ? Enum.Parse<RegistrationMode>(mode, ignoreCase: true)
            : development ? RegistrationMode.TrustOnFirstUse : RegistrationMode.AdminToken;

        var authorities = new List<TrustedAuthority>();
        foreach (var entry in section.GetSection("Attestation:Authorities").GetChildren())
        {
            var issuer = entry["Issuer"] ?? throw new InvalidOperationException($"{entry.Path}:Issuer is required");
            authorities.Add(new TrustedAuthority(issuer, entry.GetValue("RequireAudience", true), entry.GetValue("AllowHttp", false)));
        }

        var kek = section.GetSection("Kek");
        var vaultUri = kek["VaultUri"];
        return new KeyBrokerSettings
        {
            KeysDirectory = !string.IsNullOrWhiteSpace(keys)
                ? Path.GetFullPath(keys, environment.ContentRootPath)
                : development ? DevelopmentFolders.Resolve(environment.ContentRootPath, "keybroker") : null,
            CreateKeys = section.GetValue("CreateKeys", development),
            Kek = new KeyEncryptionKeyOptions
            {
                Source = KeyEncryptionKeyOptions.ParseSource(kek["Source"]),
                VaultUri = string.IsNullOrWhiteSpace(vaultUri) ? null
                    : Uri.TryCreate(vaultUri.Trim(), UriKind.Absolute, out var uri) ? uri
                    : throw new InvalidOperationException($"{kek.Path}:VaultUri '{vaultUri}' is not an absolute URL"),
                SecretName = kek["SecretName"] is { Length: > 0 } secretName ? secretName.Trim() : KeyEncryptionKeyOptions.DefaultSecretName,
                Create = kek.GetValue("Create", false),
            }.Validated(),
            Engine = new KeyBrokerOptions
            {
                Audience = section["Audience"] is { Length: > 0 } audience ? audience : PartyTokens.DefaultAudience,
                ClockSkew = Seconds(section, "ClockSkewSeconds", 60),
                MaxPartyTokenLifetime = Seconds(section, "MaxPartyTokenLifetimeSeconds", 600),
                NonceLifetime = Seconds(section, "NonceLifetimeSeconds", 300),
                Registration = registration,
                AdminToken = section["AdminToken"] is { Length: > 0 } admin ? admin : null,
            },
            Authorities = authorities,
            Metadata = new IssuerKeyCacheOptions
            {
                RefreshInterval = TimeSpan.FromMinutes(section.GetValue("Attestation:MetadataRefreshMinutes", 720)),
                MinimumRefreshInterval = Seconds(section, "Attestation:MetadataMinimumRefreshSeconds", 300),
            },
            DevelopmentAuthorityEnabled = section.GetValue("DevelopmentAuthority:Enabled", development),
            DevelopmentIssuer = section["DevelopmentAuthority:Issuer"] is { Length: > 0 } devIssuer ? devIssuer : DefaultDevelopmentIssuer,
            DevelopmentTokenLifetime = Seconds(section, "DevelopmentAuthority:TokenLifetimeSeconds", 300),
        };
    }

    private static TimeSpan Seconds(IConfigurationSection section, string key, int fallback)
    {
        var value = section.GetValue(key, fallback);
        return value < 0
            ? throw new InvalidOperationException($"{section.Path}:{key} must not be negative (got {value.ToString(CultureInfo.InvariantCulture)})")
            : TimeSpan.FromSeconds(value);
    }
}
