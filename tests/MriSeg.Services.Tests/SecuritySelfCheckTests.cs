using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using MriSeg.KeyBroker;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.SelfCheck;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>
/// <c>mriseg selfcheck security</c>'s attempts (KeyRelease's <see cref="SecuritySelfCheck"/>) against the KeyBroker in-process
/// over Azurite: all refused for their reasons and the legitimate release granted; and a broker with a check disabled fails it.
/// </summary>
public sealed class SecuritySelfCheckTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private const string AdminToken = "selfcheck-operator-token";
    private const string Issuer = "http://localhost/dev-attestation";

    private readonly AzuriteFixture azurite;
    private readonly List<string> folders = [];
    private readonly List<IDisposable> disposables = [];

    public SecuritySelfCheckTests(AzuriteFixture azurite)
    {
        this.azurite = azurite;
        azurite.Require();
    }

    public void Dispose()
    {
        foreach (var d in disposables)
        {
            d.Dispose();
        }

        foreach (var folder in folders)
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private (SecuritySelfCheck Check, HttpClient Http, ServiceHost<KeyBrokerService> Host) Start(string? adminToken = AdminToken, Dictionary<string, string>? extra = null)
    {
        var keys = Directory.CreateTempSubdirectory("mriseg-selfcheck-broker-").FullName;
        folders.Add(keys);
        var settings = new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["KeyBroker:KeysDirectory"] = keys,
            ["KeyBroker:CreateKeys"] = "true",
            ["KeyBroker:Registration"] = "AdminToken",
            ["KeyBroker:AdminToken"] = AdminToken,
            ["KeyBroker:DevelopmentAuthority:Enabled"] = "true",
            ["KeyBroker:DevelopmentAuthority:Issuer"] = Issuer,
        };
        foreach (var (key, value) in extra ?? [])
        {
            settings[key] = value;
        }

        var host = new ServiceHost<KeyBrokerService>(settings);
        disposables.Add(host);
        var http = host.CreateClient();
        disposables.Add(http);
        var check = new SecuritySelfCheck(new V1.KeyBroker.KeyBrokerClient(host.CreateChannel()), http, new SecuritySelfCheckOptions
        {
            AttestationUrl = new Uri(Issuer),
            AdminToken = adminToken,
            ExpiringContractLifetime = TimeSpan.FromSeconds(3),
        });
        return (check, http, host);
    }

    [Fact]
    public async Task Every_attack_is_refused_for_its_reason_and_the_legitimate_release_is_granted()
    {
        var (check, _, _) = Start();
        var seen = new List<SelfCheckAttempt>();

        var report = await check.RunAsync(seen.Add, Ct);

        Assert.True(report.Passed, string.Join("\n", report.Attempts.Where(a => !a.Passed).Select(a => $"{a.Name}: {a.Outcome} {a.Status} {a.Reason} ({a.Note})")));
        Assert.Equal(report.Attempts, seen);
        // The list, each refused with the status its rule gives.
        (string Name, string Status)[] required =
        [
            ("no credentials", "UNAUTHENTICATED"),
            ("another TDP's credentials", "PERMISSION_DENIED"),
            ("a token from an untrusted issuer", "PERMISSION_DENIED"),
            ("an expired token", "PERMISSION_DENIED"),
            ("claims that miss the policy", "PERMISSION_DENIED"),
            ("a replayed nonce", "PERMISSION_DENIED"),
            ("a public key the token does not bind", "PERMISSION_DENIED"),
            ("a run whose ε exceeds the contract", "FAILED_PRECONDITION"),
            ("a run that would exceed the remaining budget", "FAILED_PRECONDITION"),
            ("an expired contract", "FAILED_PRECONDITION"),
            ("a pipeline the contract does not allow", "FAILED_PRECONDITION"),
        ];
        foreach (var (name, status) in required)
        {
            var attempt = report.Attempts.First(a => a.Name.StartsWith(name, StringComparison.Ordinal));
            Assert.Equal((SecuritySelfCheck.Denied, SecuritySelfCheck.Denied, status), (attempt.Expected, attempt.Outcome, attempt.Status));
        }

        var granted = Assert.Single(report.Attempts, a => a.Outcome == SecuritySelfCheck.Granted);
        Assert.StartsWith("the legitimate release", granted.Name);
        Assert.Contains("matches the imported key", granted.Reason);
        var audit = report.Attempts[^1];
        Assert.Equal(SecuritySelfCheck.Verified, audit.Outcome);
        Assert.Contains("1 release", audit.Reason);

        // Throwaway parties: another run registers others.
        var (again, _, _) = Start();
        var second = await again.RunAsync(cancellationToken: Ct);
        Assert.True(second.Passed);
        Assert.NotEqual(report.Setup.Provider, second.Setup.Provider);
    }

    [Fact]
    public async Task A_broker_that_accepts_expired_tokens_fails_the_check()
    {
        // Two hours of clock skew: the self-check's hour-old token passes the broker's expiry check.
        var (check, _, _) = Start(extra: new() { ["KeyBroker:ClockSkewSeconds"] = "7200" });

        var report = await check.RunAsync(cancellationToken: Ct);

        Assert.False(report.Passed);
        var expired = report.Attempts.Single(a => a.Name.StartsWith("an expired token", StringComparison.Ordinal));
        Assert.Equal((SecuritySelfCheck.Granted, false), (expired.Outcome, expired.Passed));
        Assert.Contains("missing", expired.Note);
    }

    [Fact]
    public async Task Without_the_admin_token_the_broker_needs_the_check_cannot_set_up_and_says_why()
    {
        var (check, _, _) = Start(adminToken: null);
        var e = await Assert.ThrowsAsync<SelfCheckSetupException>(() => check.RunAsync(cancellationToken: Ct));
        Assert.Contains("admin token", e.Message);
        Assert.Contains("--admin-token", e.Message);
    }

    [Fact]
    public async Task The_development_authority_backdates_only_within_its_limit()
    {
        var (_, http, host) = Start();
        using var key = SigningKey.Generate();
        var cleanRoom = new MriSeg.KeyRelease.Client.KeyBrokerParty(new V1.KeyBroker.KeyBrokerClient(host.CreateChannel()),
            "cleanroom-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4)), key);
        await cleanRoom.RegisterAsync(PartyRole.CleanRoom, AdminToken, cancellationToken: Ct);
        using var runtime = RecipientPrivateKey.GenerateEcP256();

        async Task<HttpStatusCode> Attest(object backdate)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, Issuer + "/attest")
            {
                Content = JsonContent.Create(new Dictionary<string, object>
                {
                    ["nonce"] = "n",
                    ["runtime_key_pem"] = runtime.PublicKey.ExportPem(),
                    ["measurement"] = new string('b', 64),
                    ["backdate_seconds"] = backdate,
                }),
            };
            request.Headers.TryAddWithoutValidation("authorization", PartyTokens.Bearer(cleanRoom.MintToken()));
            using var response = await http.SendAsync(request, Ct);
            return response.StatusCode;
        }

        Assert.Equal(HttpStatusCode.OK, await Attest(3600));
        Assert.Equal(HttpStatusCode.BadRequest, await Attest(-1));
        Assert.Equal(HttpStatusCode.BadRequest, await Attest(2 * 86400));
        Assert.Equal(HttpStatusCode.BadRequest, await Attest("an hour"));
    }
}
