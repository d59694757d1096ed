using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using Azure;
using Azure.Security.KeyVault.Secrets;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Keys;

/// <summary>
/// The key-encryption key as an Azure Key Vault secret (<c>KeyBroker:Kek:Source</c> = <c>keyvault</c>): the secret's
/// value is a 256-bit key in base64 (44 characters; surrounding white space is ignored). Each version is a KEK; its
/// id is the version's secret id (<c>https://&lt;vault&gt;/secrets/&lt;name&gt;/&lt;version&gt;</c>), which everything
/// it wraps records. At start the current version is read (<see cref="GetCurrentAsync"/>): the one new material is
/// wrapped under until the next start. Material wrapped earlier is opened with the version it names, read by that id
/// from the configured vault (the id's host is informational, so a vault restored under another name still works):
/// adding a version in the vault (a rotation) leaves every record readable as long as the older versions stay enabled.
/// <para>
/// The broker's identity needs <c>secrets/get</c> (Key Vault Secrets User); creating a missing secret at start
/// (<see cref="KeyEncryptionKeyOptions.Create"/>) needs <c>secrets/set</c> too (Key Vault Secrets Officer).
/// Key bytes and secret values are never logged or put in messages.
/// </para>
/// </summary>
public sealed class KeyVaultKeyEncryptionKeySource : IKeyEncryptionKeySource
{
    /// <summary>The content type set on a secret this source creates.</summary>
    public const string ContentType = "application/vnd.mriseg.kek;encoding=base64;bits=256";

    private readonly SecretClient _client;
    private readonly string _name;
    private readonly bool _create;
    private readonly ConcurrentDictionary<string, Lazy<Task<KeyEncryptionKey>>> _versions = new(StringComparer.OrdinalIgnoreCase);
    private KeyEncryptionKey? _current;
    private bool _disposed;

    /// <summary>The source of secret <paramref name="secretName"/> in <paramref name="client"/>'s vault.</summary>
    /// <param name="client">The vault's client (with the managed identity's credential in the cloud).</param>
    /// <param name="secretName">The secret's name.</param>
    /// <param name="create">Create the secret (a fresh random key) when the vault has none.</param>
    public KeyVaultKeyEncryptionKeySource(SecretClient client, string secretName = KeyEncryptionKeyOptions.DefaultSecretName, bool create = false)
    {
        _client = client ?? throw new ArgumentNullException(nameof(client));
        _ = new KeyEncryptionKeyOptions { SecretName = secretName }.Validated();
        _name = secretName;
        _create = create;
    }

    /// <inheritdoc />
    public string Description => $"Key Vault {_client.VaultUri} secret '{_name}'";

    /// <inheritdoc />
    public bool Created { get; private set; }

    /// <inheritdoc />
    public async Task<KeyEncryptionKey> GetCurrentAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_current is not null)
        {
            return _current;
        }

        KeyVaultSecret secret;
        try
        {
            secret = (await _client.GetSecretAsync(_name, null, cancellationToken).ConfigureAwait(false)).Value;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            if (!_create)
            {
                throw new InvalidOperationException(
                    $"{Description} does not exist: it holds the KeyBroker's key-encryption key. Create it (a base64 256-bit key, README: Deploying to Azure) "
                    + "or start the broker once with KeyBroker:Kek:Create=true, which needs the Key Vault Secrets Officer role", e);
            }

            secret = await CreateAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Also the credential's failures (no managed identity, no token): they are not RequestFailedExceptions.
            throw new InvalidOperationException(
                $"cannot read {Description}: {Status(e)} (the KeyBroker's identity needs the Key Vault Secrets User role on the vault and network access to it)", e);
        }

        var key = Parse(secret, out var problem)
            ?? throw new InvalidOperationException($"{Description}, version {Ids.Printable(secret.Properties.Version)}: {problem}");
        var cached = _versions.GetOrAdd(VersionKey(secret.Name, secret.Properties.Version), new Lazy<Task<KeyEncryptionKey>>(Task.FromResult(key)));
        var current = await cached.Value.ConfigureAwait(false);
        if (!ReferenceEquals(current, key))
        {
            key.Dispose(); // that version was read meanwhile: keep one instance
        }

        return _current = current;
    }

    /// <inheritdoc />
    public async Task<KeyEncryptionKey> GetAsync(string kekId, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!Uri.TryCreate(kekId, UriKind.Absolute, out var uri) || !KeyVaultSecretIdentifier.TryCreate(uri, out var id) || string.IsNullOrEmpty(id.Version))
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss,
                $"the stored key material names key-encryption key '{Ids.Printable(kekId)}', which is not a Key Vault secret version id (this broker's KEK is {Description})");
        }

        var lazy = _versions.GetOrAdd(VersionKey(id.Name, id.Version), _ => new Lazy<Task<KeyEncryptionKey>>(() => ReadVersionAsync(id.Name, id.Version)));
        try
        {
            return await lazy.Value.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (lazy.Value.IsFaulted || lazy.Value.IsCanceled)
        {
            _versions.TryRemove(new KeyValuePair<string, Lazy<Task<KeyEncryptionKey>>>(VersionKey(id.Name, id.Version), lazy)); // not cached: ask again next time
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (var version in _versions.Values)
        {
            if (version.IsValueCreated && version.Value.IsCompletedSuccessfully)
            {
                version.Value.Result.Dispose();
            }
        }
    }

    private async Task<KeyEncryptionKey> ReadVersionAsync(string name, string version)
    {
        KeyVaultSecret secret;
        try
        {
            secret = (await _client.GetSecretAsync(name, version, CancellationToken.None).ConfigureAwait(false)).Value;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss,
                $"key-encryption key version {version} of secret '{name}' is not in Key Vault {_client.VaultUri}: material wrapped under it cannot be decrypted (recover the deleted secret)", e);
        }
        catch (RequestFailedException e) when (e.Status == 403 && (e.Message.Contains("disabled secret", StringComparison.OrdinalIgnoreCase) || e.ErrorCode == "SecretDisabled"))
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss,
                $"key-encryption key version {version} of secret '{name}' is disabled in Key Vault {_client.VaultUri}: material wrapped under it cannot be decrypted until it is enabled again", e);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new KeyBrokerException(KeyBrokerError.Unavailable,
                $"cannot read key-encryption key version {version} of secret '{name}' from Key Vault {_client.VaultUri}: {Status(e)}", e);
        }

        return Parse(secret, out var problem)
            ?? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"Key Vault {_client.VaultUri} secret '{name}', version {version}: {problem}");
    }

    private async Task<KeyVaultSecret> CreateAsync(CancellationToken cancellationToken)
    {
        var bytes = RandomNumberGenerator.GetBytes(DataKey.SizeInBytes);
        var value = Convert.ToBase64String(bytes);
        CryptographicOperations.ZeroMemory(bytes);
        var secret = new KeyVaultSecret(_name, value);
        secret.Properties.ContentType = ContentType;
        try
        {
            await _client.SetSecretAsync(secret, cancellationToken).ConfigureAwait(false);

            // Read back the current version: where two replicas created it at once, both go on with the later one (and
            // whatever the other wrapped under its own version stays readable by that version's id).
            var current = (await _client.GetSecretAsync(_name, null, cancellationToken).ConfigureAwait(false)).Value;
            Created = true;
            return current;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new InvalidOperationException(
                $"cannot create {Description}: {Status(e)} (KeyBroker:Kek:Create needs the Key Vault Secrets Officer role on the vault; or create the secret as an operator)", e);
        }
    }

    /// <summary>The key in a secret's value, or null with <paramref name="problem"/> saying why (never the value).</summary>
    private static KeyEncryptionKey? Parse(KeyVaultSecret secret, out string problem)
    {
        var text = (secret.Value ?? "").Trim();
        var buffer = new byte[(text.Length * 3 / 4) + 3];
        try
        {
            if (!Convert.TryFromBase64String(text, buffer, out var written))
            {
                problem = string.Create(CultureInfo.InvariantCulture,
                    $"the value is not base64 ({text.Length} characters): a base64-encoded 256-bit key (44 characters) is required");
                return null;
            }

            if (written != DataKey.SizeInBytes)
            {
                problem = string.Create(CultureInfo.InvariantCulture,
                    $"the value decodes to {written} bytes: a base64-encoded 256-bit key ({DataKey.SizeInBytes} bytes, 44 characters) is required");
                return null;
            }

            problem = "";
            return new KeyEncryptionKey(secret.Id.ToString(), DataKey.FromBytes(buffer.AsSpan(0, written)));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(buffer);
        }
    }

    private static string VersionKey(string name, string version) => name + "/" + version;

    /// <summary>What went wrong, in one line (an HTTP status and error code, or the exception's type and first line).</summary>
    private static string Status(Exception e) => e is RequestFailedException { Status: > 0 } failed
        ? string.Create(CultureInfo.InvariantCulture, $"HTTP {failed.Status} {failed.ErrorCode}").TrimEnd()
        : e.GetType().Name + ": " + e.Message.Split('\n', 2)[0].Trim();
}
