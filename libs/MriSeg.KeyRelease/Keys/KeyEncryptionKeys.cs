using System.Globalization;
using System.Text.RegularExpressions;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Keys;

/// <summary>Where the broker's key-encryption key comes from (<c>KeyBroker:Kek:Source</c>).</summary>
public enum KeyEncryptionKeySourceKind
{
    /// <summary><c>file</c>: <c>broker-kek.key</c> in <c>KeyBroker:KeysDirectory</c> (development; the default).</summary>
    File,

    /// <summary><c>keyvault</c>: a base64 256-bit Azure Key Vault secret, read by version (the cloud).</summary>
    KeyVault,
}

/// <summary>
/// The key-encryption key settings (section <c>KeyBroker:Kek</c>): <c>Source</c> (<c>file</c> | <c>keyvault</c>),
/// <c>VaultUri</c>, <c>SecretName</c> and <c>Create</c>.
/// </summary>
public sealed partial record KeyEncryptionKeyOptions
{
    /// <summary>The secret's default name.</summary>
    public const string DefaultSecretName = "mriseg-keybroker-kek";

    /// <summary>Where the key comes from (default <see cref="KeyEncryptionKeySourceKind.File"/>).</summary>
    public KeyEncryptionKeySourceKind Source { get; init; } = KeyEncryptionKeySourceKind.File;

    /// <summary>The vault (<c>https://&lt;name&gt;.vault.azure.net/</c>); required for <see cref="KeyEncryptionKeySourceKind.KeyVault"/>.</summary>
    public Uri? VaultUri { get; init; }

    /// <summary>The secret holding the key (default <see cref="DefaultSecretName"/>).</summary>
    public string SecretName { get; init; } = DefaultSecretName;

    /// <summary>Create the secret when the vault has none (needs the Key Vault Secrets Officer role); default false.</summary>
    public bool Create { get; init; }

    /// <summary>Parses <c>KeyBroker:Kek:Source</c>: empty means <c>file</c>.</summary>
    public static KeyEncryptionKeySourceKind ParseSource(string? value) => value?.Trim().ToLowerInvariant() switch
    {
        null or "" or "file" => KeyEncryptionKeySourceKind.File,
        "keyvault" => KeyEncryptionKeySourceKind.KeyVault,
        _ => throw new InvalidOperationException($"KeyBroker:Kek:Source '{Ids.Printable(value)}' is not valid: file or keyvault"),
    };

    /// <summary>This, checked: a Key Vault source needs an absolute https vault URI and a valid secret name.</summary>
    public KeyEncryptionKeyOptions Validated()
    {
        if (!SecretNamePattern().IsMatch(SecretName ?? ""))
        {
            throw new InvalidOperationException($"KeyBroker:Kek:SecretName '{Ids.Printable(SecretName)}' is not a Key Vault secret name (1-127 letters, digits and hyphens)");
        }

        if (Source == KeyEncryptionKeySourceKind.KeyVault)
        {
            if (VaultUri is null)
            {
                throw new InvalidOperationException("KeyBroker:Kek:VaultUri is required when KeyBroker:Kek:Source is keyvault (e.g. https://<vault>.vault.azure.net/)");
            }

            if (!VaultUri.IsAbsoluteUri || VaultUri.Scheme != Uri.UriSchemeHttps)
            {
                throw new InvalidOperationException($"KeyBroker:Kek:VaultUri '{VaultUri}' is not an absolute https URL");
            }
        }

        return this;
    }

    [GeneratedRegex("^[0-9a-zA-Z-]{1,127}$")]
    private static partial Regex SecretNamePattern();
}

/// <summary>
/// One version of the key-encryption key: 256 bits and the public id that wrapped material records (the file
/// KEK's MriSeg key id, or a Key Vault secret version's id). Owned by its <see cref="IKeyEncryptionKeySource"/>.
/// </summary>
public sealed class KeyEncryptionKey : IDisposable
{
    internal KeyEncryptionKey(string id, DataKey key)
    {
        Id = id;
        Key = key;
    }

    /// <summary>The id stored with what it wraps (not secret).</summary>
    public string Id { get; }

    internal DataKey Key { get; }

    /// <inheritdoc />
    public void Dispose() => Key.Dispose();
}

/// <summary>
/// Where the broker's key-encryption key (KEK) comes from. The current version wraps new material at rest; every
/// wrapped item records the id of the version that wrapped it, and <see cref="GetAsync"/> finds that version again,
/// so a new version (a rotation) leaves older material readable. Key bytes are never logged.
/// </summary>
public interface IKeyEncryptionKeySource : IDisposable
{
    /// <summary>What it is, for logs and errors (a path, or a vault and secret name; never key bytes).</summary>
    string Description { get; }

    /// <summary>Whether <see cref="GetCurrentAsync"/> created the key (a first start).</summary>
    bool Created { get; }

    /// <summary>
    /// The version new material is wrapped under (read once at start). <see cref="InvalidOperationException"/>, naming
    /// the source, when it is missing (and may not be created), unreadable or not a 256-bit key.
    /// </summary>
    Task<KeyEncryptionKey> GetCurrentAsync(CancellationToken cancellationToken);

    /// <summary>
    /// The version with id <paramref name="kekId"/> (cached once read). <see cref="KeyBrokerError.DataLoss"/> when this
    /// source has no such version (gone, disabled, or not a 256-bit key); <see cref="KeyBrokerError.Unavailable"/> when
    /// the source could not be asked.
    /// </summary>
    Task<KeyEncryptionKey> GetAsync(string kekId, CancellationToken cancellationToken);
}

/// <summary>The development source: one KEK (the key file <c>broker-kek.key</c>); its id is its MriSeg key id.</summary>
public sealed class FileKeyEncryptionKeySource : IKeyEncryptionKeySource
{
    private readonly KeyEncryptionKey _key;

    /// <summary>The source of <paramref name="kek"/> (owned: disposed with it), read from <paramref name="description"/>.</summary>
    public FileKeyEncryptionKeySource(DataKey kek, string description = "in-memory key-encryption key", bool created = false)
    {
        ArgumentNullException.ThrowIfNull(kek);
        _key = new KeyEncryptionKey(kek.KeyId, kek);
        Description = description;
        Created = created;
    }

    /// <inheritdoc />
    public string Description { get; }

    /// <inheritdoc />
    public bool Created { get; }

    /// <inheritdoc />
    public Task<KeyEncryptionKey> GetCurrentAsync(CancellationToken cancellationToken) => Task.FromResult(_key);

    /// <inheritdoc />
    public Task<KeyEncryptionKey> GetAsync(string kekId, CancellationToken cancellationToken) =>
        string.Equals(kekId, _key.Id, StringComparison.Ordinal)
            ? Task.FromResult(_key)
            : throw new KeyBrokerException(KeyBrokerError.DataLoss, string.Create(CultureInfo.InvariantCulture,
                $"the stored key material was wrapped under key-encryption key '{Ids.Printable(kekId)}', and this broker's ({Description}) is {_key.Id}"));

    /// <inheritdoc />
    public void Dispose() => _key.Dispose();
}
