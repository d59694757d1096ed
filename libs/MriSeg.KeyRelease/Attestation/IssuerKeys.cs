using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.IdentityModel.Tokens;
using MriSeg.KeyRelease.Policy;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>An issuer's signing keys as last fetched.</summary>
/// <param name="Issuer">The issuer (normalised).</param>
/// <param name="Keys">Its signing keys, each with its kid.</param>
/// <param name="FetchedAt">When they were fetched.</param>
public sealed record IssuerKeySet(string Issuer, IReadOnlyList<SecurityKey> Keys, DateTimeOffset FetchedAt)
{
    /// <summary>The keys with this kid.</summary>
    public IReadOnlyList<SecurityKey> WithKeyId(string kid) =>
        Keys.Where(k => string.Equals(k.KeyId, kid, StringComparison.Ordinal)).ToList();
}

/// <summary>Where an attestation authority's signing keys come from.</summary>
public interface IIssuerKeySource
{
    /// <summary>
    /// The signing keys of <paramref name="authority"/>, cached. When the cached keys lack <paramref name="keyId"/> (the
    /// kid a token names) the source refreshes once, unless it refreshed within its minimum interval.
    /// </summary>
    Task<IssuerKeySet> GetKeysAsync(TrustedAuthority authority, string? keyId, CancellationToken cancellationToken);
}

/// <summary>The metadata of an issuer could not be fetched or is invalid.</summary>
public sealed class IssuerMetadataException(string message, Exception? innerException = null) : Exception(message, innerException);

/// <summary>Settings of <see cref="OpenIdIssuerKeyCache"/>.</summary>
public sealed class IssuerKeyCacheOptions
{
    /// <summary>Keys older than this are refetched on the next use (default 12 h).</summary>
    public TimeSpan RefreshInterval { get; init; } = TimeSpan.FromHours(12);

    /// <summary>An unknown kid refetches at most once per this interval per issuer (default 5 min): random kids cannot make the broker hammer the issuer.</summary>
    public TimeSpan MinimumRefreshInterval { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Largest metadata or JWKS document (default 1 MiB).</summary>
    public int MaxDocumentBytes { get; init; } = 1024 * 1024;
}

/// <summary>
/// Signing keys from an issuer's OpenID metadata: <c>GET {issuer}/.well-known/openid-configuration</c>, whose
/// <c>issuer</c> must be the issuer and whose <c>jwks_uri</c> (https unless the authority allows http) gives the
/// JWKS. Cached per issuer; refetched after <see cref="IssuerKeyCacheOptions.RefreshInterval"/>, and once when a token
/// names an unknown kid (throttled by <see cref="IssuerKeyCacheOptions.MinimumRefreshInterval"/>; concurrent callers
/// share one fetch). When a refetch fails, the keys already held keep serving (an unknown kid stays unknown).
/// </summary>
public sealed class OpenIdIssuerKeyCache(HttpClient http, IssuerKeyCacheOptions options, TimeProvider time, ILogger? logger = null) : IIssuerKeySource
{
    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly ILogger _logger = logger ?? NullLogger.Instance;

    /// <summary>How many metadata fetches were made (each is one metadata and one JWKS request).</summary>
    public int FetchCount => _fetches;

    private int _fetches;

    /// <inheritdoc />
    public async Task<IssuerKeySet> GetKeysAsync(TrustedAuthority authority, string? keyId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(authority);
        var entry = _entries.GetOrAdd(authority.Issuer, _ => new Entry());
        if (Usable(entry.Keys, keyId) is { } cached)
        {
            return cached;
        }

        await entry.Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Another caller may have refreshed while this one waited.
            var current = entry.Keys;
            if (Usable(current, keyId) is { } refreshed)
            {
                return refreshed;
            }

            var now = time.GetUtcNow();
            if (current is not null && entry.LastAttempt is { } last && now - last < options.MinimumRefreshInterval)
            {
                return current; // refreshed (or tried) moments ago: an unknown kid stays unknown
            }

            entry.LastAttempt = now;
            try
            {
                entry.Keys = await FetchAsync(authority, cancellationToken).ConfigureAwait(false);
                return entry.Keys;
            }
            catch (IssuerMetadataException e) when (current is not null)
            {
                _logger.LogWarning("Refreshing the signing keys of {Issuer} failed, keeping the keys fetched at {FetchedAt}: {Reason}", authority.Issuer, current.FetchedAt, e.Message);
                return current;
            }
        }
        finally
        {
            entry.Gate.Release();
        }
    }

    // The cached set when it is fresh and (if a kid is asked for) holds it; null when a fetch is due.
    private IssuerKeySet? Usable(IssuerKeySet? keys, string? kid) =>
        keys is not null && time.GetUtcNow() - keys.FetchedAt < options.RefreshInterval && (kid is null || keys.WithKeyId(kid).Count > 0)
            ? keys
            : null;

    private async Task<IssuerKeySet> FetchAsync(TrustedAuthority authority, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _fetches);
        var metadataUri = new Uri(authority.Issuer + "/.well-known/openid-configuration");
        using var metadata = await GetJsonAsync(metadataUri, cancellationToken).ConfigureAwait(false);
        var root = metadata.RootElement;
        var issuer = root.TryGetProperty("issuer", out var i) && i.ValueKind == JsonValueKind.String ? i.GetString() : null;
        if (issuer is null || Authorities.Normalize(issuer) != authority.Issuer)
        {
            throw new IssuerMetadataException($"the OpenID metadata at {metadataUri} names issuer '{Ids.Printable(issuer)}', not {authority.Issuer}");
        }

        var jwks = root.TryGetProperty("jwks_uri", out var j) && j.ValueKind == JsonValueKind.String ? j.GetString() : null;
        if (!Uri.TryCreate(jwks, UriKind.Absolute, out var jwksUri) || !(jwksUri.Scheme == "https" || (authority.AllowHttp && jwksUri.Scheme == "http")))
        {
            throw new IssuerMetadataException($"the OpenID metadata of {authority.Issuer} has no usable jwks_uri ('{Ids.Printable(jwks)}'; https required{(authority.AllowHttp ? " or http" : "")})");
        }

        using var set = await GetJsonAsync(jwksUri, cancellationToken).ConfigureAwait(false);
        JsonWebKeySet keys;
        try
        {
            keys = new JsonWebKeySet(set.RootElement.GetRawText());
        }
        catch (Exception e) when (e is ArgumentException or JsonException)
        {
            throw new IssuerMetadataException($"the JWKS of {authority.Issuer} at {jwksUri} is not a JSON Web Key Set", e);
        }

        var signing = keys.GetSigningKeys().Where(k => !string.IsNullOrEmpty(k.KeyId)).ToList();
        if (signing.Count == 0)
        {
            throw new IssuerMetadataException($"the JWKS of {authority.Issuer} at {jwksUri} holds no signing key with a kid");
        }

        _logger.LogInformation("Fetched {Count} signing key(s) of attestation authority {Issuer}", signing.Count, authority.Issuer);
        return new IssuerKeySet(authority.Issuer, signing, time.GetUtcNow());
    }

    private async Task<JsonDocument> GetJsonAsync(Uri uri, CancellationToken cancellationToken)
    {
        try
        {
            using var response = await http.GetAsync(uri, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new IssuerMetadataException($"GET {uri} answered {(int)response.StatusCode}");
            }

            if (response.Content.Headers.ContentLength > options.MaxDocumentBytes)
            {
                throw new IssuerMetadataException($"GET {uri}: the document is larger than {options.MaxDocumentBytes} bytes");
            }

            var bytes = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
            if (bytes.Length > options.MaxDocumentBytes)
            {
                throw new IssuerMetadataException($"GET {uri}: the document is larger than {options.MaxDocumentBytes} bytes");
            }

            return JsonDocument.Parse(bytes);
        }
        catch (HttpRequestException e)
        {
            throw new IssuerMetadataException($"GET {uri} failed: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        catch (JsonException e)
        {
            throw new IssuerMetadataException($"GET {uri}: not JSON", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new IssuerMetadataException($"GET {uri} timed out", e);
        }
    }

    private sealed class Entry
    {
        public SemaphoreSlim Gate { get; } = new(1, 1);

        public volatile IssuerKeySet? Keys;

        public DateTimeOffset? LastAttempt;
    }
}

/// <summary>Routes issuers to key sources: in-process authorities (the development authority) first, then a fallback (OpenID metadata over HTTP).</summary>
public sealed class CompositeIssuerKeySource(IReadOnlyDictionary<string, IIssuerKeySource> local, IIssuerKeySource fallback) : IIssuerKeySource
{
    /// <inheritdoc />
    public Task<IssuerKeySet> GetKeysAsync(TrustedAuthority authority, string? keyId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(authority);
        return local.TryGetValue(authority.Issuer, out var source)
            ? source.GetKeysAsync(authority, keyId, cancellationToken)
            : fallback.GetKeysAsync(authority, keyId, cancellationToken);
    }
}
