using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Microsoft.IdentityModel.JsonWebTokens;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Parties;
using MriSeg.Privacy;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.SelfCheck;

/// <summary>Settings of <see cref="SecuritySelfCheck"/>.</summary>
public sealed class SecuritySelfCheckOptions
{
    /// <summary>
    /// Where the KeyBroker's development attestation authority is reached (e.g. <c>http://localhost:5132/dev-attestation</c>):
    /// its OpenID metadata names the issuer the policies are written for, and clean-room tokens are asked for there.
    /// </summary>
    public required Uri AttestationUrl { get; init; }

    /// <summary>The operator's admin token, where the broker needs it for first registrations (not in Development).</summary>
    public string? AdminToken { get; init; }

    /// <summary>The broker's audience (default "mriseg-keybroker").</summary>
    public string Audience { get; init; } = PartyTokens.DefaultAudience;

    /// <summary>How long after its import the second key's contract expires (the expired-contract attempt waits for it; default 8 s).</summary>
    public TimeSpan ExpiringContractLifetime { get; init; } = TimeSpan.FromSeconds(8);

    /// <summary>Prefix of the throwaway party ids (default "selfcheck").</summary>
    public string PartyPrefix { get; init; } = "selfcheck";

    /// <summary>Deadline of each call (default 30 s).</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(30);
}

/// <summary>One attempt of the self-check and what came of it.</summary>
/// <param name="Name">What was tried.</param>
/// <param name="Expected">"DENIED", "GRANTED" or "VERIFIED".</param>
/// <param name="Outcome">"DENIED", "GRANTED", "VERIFIED", "BROKEN" or "ERROR" (a failure that is not a refusal).</param>
/// <param name="Status">The gRPC status ("PERMISSION_DENIED", "OK").</param>
/// <param name="Reason">The broker's one-line reason, or what was checked.</param>
/// <param name="Passed">Whether the outcome is the expected one, for the expected reason.</param>
/// <param name="Note">Why it did not pass, if it did not.</param>
public sealed record SelfCheckAttempt(string Name, string Expected, string Outcome, string Status, string Reason, bool Passed, string? Note);

/// <summary>What the self-check set up (all throwaway: random party ids, fresh keys, its own contracts).</summary>
/// <param name="Provider">The data provider (TDP) that imports the keys.</param>
/// <param name="OtherProvider">Another data provider.</param>
/// <param name="Consumer">The consumer (TDC) the contract allows.</param>
/// <param name="CleanRoom">The clean room (CCR).</param>
/// <param name="Issuer">The development authority's issuer the policies name.</param>
/// <param name="Measurement">The (made-up) trainer measurement the policies require.</param>
/// <param name="PipelineSha256">The pipeline the contracts allow.</param>
/// <param name="KeyId">The dataset key.</param>
/// <param name="ContractId">Its contract.</param>
/// <param name="ExpiringKeyId">The second dataset key, whose contract expires during the check.</param>
/// <param name="ExpiringContractId">Its contract.</param>
/// <param name="EpsilonPerRun">The contract's ε per run.</param>
/// <param name="EpsilonTotal">The contract's total ε.</param>
/// <param name="Delta">The contract's δ.</param>
public sealed record SelfCheckSetup(string Provider, string OtherProvider, string Consumer, string CleanRoom, string Issuer, string Measurement,
    string PipelineSha256, string KeyId, string ContractId, string ExpiringKeyId, string ExpiringContractId, double EpsilonPerRun, double EpsilonTotal, double Delta);

/// <summary>The self-check's result: every attempt, and whether all came out as expected.</summary>
/// <param name="Passed">True only when every attempt passed.</param>
/// <param name="Attempts">The attempts, in the order made.</param>
/// <param name="Setup">What was set up.</param>
/// <param name="Seconds">How long it took.</param>
public sealed record SecuritySelfCheckReport(bool Passed, IReadOnlyList<SelfCheckAttempt> Attempts, SelfCheckSetup Setup, double Seconds);

/// <summary>The self-check could not set itself up (the broker unreachable, registration refused, no development authority).</summary>
public sealed class SelfCheckSetupException(string message, Exception? innerException = null) : Exception(message, innerException);

/// <summary>
/// <c>mriseg selfcheck security</c>: attacks a running KeyBroker the way a dishonest party would, with throwaway parties
/// (random ids), keys and contracts, and checks that every attempt is refused for the right reason (status code and
/// reason), that the legitimate release is granted and its key unwraps to the imported one, and that the audit trail
/// records every decision and verifies. Each refused attempt is otherwise a valid request: only the one thing under test
/// is wrong, so a missing check shows as a GRANTED where DENIED was expected.
/// <para>
/// Needs the broker's development attestation authority (on in Development): it plays an honest clean room with it, and a
/// dishonest one with tokens it signs itself. It leaves registered parties and revoked keys behind.
/// </para>
/// </summary>
public sealed class SecuritySelfCheck(V1.KeyBroker.KeyBrokerClient client, HttpClient http, SecuritySelfCheckOptions options)
{
    /// <summary>The expected outcome of a refused attempt.</summary>
    public const string Denied = "DENIED";

    /// <summary>The expected outcome of the legitimate release.</summary>
    public const string Granted = "GRANTED";

    /// <summary>The expected outcome of the audit check.</summary>
    public const string Verified = "VERIFIED";

    private const string UntrustedIssuer = "https://attestation.invalid/mriseg-selfcheck";
    private const double Delta = 1e-5;
    private const double SampleRate = 0.01;
    private const double Sigma = 1.0;
    private const long Steps = 1000;

    private readonly List<SelfCheckAttempt> _attempts = [];
    private readonly Dictionary<string, int> _auditedDenials = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SigningKey> _keys = new(StringComparer.Ordinal);
    private readonly List<DataKey> _dataKeys = [];
    private Action<SelfCheckAttempt>? _onAttempt;
    private string _issuer = "";
    private string _measurement = "";
    private string _pipeline = "";
    private string _attestUrl = "";
    private TimeSpan _brokerClockOffset;
    private Plan? _plan;

    /// <summary>Runs every attempt; <paramref name="onAttempt"/> sees each as it completes.</summary>
    /// <exception cref="SelfCheckSetupException">The check could not set itself up.</exception>
    public async Task<SecuritySelfCheckReport> RunAsync(Action<SelfCheckAttempt>? onAttempt = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options.AttestationUrl);
        _onAttempt = onAttempt;
        var watch = Stopwatch.StartNew();
        try
        {
            var setup = await SetUpAsync(cancellationToken).ConfigureAwait(false);
            await AttackAsync(setup, cancellationToken).ConfigureAwait(false);
            return new SecuritySelfCheckReport(_attempts.Count > 0 && _attempts.All(a => a.Passed), _attempts.ToList(), setup, watch.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var key in _keys.Values)
            {
                key.Dispose();
            }

            _keys.Clear();
            foreach (var key in _dataKeys)
            {
                key.Dispose();
            }

            _dataKeys.Clear();
        }
    }

    // ---- set-up -------------------------------------------------------------------------------------------------

    private sealed record Plan(SelfCheckSetup Setup, KeyBrokerParty Provider, KeyBrokerParty OtherProvider, KeyBrokerParty Consumer, KeyBrokerParty CleanRoom,
        DataKey Key, DataKey ExpiringKey, DateTimeOffset ExpiringContractEnds, double OverEpsilon, long OverSteps);

    private async Task<SelfCheckSetup> SetUpAsync(CancellationToken cancellationToken)
    {
        _attestUrl = options.AttestationUrl.ToString().TrimEnd('/');
        _issuer = await DiscoverIssuerAsync(cancellationToken).ConfigureAwait(false);
        _measurement = RandomHex(32);
        _pipeline = RandomHex(32);
        var suffix = RandomHex(4);
        var provider = Party($"{options.PartyPrefix}-tdp-{suffix}");
        var otherProvider = Party($"{options.PartyPrefix}-tdp2-{suffix}");
        var consumer = Party($"{options.PartyPrefix}-tdc-{suffix}");
        var cleanRoom = Party($"{options.PartyPrefix}-ccr-{suffix}");
        await Setup("registering the throwaway parties", async () =>
        {
            await provider.RegisterAsync(PartyRole.DataProvider, options.AdminToken, cancellationToken: cancellationToken).ConfigureAwait(false);
            await otherProvider.RegisterAsync(PartyRole.DataProvider, options.AdminToken, cancellationToken: cancellationToken).ConfigureAwait(false);
            await consumer.RegisterAsync(PartyRole.DataConsumer, options.AdminToken, cancellationToken: cancellationToken).ConfigureAwait(false);
            await cleanRoom.RegisterAsync(PartyRole.CleanRoom, options.AdminToken, cancellationToken: cancellationToken).ConfigureAwait(false);
        }).ConfigureAwait(false);

        // The broker's clock, from a token its authority signs (the expired-contract attempt waits by it).
        await Setup("asking the development authority for a token", async () =>
        {
            using var probeKey = RecipientPrivateKey.GenerateEcP256();
            var before = DateTimeOffset.UtcNow;
            var token = await DevelopmentAttestationClient.RequestTokenAsync(http, _attestUrl, cleanRoom.MintToken(), "selfcheck-probe-" + suffix, probeKey.PublicKey,
                _measurement, cancellationToken).ConfigureAwait(false);
            var issued = new JsonWebToken(token).IssuedAt;
            _brokerClockOffset = new DateTimeOffset(issued, TimeSpan.Zero) - before;
        }).ConfigureAwait(false);

        // Caps chosen so that one run of (q, σ, steps) fits and a second identical one does not: the budget attempt.
        var one = PrivacyComposition.Epsilon([new PrivacyEvent(SampleRate, Sigma, Steps)], Delta);
        var two = PrivacyComposition.Epsilon([new PrivacyEvent(SampleRate, Sigma, Steps), new PrivacyEvent(SampleRate, Sigma, Steps)], Delta);
        var cap = Math.Round((one + two) / 2, 6);
        var overSteps = Steps * 4;
        var overEpsilon = PrivacyComposition.Epsilon([new PrivacyEvent(SampleRate, Sigma, overSteps)], Delta);
        if (!(one < cap && two > cap && overEpsilon > cap))
        {
            throw new SelfCheckSetupException($"the accountant gives ε {Ids.Num(one)} for one run and {Ids.Num(two)} for two: cannot choose caps that separate them");
        }

        var policy = DevelopmentAttestationAuthority.PolicyFor(_issuer, _measurement);
        var contractId = $"selfcheck-{suffix}";
        var expiringContractId = $"selfcheck-{suffix}-expiring";
        var key = DataKey.Generate();
        _dataKeys.Add(key);
        var expiringKey = DataKey.Generate();
        _dataKeys.Add(expiringKey);
        var expiringEnds = DateTimeOffset.MinValue;
        await Setup("importing the dataset keys", async () =>
        {
            await provider.ImportKeyAsync(key, V1.KeyPurpose.Dataset, policy, Contract(contractId, consumer.PartyId, cap, BrokerNow().AddDays(1)),
                cancellationToken: cancellationToken).ConfigureAwait(false);
            expiringEnds = BrokerNow() + options.ExpiringContractLifetime;
            await provider.ImportKeyAsync(expiringKey, V1.KeyPurpose.Dataset, policy, Contract(expiringContractId, consumer.PartyId, cap, expiringEnds),
                cancellationToken: cancellationToken).ConfigureAwait(false);
        }).ConfigureAwait(false);

        var setup = new SelfCheckSetup(provider.PartyId, otherProvider.PartyId, consumer.PartyId, cleanRoom.PartyId, _issuer, _measurement, _pipeline,
            key.KeyId, contractId, expiringKey.KeyId, expiringContractId, cap, cap, Delta);
        _plan = new Plan(setup, provider, otherProvider, consumer, cleanRoom, key, expiringKey, expiringEnds, overEpsilon, overSteps);
        return setup;
    }

    private V1.ContractTerms Contract(string contractId, string consumer, double cap, DateTimeOffset expires) => new()
    {
        ContractId = contractId,
        DatasetId = contractId + "-data",
        AllowedConsumers = { consumer },
        Expires = Timestamp.FromDateTimeOffset(expires),
        MaxEpsilonPerRun = cap,
        MaxEpsilonTotal = cap,
        Delta = Delta,
        AllowedPipelineSha256 = { _pipeline },
        Constraints = new V1.PipelineConstraints { RequirePatientLevelPrivacy = true, AllowedArchitectures = { "unet2d" } },
    };

    private async Task<string> DiscoverIssuerAsync(CancellationToken cancellationToken)
    {
        var url = _attestUrl + DevelopmentAttestationAuthority.MetadataPath;
        try
        {
            using var response = await http.GetAsync(new Uri(url), cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new SelfCheckSetupException(
                    $"no development attestation authority at {url} (HTTP {(int)response.StatusCode}): the self-check needs the KeyBroker's (KeyBroker:DevelopmentAuthority:Enabled, on in Development)");
            }

            using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false));
            return document.RootElement.TryGetProperty("issuer", out var issuer) && issuer.ValueKind == JsonValueKind.String && issuer.GetString() is { Length: > 0 } name
                ? name
                : throw new SelfCheckSetupException($"{url} names no issuer");
        }
        catch (HttpRequestException e)
        {
            throw new SelfCheckSetupException($"the development attestation authority at {url} does not answer: {e.Message}", e);
        }
        catch (JsonException e)
        {
            throw new SelfCheckSetupException($"{url} is not OpenID metadata: {e.Message}", e);
        }
    }

    private static async Task Setup(string what, Func<Task> step)
    {
        try
        {
            await step().ConfigureAwait(false);
        }
        catch (RpcException e)
        {
            var hint = e.StatusCode == StatusCode.PermissionDenied && e.Status.Detail.Contains("admin token", StringComparison.Ordinal)
                ? " (give the operator's admin token: --admin-token)"
                : "";
            throw new SelfCheckSetupException($"{what}: {e.StatusCode}: {e.Status.Detail}{hint}", e);
        }
        catch (Exception e) when (e is HttpRequestException or InvalidOperationException or SealedPackageException)
        {
            throw new SelfCheckSetupException($"{what}: {e.Message}", e);
        }
    }

    private KeyBrokerParty Party(string id)
    {
        var key = SigningKey.Generate();
        _keys[id] = key;
        return new KeyBrokerParty(client, id, key, options.Audience);
    }

    // ---- the attempts ---------------------------------------------------------------------------------------------

    /// <summary>A clean room's release request under construction: each attempt spoils one part of a valid one.</summary>
    private sealed class Attempt : IDisposable
    {
        public required V1.ReleaseKeyRequest Request { get; init; }

        public required RecipientPrivateKey Ephemeral { get; init; }

        public void Dispose() => Ephemeral.Dispose();
    }

    private async Task AttackAsync(SelfCheckSetup setup, CancellationToken ct)
    {
        var plan = _plan!;
        var key = plan.Key.KeyId;
        var ccr = plan.CleanRoom;

        // Credentials.
        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("no credentials (a valid release request without a party token)", key, audited: false, StatusCode.Unauthenticated, ["no credentials"],
                () => client.ReleaseKeyAsync(a.Request, deadline: Deadline(), cancellationToken: ct).ResponseAsync).ConfigureAwait(false);
        }

        using (var impostor = SigningKey.Generate())
        {
            var forged = new Metadata { { PartyTokens.AuthorizationHeader, PartyTokens.Bearer(PartyTokens.Mint(impostor, plan.Provider.PartyId, options.Audience)) } };
            await ExpectDeniedAsync("the provider's party id in a token signed by another key (revoke the key)", key, audited: false, StatusCode.Unauthenticated, ["registered key"],
                () => client.RevokeKeyAsync(new V1.RevokeKeyRequest { KeyId = key, Reason = "selfcheck impostor" }, forged, Deadline(), ct).ResponseAsync).ConfigureAwait(false);
        }

        await ExpectDeniedAsync("another TDP's credentials: revoke the key", key, audited: true, StatusCode.PermissionDenied, ["not the owner"],
            () => client.RevokeKeyAsync(new V1.RevokeKeyRequest { KeyId = key, Reason = "selfcheck other provider" }, plan.OtherProvider.Credentials(), Deadline(), ct).ResponseAsync)
            .ConfigureAwait(false);

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("another TDP's credentials: ask for the key", key, audited: true, StatusCode.PermissionDenied, ["attested clean room"],
                () => client.ReleaseKeyAsync(a.Request, plan.OtherProvider.Credentials(), Deadline(), ct).ResponseAsync).ConfigureAwait(false);
        }

        using (var ephemeral = RecipientPrivateKey.GenerateEcP256())
        {
            var request = new V1.ReleaseKeyRequest { KeyId = key, RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem() };
            await ExpectDeniedAsync("the consumer asks for the dataset key without attestation", key, audited: true, StatusCode.PermissionDenied, ["attested clean room"],
                () => client.ReleaseKeyAsync(request, plan.Consumer.Credentials(), Deadline(), ct).ResponseAsync).ConfigureAwait(false);
        }

        // Attestation tokens.
        using (var foreign = SigningKey.Generate())
        using (var a = await PrepareAsync(key, ct, (nonce, pub) => Task.FromResult(DevelopmentAttestationAuthority.Sign(foreign, foreign.Thumbprint, UntrustedIssuer,
                   options.Audience, new DevelopmentAttestationRequest(ccr.PartyId, pub, nonce, _measurement), BrokerNow(), TimeSpan.FromMinutes(5))))
               .ConfigureAwait(false))
        {
            await ExpectDeniedAsync($"a token from an untrusted issuer ({UntrustedIssuer}, signed with a fresh key)", key, audited: true, StatusCode.PermissionDenied,
                ["not a trusted attestation authority"], () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var foreign = SigningKey.Generate())
        {
            string? realKid = null;
            using var a = await PrepareAsync(key, ct, async (nonce, pub) =>
            {
                // The authority's real kid (from one of its own tokens), on a token signed by another key.
                realKid = new JsonWebToken(await AttestAsync(ccr, nonce, pub, _measurement, null, ct).ConfigureAwait(false)).Kid;
                return DevelopmentAttestationAuthority.Sign(foreign, realKid, _issuer, options.Audience,
                    new DevelopmentAttestationRequest(ccr.PartyId, pub, nonce, _measurement), BrokerNow(), TimeSpan.FromMinutes(5));
            }).ConfigureAwait(false);
            await ExpectDeniedAsync("a forged token: the development issuer and its key id, signed with another key", key, audited: true, StatusCode.PermissionDenied,
                ["signature", "signed by"], () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct, (nonce, pub) => AttestAsync(ccr, nonce, pub, _measurement, TimeSpan.FromHours(1), ct)).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("an expired token (issued an hour ago by the trusted authority)", key, audited: true, StatusCode.PermissionDenied, ["expired"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        var otherMeasurement = RandomHex(32);
        using (var a = await PrepareAsync(key, ct, (nonce, pub) => AttestAsync(ccr, nonce, pub, otherMeasurement, null, ct)).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("claims that miss the policy (a token for another trainer measurement)", key, audited: true, StatusCode.PermissionDenied,
                [DevelopmentAttestationAuthority.MeasurementClaim], () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        using (var substitute = RecipientPrivateKey.GenerateEcP256())
        {
            a.Request.RequesterPublicKeyPem = substitute.PublicKey.ExportPem();
            await ExpectDeniedAsync("a public key the token does not bind", key, audited: true, StatusCode.PermissionDenied, ["does not bind"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            a.Request.RunId = NewRunId(); // the nonce (and the token) were issued for another run
            await ExpectDeniedAsync("a nonce issued for another run", key, audited: true, StatusCode.PermissionDenied, ["nonce"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        // Contract and budget.
        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            a.Request.Declared = Declared(plan.OverEpsilon, plan.OverSteps);
            await ExpectDeniedAsync($"a run whose ε exceeds the contract ({Ids.Num(plan.OverEpsilon)} > {Ids.Num(setup.EpsilonPerRun)} per run)", key, audited: true,
                StatusCode.FailedPrecondition, ["per run"], () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            a.Request.PipelineSha256 = RandomHex(32);
            await ExpectDeniedAsync("a pipeline the contract does not allow", key, audited: true, StatusCode.FailedPrecondition, ["does not allow pipeline"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            a.Request.Consumer = plan.OtherProvider.PartyId;
            await ExpectDeniedAsync("a consumer the contract does not allow", key, audited: true, StatusCode.FailedPrecondition, ["does not allow consumer"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        // The legitimate release, then the same request replayed.
        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            await ExpectGrantedAsync(a, ccr, plan.Key, ct).ConfigureAwait(false);
            await ExpectDeniedAsync("a replayed nonce (the granted request sent again)", key, audited: true, StatusCode.PermissionDenied, ["nonce"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("a run that would exceed the remaining budget", key, audited: true, StatusCode.FailedPrecondition, ["budget exhausted"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        // The second key's contract expires (by the broker's clock) a few seconds after its import.
        var wait = plan.ExpiringContractEnds + TimeSpan.FromSeconds(2) - BrokerNow();
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, ct).ConfigureAwait(false);
        }

        using (var a = await PrepareAsync(plan.ExpiringKey.KeyId, ct, contractId: setup.ExpiringContractId).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("an expired contract", plan.ExpiringKey.KeyId, audited: true, StatusCode.FailedPrecondition, ["expired"],
                () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        // Clean-up that is itself a check: a revoked key is never released again.
        await Setup("revoking the self-check's keys", async () =>
        {
            await client.RevokeKeyAsync(new V1.RevokeKeyRequest { KeyId = key, Reason = "selfcheck done" }, plan.Provider.Credentials(), Deadline(), ct).ResponseAsync.ConfigureAwait(false);
            await client.RevokeKeyAsync(new V1.RevokeKeyRequest { KeyId = plan.ExpiringKey.KeyId, Reason = "selfcheck done" }, plan.Provider.Credentials(), Deadline(), ct)
                .ResponseAsync.ConfigureAwait(false);
        }).ConfigureAwait(false);
        using (var a = await PrepareAsync(key, ct).ConfigureAwait(false))
        {
            await ExpectDeniedAsync("a revoked key", key, audited: true, StatusCode.FailedPrecondition, ["revoked"], () => Release(a, ccr, ct)).ConfigureAwait(false);
        }

        await CheckAuditAsync(plan, ct).ConfigureAwait(false);
    }

    /// <summary>A valid clean-room request for <paramref name="keyId"/>: fresh run, nonce, ephemeral key and token (from <paramref name="attest"/>, else the authority).</summary>
    private async Task<Attempt> PrepareAsync(string keyId, CancellationToken ct, Func<string, RecipientPublicKey, Task<string>>? attest = null, string? contractId = null)
    {
        var plan = _plan!;
        var runId = NewRunId();
        var ephemeral = RecipientPrivateKey.GenerateEcP256();
        try
        {
            var nonce = await client.GetAttestationNonceAsync(new V1.GetAttestationNonceRequest { RunId = runId }, plan.CleanRoom.Credentials(), Deadline(), ct)
                .ResponseAsync.ConfigureAwait(false);
            var token = attest is null
                ? await AttestAsync(plan.CleanRoom, nonce.Nonce, ephemeral.PublicKey, _measurement, null, ct).ConfigureAwait(false)
                : await attest(nonce.Nonce, ephemeral.PublicKey).ConfigureAwait(false);
            return new Attempt
            {
                Ephemeral = ephemeral,
                Request = new V1.ReleaseKeyRequest
                {
                    KeyId = keyId,
                    AttestationToken = token,
                    RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem(),
                    RunId = runId,
                    ContractId = contractId ?? plan.Setup.ContractId,
                    Declared = Declared(PrivacyComposition.Epsilon([new PrivacyEvent(SampleRate, Sigma, Steps)], Delta), Steps),
                    PipelineSha256 = _pipeline,
                    Nonce = nonce.Nonce,
                    Consumer = plan.Consumer.PartyId,
                },
            };
        }
        catch (Exception e)
        {
            ephemeral.Dispose();
            if (e is RpcException or HttpRequestException or InvalidOperationException)
            {
                throw new SelfCheckSetupException($"preparing an attempt (nonce and token for the clean room): {OneLine(e)}", e);
            }

            throw;
        }
    }

    private Task<string> AttestAsync(KeyBrokerParty ccr, string nonce, RecipientPublicKey key, string measurement, TimeSpan? backdate, CancellationToken ct) =>
        DevelopmentAttestationClient.RequestTokenAsync(http, _attestUrl, ccr.MintToken(), nonce, key, measurement, ct, backdate);

    private Task<V1.ReleaseKeyResponse> Release(Attempt a, KeyBrokerParty ccr, CancellationToken ct) =>
        client.ReleaseKeyAsync(a.Request, ccr.Credentials(), Deadline(), ct).ResponseAsync;

    private async Task ExpectDeniedAsync<T>(string name, string keyId, bool audited, StatusCode expected, string[] because, Func<Task<T>> call)
    {
        SelfCheckAttempt result;
        try
        {
            await call().ConfigureAwait(false);
            result = new SelfCheckAttempt(name, Denied, Granted, Code(StatusCode.OK), "the broker said yes", false, "this must be refused: the check that should refuse it is missing");
        }
        catch (RpcException e)
        {
            var refusal = e.StatusCode is StatusCode.Unauthenticated or StatusCode.PermissionDenied or StatusCode.FailedPrecondition;
            var reason = OneLine(e.Status.Detail);
            string? note = null;
            if (!refusal)
            {
                note = $"not a refusal: expected {Code(expected)}";
            }
            else if (e.StatusCode != expected)
            {
                note = $"refused with {Code(e.StatusCode)}, expected {Code(expected)}";
            }
            else if (!because.Any(b => reason.Contains(b, StringComparison.OrdinalIgnoreCase)))
            {
                note = $"refused, but not for the reason under test (expected a reason naming {string.Join(" or ", because.Select(b => $"'{b}'"))})";
            }

            if (refusal && audited)
            {
                _auditedDenials[keyId] = _auditedDenials.GetValueOrDefault(keyId) + 1;
            }

            result = new SelfCheckAttempt(name, Denied, refusal ? Denied : "ERROR", Code(e.StatusCode), reason, note is null, note);
        }

        Record(result);
    }

    private async Task ExpectGrantedAsync(Attempt a, KeyBrokerParty ccr, DataKey imported, CancellationToken ct)
    {
        const string name = "the legitimate release (attested clean room, within policy, contract and budget)";
        SelfCheckAttempt result;
        try
        {
            var response = await Release(a, ccr, ct).ConfigureAwait(false);
            using var released = KeyWrap.Unwrap(WrappedKey.FromJson(response.WrappedKey.ToStringUtf8()), a.Ephemeral);
            var same = released.KeyId == imported.KeyId && CryptographicOperations.FixedTimeEquals(released.ExportKeyBytes(), imported.ExportKeyBytes());
            var budget = response.Budget is { } b ? $"; budget: ε {Ids.Num(b.EpsilonSpent + b.EpsilonReserved)} of {Ids.Num(b.EpsilonTotalCap)} used" : "";
            result = same
                ? new SelfCheckAttempt(name, Granted, Granted, Code(StatusCode.OK), $"key {released.KeyId} unwrapped with the ephemeral key and matches the imported key{budget}", true, null)
                : new SelfCheckAttempt(name, Granted, Granted, Code(StatusCode.OK), $"released key {released.KeyId}", false, "the released key is not the imported one");
        }
        catch (RpcException e)
        {
            result = new SelfCheckAttempt(name, Granted, Denied, Code(e.StatusCode), OneLine(e.Status.Detail), false, "the legitimate release must be granted");
        }
        catch (SealedPackageException e)
        {
            result = new SelfCheckAttempt(name, Granted, "ERROR", Code(StatusCode.OK), e.Message, false, "the released key does not unwrap with the ephemeral key");
        }

        Record(result);
    }

    /// <summary>The owner reads the dataset key's audit trail: it verifies, and holds the import, every audited refusal, the one release and the revocation.</summary>
    private async Task CheckAuditAsync(Plan plan, CancellationToken ct)
    {
        const string name = "the audit trail records every decision and its hash chain verifies";
        var key = plan.Key.KeyId;
        SelfCheckAttempt result;
        try
        {
            var reading = await plan.Provider.ReadAuditAsync(key, ct).ConfigureAwait(false);
            var actions = reading.Records.GroupBy(r => r.Action).ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
            var denials = reading.Records.Count(r => r.Action == "deny" && !r.Allowed);
            var releases = reading.Records.Count(r => r.Action == "release" && r.Allowed);
            var expectedDenials = _auditedDenials.GetValueOrDefault(key);
            var summary = $"{reading.Records.Count} records: " + string.Join(", ", actions.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Value} {p.Key}"));
            string? note = null;
            if (!reading.Intact)
            {
                note = "the chain does not verify: " + reading.Problem;
            }
            else if (actions.GetValueOrDefault("import") != 1 || actions.GetValueOrDefault("revoke") != 1 || releases != 1)
            {
                note = "expected exactly one import, one release and one revocation";
            }
            else if (denials != expectedDenials)
            {
                note = $"expected {expectedDenials} audited refusals, found {denials}";
            }

            result = new SelfCheckAttempt(name, Verified, reading.Intact ? Verified : "BROKEN", Code(reading.BrokerProblem is null ? StatusCode.OK : StatusCode.DataLoss),
                summary + (reading.Intact ? "; chain verified by the broker and here" : ""), note is null, note);
        }
        catch (RpcException e)
        {
            result = new SelfCheckAttempt(name, Verified, "ERROR", Code(e.StatusCode), OneLine(e.Status.Detail), false, "the owner could not read the audit trail");
        }

        Record(result);
    }

    private void Record(SelfCheckAttempt attempt)
    {
        _attempts.Add(attempt);
        _onAttempt?.Invoke(attempt);
    }

    private static V1.PrivacyParameters Declared(double epsilon, long steps) => new()
    {
        Epsilon = epsilon,
        Delta = Delta,
        Sigma = Sigma,
        SampleRate = SampleRate,
        Steps = steps,
        Accountant = "rdp",
    };

    /// <summary>The broker's clock as estimated from its authority's token (to whole seconds).</summary>
    private DateTimeOffset BrokerNow() => DateTimeOffset.UtcNow + _brokerClockOffset;

    private DateTime Deadline() => DateTime.UtcNow + options.CallTimeout;

    private static string NewRunId() => "selfcheck-run-" + RandomHex(6);

    private static string RandomHex(int bytes) => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(bytes));

    /// <summary>"PERMISSION_DENIED".</summary>
    public static string Code(StatusCode code) => code switch
    {
        StatusCode.OK => "OK",
        StatusCode.InvalidArgument => "INVALID_ARGUMENT",
        StatusCode.DeadlineExceeded => "DEADLINE_EXCEEDED",
        StatusCode.NotFound => "NOT_FOUND",
        StatusCode.AlreadyExists => "ALREADY_EXISTS",
        StatusCode.PermissionDenied => "PERMISSION_DENIED",
        StatusCode.ResourceExhausted => "RESOURCE_EXHAUSTED",
        StatusCode.FailedPrecondition => "FAILED_PRECONDITION",
        StatusCode.OutOfRange => "OUT_OF_RANGE",
        StatusCode.Unimplemented => "UNIMPLEMENTED",
        StatusCode.Unavailable => "UNAVAILABLE",
        StatusCode.DataLoss => "DATA_LOSS",
        StatusCode.Unauthenticated => "UNAUTHENTICATED",
        StatusCode.Cancelled => "CANCELLED",
        StatusCode.Aborted => "ABORTED",
        StatusCode.Internal => "INTERNAL",
        _ => "UNKNOWN",
    };

    private static string OneLine(Exception e) => e is RpcException rpc ? $"{Code(rpc.StatusCode)}: {OneLine(rpc.Status.Detail)}" : OneLine(e.Message);

    private static string OneLine(string text) => text.ReplaceLineEndings(" ");
}
