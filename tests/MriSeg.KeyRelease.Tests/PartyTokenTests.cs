using System.Text.Json;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Tests;

public sealed class PartyTokenTests : IDisposable
{
    private readonly FakeTime time = new();
    private readonly InMemoryRecordStore store = new();
    private readonly PartyRegistry registry;
    private readonly PartyTokenValidator validator;
    private readonly SigningKey key = SigningKey.Generate();

    public PartyTokenTests()
    {
        registry = new PartyRegistry(store);
        validator = new PartyTokenValidator(registry, new PartyTokenOptions(), time);
        registry.AddAsync(PartyRegistry.Create("hospital-a", PartyRole.DataProvider, key.PublicKey, time.Now), CancellationToken.None).GetAwaiter().GetResult();
    }

    public void Dispose() => key.Dispose();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private Task<PartyPrincipal> Authenticate(string? header) => validator.AuthenticateAsync(header, Ct);

    private async Task<string> Refused(string? header) =>
        (await Assert.ThrowsAsync<KeyBrokerException>(() => Authenticate(header))).Message;

    [Fact]
    public async Task A_minted_token_authenticates_its_registered_party_once()
    {
        var token = PartyTokens.Mint(key, "hospital-a", now: time.Now);
        var caller = await Authenticate(PartyTokens.Bearer(token));
        Assert.Equal(new PartyPrincipal("hospital-a", PartyRole.DataProvider, key.Thumbprint), caller);

        // The shape: ES256, kid = key thumbprint, iss = sub = party, aud, iat/nbf/exp, jti.
        var parts = token.Split('.');
        using var header = JsonDocument.Parse(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Decode(parts[0]));
        Assert.Equal("ES256", header.RootElement.GetProperty("alg").GetString());
        Assert.Equal(key.Thumbprint, header.RootElement.GetProperty("kid").GetString());
        using var payload = JsonDocument.Parse(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.Decode(parts[1]));
        Assert.Equal("hospital-a", payload.RootElement.GetProperty("sub").GetString());
        Assert.Equal(PartyTokens.DefaultAudience, payload.RootElement.GetProperty("aud").GetString());
        Assert.Matches("^[0-9a-f]{32}$", payload.RootElement.GetProperty("jti").GetString());

        Assert.Contains("replayed", await Refused(PartyTokens.Bearer(token)));
    }

    [Fact]
    public async Task Missing_or_malformed_credentials_are_refused()
    {
        foreach (var header in new[] { null, "", "Basic abc", "Bearer ", "Bearer not-a-jwt" })
        {
            var e = await Assert.ThrowsAsync<KeyBrokerException>(() => Authenticate(header));
            Assert.Equal(KeyBrokerError.Unauthenticated, e.Error);
        }
    }

    [Fact]
    public async Task A_token_signed_by_another_key_is_refused()
    {
        using var other = SigningKey.Generate();
        Assert.Contains("the registered key of hospital-a", await Refused(PartyTokens.Bearer(PartyTokens.Mint(other, "hospital-a", now: time.Now))));
    }

    [Fact]
    public async Task An_unregistered_party_is_refused()
    {
        Assert.Contains("not registered", await Refused(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-b", now: time.Now))));
    }

    [Fact]
    public async Task Lifetime_audience_and_skew_are_checked()
    {
        Assert.Contains("expired", await Refused(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-a", now: time.Now.AddMinutes(-5)))));
        Assert.Contains("not yet valid", await Refused(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-a", now: time.Now.AddMinutes(5)))));
        await Authenticate(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-a", now: time.Now.AddSeconds(45)))); // within the skew
        Assert.Contains("lives longer than", await Refused(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-a", lifetime: TimeSpan.FromHours(1), now: time.Now))));
        Assert.Contains("wrong audience", await Refused(PartyTokens.Bearer(PartyTokens.Mint(key, "hospital-a", audience: "another-broker", now: time.Now))));
    }
}
