using System.Security.Cryptography;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Tests;

/// <summary>MAA-shaped tokens from an in-process stand-in issuer (OpenID metadata + JWKS over an injected HTTP handler).</summary>
public sealed class AttestationVerifierTests : IDisposable
{
    private const string Nonce = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    private const string Audience = "mriseg-keybroker";

    private readonly FakeTime time = new();
    private readonly StandInIssuer issuer = new();
    private readonly OpenIdIssuerKeyCache cache;
    private readonly AttestationVerifier verifier;
    private readonly RecipientPrivateKey ephemeral = RecipientPrivateKey.GenerateEcP256();
    private readonly HttpClient http;

    public AttestationVerifierTests()
    {
        http = issuer.Client();
        cache = new OpenIdIssuerKeyCache(http, new IssuerKeyCacheOptions(), time);
        verifier = new AttestationVerifier(new AttestationOptions
        {
            Audience = Audience,
            ClockSkew = TimeSpan.FromSeconds(60),
            Authorities = [new TrustedAuthority(issuer.Issuer, requireAudience: false)],
        }, cache, time);
    }

    public void Dispose()
    {
        http.Dispose();
        issuer.Dispose();
        ephemeral.Dispose();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Dictionary<string, object?> Claims() => issuer.Claims(ephemeral.PublicKey, Nonce, time.Now);

    private Task<VerifiedAttestation> VerifyAsync(string token, string nonce = Nonce, RecipientPublicKey? key = null, string[]? authorities = null) =>
        verifier.VerifyAsync(token, authorities ?? [issuer.Issuer], nonce, key ?? ephemeral.PublicKey, Ct);

    private async Task<AttestationFailure> Refused(string token, string nonce = Nonce, RecipientPublicKey? key = null, string[]? authorities = null) =>
        (await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(token, nonce, key, authorities))).Failure;

    [Fact]
    public async Task A_good_token_verifies_and_yields_its_claims()
    {
        var verified = await VerifyAsync(issuer.Sign(Claims()));
        Assert.Equal(issuer.Issuer, verified.Issuer);
        Assert.Equal(issuer.CurrentKid, verified.SigningKeyId);
        Assert.Equal("azure-compliant-uvm", verified.Claims.GetProperty("x-ms-compliance-status").GetString());
        Assert.Equal(1, issuer.MetadataRequests);
        Assert.Equal(1, issuer.JwksRequests);

        // The keys are cached: a second token costs no request.
        await VerifyAsync(issuer.Sign(Claims()));
        Assert.Equal(1, issuer.MetadataRequests);
    }

    [Fact]
    public async Task The_nonce_may_be_a_top_level_claim_and_every_copy_must_match()
    {
        var claims = Claims();
        claims["nonce"] = Nonce;
        await VerifyAsync(issuer.Sign(claims));

        claims["nonce"] = new string('f', 64);
        Assert.Equal(AttestationFailure.NonceMismatch, await Refused(issuer.Sign(claims)));
    }

    [Fact]
    public async Task Another_nonce_or_none_is_refused()
    {
        Assert.Equal(AttestationFailure.NonceMismatch, await Refused(issuer.Sign(Claims()), nonce: new string('a', 64)));
        var claims = Claims();
        claims["x-ms-runtime"] = new Dictionary<string, object> { ["keys"] = ((Dictionary<string, object>)claims["x-ms-runtime"]!)["keys"] };
        var e = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(claims)));
        Assert.Equal(AttestationFailure.NonceMismatch, e.Failure);
        Assert.Contains("carries no nonce", e.Message);
    }

    [Fact]
    public async Task An_untrusted_issuer_is_refused_before_any_fetch()
    {
        var claims = Claims();
        claims["iss"] = "https://evil.attest.example";
        var e = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(claims)));
        Assert.Equal(AttestationFailure.UntrustedIssuer, e.Failure);
        Assert.Equal(0, issuer.MetadataRequests);
    }

    [Fact]
    public async Task A_trusted_issuer_the_policy_does_not_name_is_refused()
    {
        Assert.Equal(AttestationFailure.IssuerNotInPolicy, await Refused(issuer.Sign(Claims()), authorities: ["https://other.attest.example"]));
    }

    [Fact]
    public async Task Metadata_naming_another_issuer_is_refused()
    {
        issuer.MetadataIssuer = "https://someone-else.example";
        var e = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(Claims())));
        Assert.Equal(AttestationFailure.MetadataUnavailable, e.Failure);
        Assert.Contains("names issuer", e.Message);
    }

    [Fact]
    public async Task A_wrong_audience_is_refused_and_a_required_one_must_be_present()
    {
        var claims = Claims();
        claims["aud"] = "someone-else";
        Assert.Equal(AttestationFailure.WrongAudience, await Refused(issuer.Sign(claims)));
        claims["aud"] = Audience;
        await VerifyAsync(issuer.Sign(claims));

        var strict = new AttestationVerifier(new AttestationOptions { Audience = Audience, Authorities = [new TrustedAuthority(issuer.Issuer, requireAudience: true)] }, cache, time);
        var e = await Assert.ThrowsAsync<AttestationException>(() => strict.VerifyAsync(issuer.Sign(Claims()), [issuer.Issuer], Nonce, ephemeral.PublicKey, Ct));
        Assert.Equal(AttestationFailure.WrongAudience, e.Failure);
    }

    [Fact]
    public async Task Expiry_and_not_before_hold_within_the_skew_only()
    {
        var claims = Claims();
        claims["exp"] = time.Now.AddSeconds(-30).ToUnixTimeSeconds(); // inside the 60 s skew
        await VerifyAsync(issuer.Sign(claims));
        claims["exp"] = time.Now.AddSeconds(-90).ToUnixTimeSeconds();
        Assert.Equal(AttestationFailure.Expired, await Refused(issuer.Sign(claims)));

        claims = Claims();
        claims["nbf"] = time.Now.AddSeconds(30).ToUnixTimeSeconds();
        await VerifyAsync(issuer.Sign(claims));
        claims["nbf"] = time.Now.AddSeconds(120).ToUnixTimeSeconds();
        Assert.Equal(AttestationFailure.NotYetValid, await Refused(issuer.Sign(claims)));

        claims = Claims();
        claims.Remove("exp");
        Assert.Equal(AttestationFailure.Malformed, await Refused(issuer.Sign(claims)));

        // The clock moves past the expiry of a token that was good.
        var token = issuer.Sign(Claims());
        time.Advance(TimeSpan.FromHours(9));
        Assert.Equal(AttestationFailure.Expired, await Refused(token));
    }

    [Fact]
    public async Task A_signature_by_another_key_under_the_issuers_kid_is_refused()
    {
        using var foreign = StandInIssuer.ForeignKey();
        Assert.Equal(AttestationFailure.InvalidSignature, await Refused(issuer.Sign(Claims(), foreign, issuer.CurrentKid)));

        // A flipped payload bit breaks the signature as well.
        var token = issuer.Sign(Claims());
        var parts = token.Split('.');
        var tampered = parts[0] + "." + parts[1][..^2] + (parts[1][^2] == 'A' ? 'B' : 'A') + parts[1][^1] + "." + parts[2];
        await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(tampered));
    }

    [Fact]
    public async Task Unsigned_and_symmetric_tokens_are_refused()
    {
        var claims = Claims();
        var payload = Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Encode(System.Text.Json.JsonSerializer.Serialize(claims));
        var none = Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Encode($$"""{"alg":"none","kid":"{{issuer.CurrentKid}}"}""") + "." + payload + ".";
        Assert.Equal(AttestationFailure.InvalidSignature, await Refused(none));
        var hs = Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Encode($$"""{"alg":"HS256","kid":"{{issuer.CurrentKid}}"}""") + "." + payload + ".AAAA";
        Assert.Equal(AttestationFailure.InvalidSignature, await Refused(hs));
        Assert.Equal(AttestationFailure.Malformed, await Refused("not-a-jwt"));
    }

    [Fact]
    public async Task A_public_key_the_token_does_not_bind_is_refused()
    {
        using var other = RecipientPrivateKey.GenerateEcP256();
        var e = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(Claims()), key: other.PublicKey));
        Assert.Equal(AttestationFailure.KeyNotBound, e.Failure);

        // RSA ephemeral keys bind the same way.
        using var foreignRsa = RsaPool.Foreign();
        using var rsa = RecipientPrivateKey.FromPkcs8Pem(foreignRsa.ExportPkcs8PrivateKeyPem());
        var rsaToken = issuer.Sign(issuer.Claims(rsa.PublicKey, Nonce, time.Now));
        await VerifyAsync(rsaToken, key: rsa.PublicKey);
        Assert.Equal(AttestationFailure.KeyNotBound, await Refused(rsaToken, key: ephemeral.PublicKey));
    }

    [Fact]
    public async Task An_unknown_key_id_triggers_exactly_one_metadata_refresh()
    {
        await VerifyAsync(issuer.Sign(Claims()));
        Assert.Equal(1, cache.FetchCount);

        // The issuer rotates its key: the first token under the new kid refreshes once and verifies (the last fetch
        // being older than the minimum refresh interval).
        time.Advance(TimeSpan.FromMinutes(6));
        issuer.Rotate(dropOld: true);
        await VerifyAsync(issuer.Sign(Claims()));
        Assert.Equal(2, cache.FetchCount);
        Assert.Equal(2, issuer.MetadataRequests);
        Assert.Equal(2, issuer.JwksRequests);

        // A kid the issuer never published: one refresh (throttled afterwards), then refused.
        time.Advance(TimeSpan.FromMinutes(6));
        using var foreign = StandInIssuer.ForeignKey();
        Assert.Equal(AttestationFailure.UnknownSigningKey, await Refused(issuer.Sign(Claims(), foreign, "kid-never-published")));
        Assert.Equal(3, cache.FetchCount);
        Assert.Equal(AttestationFailure.UnknownSigningKey, await Refused(issuer.Sign(Claims(), foreign, "kid-never-published-2")));
        Assert.Equal(3, cache.FetchCount);

        // Many concurrent tokens with an unknown kid share one refresh.
        time.Advance(TimeSpan.FromMinutes(6));
        var tokens = Enumerable.Range(0, 8).Select(i => issuer.Sign(Claims(), foreign, "kid-burst-" + i)).ToList();
        var failures = await Task.WhenAll(tokens.Select(t => Refused(t)));
        Assert.All(failures, f => Assert.Equal(AttestationFailure.UnknownSigningKey, f));
        Assert.Equal(4, cache.FetchCount);
    }

    [Fact]
    public async Task Keys_are_refetched_after_the_refresh_interval()
    {
        await VerifyAsync(issuer.Sign(Claims()));
        time.Advance(TimeSpan.FromHours(13));
        await VerifyAsync(issuer.Sign(Claims()));
        Assert.Equal(2, cache.FetchCount);
    }

    [Fact]
    public async Task The_nonce_store_issues_single_use_nonces_bound_to_party_and_run()
    {
        var store = new InMemoryRecordStore();
        var nonces = new NonceStore(store, time, TimeSpan.FromMinutes(5));
        var issued = await nonces.IssueAsync("cleanroom-a", "run-1", Ct);
        Assert.Matches("^[0-9a-f]{64}$", issued.Nonce);

        Assert.Contains("another clean room", await nonces.ConsumeAsync(issued.Nonce, "cleanroom-b", "run-1", Ct));
        Assert.Contains("issued for run 'run-1'", await nonces.ConsumeAsync(issued.Nonce, "cleanroom-a", "run-2", Ct));
        Assert.Null(await nonces.ConsumeAsync(issued.Nonce, "cleanroom-a", "run-1", Ct));
        Assert.Contains("used before", await nonces.ConsumeAsync(issued.Nonce, "cleanroom-a", "run-1", Ct));
        Assert.Contains("unknown", await nonces.ConsumeAsync(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)), "cleanroom-a", "run-1", Ct));

        var late = await nonces.IssueAsync("cleanroom-a", "run-1", Ct);
        time.Advance(TimeSpan.FromMinutes(6));
        Assert.Contains("expired", await nonces.ConsumeAsync(late.Nonce, "cleanroom-a", "run-1", Ct));

        // Racing uses of one nonce: exactly one wins.
        var raced = await nonces.IssueAsync("cleanroom-a", "run-1", Ct);
        var outcomes = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => nonces.ConsumeAsync(raced.Nonce, "cleanroom-a", "run-1", Ct), Ct)));
        Assert.Single(outcomes, o => o is null);
    }

    [Fact]
    public async Task The_development_authority_serves_metadata_and_its_tokens_verify_through_it()
    {
        using var dev = DevelopmentAttestationAuthority.CreateEphemeral("http://localhost:5132/dev-attestation", time);
        var devVerifier = new AttestationVerifier(new AttestationOptions { Audience = Audience, Authorities = [dev.AsTrusted()] }, dev, time);
        var measurement = new string('c', 64);
        var token = dev.IssueToken(new DevelopmentAttestationRequest("cleanroom-a", ephemeral.PublicKey, Nonce, measurement));
        var verified = await devVerifier.VerifyAsync(token, [dev.Issuer], Nonce, ephemeral.PublicKey, Ct);
        Assert.Equal(DevelopmentAttestationAuthority.ComplianceStatus, verified.Claims.GetProperty("x-ms-compliance-status").GetString());
        Assert.False(verified.Claims.GetProperty(DevelopmentAttestationAuthority.HardwareBackedClaim).GetBoolean());
        Assert.True(Policy.ReleasePolicy.Parse(dev.PolicyFor(measurement)).Evaluate(dev.Issuer, verified.Claims).Allowed);
        Assert.False(Policy.ReleasePolicy.Parse(dev.PolicyFor(new string('d', 64))).Evaluate(dev.Issuer, verified.Claims).Allowed);

        using var metadata = System.Text.Json.JsonDocument.Parse(dev.OpenIdConfigurationJson());
        Assert.Equal(dev.Issuer, metadata.RootElement.GetProperty("issuer").GetString());
        Assert.Equal(dev.Issuer + "/certs", metadata.RootElement.GetProperty("jwks_uri").GetString());
        using var jwks = System.Text.Json.JsonDocument.Parse(dev.JwksJson());
        Assert.Equal(dev.KeyId, jwks.RootElement.GetProperty("keys")[0].GetProperty("kid").GetString());

        // A policy written for MAA does not accept it: the issuer differs.
        Assert.Equal(AttestationFailure.IssuerNotInPolicy,
            (await Assert.ThrowsAsync<AttestationException>(() => devVerifier.VerifyAsync(token, [issuer.Issuer], Nonce, ephemeral.PublicKey, Ct))).Failure);
    }

    [Fact]
    public void Http_authorities_must_be_allowed_explicitly()
    {
        Assert.Throws<ArgumentException>(() => new TrustedAuthority("http://localhost:5132/dev-attestation"));
        Assert.Equal("http://localhost:5132/dev-attestation", new TrustedAuthority("http://LOCALHOST:5132/dev-attestation/", allowHttp: true).Issuer);
    }
}
