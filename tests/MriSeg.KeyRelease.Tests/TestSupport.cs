using System.Buffers.Text;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using MriSeg.KeyRelease.Attestation;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Tests;

/// <summary>
/// RSA keys for tests: generating 2048-bit keys costs 0.1-0.5 s each on a small CI machine, so a few are made once and
/// handed out round-robin as fresh objects (no object is shared between tests).
/// </summary>
internal static class RsaPool
{
    private const int IssuerKeys = 4;

    private static readonly Lazy<RSAParameters[]> Keys = new(() =>
        Enumerable.Range(0, IssuerKeys + 2).Select(_ =>
        {
            using var rsa = RSA.Create(2048);
            return rsa.ExportParameters(true);
        }).ToArray());

    private static int foreign = -1;

    /// <summary>The <paramref name="index"/>-th issuer key (cycling through four).</summary>
    public static RSA Issuer(int index) => Create(Keys.Value[index % IssuerKeys]);

    /// <summary>A key no issuer publishes.</summary>
    public static RSA Foreign() => Create(Keys.Value[IssuerKeys + ((Interlocked.Increment(ref foreign) & int.MaxValue) % 2)]);

    private static RSA Create(RSAParameters parameters)
    {
        var rsa = RSA.Create();
        rsa.ImportParameters(parameters);
        return rsa;
    }
}

/// <summary>A clock the test moves.</summary>
internal sealed class FakeTime(DateTimeOffset start) : TimeProvider
{
    public DateTimeOffset Now { get; set; } = start;

    public FakeTime()
        : this(new DateTimeOffset(2030, 1, 1, 12, 0, 0, TimeSpan.Zero))
    {
    }

    public override DateTimeOffset GetUtcNow() => Now;

    public void Advance(TimeSpan by) => Now += by;
}

/// <summary>
/// An in-process stand-in for an attestation service shaped like Microsoft Azure Attestation: OpenID metadata at
/// {issuer}/.well-known/openid-configuration, a JWKS of RSA keys at {issuer}/certs, RS256 tokens with MAA's claims.
/// Counts the requests it serves.
/// </summary>
internal sealed class StandInIssuer : HttpMessageHandler
{
    private readonly List<(RSA Key, string Kid)> _published = [];
    private int _metadataRequests;
    private int _jwksRequests;
    private int _rotations;

    public StandInIssuer(string issuer = "https://standin.eus.attest.example.net", string? metadataIssuer = null)
    {
        Issuer = issuer;
        MetadataIssuer = metadataIssuer ?? issuer;
        Rotate();
    }

    public string Issuer { get; }

    public string MetadataIssuer { get; set; }

    public RSA CurrentKey => _published[^1].Key;

    public string CurrentKid => _published[^1].Kid;

    public int MetadataRequests => _metadataRequests;

    public int JwksRequests => _jwksRequests;

    /// <summary>Publishes a new key (the old ones stay published unless <paramref name="dropOld"/>).</summary>
    public string Rotate(bool dropOld = false)
    {
        if (dropOld)
        {
            _published.Clear();
        }

        var key = RsaPool.Issuer(_rotations++);
        var kid = "kid-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6));
        _published.Add((key, kid));
        return kid;
    }

    /// <summary>A key not published (for "signed by someone else with a known kid" tests).</summary>
    public static RSA ForeignKey() => RsaPool.Foreign();

    public HttpClient Client() => new(this, disposeHandler: false);

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var url = request.RequestUri!.ToString();
        string body;
        if (url == Issuer + "/.well-known/openid-configuration")
        {
            Interlocked.Increment(ref _metadataRequests);
            body = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["issuer"] = MetadataIssuer,
                ["jwks_uri"] = Issuer + "/certs",
                ["id_token_signing_alg_values_supported"] = new[] { "RS256" },
            });
        }
        else if (url == Issuer + "/certs")
        {
            Interlocked.Increment(ref _jwksRequests);
            body = JsonSerializer.Serialize(new
            {
                keys = _published.Select(p =>
                {
                    var parameters = p.Key.ExportParameters(false);
                    return new Dictionary<string, string>
                    {
                        ["kty"] = "RSA",
                        ["kid"] = p.Kid,
                        ["use"] = "sig",
                        ["alg"] = "RS256",
                        ["n"] = Base64Url.EncodeToString(parameters.Modulus),
                        ["e"] = Base64Url.EncodeToString(parameters.Exponent),
                    };
                }).ToList(),
            });
        }
        else
        {
            return Task.FromResult(new HttpResponseMessage(HttpStatusCode.NotFound));
        }

        return Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent(body, Encoding.UTF8, "application/json") });
    }

    /// <summary>MAA-shaped claims for a confidential container (SEV-SNP UVM) binding <paramref name="runtimeKey"/> and <paramref name="nonce"/>.</summary>
    public Dictionary<string, object?> Claims(RecipientPublicKey runtimeKey, string nonce, DateTimeOffset now, string measurement = Measurement)
    {
        using var jwk = JsonDocument.Parse(RuntimeKeys.ToJwk(runtimeKey));
        return new Dictionary<string, object?>
        {
            ["iss"] = Issuer,
            ["iat"] = now.ToUnixTimeSeconds(),
            ["nbf"] = now.ToUnixTimeSeconds(),
            ["exp"] = now.AddHours(8).ToUnixTimeSeconds(),
            ["jti"] = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)),
            ["x-ms-ver"] = "1.0",
            ["x-ms-attestation-type"] = "sevsnpvm",
            ["x-ms-compliance-status"] = "azure-compliant-uvm",
            ["x-ms-sevsnpvm-hostdata"] = measurement,
            ["x-ms-sevsnpvm-guestsvn"] = 3,
            ["x-ms-sevsnpvm-is-debuggable"] = false,
            ["x-ms-runtime"] = new Dictionary<string, object>
            {
                ["keys"] = new[] { jwk.RootElement.Clone() },
                ["client-payload"] = new Dictionary<string, string> { ["nonce"] = nonce },
            },
        };
    }

    public const string Measurement = "1111111111111111111111111111111111111111111111111111111111111111";

    /// <summary>Signs claims RS256 with the current key (or <paramref name="key"/> under <paramref name="kid"/>).</summary>
    public string Sign(IDictionary<string, object?> claims, RSA? key = null, string? kid = null)
    {
        var handler = new JsonWebTokenHandler { SetDefaultTimesOnTokenCreation = false };
        // No provider cache: IdentityModel caches signature providers by key value, and the test keys are disposed objects
        // made from shared parameters.
        var credentials = new SigningCredentials(new RsaSecurityKey(key ?? CurrentKey) { KeyId = kid ?? CurrentKid }, SecurityAlgorithms.RsaSha256)
        {
            CryptoProviderFactory = new CryptoProviderFactory { CacheSignatureProviders = false },
        };
        return handler.CreateToken(JsonSerializer.Serialize(claims), credentials);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            foreach (var (key, _) in _published)
            {
                key.Dispose();
            }
        }

        base.Dispose(disposing);
    }
}
