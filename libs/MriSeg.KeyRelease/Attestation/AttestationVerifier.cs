using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Policy;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>An attestation authority the broker trusts to sign attestation tokens.</summary>
public sealed record TrustedAuthority
{
    /// <summary>Creates the entry; <paramref name="issuer"/> is normalised (<see cref="Authorities.Normalize"/>).</summary>
    /// <param name="issuer">The issuer URL (a token's <c>iss</c>; a policy's <c>authority</c>).</param>
    /// <param name="requireAudience">
    /// Whether tokens must carry <c>aud</c> (the broker's audience). MAA tokens carry none: for them the broker's nonce
    /// and the bound ephemeral key tie the token to this broker and this request. A token that carries an <c>aud</c>
    /// must always name the broker.
    /// </param>
    /// <param name="allowHttp">Whether metadata and JWKS may come over http (local development only).</param>
    public TrustedAuthority(string issuer, bool requireAudience = true, bool allowHttp = false)
    {
        if (!Authorities.TryNormalize(issuer, out var normalized))
        {
            throw new ArgumentException($"attestation authority '{Ids.Printable(issuer)}' is not an absolute http(s) URL", nameof(issuer));
        }

        if (!allowHttp && normalized.StartsWith("http:", StringComparison.Ordinal))
        {
            throw new ArgumentException($"attestation authority {normalized} is http: allow http for it explicitly (development only)", nameof(issuer));
        }

        Issuer = normalized;
        RequireAudience = requireAudience;
        AllowHttp = allowHttp;
    }

    /// <summary>The normalised issuer.</summary>
    public string Issuer { get; }

    /// <summary>Whether tokens must carry the broker's audience.</summary>
    public bool RequireAudience { get; }

    /// <summary>Whether http metadata is allowed.</summary>
    public bool AllowHttp { get; }
}

/// <summary>Settings of attestation-token verification.</summary>
public sealed class AttestationOptions
{
    /// <summary>The audience a token's <c>aud</c> must name (when it has one or the authority requires one).</summary>
    public string Audience { get; init; } = Parties.PartyTokens.DefaultAudience;

    /// <summary>Tolerance for exp and nbf (default 60 s).</summary>
    public TimeSpan ClockSkew { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>The authorities the broker trusts; a policy's authority must be one of them.</summary>
    public IReadOnlyList<TrustedAuthority> Authorities { get; init; } = [];

    /// <summary>Largest token accepted (default 64 KiB).</summary>
    public int MaxTokenBytes { get; init; } = 64 * 1024;
}

/// <summary>Which attestation check failed.</summary>
public enum AttestationFailure
{
    /// <summary>Not a signed JWT, or a required header or claim is missing.</summary>
    Malformed,

    /// <summary>The token's issuer is not an authority the broker trusts.</summary>
    UntrustedIssuer,

    /// <summary>The token's issuer is trusted but the key's policy does not name it.</summary>
    IssuerNotInPolicy,

    /// <summary>The issuer's metadata or keys could not be fetched.</summary>
    MetadataUnavailable,

    /// <summary>The token's kid is not among the issuer's keys, even after a refresh.</summary>
    UnknownSigningKey,

    /// <summary>The signature does not verify, or the algorithm is not allowed.</summary>
    InvalidSignature,

    /// <summary>The token's audience is not the broker.</summary>
    WrongAudience,

    /// <summary>The token is expired (beyond the skew).</summary>
    Expired,

    /// <summary>The token is not yet valid (nbf beyond the skew).</summary>
    NotYetValid,

    /// <summary>The token's nonce is missing or not the request's.</summary>
    NonceMismatch,

    /// <summary>The token's runtime data does not bind the requester's public key.</summary>
    KeyNotBound,
}

/// <summary>An attestation token failed a check; the message says which, in one line, without the token.</summary>
public sealed class AttestationException(AttestationFailure failure, string message, Exception? innerException = null)
    : Exception(message, innerException)
{
    /// <summary>The failed check.</summary>
    public AttestationFailure Failure { get; } = failure;
}

/// <summary>A verified attestation token.</summary>
/// <param name="Issuer">The normalised issuer (an authority of the broker and of the policy).</param>
/// <param name="Claims">The token's payload (owned copy).</param>
/// <param name="SigningKeyId">The kid that signed it.</param>
/// <param name="TokenId">The token's jti, if any.</param>
/// <param name="Expires">Its expiry.</param>
public sealed record VerifiedAttestation(string Issuer, JsonElement Claims, string SigningKeyId, string? TokenId, DateTimeOffset Expires);

/// <summary>
/// Verifies attestation tokens (MAA in the cloud, the development authority locally):
/// <list type="number">
/// <item>a compact JWS of at most <see cref="AttestationOptions.MaxTokenBytes"/>, an asymmetric algorithm (RS*, PS*, ES*) and a kid;</item>
/// <item>its issuer is a trusted authority and an authority of the key's policy;</item>
/// <item>its signature verifies under the issuer's key of that kid (from OpenID metadata; one refresh on an unknown kid);</item>
/// <item>its audience is the broker's (when present or required); exp and nbf hold within the skew;</item>
/// <item>its nonce (<c>x-ms-runtime.client-payload.nonce</c> and/or <c>nonce</c>; every one present) is the request's;</item>
/// <item><c>x-ms-runtime.keys</c> holds the requester's public key, or (an Azure confidential VM) <c>x-ms-runtime.user-data</c>
/// binds that key and the nonce (<see cref="RuntimeKeys"/>).</item>
/// </list>
/// The nonce's single use is the caller's (<see cref="NonceStore"/>); the release policy is evaluated on the claims after.
/// </summary>
public sealed class AttestationVerifier(AttestationOptions options, IIssuerKeySource keys, TimeProvider time)
{
    /// <summary>Where the nonce may be: MAA's runtime client payload, and a top-level claim.</summary>
    public static readonly IReadOnlyList<string> NonceClaims = ["x-ms-runtime.client-payload.nonce", "nonce"];

    private static readonly string[] Algorithms =
    [
        SecurityAlgorithms.RsaSha256, SecurityAlgorithms.RsaSha384, SecurityAlgorithms.RsaSha512,
        SecurityAlgorithms.RsaSsaPssSha256, SecurityAlgorithms.RsaSsaPssSha384, SecurityAlgorithms.RsaSsaPssSha512,
        SecurityAlgorithms.EcdsaSha256, SecurityAlgorithms.EcdsaSha384, SecurityAlgorithms.EcdsaSha512,
    ];

    private readonly JsonWebTokenHandler _handler = new();

    /// <summary>The verification settings.</summary>
    public AttestationOptions Options => options;

    /// <summary>The trusted authority for <paramref name="issuer"/>, or null.</summary>
    public TrustedAuthority? FindTrusted(string issuer)
    {
        var normalized = Authorities.Normalize(issuer);
        return options.Authorities.FirstOrDefault(a => a.Issuer == normalized);
    }

    /// <summary>Verifies <paramref name="token"/>; throws <see cref="AttestationException"/> naming the first failed check.</summary>
    /// <param name="token">The compact JWT.</param>
    /// <param name="policyAuthorities">The (normalised) authorities the key's release policy names.</param>
    /// <param name="expectedNonce">The nonce the request presents (issued by the broker).</param>
    /// <param name="requesterKey">The ephemeral public key the released key will be wrapped to.</param>
    /// <param name="cancellationToken">Cancels a metadata fetch.</param>
    public async Task<VerifiedAttestation> VerifyAsync(string token, IReadOnlyCollection<string> policyAuthorities, string expectedNonce,
        RecipientPublicKey requesterKey, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(policyAuthorities);
        ArgumentNullException.ThrowIfNull(requesterKey);
        if (string.IsNullOrEmpty(token))
        {
            throw new AttestationException(AttestationFailure.Malformed, "attestation token is required");
        }

        if (Encoding.UTF8.GetByteCount(token) > options.MaxTokenBytes)
        {
            throw new AttestationException(AttestationFailure.Malformed, $"attestation token is larger than {options.MaxTokenBytes} bytes");
        }

        // 1. Read it unverified, only to know which issuer and key to verify it with.
        JsonWebToken unverified;
        try
        {
            unverified = new JsonWebToken(token);
        }
        catch (Exception e) when (e is ArgumentException or SecurityTokenMalformedException)
        {
            throw new AttestationException(AttestationFailure.Malformed, "attestation token is not a JWT", e);
        }

        if (unverified.IsEncrypted || !Algorithms.Contains(unverified.Alg, StringComparer.Ordinal))
        {
            throw new AttestationException(AttestationFailure.InvalidSignature, $"attestation token algorithm '{Ids.Printable(unverified.Alg)}' is not allowed (RS*, PS* or ES*)");
        }

        if (string.IsNullOrEmpty(unverified.Kid))
        {
            throw new AttestationException(AttestationFailure.Malformed, "attestation token has no kid");
        }

        var issuer = unverified.TryGetPayloadValue<string>("iss", out var iss) ? iss : null;
        if (string.IsNullOrEmpty(issuer))
        {
            throw new AttestationException(AttestationFailure.Malformed, "attestation token has no issuer");
        }

        // 2. The issuer: trusted by the broker and named by the policy.
        var authority = FindTrusted(issuer)
            ?? throw new AttestationException(AttestationFailure.UntrustedIssuer, $"attestation token issuer {Ids.Printable(issuer)} is not a trusted attestation authority");
        if (!policyAuthorities.Contains(authority.Issuer, StringComparer.Ordinal))
        {
            throw new AttestationException(AttestationFailure.IssuerNotInPolicy, $"attestation token issuer {authority.Issuer} is not an authority of the key's release policy");
        }

        // 3. The issuer's key of that kid (one refresh when unknown).
        IssuerKeySet issuerKeys;
        try
        {
            issuerKeys = await keys.GetKeysAsync(authority, unverified.Kid, cancellationToken).ConfigureAwait(false);
        }
        catch (IssuerMetadataException e)
        {
            throw new AttestationException(AttestationFailure.MetadataUnavailable, $"the signing keys of {authority.Issuer} are unavailable: {e.Message}", e);
        }

        var candidates = issuerKeys.WithKeyId(unverified.Kid);
        if (candidates.Count == 0)
        {
            throw new AttestationException(AttestationFailure.UnknownSigningKey, $"attestation token kid '{Ids.Printable(unverified.Kid)}' is not a signing key of {authority.Issuer}");
        }

        // 4. Signature, issuer, audience, lifetime.
        var hasAudience = unverified.Audiences.Any();
        var parameters = new TokenValidationParameters
        {
            IssuerSigningKeys = candidates,
            TryAllIssuerSigningKeys = false,
            ValidAlgorithms = Algorithms,
            ValidIssuers = [issuer],
            ValidateIssuer = true,
            ValidateAudience = hasAudience || authority.RequireAudience,
            ValidAudience = options.Audience,
            RequireSignedTokens = true,
            ValidateLifetime = false, // checked below against the injected clock
        };
        var result = await _handler.ValidateTokenAsync(token, parameters).ConfigureAwait(false);
        if (!result.IsValid)
        {
            var failure = result.Exception switch
            {
                SecurityTokenExpiredException => AttestationFailure.Expired,
                SecurityTokenNotYetValidException => AttestationFailure.NotYetValid,
                SecurityTokenInvalidAudienceException => AttestationFailure.WrongAudience,
                SecurityTokenNoExpirationException or SecurityTokenMalformedException => AttestationFailure.Malformed,
                _ => AttestationFailure.InvalidSignature,
            };
            throw new AttestationException(failure, "attestation token: " + Parties.TokenFailures.Describe(result.Exception, $"the key '{Ids.Printable(unverified.Kid)}' of {authority.Issuer}"), result.Exception);
        }

        var verified = (JsonWebToken)result.SecurityToken;
        switch (Lifetime.Check(verified, time.GetUtcNow(), options.ClockSkew))
        {
            case LifetimeProblem.NoExpiry:
                throw new AttestationException(AttestationFailure.Malformed, "attestation token: \"exp\" is required");
            case LifetimeProblem.Expired:
                throw new AttestationException(AttestationFailure.Expired, "attestation token: expired");
            case LifetimeProblem.NotYetValid:
                throw new AttestationException(AttestationFailure.NotYetValid, "attestation token: not yet valid (nbf in the future)");
        }

        using var payload = JsonDocument.Parse(Base64UrlEncoder.DecodeBytes(verified.EncodedPayload));
        var claims = payload.RootElement.Clone();

        // 5. The nonce: every place it appears must hold the request's, and it must appear somewhere.
        var found = 0;
        foreach (var path in NonceClaims)
        {
            if (!ClaimPath.TryFind(claims, path, out var value))
            {
                continue;
            }

            found++;
            if (value.ValueKind != JsonValueKind.String || !FixedTimeEquals(value.GetString()!, expectedNonce))
            {
                throw new AttestationException(AttestationFailure.NonceMismatch, $"attestation token claim {path} is not the request's nonce");
            }
        }

        if (found == 0)
        {
            throw new AttestationException(AttestationFailure.NonceMismatch, $"attestation token carries no nonce ({string.Join(" or ", NonceClaims)})");
        }

        // 6. The requester's public key, bound in the runtime data: a JWK the workload wrote itself, or a confidential VM's
        //    user data binding the key and this nonce.
        if (!RuntimeKeys.Binds(claims, requesterKey) && !RuntimeKeys.BindsUserData(claims, requesterKey, expectedNonce))
        {
            throw new AttestationException(AttestationFailure.KeyNotBound,
                $"attestation token does not bind the requester's public key {requesterKey.Thumbprint[..16]}… ({RuntimeKeys.KeysClaim} holds no such JWK and {RuntimeKeys.UserDataClaim} does not bind it with the nonce)");
        }

        return new VerifiedAttestation(authority.Issuer, claims, unverified.Kid,
            verified.Id is { Length: > 0 } jti ? jti : null, new DateTimeOffset(verified.ValidTo, TimeSpan.Zero));
    }

    private static bool FixedTimeEquals(string a, string b) =>
        CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(a)), SHA256.HashData(Encoding.UTF8.GetBytes(b)));
}
