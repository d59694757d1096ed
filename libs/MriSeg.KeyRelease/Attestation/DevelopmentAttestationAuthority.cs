using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using MriSeg.KeyRelease.Policy;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>What a development attestation token states.</summary>
/// <param name="Subject">The clean room (party id) it is issued to.</param>
/// <param name="RuntimeKey">The ephemeral public key to bind in <c>x-ms-runtime.keys</c>.</param>
/// <param name="Nonce">The broker's nonce (in <c>x-ms-runtime.client-payload.nonce</c> and <c>nonce</c>).</param>
/// <param name="Measurement">The software measurement (hex SHA-256, see <see cref="SoftwareMeasurement"/>) of the trainer.</param>
/// <param name="Backdate">
/// Issue the token as if <paramref name="Backdate"/> earlier (iat, nbf and exp all move back; at most
/// <see cref="DevelopmentAttestationAuthority.MaxBackdate"/>). A backdated token only ever expires sooner, so it grants nothing
/// a current one does not; it lets <c>mriseg selfcheck security</c> show that an expired token is refused.
/// </param>
public sealed record DevelopmentAttestationRequest(string Subject, RecipientPublicKey RuntimeKey, string Nonce, string Measurement, TimeSpan Backdate = default);

/// <summary>
/// DEVELOPMENT ONLY. A stand-in attestation authority for local runs and tests: it holds an ECDSA P-256 signing key
/// (made per environment), publishes OpenID metadata and a JWKS, and signs tokens shaped like Microsoft Azure
/// Attestation's for a <b>software</b> measurement it cannot check (there is no hardware evidence). Its tokens say so:
/// <c>x-ms-attestation-type</c> is <see cref="AttestationType"/>, <c>x-ms-compliance-status</c> is
/// <see cref="ComplianceStatus"/> (never <c>azure-compliant-uvm</c> / <c>azure-compliant-cvm</c>), and
/// <c>x-mriseg-hardware-backed</c> is false; only a policy written for this authority's issuer accepts them. The
/// production path is MAA (issue 10).
/// <code>
/// { "iss": issuer, "aud": "mriseg-keybroker", "iat", "nbf", "exp", "jti", "sub": clean-room party id,
///   "x-ms-ver": "1.0", "x-ms-attestation-type": "mriseg-development",
///   "x-ms-compliance-status": "mriseg-development-not-hardware-backed",
///   "x-mriseg-hardware-backed": false, "x-mriseg-measurement": "&lt;hex SHA-256&gt;", "nonce": "&lt;nonce&gt;",
///   "x-ms-runtime": { "keys": [ &lt;JWK of the ephemeral key, kid "mriseg-ephemeral"&gt; ], "client-payload": { "nonce": "&lt;nonce&gt;" } } }
/// </code>
/// </summary>
public sealed class DevelopmentAttestationAuthority : IIssuerKeySource, IDisposable
{
    /// <summary>The <c>x-ms-attestation-type</c> of its tokens.</summary>
    public const string AttestationType = "mriseg-development";

    /// <summary>The <c>x-ms-compliance-status</c> of its tokens.</summary>
    public const string ComplianceStatus = "mriseg-development-not-hardware-backed";

    /// <summary>The claim holding the trainer's software measurement.</summary>
    public const string MeasurementClaim = "x-mriseg-measurement";

    /// <summary>The claim stating the token is not hardware-backed (always false).</summary>
    public const string HardwareBackedClaim = "x-mriseg-hardware-backed";

    /// <summary>Path of the JWKS below the issuer (MAA serves its keys at <c>/certs</c> too).</summary>
    public const string JwksPath = "/certs";

    /// <summary>Path of the OpenID metadata below the issuer.</summary>
    public const string MetadataPath = "/.well-known/openid-configuration";

    /// <summary>Path below the issuer where the service accepts attestation requests (POST, JSON).</summary>
    public const string AttestPath = "/attest";

    /// <summary>The most a token may be backdated (<see cref="DevelopmentAttestationRequest.Backdate"/>).</summary>
    public static readonly TimeSpan MaxBackdate = TimeSpan.FromDays(1);

    private readonly SigningKey _key;
    private readonly TimeProvider _time;
    private readonly IssuerKeySet _keySet;

    /// <summary>Creates the authority with <paramref name="key"/> (owned: disposed with it).</summary>
    public DevelopmentAttestationAuthority(string issuer, SigningKey key, TimeProvider? time = null, TimeSpan? tokenLifetime = null, string audience = Parties.PartyTokens.DefaultAudience)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (!Authorities.TryNormalize(issuer, out var normalized))
        {
            throw new ArgumentException($"issuer '{Ids.Printable(issuer)}' is not an absolute http(s) URL", nameof(issuer));
        }

        Issuer = normalized;
        Audience = audience;
        TokenLifetime = tokenLifetime ?? TimeSpan.FromMinutes(5);
        _key = key;
        _time = time ?? TimeProvider.System;
        using var ecdsa = ECDsa.Create();
        ecdsa.ImportSubjectPublicKeyInfo(key.PublicKey.ExportSubjectPublicKeyInfo(), out _);
        var p = ecdsa.ExportParameters(false);
        X = p.Q.X!;
        Y = p.Q.Y!;
        KeyId = Jws.EcThumbprint(X, Y);
        _keySet = new IssuerKeySet(Issuer, new JsonWebKeySet(JwksJson()).GetSigningKeys().ToList(), DateTimeOffset.MinValue);
    }

    /// <summary>The issuer (normalised): its tokens' <c>iss</c>, the <c>authority</c> of policies written for it.</summary>
    public string Issuer { get; }

    /// <summary>The audience of its tokens.</summary>
    public string Audience { get; }

    /// <summary>How long its tokens live.</summary>
    public TimeSpan TokenLifetime { get; }

    /// <summary>The signing key's kid (RFC 7638 thumbprint).</summary>
    public string KeyId { get; }

    private byte[] X { get; }

    private byte[] Y { get; }

    /// <summary>An authority with a fresh key (tests).</summary>
    public static DevelopmentAttestationAuthority CreateEphemeral(string issuer, TimeProvider? time = null) => new(issuer, SigningKey.Generate(), time);

    /// <summary>
    /// The authority whose signing key is the PKCS#8 file <paramref name="keyPath"/> (mode 0600), created there on first use:
    /// one key per environment.
    /// </summary>
    public static DevelopmentAttestationAuthority LoadOrCreate(string issuer, string keyPath, TimeProvider? time = null, TimeSpan? tokenLifetime = null, string audience = Parties.PartyTokens.DefaultAudience)
    {
        SigningKey key;
        if (File.Exists(keyPath))
        {
            key = SigningKey.Load(keyPath);
        }
        else
        {
            key = SigningKey.Generate();
            try
            {
                key.Save(keyPath);
            }
            catch (SealedPackageException e) when (e.Error == SealingError.DestinationExists)
            {
                key.Dispose();
                key = SigningKey.Load(keyPath);
            }
        }

        return new DevelopmentAttestationAuthority(issuer, key, time, tokenLifetime, audience);
    }

    /// <summary>The trusted-authority entry for it (audience required; http allowed when its issuer is http).</summary>
    public TrustedAuthority AsTrusted() => new(Issuer, requireAudience: true, allowHttp: Issuer.StartsWith("http:", StringComparison.Ordinal));

    /// <summary>The OpenID metadata document (served at <c>{issuer}/.well-known/openid-configuration</c>).</summary>
    public string OpenIdConfigurationJson() => Encoding.UTF8.GetString(Jws.Json(w =>
    {
        w.WriteString("issuer", Issuer);
        w.WriteString("jwks_uri", Issuer + JwksPath);
        w.WriteStartArray("id_token_signing_alg_values_supported");
        w.WriteStringValue("ES256");
        w.WriteEndArray();
        w.WriteStartArray("claims_supported");
        foreach (var claim in new[] { "x-ms-attestation-type", "x-ms-compliance-status", MeasurementClaim, HardwareBackedClaim, "x-ms-runtime", "nonce" })
        {
            w.WriteStringValue(claim);
        }

        w.WriteEndArray();
        w.WriteString("x-mriseg-note", "development attestation authority: software measurements only, not hardware-backed");
    }));

    /// <summary>The JWKS document (served at <c>{issuer}/certs</c>).</summary>
    public string JwksJson() => Encoding.UTF8.GetString(Jws.Json(w =>
    {
        w.WriteStartArray("keys");
        w.WriteStartObject();
        w.WriteString("kty", "EC");
        w.WriteString("crv", "P-256");
        w.WriteString("x", Base64Url.EncodeToString(X));
        w.WriteString("y", Base64Url.EncodeToString(Y));
        w.WriteString("kid", KeyId);
        w.WriteString("use", "sig");
        w.WriteString("alg", "ES256");
        w.WriteEndObject();
        w.WriteEndArray();
    }));

    /// <summary>Signs a development attestation token.</summary>
    public string IssueToken(DevelopmentAttestationRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (request.Backdate < TimeSpan.Zero || request.Backdate > MaxBackdate)
        {
            throw new ArgumentException($"the backdate must be between 0 and {MaxBackdate.TotalSeconds:0} seconds", nameof(request));
        }

        return Sign(_key, KeyId, Issuer, Audience, request, _time.GetUtcNow() - request.Backdate, TokenLifetime);
    }

    /// <summary>
    /// A token shaped like this authority's, signed by <paramref name="key"/> under <paramref name="kid"/> and
    /// <paramref name="issuer"/>: the authority's own tokens, and the forgeries <c>mriseg selfcheck security</c> tries.
    /// </summary>
    internal static string Sign(SigningKey key, string kid, string issuer, string audience, DevelopmentAttestationRequest request, DateTimeOffset issuedAt, TimeSpan lifetime)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (Ids.Sha256Hex(request.Measurement) is not { } measurement)
        {
            throw new ArgumentException("the measurement must be a hex SHA-256 (64 hex digits)", nameof(request));
        }

        if (string.IsNullOrEmpty(request.Nonce))
        {
            throw new ArgumentException("a nonce is required", nameof(request));
        }

        var now = issuedAt.ToUnixTimeSeconds();
        return Jws.CreateEs256(key, kid, w =>
        {
            w.WriteString("iss", issuer);
            w.WriteString("aud", audience);
            w.WriteString("sub", request.Subject);
            w.WriteNumber("iat", now);
            w.WriteNumber("nbf", now);
            w.WriteNumber("exp", now + (long)lifetime.TotalSeconds);
            w.WriteString("jti", Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
            w.WriteString("x-ms-ver", "1.0");
            w.WriteString("x-ms-attestation-type", AttestationType);
            w.WriteString("x-ms-compliance-status", ComplianceStatus);
            w.WriteBoolean(HardwareBackedClaim, false);
            w.WriteString(MeasurementClaim, measurement);
            w.WriteString("nonce", request.Nonce);
            w.WriteStartObject("x-ms-runtime");
            w.WriteStartArray("keys");
            RuntimeKeys.WriteJwk(w, request.RuntimeKey);
            w.WriteEndArray();
            w.WriteStartObject("client-payload");
            w.WriteString("nonce", request.Nonce);
            w.WriteEndObject();
            w.WriteEndObject();
        });
    }

    /// <summary>A release policy that accepts this authority's tokens for the trainer with <paramref name="measurement"/>.</summary>
    public string PolicyFor(string measurement) => PolicyFor(Issuer, measurement);

    /// <summary>A release policy that accepts the tokens of the development authority <paramref name="issuer"/> for the trainer with <paramref name="measurement"/>.</summary>
    public static string PolicyFor(string issuer, string measurement) => Encoding.UTF8.GetString(Jws.Json(w =>
    {
        ArgumentNullException.ThrowIfNull(measurement);
        w.WriteString("version", ReleasePolicy.SupportedVersion);
        w.WriteStartArray("anyOf");
        w.WriteStartObject();
        w.WriteString("authority", issuer);
        w.WriteStartArray("allOf");
        Condition(w, "x-ms-attestation-type", AttestationType);
        Condition(w, "x-ms-compliance-status", ComplianceStatus);
        Condition(w, MeasurementClaim, measurement.ToLowerInvariant());
        w.WriteEndArray();
        w.WriteEndObject();
        w.WriteEndArray();
    }));

    /// <inheritdoc />
    public Task<IssuerKeySet> GetKeysAsync(TrustedAuthority authority, string? keyId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(authority);
        return authority.Issuer == Issuer
            ? Task.FromResult(_keySet)
            : Task.FromException<IssuerKeySet>(new IssuerMetadataException($"the development authority is {Issuer}, not {authority.Issuer}"));
    }

    /// <inheritdoc />
    public void Dispose() => _key.Dispose();

    private static void Condition(Utf8JsonWriter w, string claim, string value)
    {
        w.WriteStartObject();
        w.WriteString("claim", claim);
        w.WriteString("equals", value);
        w.WriteEndObject();
    }
}
