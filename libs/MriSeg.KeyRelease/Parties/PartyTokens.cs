using System.Collections.Concurrent;
using System.Security.Cryptography;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Parties;

/// <summary>
/// Party tokens: the bearer JWT every KeyBroker call carries, signed by the calling party's registered ECDSA P-256 key.
/// <code>
/// header  { "alg": "ES256", "typ": "JWT", "kid": "&lt;hex SHA-256 of the party key's SubjectPublicKeyInfo&gt;" }
/// payload { "iss": party id, "sub": party id, "aud": "mriseg-keybroker", "iat", "nbf", "exp" (at most 10 min after iat),
///           "jti": 32 hex digits (single use) }
/// </code>
/// </summary>
public static class PartyTokens
{
    /// <summary>The audience of party and development attestation tokens unless configured otherwise.</summary>
    public const string DefaultAudience = "mriseg-keybroker";

    /// <summary>The audience of the tokens that authenticate calls to a consumer's ModelVault.</summary>
    public const string ModelVaultAudience = "mriseg-modelvault";

    /// <summary>The gRPC metadata / HTTP header carrying "Bearer &lt;token&gt;".</summary>
    public const string AuthorizationHeader = "authorization";

    /// <summary>Header with the operator's admin token (first registrations in <see cref="RegistrationMode.AdminToken"/> mode, key recovery).</summary>
    public const string AdminTokenHeader = "x-mriseg-admin-token";

    /// <summary>Header with a party token signed by the currently registered key, to rotate to the key of the bearer token.</summary>
    public const string PreviousKeyTokenHeader = "x-mriseg-previous-key-token";

    /// <summary>Default lifetime of a minted token.</summary>
    public static readonly TimeSpan DefaultLifetime = TimeSpan.FromMinutes(2);

    /// <summary>Mints a party token signed by <paramref name="key"/>.</summary>
    public static string Mint(SigningKey key, string partyId, string audience = DefaultAudience, TimeSpan? lifetime = null, DateTimeOffset? now = null)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (!Ids.IsPartyId(partyId))
        {
            throw new ArgumentException($"party id '{Ids.Printable(partyId)}' is not valid: {Ids.PartyIdRule}", nameof(partyId));
        }

        var issued = (now ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds();
        var expires = issued + (long)(lifetime ?? DefaultLifetime).TotalSeconds;
        return Jws.CreateEs256(key, key.Thumbprint, w =>
        {
            w.WriteString("iss", partyId);
            w.WriteString("sub", partyId);
            w.WriteString("aud", audience);
            w.WriteNumber("iat", issued);
            w.WriteNumber("nbf", issued);
            w.WriteNumber("exp", expires);
            w.WriteString("jti", Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)));
        });
    }

    /// <summary>"Bearer &lt;token&gt;".</summary>
    public static string Bearer(string token) => "Bearer " + token;

    /// <summary>The token of an "authorization: Bearer …" value, or null.</summary>
    public static string? FromAuthorization(string? value)
    {
        if (string.IsNullOrWhiteSpace(value))
        {
            return null;
        }

        var trimmed = value.Trim();
        return trimmed.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) && trimmed.Length > 7 ? trimmed[7..].Trim() : null;
    }
}

/// <summary>Settings of party-token validation.</summary>
public sealed class PartyTokenOptions
{
    /// <summary>The audience tokens must name.</summary>
    public string Audience { get; init; } = PartyTokens.DefaultAudience;

    /// <summary>Tolerance for exp, nbf and iat (default 60 s).</summary>
    public TimeSpan ClockSkew { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Longest accepted exp − iat (default 10 min).</summary>
    public TimeSpan MaxLifetime { get; init; } = TimeSpan.FromMinutes(10);
}

/// <summary>
/// Authenticates callers: the bearer token's subject must be a party the directory knows (the KeyBroker's registry, or a
/// service's list of allowed callers) and the token must verify under that party's key (ES256), name the expected
/// audience, be within its lifetime (with the skew), live at most <see cref="PartyTokenOptions.MaxLifetime"/>, and not
/// reuse a jti seen before.
/// </summary>
public sealed class PartyTokenValidator(IPartyDirectory registry, PartyTokenOptions options, TimeProvider time)
{
    private readonly JsonWebTokenHandler _handler = new() { MaximumTokenSizeInBytes = 8 * 1024 };
    private readonly ConcurrentDictionary<string, ECDsaSecurityKey> _keys = new(StringComparer.Ordinal);
    private readonly ReplayCache _replays = new(time);

    /// <summary>The authenticated caller of an "authorization" header value; <see cref="KeyBrokerError.Unauthenticated"/> otherwise.</summary>
    public async Task<PartyPrincipal> AuthenticateAsync(string? authorization, CancellationToken cancellationToken)
    {
        var token = PartyTokens.FromAuthorization(authorization)
            ?? throw KeyBrokerException.Unauthenticated("no credentials: send \"authorization: Bearer <party token>\" signed by your registered key");
        var subject = ReadSubject(token);
        var party = await registry.FindAsync(subject, cancellationToken).ConfigureAwait(false)
            ?? throw KeyBrokerException.Unauthenticated($"party '{subject}' is not registered");
        await ValidateAsync(token, party.PartyId, party.PublicKeyPem, party.Thumbprint).ConfigureAwait(false);
        return new PartyPrincipal(party.PartyId, party.Role, party.Thumbprint);
    }

    /// <summary>The subject of a token before verification (to find the key to verify it with).</summary>
    public static string ReadSubject(string token)
    {
        JsonWebToken jwt;
        try
        {
            jwt = new JsonWebToken(token);
        }
        catch (Exception e) when (e is ArgumentException or SecurityTokenMalformedException)
        {
            throw KeyBrokerException.Unauthenticated("the bearer token is not a JWT");
        }

        var subject = jwt.TryGetPayloadValue<string>("sub", out var sub) ? sub : null;
        return Ids.IsPartyId(subject)
            ? subject!
            : throw KeyBrokerException.Unauthenticated("the bearer token's subject is not a party id");
    }

    /// <summary>Verifies <paramref name="token"/> as a party token of <paramref name="partyId"/> under the key <paramref name="publicKeyPem"/>.</summary>
    public async Task ValidateAsync(string token, string partyId, string publicKeyPem, string thumbprint)
    {
        var key = _keys.GetOrAdd(thumbprint, _ =>
        {
            var ecdsa = ECDsa.Create();
            ecdsa.ImportFromPem(publicKeyPem);
            return new ECDsaSecurityKey(ecdsa) { KeyId = thumbprint };
        });
        var parameters = new TokenValidationParameters
        {
            IssuerSigningKey = key,
            TryAllIssuerSigningKeys = true,
            ValidAlgorithms = [SecurityAlgorithms.EcdsaSha256],
            ValidIssuer = partyId,
            ValidAudience = options.Audience,
            RequireSignedTokens = true,
            ValidateLifetime = false, // checked below against the injected clock
        };
        var result = await _handler.ValidateTokenAsync(token, parameters).ConfigureAwait(false);
        if (!result.IsValid)
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': {TokenFailures.Describe(result.Exception, "the registered key of " + partyId)}");
        }

        var jwt = (JsonWebToken)result.SecurityToken;
        var now = time.GetUtcNow();
        var lifetime = Lifetime.Check(jwt, now, options.ClockSkew);
        if (lifetime != LifetimeProblem.None)
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': {Lifetime.Describe(lifetime)}");
        }

        if (!string.Equals(jwt.Subject, partyId, StringComparison.Ordinal))
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': its subject is not the party");
        }

        if (!jwt.TryGetPayloadValue<long>("iat", out var iat))
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': \"iat\" is required");
        }

        var issued = DateTimeOffset.FromUnixTimeSeconds(iat);
        if (jwt.ValidTo - issued.UtcDateTime > options.MaxLifetime)
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': it lives longer than {options.MaxLifetime.TotalMinutes:0} minutes");
        }

        if (issued - options.ClockSkew > now)
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': issued in the future");
        }

        if (jwt.TryGetPayloadValue<string>("jti", out var jti) && !string.IsNullOrEmpty(jti)
            && !_replays.TryUse(partyId + "\n" + jti, new DateTimeOffset(jwt.ValidTo, TimeSpan.Zero) + options.ClockSkew))
        {
            throw KeyBrokerException.Unauthenticated($"party token of '{partyId}': replayed (its jti was used before)");
        }
    }
}

/// <summary>Single-use ids, remembered until they expire.</summary>
internal sealed class ReplayCache(TimeProvider time)
{
    private const int Capacity = 200_000;
    private readonly ConcurrentDictionary<string, DateTimeOffset> _seen = new(StringComparer.Ordinal);

    public bool TryUse(string id, DateTimeOffset forgetAfter)
    {
        if (_seen.Count >= Capacity)
        {
            var now = time.GetUtcNow();
            foreach (var (key, until) in _seen)
            {
                if (until < now)
                {
                    _seen.TryRemove(key, out _);
                }
            }

            if (_seen.Count >= Capacity)
            {
                return false;
            }
        }

        return _seen.TryAdd(id, forgetAfter);
    }
}

/// <summary>What is wrong with a token's lifetime.</summary>
internal enum LifetimeProblem
{
    None,
    NoExpiry,
    Expired,
    NotYetValid,
}

/// <summary>exp and nbf against a clock, with a skew (the tokens' own handler has no injectable clock here).</summary>
internal static class Lifetime
{
    public static LifetimeProblem Check(JsonWebToken token, DateTimeOffset now, TimeSpan skew)
    {
        if (!token.TryGetPayloadValue<long>("exp", out var exp))
        {
            return LifetimeProblem.NoExpiry;
        }

        if (now > DateTimeOffset.FromUnixTimeSeconds(exp) + skew)
        {
            return LifetimeProblem.Expired;
        }

        return token.TryGetPayloadValue<long>("nbf", out var nbf) && now + skew < DateTimeOffset.FromUnixTimeSeconds(nbf)
            ? LifetimeProblem.NotYetValid
            : LifetimeProblem.None;
    }

    public static string Describe(LifetimeProblem problem) => problem switch
    {
        LifetimeProblem.NoExpiry => "\"exp\" is required",
        LifetimeProblem.Expired => "expired",
        LifetimeProblem.NotYetValid => "not yet valid (nbf in the future)",
        _ => "valid",
    };
}

/// <summary>One-line reasons for token validation failures (no token contents).</summary>
internal static class TokenFailures
{
    public static string Describe(Exception? e, string keyDescription) => e switch
    {
        SecurityTokenExpiredException => "expired",
        SecurityTokenNotYetValidException => "not yet valid (nbf in the future)",
        SecurityTokenNoExpirationException => "\"exp\" is required",
        SecurityTokenInvalidLifetimeException => "its lifetime is invalid",
        SecurityTokenInvalidAudienceException => "wrong audience",
        SecurityTokenInvalidIssuerException => "wrong issuer",
        SecurityTokenInvalidAlgorithmException => "algorithm not allowed",
        SecurityTokenSignatureKeyNotFoundException => "signed by a key that is not " + keyDescription,
        SecurityTokenInvalidSignatureException => "the signature does not verify against " + keyDescription,
        SecurityTokenMalformedException or ArgumentException => "malformed token",
        null => "invalid",
        _ => "invalid (" + e.GetType().Name + ")",
    };
}
