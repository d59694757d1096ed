using System.Diagnostics.CodeAnalysis;
using Azure;
using Azure.Core;
using Azure.Security.KeyVault.Secrets;

namespace MriSeg.KeyRelease.Tests;

/// <summary>
/// An in-memory Azure Key Vault for secrets behind <see cref="SecretClient"/>'s virtual methods (the SDK's mocking
/// support: protected constructor, <see cref="SecretModelFactory"/>). Each set adds a version; a get without a version
/// returns the newest enabled one. Answers like the service: 404 SecretNotFound for a missing secret or version, 403
/// for a disabled version. Records every call, and can be told to fail like an unreachable vault.
/// </summary>
internal sealed class FakeSecretClient(Uri? vault = null) : SecretClient
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, List<Version>> _secrets = new(StringComparer.OrdinalIgnoreCase);
    private int _versionCounter;

    public Uri Vault { get; } = vault ?? new Uri("https://mriseg-test-kv.vault.azure.net/");

    /// <summary>Every call: "get name", "get name/version", "set name".</summary>
    public List<string> Calls { get; } = [];

    /// <summary>When set, every call fails with this HTTP status (e.g. 503: the vault is unreachable).</summary>
    public int? FailWith { get; set; }

    /// <summary>When set, every call throws it (e.g. what a credential throws when it gets no token).</summary>
    public Exception? Throw { get; set; }

    public override Uri VaultUri => Vault;

    /// <summary>Adds a version of <paramref name="name"/> (as an operator or a rotation would) and returns its version.</summary>
    public string AddVersion(string name, string value, string? contentType = null)
    {
        lock (_gate)
        {
            var version = (++_versionCounter).ToString("x32", System.Globalization.CultureInfo.InvariantCulture);
            if (!_secrets.TryGetValue(name, out var versions))
            {
                _secrets[name] = versions = [];
            }

            versions.Add(new Version(version, value, contentType) { Enabled = true });
            return version;
        }
    }

    /// <summary>The id of a version, as Key Vault writes it.</summary>
    public string IdOf(string name, string version) => new Uri(Vault, $"secrets/{name}/{version}").ToString();

    public void Disable(string name, string version) => Find(name, version)!.Enabled = false;

    public void Delete(string name, string version)
    {
        lock (_gate)
        {
            _secrets[name].RemoveAll(v => v.Id == version);
        }
    }

    /// <summary>The stored versions of a secret (value, content type), oldest first.</summary>
    public IReadOnlyList<(string Version, string Value, string? ContentType)> Versions(string name)
    {
        lock (_gate)
        {
            return _secrets.TryGetValue(name, out var versions) ? versions.Select(v => (v.Id, v.Value, v.ContentType)).ToList() : [];
        }
    }

    [SuppressMessage("Design", "CA1068", Justification = "The SDK's signature.")]
    public override Task<Response<KeyVaultSecret>> GetSecretAsync(string name, string? version = null, CancellationToken cancellationToken = default) =>
        GetSecretAsync(name, version, null, cancellationToken);

    public override Task<Response<KeyVaultSecret>> GetSecretAsync(string name, string? version, SecretContentType? outContentType, CancellationToken cancellationToken = default)
    {
        lock (_gate)
        {
            Calls.Add(string.IsNullOrEmpty(version) ? $"get {name}" : $"get {name}/{version}");
            Fail();
            var found = string.IsNullOrEmpty(version)
                ? (_secrets.TryGetValue(name, out var versions) ? versions.LastOrDefault(v => v.Enabled) : null)
                : Find(name, version);
            if (found is null)
            {
                throw new RequestFailedException(404, $"A secret with (name/id) {name}/{version} was not found in this key vault.", "SecretNotFound", null);
            }

            if (!found.Enabled)
            {
                throw new RequestFailedException(403, "Operation get is not allowed on a disabled secret.", "Forbidden", null);
            }

            return Task.FromResult(Response.FromValue(Model(name, found), new StubResponse(200)));
        }
    }

    public override Task<Response<KeyVaultSecret>> SetSecretAsync(KeyVaultSecret secret, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(secret);
        lock (_gate)
        {
            Calls.Add($"set {secret.Name}");
            Fail();
        }

        var version = AddVersion(secret.Name, secret.Value, secret.Properties.ContentType);
        lock (_gate)
        {
            return Task.FromResult(Response.FromValue(Model(secret.Name, Find(secret.Name, version)!), new StubResponse(200)));
        }
    }

    public override Task<Response<KeyVaultSecret>> SetSecretAsync(string name, string value, CancellationToken cancellationToken = default) =>
        SetSecretAsync(new KeyVaultSecret(name, value), cancellationToken);

    private void Fail()
    {
        if (Throw is { } exception)
        {
            throw exception;
        }

        if (FailWith is { } status)
        {
            throw new RequestFailedException(status, "the fake vault is failing on purpose", status == 503 ? "ServiceUnavailable" : "Failure", null);
        }
    }

    private Version? Find(string name, string version)
    {
        lock (_gate)
        {
            return _secrets.TryGetValue(name, out var versions) ? versions.FirstOrDefault(v => v.Id == version) : null;
        }
    }

    private KeyVaultSecret Model(string name, Version version)
    {
        var properties = SecretModelFactory.SecretProperties(new Uri(IdOf(name, version.Id)), Vault, name, version.Id);
        properties.ContentType = version.ContentType;
        return SecretModelFactory.KeyVaultSecret(properties, version.Value);
    }

    private sealed class Version(string id, string value, string? contentType)
    {
        public string Id { get; } = id;

        public string Value { get; } = value;

        public string? ContentType { get; } = contentType;

        public bool Enabled { get; set; }
    }
}

/// <summary>The minimum <see cref="Response"/> for <see cref="Response.FromValue{T}"/>.</summary>
internal sealed class StubResponse(int status) : Response
{
    public override int Status => status;

    public override string ReasonPhrase => "";

    public override Stream? ContentStream { get; set; }

    public override string ClientRequestId { get; set; } = "";

    public override void Dispose()
    {
    }

    protected override bool ContainsHeader(string name) => false;

    protected override IEnumerable<HttpHeader> EnumerateHeaders() => [];

    protected override bool TryGetHeader(string name, [NotNullWhen(true)] out string? value)
    {
        value = null;
        return false;
    }

    protected override bool TryGetHeaderValues(string name, [NotNullWhen(true)] out IEnumerable<string>? values)
    {
        values = null;
        return false;
    }
}
