using System.Buffers.Binary;
using System.Buffers.Text;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Policy;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;
using MriSeg.Testing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Tests;

/// <summary>
/// The Trainer's cloud attestation, as deployed (an Azure confidential VM): <see cref="MaaAttestation"/> against a simulated
/// vTPM (<see cref="FakeVtpm"/>: the TPM 2.0 NV commands, and an HCL report regenerated from the user data like the
/// paravisor's), a fake instance metadata service and a stand-in MAA (<see cref="StandInMaa"/>: checks the evidence the way
/// MAA's SevSnpVm API does and signs RS256 tokens with its claims); the KeyBroker's <see cref="AttestationVerifier"/>,
/// the CVM release policy of <c>docs/examples/keybroker/release-policy.maa-cvm.json</c> and the engine on those tokens.
/// The generic verifier checks (audience, skew, algorithms, confidential-container tokens) are in <see cref="AttestationVerifierTests"/>.
/// </summary>
public sealed class MaaTokenVerificationTests : IDisposable
{
    private const string Nonce = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    private const string CvmPolicyFile = "release-policy.maa-cvm.json";
    private const string ExampleAuthority = "https://sharedeus2.eus2.attest.azure.net";

    private readonly FakeTime time = new();
    private readonly StandInIssuer issuer = new("https://standin.weu.attest.example.net");
    private readonly StandInMaa maa;
    private readonly HttpClient maaClient;
    private readonly HttpClient metadataClient;
    private readonly OpenIdIssuerKeyCache cache;
    private readonly AttestationVerifier verifier;
    private readonly RecipientPrivateKey ephemeral = RecipientPrivateKey.GenerateEcP256();
    private readonly FakeVtpm vtpm;

    public MaaTokenVerificationTests()
    {
        using var example = JsonDocument.Parse(Example(CvmPolicyFile));
        var conditions = example.RootElement.GetProperty("anyOf")[0].GetProperty("allOf");
        vtpm = new FakeVtpm
        {
            LaunchMeasurement = Convert.FromHexString(Condition(conditions, "x-ms-sevsnpvm-launchmeasurement")),
            VmUniqueId = Condition(conditions, "x-ms-runtime.vm-configuration.vmUniqueId"),
        };
        maa = new StandInMaa(issuer, time);
        maaClient = new HttpClient(maa, disposeHandler: false);
        metadataClient = issuer.Client();
        cache = new OpenIdIssuerKeyCache(metadataClient, new IssuerKeyCacheOptions(), time);
        verifier = new AttestationVerifier(new AttestationOptions { Authorities = [new TrustedAuthority(issuer.Issuer, requireAudience: false)] }, cache, time);
    }

    public void Dispose()
    {
        maaClient.Dispose();
        metadataClient.Dispose();
        maa.Dispose();
        issuer.Dispose();
        ephemeral.Dispose();
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string Example(string name) => File.ReadAllText(Path.Combine(RepositoryLayout.Root, "docs", "examples", "keybroker", name));

    private static string Condition(JsonElement allOf, string claim) =>
        allOf.EnumerateArray().Single(c => c.GetProperty("claim").GetString() == claim).GetProperty("equals").GetString()!;

    /// <summary>The documented CVM policy, for the stand-in's issuer.</summary>
    private ReleasePolicy CvmPolicy() => ReleasePolicy.Parse(Example(CvmPolicyFile).Replace(ExampleAuthority, issuer.Issuer, StringComparison.Ordinal));

    private MaaAttestation Provider(FakeVtpm? tpm = null, HttpClient? http = null) =>
        new(http ?? maaClient, issuer.Issuer, new AzureVtpm(tpm ?? vtpm) { ReportRetryDelay = TimeSpan.Zero }, StandInMaa.Imds);

    private Task<string> AttestAsync(RecipientPublicKey? key = null, string nonce = Nonce, FakeVtpm? tpm = null) =>
        Provider(tpm).AttestAsync(nonce, key ?? ephemeral.PublicKey, Ct);

    private Task<VerifiedAttestation> VerifyAsync(string token, string nonce = Nonce, RecipientPublicKey? key = null) =>
        verifier.VerifyAsync(token, [issuer.Issuer], nonce, key ?? ephemeral.PublicKey, Ct);

    private async Task<AttestationFailure> Refused(string token, string nonce = Nonce, RecipientPublicKey? key = null) =>
        (await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(token, nonce, key))).Failure;

    /// <summary>The payload of a token, to re-sign changed.</summary>
    private static Dictionary<string, object?> PayloadOf(string token) =>
        JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(Base64Url.DecodeFromChars(token.Split('.')[1]))!
            .ToDictionary(p => p.Key, p => (object?)p.Value);

    [Fact]
    public async Task A_token_from_the_confidential_vm_verifies_and_satisfies_the_documented_cvm_policy()
    {
        var token = await AttestAsync();

        // What the provider sent: the vTPM got the binding as user data; MAA got the SNP report, the VCEK chain from
        // IMDS, the paravisor's runtime data (which carries that user data) and the nonce.
        var binding = RuntimeKeys.UserData(ephemeral.PublicKey, Nonce);
        Assert.Equal(binding, vtpm.UserData);
        var sent = maa.LastAttest!;
        Assert.Equal(Nonce, sent.Nonce);
        Assert.Equal("JSON", sent.RuntimeDataType);
        Assert.Equal(StandInMaa.VcekCert + StandInMaa.CertificateChain, sent.VcekCertChain);
        Assert.Equal(HclReport.SnpReportSize, sent.SnpReport.Length);
        using (var runtime = JsonDocument.Parse(sent.RuntimeData))
        {
            Assert.Equal(Convert.ToHexString(binding), runtime.RootElement.GetProperty("user-data").GetString());
        }

        // The KeyBroker's checks: signature (keys from the issuer's metadata), issuer, lifetime, nonce, key binding.
        var verified = await VerifyAsync(token);
        Assert.Equal(issuer.Issuer, verified.Issuer);
        Assert.Equal("sevsnpvm", verified.Claims.GetProperty("x-ms-attestation-type").GetString());
        Assert.Equal("azure-compliant-cvm", verified.Claims.GetProperty("x-ms-compliance-status").GetString());
        Assert.Equal(Nonce, verified.Claims.GetProperty("nonce").GetString());
        Assert.False(verified.Claims.TryGetProperty("aud", out _));
        Assert.DoesNotContain(verified.Claims.GetProperty("x-ms-runtime").GetProperty("keys").EnumerateArray(),
            jwk => RuntimeKeys.ThumbprintOf(jwk) == ephemeral.PublicKey.Thumbprint); // bound by user data, not as a JWK

        var decision = CvmPolicy().Evaluate(verified.Issuer, verified.Claims);
        Assert.True(decision.Allowed, decision.Reason);
        Assert.Equal(issuer.Issuer, decision.Authority);
        Assert.Equal((1, 1), (issuer.MetadataRequests, issuer.JwksRequests));
    }

    [Fact]
    public async Task The_engine_releases_a_key_under_the_cvm_policy_to_the_attested_trainers_ephemeral_key_and_refuses_another_vm()
    {
        using var brokerKeys = BrokerKeyMaterial.CreateEphemeral();
        var engine = new KeyBrokerEngine(new KeyBrokerOptions { Registration = RegistrationMode.TrustOnFirstUse }, new InMemoryRecordStore(), brokerKeys, verifier, time);
        using var hospital = SigningKey.Generate();
        using var cleanRoom = SigningKey.Generate();
        async Task<PartyPrincipal> RegisterAsync(string id, V1.Party role, SigningKey key)
        {
            var bearer = PartyTokens.Bearer(PartyTokens.Mint(key, id, now: time.Now));
            await engine.RegisterPartyAsync(new V1.RegisterPartyRequest { PartyId = id, Role = role, PublicKeyPem = key.PublicKey.ExportPem() },
                new RegistrationCredentials(bearer, null, null), Ct);
            return await engine.AuthenticateAsync(PartyTokens.Bearer(PartyTokens.Mint(key, id, now: time.Now)), Ct);
        }

        var tdp = await RegisterAsync("hospital-a", V1.Party.DataProvider, hospital);
        var ccr = await RegisterAsync("cleanroom", V1.Party.CleanRoom, cleanRoom);
        using var dataKey = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, new V1.ImportKeyRequest
        {
            KeyId = dataKey.KeyId,
            Purpose = V1.KeyPurpose.Dataset,
            WrappedKey = ByteString.CopyFromUtf8(KeyWrap.Wrap(dataKey, brokerKeys.WrapPublicKey).ToJson()),
            WrapAlgorithm = "ECDH-ES+A256GCM",
            ReleasePolicyJson = CvmPolicy().Json,
            Contract = new V1.ContractTerms
            {
                ContractId = "contract-a",
                DatasetId = "brats-a",
                AllowedConsumers = { "consumer-x" },
                Expires = Timestamp.FromDateTimeOffset(time.Now.AddDays(30)),
                MaxEpsilonPerRun = 8,
                MaxEpsilonTotal = 20,
                Delta = 1e-5,
            },
        }, Ct);

        async Task<V1.ReleaseKeyRequest> Request(string runId, FakeVtpm tpm)
        {
            var nonce = await engine.GetAttestationNonceAsync(ccr, new V1.GetAttestationNonceRequest { RunId = runId }, Ct);
            return new V1.ReleaseKeyRequest
            {
                KeyId = dataKey.KeyId,
                AttestationToken = await AttestAsync(nonce: nonce.Nonce, tpm: tpm),
                RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem(),
                RunId = runId,
                ContractId = "contract-a",
                Declared = new V1.PrivacyParameters { Epsilon = 2, Delta = 1e-5, Sigma = 1.0, SampleRate = 0.01, Steps = 1000, Accountant = "prv" },
                PipelineSha256 = new string('b', 64),
                Nonce = nonce.Nonce,
                Consumer = "consumer-x",
            };
        }

        var response = await engine.ReleaseKeyAsync(ccr, await Request("run-1", vtpm), Ct);
        using var released = KeyWrap.Unwrap(WrappedKey.FromJson(response.WrappedKey.ToStringUtf8()), ephemeral);
        Assert.Equal(dataKey.ExportKeyBytes(), released.ExportKeyBytes());

        // Another confidential VM (its own vmUniqueId), attesting just as well: refused by the policy, and audited.
        var other = new FakeVtpm { LaunchMeasurement = vtpm.LaunchMeasurement, VmUniqueId = Guid.NewGuid().ToString() };
        var refused = await Assert.ThrowsAsync<KeyBrokerException>(async () => await engine.ReleaseKeyAsync(ccr, await Request("run-2", other), Ct));
        Assert.Equal(KeyBrokerError.PermissionDenied, refused.Error);
        Assert.Contains("claim 'x-ms-runtime.vm-configuration.vmUniqueId'", refused.Message);
        var trail = await engine.ListAuditAsync(tdp, new V1.ListAuditRequest { KeyId = dataKey.KeyId }, Ct);
        Assert.Equal(["import", "release", "deny"], trail.Records.Select(r => r.Action));
    }

    [Fact]
    public async Task Another_issuer_is_refused_whether_untrusted_or_trusted_but_not_in_the_policy()
    {
        var payload = PayloadOf(await AttestAsync());

        // The same claims under another MAA instance's name (signed with the stand-in's key: the name decides first).
        payload["iss"] = "https://sharedeus.eus.attest.azure.net";
        var untrusted = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(payload)));
        Assert.Equal(AttestationFailure.UntrustedIssuer, untrusted.Failure);
        Assert.Contains("https://sharedeus.eus.attest.azure.net is not a trusted attestation authority", untrusted.Message);

        // Trusted by the broker, but the key's policy names only the stand-in.
        var second = new AttestationVerifier(new AttestationOptions
        {
            Authorities = [new TrustedAuthority(issuer.Issuer, requireAudience: false), new TrustedAuthority("https://sharedeus.eus.attest.azure.net", requireAudience: false)],
        }, cache, time);
        var notInPolicy = await Assert.ThrowsAsync<AttestationException>(() =>
            second.VerifyAsync(issuer.Sign(payload), CvmPolicy().AuthorityNames, Nonce, ephemeral.PublicKey, Ct));
        Assert.Equal(AttestationFailure.IssuerNotInPolicy, notInPolicy.Failure);

        // A token naming the right issuer but signed by a key the issuer does not publish, under its kid.
        payload["iss"] = issuer.Issuer;
        using var foreign = StandInIssuer.ForeignKey();
        Assert.Equal(AttestationFailure.InvalidSignature, await Refused(issuer.Sign(payload, foreign, issuer.CurrentKid)));
    }

    [Fact]
    public async Task A_wrong_launch_measurement_or_host_data_is_refused_by_the_policy()
    {
        var other = new FakeVtpm { LaunchMeasurement = RandomNumberGenerator.GetBytes(48), VmUniqueId = vtpm.VmUniqueId };
        var verified = await VerifyAsync(await AttestAsync(tpm: other));
        var decision = CvmPolicy().Evaluate(verified.Issuer, verified.Claims);
        Assert.False(decision.Allowed);
        // (long values are shown cut at 80 characters)
        Assert.Contains("claim 'x-ms-sevsnpvm-launchmeasurement' is \"" + Convert.ToHexStringLower(other.LaunchMeasurement)[..64], decision.Reason);

        // A confidential container's measurement is its host data (the CCE policy hash): release-policy.maa.json pins one.
        var aciPolicy = ReleasePolicy.Parse(Example("release-policy.maa.json").Replace("https://sharedeus.eus.attest.azure.net", issuer.Issuer, StringComparison.Ordinal));
        var pinned = JsonDocument.Parse(Example("release-policy.maa.json")).RootElement.GetProperty("anyOf")[0].GetProperty("allOf")[2].GetProperty("equals").GetString()!;
        var good = await VerifyAsync(issuer.Sign(issuer.Claims(ephemeral.PublicKey, Nonce, time.Now, pinned)));
        Assert.True(aciPolicy.Evaluate(good.Issuer, good.Claims).Allowed);
        var wrong = await VerifyAsync(issuer.Sign(issuer.Claims(ephemeral.PublicKey, Nonce, time.Now, new string('e', 64))));
        var refused = aciPolicy.Evaluate(wrong.Issuer, wrong.Claims);
        Assert.False(refused.Allowed);
        Assert.Contains("claim 'x-ms-sevsnpvm-hostdata'", refused.Reason);
    }

    [Fact]
    public async Task An_expired_token_is_refused_beyond_the_skew_only()
    {
        var token = await AttestAsync();
        var exp = PayloadOf(token)["exp"] is JsonElement e ? DateTimeOffset.FromUnixTimeSeconds(e.GetInt64()) : throw new InvalidOperationException("no exp");

        time.Now = exp + TimeSpan.FromSeconds(59);
        await VerifyAsync(token);
        time.Now = exp + TimeSpan.FromSeconds(61);
        var expired = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(token));
        Assert.Equal(AttestationFailure.Expired, expired.Failure);
        Assert.Equal("attestation token: expired", expired.Message);
    }

    [Fact]
    public async Task An_unknown_key_id_refreshes_the_metadata_once_and_not_again_within_the_cool_down()
    {
        await VerifyAsync(await AttestAsync());
        Assert.Equal((1, 1), (issuer.MetadataRequests, issuer.JwksRequests));

        // MAA rotates its signing key a minute after the broker fetched its keys: inside the 5-minute cool-down the new kid
        // is not fetched (designed: random kids cannot make the broker hammer the issuer), so the token is refused...
        time.Advance(TimeSpan.FromMinutes(1));
        issuer.Rotate();
        var rotated = await AttestAsync();
        Assert.Equal(AttestationFailure.UnknownSigningKey, await Refused(rotated));
        Assert.Equal((1, 1), (issuer.MetadataRequests, issuer.JwksRequests));

        // ...after it, the first token under the new kid refreshes exactly once (metadata, then JWKS) and verifies.
        time.Advance(TimeSpan.FromMinutes(5));
        await VerifyAsync(rotated);
        Assert.Equal((2, 2), (issuer.MetadataRequests, issuer.JwksRequests));
        await VerifyAsync(await AttestAsync());
        Assert.Equal((2, 2), (issuer.MetadataRequests, issuer.JwksRequests));

        // A kid nobody publishes right after that refresh: refused without another request.
        using var foreign = StandInIssuer.ForeignKey();
        Assert.Equal(AttestationFailure.UnknownSigningKey, await Refused(issuer.Sign(PayloadOf(rotated), foreign, "kid-never-published")));
        Assert.Equal((2, 2), (issuer.MetadataRequests, issuer.JwksRequests));
    }

    [Fact]
    public async Task A_debuggable_guest_is_refused_by_the_policy()
    {
        var debuggable = new FakeVtpm { LaunchMeasurement = vtpm.LaunchMeasurement, VmUniqueId = vtpm.VmUniqueId, Debuggable = true };
        var verified = await VerifyAsync(await AttestAsync(tpm: debuggable));
        Assert.True(verified.Claims.GetProperty("x-ms-sevsnpvm-is-debuggable").GetBoolean());

        var decision = CvmPolicy().Evaluate(verified.Issuer, verified.Claims);
        Assert.False(decision.Allowed);
        Assert.Contains("claim 'x-ms-sevsnpvm-is-debuggable' is true, the policy requires equals false", decision.Reason);
    }

    [Fact]
    public async Task A_token_that_does_not_bind_the_requesters_ephemeral_key_with_the_nonce_is_refused()
    {
        // Attested for one key, presented with another.
        using var other = RecipientPrivateKey.GenerateEcP256();
        var token = await AttestAsync();
        Assert.Equal(AttestationFailure.KeyNotBound, await Refused(token, key: other.PublicKey));

        // The right key, but the user data binds it with another nonce (the token's nonce claim names this one).
        var payload = PayloadOf(token);
        payload["x-ms-runtime"] = Runtime(payload, Convert.ToHexString(RuntimeKeys.UserData(ephemeral.PublicKey, "another-nonce")));
        var e = await Assert.ThrowsAsync<AttestationException>(() => VerifyAsync(issuer.Sign(payload)));
        Assert.Equal(AttestationFailure.KeyNotBound, e.Failure);
        Assert.Contains("x-ms-runtime.user-data does not bind it with the nonce", e.Message);

        // No user data, or not 64 bytes of hex: not bound; the binding in lower-case hex is.
        payload["x-ms-runtime"] = Runtime(payload, null);
        Assert.Equal(AttestationFailure.KeyNotBound, await Refused(issuer.Sign(payload)));
        payload["x-ms-runtime"] = Runtime(payload, Convert.ToHexString(RuntimeKeys.UserData(ephemeral.PublicKey, Nonce))[..126]);
        Assert.Equal(AttestationFailure.KeyNotBound, await Refused(issuer.Sign(payload)));
        payload["x-ms-runtime"] = Runtime(payload, Convert.ToHexStringLower(RuntimeKeys.UserData(ephemeral.PublicKey, Nonce)));
        await VerifyAsync(issuer.Sign(payload));

        // An RSA ephemeral key binds the same way.
        using var foreignRsa = RsaPool.Foreign();
        using var rsa = RecipientPrivateKey.FromPkcs8Pem(foreignRsa.ExportPkcs8PrivateKeyPem());
        var rsaToken = await AttestAsync(rsa.PublicKey);
        await VerifyAsync(rsaToken, key: rsa.PublicKey);
        Assert.Equal(AttestationFailure.KeyNotBound, await Refused(rsaToken));
    }

    private static JsonElement Runtime(Dictionary<string, object?> payload, string? userData)
    {
        var runtime = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(((JsonElement)payload["x-ms-runtime"]!).GetRawText())!;
        runtime.Remove("user-data");
        if (userData is not null)
        {
            runtime["user-data"] = JsonSerializer.SerializeToElement(userData);
        }

        return JsonSerializer.SerializeToElement(runtime);
    }

    [Fact]
    public async Task The_vtpm_index_is_defined_once_written_each_time_and_the_report_read_in_chunks()
    {
        await AttestAsync();
        await AttestAsync(nonce: "second-nonce");
        var defines = vtpm.Commands.Count(c => c == FakeVtpm.CcNvDefineSpace);
        Assert.Equal(1, defines);
        Assert.Equal(2, vtpm.Commands.Count(c => c == FakeVtpm.CcNvWrite));
        Assert.Equal(2 * 3, vtpm.Commands.Count(c => c == FakeVtpm.CcNvRead)); // 2600 bytes in 1024-byte chunks
        Assert.Equal(RuntimeKeys.UserData(ephemeral.PublicKey, "second-nonce"), vtpm.UserData);

        // An index left with another size is replaced.
        var odd = new FakeVtpm { LaunchMeasurement = vtpm.LaunchMeasurement, VmUniqueId = vtpm.VmUniqueId };
        odd.Define(AzureVtpm.UserDataIndex, 32);
        await AttestAsync(tpm: odd);
        Assert.Equal([FakeVtpm.CcNvReadPublic, FakeVtpm.CcNvUndefineSpace, FakeVtpm.CcNvDefineSpace, FakeVtpm.CcNvWrite], odd.Commands.Take(4));
        Assert.Equal(AzureVtpm.UserDataAttributes, odd.AttributesOf(AzureVtpm.UserDataIndex));
    }

    [Fact]
    public async Task Vtpm_failures_are_one_line_errors_of_stage_vtpm()
    {
        async Task<string> Fails(MaaAttestation provider)
        {
            var e = await Assert.ThrowsAsync<MaaAttestationException>(() => provider.AttestAsync(Nonce, ephemeral.PublicKey, Ct));
            Assert.Equal(MaaAttestationStage.Vtpm, e.Stage);
            Assert.DoesNotContain('\n', e.Message);
            Assert.StartsWith("MAA attestation: ", e.Message);
            return e.Message;
        }

        var missing = Path.Combine(Path.GetTempPath(), "mriseg-no-tpm-" + Guid.NewGuid().ToString("N"), "tpmrm0");
        Assert.Contains($"the vTPM {missing} cannot be opened", await Fails(new MaaAttestation(maaClient, issuer.Issuer, new AzureVtpm(new TpmDevice(missing)), StandInMaa.Imds)));
        Assert.Contains("has no NV index 0x01400001", await Fails(Provider(new FakeVtpm { WithoutHclReport = true })));
        Assert.Contains("does not carry the user data just written", await Fails(Provider(new FakeVtpm { StaleReport = true })));
        Assert.Contains("runtime data whose hash is not the SNP report's REPORT_DATA", await Fails(Provider(new FakeVtpm { TamperReportData = true })));
        Assert.Contains("not an SEV-SNP report", await Fails(Provider(new FakeVtpm { ReportType = 4 })));
        Assert.Contains("the vTPM refused NV_DefineSpace: TPM response code 0x9a2 (authorisation failed", await Fails(Provider(new FakeVtpm { OwnerPassword = true })));
        Assert.Equal(0, maa.AttestRequests); // nothing reached MAA
    }

    [Fact]
    public async Task Metadata_service_and_maa_failures_are_one_line_errors_naming_the_step()
    {
        async Task<string> Fails(MaaAttestationStage stage, Func<HttpRequestMessage, HttpResponseMessage?> answer)
        {
            maa.Override = answer;
            var e = await Assert.ThrowsAsync<MaaAttestationException>(() => AttestAsync());
            Assert.Equal(stage, e.Stage);
            Assert.DoesNotContain('\n', e.Message);
            Assert.DoesNotContain('\r', e.Message);
            return e.Message;
        }

        static bool IsImds(HttpRequestMessage r) => r.RequestUri!.AbsolutePath == MaaAttestation.ThimPath;
        static bool IsAttest(HttpRequestMessage r) => r.RequestUri!.AbsolutePath == "/attest/SevSnpVm";
        static HttpResponseMessage Json(HttpStatusCode status, string body) => new(status) { Content = new StringContent(body, Encoding.UTF8, "application/json") };

        Assert.Contains($"GET {StandInMaa.Imds}/metadata/THIM/amd/certification failed: Connection refused",
            await Fails(MaaAttestationStage.Certificates, r => IsImds(r) ? throw new HttpRequestException("Connection refused\n(169.254.169.254:80)") : null));
        Assert.EndsWith("/metadata/THIM/amd/certification answered 404: no such thing",
            await Fails(MaaAttestationStage.Certificates, r => IsImds(r) ? Json(HttpStatusCode.NotFound, "no such thing") : null));
        Assert.Contains("answered without \"vcekCert\" and \"certificateChain\"",
            await Fails(MaaAttestationStage.Certificates, r => IsImds(r) ? Json(HttpStatusCode.OK, """{"tcbm":"x"}""") : null));

        var attestUrl = $"POST {issuer.Issuer}/attest/SevSnpVm?api-version=2022-08-01";
        Assert.Equal($"MAA attestation: {attestUrl} failed: Name or service not known",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? throw new HttpRequestException("Name or service not known") : null));
        Assert.Equal($"MAA attestation: {attestUrl} timed out",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? throw new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout") : null));
        Assert.Equal($"MAA attestation: {attestUrl} failed: TimeoutException: The operation didn't complete within the allowed timeout of '00:00:10'.",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? throw new TimeoutException("The operation didn't complete within the allowed timeout of '00:00:10'.") : null));
        Assert.Equal($"MAA attestation: {attestUrl} answered 400: InvalidParameter: The SNP report signature is invalid.",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? Json(HttpStatusCode.BadRequest, """{"error":{"code":"InvalidParameter","message":"The SNP report signature\nis invalid."}}""") : null));
        Assert.Equal($"MAA attestation: {attestUrl} answered 200 with malformed JSON",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? Json(HttpStatusCode.OK, """{"token": "abc""") : null));
        Assert.Equal($"MAA attestation: {issuer.Issuer} answered without a token",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? Json(HttpStatusCode.OK, """{"jwt":"a.b.c"}""") : null));
        Assert.Equal($"MAA attestation: {issuer.Issuer} answered a token that is not a signed JWT",
            await Fails(MaaAttestationStage.Service, r => IsAttest(r) ? Json(HttpStatusCode.OK, """{"token":"a.b."}""") : null));

        // The service was really asked each time (the failures are its answers, not a short cut).
        Assert.Equal(7, maa.AttestRequests);
    }

    [Fact]
    public void The_endpoint_is_https_and_a_bare_host_means_https()
    {
        Assert.Equal("https://sharedeus2.eus2.attest.azure.net", MaaAttestation.NormalizeEndpoint("sharedeus2.eus2.attest.azure.net"));
        Assert.Equal("https://sharedeus2.eus2.attest.azure.net", MaaAttestation.NormalizeEndpoint("https://SharedEus2.eus2.attest.azure.net/"));
        Assert.Throws<ArgumentException>(() => MaaAttestation.NormalizeEndpoint("http://sharedeus2.eus2.attest.azure.net"));
        Assert.Throws<ArgumentException>(() => MaaAttestation.NormalizeEndpoint(""));
        Assert.Throws<ArgumentException>(() => MaaAttestation.NormalizeEndpoint(null));
    }
}

/// <summary>
/// A simulated Azure confidential VM's vTPM, speaking the TPM 2.0 commands <see cref="AzureVtpm"/> uses (parsed here
/// from their wire form): NV_ReadPublic, NV_DefineSpace, NV_UndefineSpace, NV_Write and NV_Read with an owner password
/// session. Like the paravisor, it regenerates the HCL report at 0x01400001 from the user data at 0x01400002: an SEV-SNP
/// report (REPORT_DATA = SHA-256 of the runtime data) and runtime data with the vTPM keys, the VM configuration and the
/// user data in upper-case hex, padded to 2600 bytes.
/// </summary>
internal sealed class FakeVtpm : ITpmTransport
{
    public const uint CcNvUndefineSpace = 0x122;
    public const uint CcNvDefineSpace = 0x12A;
    public const uint CcNvWrite = 0x137;
    public const uint CcNvRead = 0x14E;
    public const uint CcNvReadPublic = 0x169;
    private const int ReportBytes = 2600;

    private readonly Dictionary<uint, (uint Attributes, byte[] Data)> _indices = [];
    private readonly byte[] _chipId = RandomNumberGenerator.GetBytes(64);

    public byte[] LaunchMeasurement { get; init; } = RandomNumberGenerator.GetBytes(48);

    public string VmUniqueId { get; init; } = Guid.NewGuid().ToString();

    public bool Debuggable { get; init; }

    public bool WithoutHclReport { get; init; }

    public bool StaleReport { get; init; }

    public bool TamperReportData { get; init; }

    public uint ReportType { get; init; } = 2;

    /// <summary>The owner hierarchy has a password: every owner-authorised command fails with TPM_RC_BAD_AUTH.</summary>
    public bool OwnerPassword { get; init; }

    public List<uint> Commands { get; } = [];

    public byte[]? UserData => _indices.TryGetValue(AzureVtpm.UserDataIndex, out var index) ? index.Data : null;

    public void Define(uint index, int size) => _indices[index] = (AzureVtpm.UserDataAttributes, new byte[size]);

    public uint AttributesOf(uint index) => _indices[index].Attributes;

    public Task<byte[]> ExecuteAsync(ReadOnlyMemory<byte> command, CancellationToken cancellationToken) => Task.FromResult(Execute(command.ToArray()));

    private byte[] Execute(byte[] c)
    {
        Assert.Equal((uint)c.Length, BinaryPrimitives.ReadUInt32BigEndian(c.AsSpan(2)));
        var tag = BinaryPrimitives.ReadUInt16BigEndian(c);
        var code = BinaryPrimitives.ReadUInt32BigEndian(c.AsSpan(6));
        Commands.Add(code);
        var at = 10;
        uint U32() { var v = BinaryPrimitives.ReadUInt32BigEndian(c.AsSpan(at)); at += 4; return v; }
        ushort U16() { var v = BinaryPrimitives.ReadUInt16BigEndian(c.AsSpan(at)); at += 2; return v; }
        byte[] Sized() { var n = U16(); var v = c.AsSpan(at, n).ToArray(); at += n; return v; }

        if (code == CcNvReadPublic)
        {
            Assert.Equal(0x8001, tag);
            var index = U32();
            Assert.Equal(c.Length, at);
            if (!TryData(index, out var data, out var attributes))
            {
                return Response(0x18B, sessions: false); // TPM_RC_HANDLE, handle 1
            }

            var body = new List<byte>();
            Put16(body, 14);
            Put32(body, index);
            Put16(body, 0x000B);
            Put32(body, attributes);
            Put16(body, 0);
            Put16(body, (ushort)data.Length);
            Put16(body, 34);
            Put16(body, 0x000B);
            body.AddRange(SHA256.HashData(BitConverter.GetBytes(index)));
            return Response(0, sessions: false, body.ToArray());
        }

        Assert.Equal(0x8002, tag);
        var handles = code == CcNvDefineSpace ? 1 : 2;
        var authHandle = U32();
        Assert.Equal(0x40000001u, authHandle); // the owner
        var nvIndex = handles == 2 ? U32() : 0;
        Assert.Equal(9u, U32()); // one password session
        Assert.Equal(0x40000009u, U32());
        Assert.Empty(Sized());
        at++; // attributes
        Assert.Empty(Sized());
        if (OwnerPassword)
        {
            return Response(0x9A2, sessions: false); // TPM_RC_BAD_AUTH, session 1
        }

        switch (code)
        {
            case CcNvDefineSpace:
            {
                Assert.Empty(Sized()); // auth value
                Assert.Equal(14, U16());
                var index = U32();
                Assert.Equal(0x000B, U16());
                var attributes = U32();
                Assert.Empty(Sized());
                var size = U16();
                Assert.Equal(c.Length, at);
                if (_indices.ContainsKey(index))
                {
                    return Response(0x14C, sessions: false); // TPM_RC_NV_DEFINED
                }

                _indices[index] = (attributes, new byte[size]);
                return Response(0, sessions: true);
            }

            case CcNvUndefineSpace:
                Assert.Equal(c.Length, at);
                return _indices.Remove(nvIndex) ? Response(0, sessions: true) : Response(0x18B, sessions: false);
            case CcNvWrite:
            {
                var data = Sized();
                var offset = U16();
                Assert.Equal(c.Length, at);
                if (!_indices.TryGetValue(nvIndex, out var index) || offset + data.Length > index.Data.Length)
                {
                    return Response(0x1C4, sessions: false); // TPM_RC_VALUE
                }

                data.CopyTo(index.Data, offset);
                return Response(0, sessions: true);
            }

            case CcNvRead:
            {
                var size = U16();
                var offset = U16();
                Assert.Equal(c.Length, at);
                if (!TryData(nvIndex, out var data, out _) || size > 1024 || offset + size > data.Length)
                {
                    return Response(0x1C4, sessions: false);
                }

                var body = new List<byte>();
                Put16(body, size);
                body.AddRange(data.AsSpan(offset, size).ToArray());
                return Response(0, sessions: true, body.ToArray());
            }

            default:
                return Response(0x143, sessions: false); // TPM_RC_COMMAND_CODE
        }
    }

    private bool TryData(uint index, out byte[] data, out uint attributes)
    {
        if (index == AzureVtpm.HclReportIndex && !WithoutHclReport)
        {
            data = HclReport();
            attributes = 0x00060002;
            return true;
        }

        var found = _indices.TryGetValue(index, out var entry);
        (attributes, data) = found ? entry : (0, []);
        return found;
    }

    private byte[] HclReport()
    {
        var userData = StaleReport || UserData is not { Length: 64 } written ? new byte[64] : written;
        var runtime = JsonSerializer.SerializeToUtf8Bytes(new Dictionary<string, object>
        {
            ["keys"] = new[]
            {
                new Dictionary<string, object> { ["kid"] = "HCLAkPub", ["key_ops"] = new[] { "sign" }, ["kty"] = "RSA", ["e"] = "AQAB", ["n"] = Base64Url.EncodeToString(_chipId) },
                new Dictionary<string, object> { ["kid"] = "HCLEkPub", ["key_ops"] = new[] { "encrypt" }, ["kty"] = "RSA", ["e"] = "AQAB", ["n"] = Base64Url.EncodeToString(Enumerable.Reverse(_chipId).ToArray()) },
            },
            ["vm-configuration"] = new Dictionary<string, object>
            {
                ["console-enabled"] = true,
                ["secure-boot"] = true,
                ["tpm-enabled"] = true,
                ["tpm-persisted"] = true,
                ["vmUniqueId"] = VmUniqueId,
            },
            ["user-data"] = Convert.ToHexString(userData),
        });
        var report = new byte[ReportBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(report, 0x414c4348); // "HCLA"
        var snp = report.AsSpan(32, 1184);
        BinaryPrimitives.WriteUInt32LittleEndian(snp, 2); // version
        BinaryPrimitives.WriteUInt32LittleEndian(snp[4..], 3); // guest SVN
        BinaryPrimitives.WriteUInt64LittleEndian(snp[8..], (1UL << 16) | (1UL << 17) | (Debuggable ? 1UL << 19 : 0)); // policy
        SHA256.HashData(runtime).CopyTo(snp[0x50..]);
        if (TamperReportData)
        {
            snp[0x50] ^= 1;
        }

        LaunchMeasurement.CopyTo(snp[0x90..]);
        _chipId.CopyTo(snp[0x1A0..]);
        var request = report.AsSpan(1216);
        BinaryPrimitives.WriteUInt32LittleEndian(request, (uint)(20 + runtime.Length));
        BinaryPrimitives.WriteUInt32LittleEndian(request[4..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(request[8..], ReportType);
        BinaryPrimitives.WriteUInt32LittleEndian(request[12..], 1); // SHA-256
        BinaryPrimitives.WriteUInt32LittleEndian(request[16..], (uint)runtime.Length);
        runtime.CopyTo(request[20..]);
        return report;
    }

    private static byte[] Response(uint code, bool sessions, byte[]? parameters = null)
    {
        var body = new List<byte>();
        Put16(body, (ushort)(sessions && code == 0 ? 0x8002 : 0x8001));
        Put32(body, 0);
        Put32(body, code);
        if (code == 0 && sessions)
        {
            Put32(body, (uint)(parameters?.Length ?? 0));
            body.AddRange(parameters ?? []);
            Put16(body, 0); // nonceTPM
            body.Add(0); // attributes
            Put16(body, 0); // hmac
        }
        else if (code == 0)
        {
            body.AddRange(parameters ?? []);
        }

        var bytes = body.ToArray();
        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), (uint)bytes.Length);
        return bytes;
    }

    private static void Put16(List<byte> to, ushort value) => to.AddRange([(byte)(value >> 8), (byte)value]);

    private static void Put32(List<byte> to, uint value) => to.AddRange([(byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value]);
}

/// <summary>
/// A stand-in for Microsoft Azure Attestation's SevSnpVm API and the VM's instance metadata service, over one handler:
/// <c>GET {Imds}/metadata/THIM/amd/certification</c> (needs <c>Metadata: true</c>) answers a VCEK chain;
/// <c>POST {issuer}/attest/SevSnpVm?api-version=2022-08-01</c> checks what MAA checks that can be checked here (the
/// report's REPORT_DATA is the SHA-256 of the runtime data; the chain is the one IMDS gave) and answers
/// <c>{"token"}</c> with MAA's claims for a confidential VM, signed by the <see cref="StandInIssuer"/>; everything else
/// goes to the issuer (its metadata and keys). <see cref="Override"/> answers instead, for failures.
/// </summary>
internal sealed class StandInMaa : HttpMessageHandler
{
    public const string Imds = "http://imds.test";
    public const string VcekCert = "-----BEGIN CERTIFICATE-----\nVCEK\n-----END CERTIFICATE-----\n";
    public const string CertificateChain = "-----BEGIN CERTIFICATE-----\nASK\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nARK\n-----END CERTIFICATE-----\n";

    private readonly StandInIssuer issuer;
    private readonly TimeProvider time;
    private readonly HttpClient _issuer;
    private int _attestRequests;

    public StandInMaa(StandInIssuer issuer, TimeProvider time)
    {
        this.issuer = issuer;
        this.time = time;
        _issuer = issuer.Client();
    }

    public sealed record Attest(byte[] SnpReport, string VcekCertChain, byte[] RuntimeData, string RuntimeDataType, string? Nonce);

    public Func<HttpRequestMessage, HttpResponseMessage?>? Override { get; set; }

    public Attest? LastAttest { get; private set; }

    public int AttestRequests => _attestRequests;

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var url = request.RequestUri!;
        var attest = request.Method == HttpMethod.Post && url.GetLeftPart(UriPartial.Path) == issuer.Issuer + "/attest/SevSnpVm";
        if (attest)
        {
            Interlocked.Increment(ref _attestRequests);
        }

        if (Override?.Invoke(request) is { } answer)
        {
            return answer;
        }

        if (request.Method == HttpMethod.Get && url.ToString() == Imds + MaaAttestation.ThimPath)
        {
            return request.Headers.TryGetValues("Metadata", out var values) && values.Single() == "true"
                ? Json(HttpStatusCode.OK, JsonSerializer.Serialize(new { vcekCert = VcekCert, certificateChain = CertificateChain, tcbm = "DB18000000000004" }))
                : Json(HttpStatusCode.BadRequest, """{"error":"Bad request. Required metadata header not specified"}""");
        }

        if (attest)
        {
            Assert.Equal("api-version=2022-08-01", url.Query.TrimStart('?'));
            return await AttestAsync(request, cancellationToken);
        }

        return await _issuer.SendAsync(request, cancellationToken);
    }

    private async Task<HttpResponseMessage> AttestAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        Assert.Equal("application/json", request.Content!.Headers.ContentType!.MediaType);
        using var body = JsonDocument.Parse(await request.Content.ReadAsStringAsync(cancellationToken));
        var root = body.RootElement;
        using var evidence = JsonDocument.Parse(Base64Url.DecodeFromChars(root.GetProperty("report").GetString()!));
        var snp = Base64Url.DecodeFromChars(evidence.RootElement.GetProperty("SnpReport").GetString()!);
        var chain = Encoding.UTF8.GetString(Base64Url.DecodeFromChars(evidence.RootElement.GetProperty("VcekCertChain").GetString()!));
        var runtimeData = root.GetProperty("runtimeData");
        var runtime = Base64Url.DecodeFromChars(runtimeData.GetProperty("data").GetString()!);
        var nonce = root.TryGetProperty("nonce", out var n) ? n.GetString() : null;
        LastAttest = new Attest(snp, chain, runtime, runtimeData.GetProperty("dataType").GetString()!, nonce);

        if (snp.Length != 1184 || chain != VcekCert + CertificateChain)
        {
            return Json(HttpStatusCode.BadRequest, """{"error":{"code":"InvalidParameter","message":"Invalid SNP report or VCEK chain."}}""");
        }

        if (!snp.AsSpan(0x50, 32).SequenceEqual(SHA256.HashData(runtime)))
        {
            return Json(HttpStatusCode.BadRequest, """{"error":{"code":"InvalidParameter","message":"The runtime data does not match the report data."}}""");
        }

        var now = time.GetUtcNow();
        var policy = BinaryPrimitives.ReadUInt64LittleEndian(snp.AsSpan(8));
        using var runtimeJson = JsonDocument.Parse(runtime);
        var claims = new Dictionary<string, object?>
        {
            ["iss"] = issuer.Issuer,
            ["iat"] = now.ToUnixTimeSeconds(),
            ["nbf"] = now.ToUnixTimeSeconds(),
            ["exp"] = now.AddHours(8).ToUnixTimeSeconds(),
            ["jti"] = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32)),
            ["x-ms-ver"] = "1.0",
            ["x-ms-attestation-type"] = "sevsnpvm",
            ["x-ms-compliance-status"] = "azure-compliant-cvm",
            ["x-ms-policy-hash"] = Base64Url.EncodeToString(SHA256.HashData("default policy"u8)),
            ["x-ms-sevsnpvm-guestsvn"] = BinaryPrimitives.ReadUInt32LittleEndian(snp.AsSpan(4)),
            ["x-ms-sevsnpvm-is-debuggable"] = (policy & (1UL << 19)) != 0,
            ["x-ms-sevsnpvm-smt-allowed"] = (policy & (1UL << 16)) != 0,
            ["x-ms-sevsnpvm-vmpl"] = 0,
            ["x-ms-sevsnpvm-reportdata"] = Convert.ToHexStringLower(snp.AsSpan(0x50, 64)),
            ["x-ms-sevsnpvm-launchmeasurement"] = Convert.ToHexStringLower(snp.AsSpan(0x90, 48)),
            ["x-ms-sevsnpvm-hostdata"] = Convert.ToHexStringLower(snp.AsSpan(0xC0, 32)),
            ["x-ms-sevsnpvm-chipid"] = Convert.ToHexStringLower(snp.AsSpan(0x1A0, 64)),
            ["x-ms-runtime"] = runtimeJson.RootElement.Clone(),
        };
        if (nonce is not null)
        {
            claims["nonce"] = nonce;
        }

        return Json(HttpStatusCode.OK, JsonSerializer.Serialize(new { token = issuer.Sign(claims) }));
    }

    private static HttpResponseMessage Json(HttpStatusCode status, string body) =>
        new(status) { Content = new StringContent(body, Encoding.UTF8, "application/json") };

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _issuer.Dispose();
        }

        base.Dispose(disposing);
    }
}
