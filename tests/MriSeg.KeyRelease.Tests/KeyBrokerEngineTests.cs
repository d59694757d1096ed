using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Tests;

/// <summary>The engine end to end in memory: registration, import, attested release, authorisation, contracts, revocation.</summary>
public sealed class KeyBrokerEngineTests : IDisposable
{
    private const string Admin = "operator-secret";
    private const string Issuer = "http://localhost:5132/dev-attestation";
    private static readonly string Measurement = new('7', 64);
    private static readonly string Pipeline = new('b', 64);

    private readonly FakeTime time = new();
    private readonly InMemoryRecordStore store = new();
    private readonly BrokerKeyMaterial brokerKeys = BrokerKeyMaterial.CreateEphemeral();
    private readonly DevelopmentAttestationAuthority dev;
    private readonly KeyBrokerEngine engine;
    private readonly Dictionary<string, SigningKey> partyKeys = [];

    public KeyBrokerEngineTests()
    {
        dev = DevelopmentAttestationAuthority.CreateEphemeral(Issuer, time);
        var verifier = new AttestationVerifier(new AttestationOptions { Authorities = [dev.AsTrusted()] }, dev, time);
        engine = new KeyBrokerEngine(new KeyBrokerOptions { Registration = RegistrationMode.AdminToken, AdminToken = Admin }, store, brokerKeys, verifier, time);
    }

    public void Dispose()
    {
        dev.Dispose();
        brokerKeys.Dispose();
        foreach (var key in partyKeys.Values)
        {
            key.Dispose();
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private SigningKey KeyOf(string party) => partyKeys.TryGetValue(party, out var key) ? key : partyKeys[party] = SigningKey.Generate();

    private string Bearer(string party, SigningKey? key = null) => PartyTokens.Bearer(PartyTokens.Mint(key ?? KeyOf(party), party, now: time.Now));

    private Task<V1.RegisterPartyResponse> Register(string party, V1.Party role, string? admin = Admin, SigningKey? key = null, string? previousToken = null)
    {
        key ??= KeyOf(party);
        return engine.RegisterPartyAsync(new V1.RegisterPartyRequest { PartyId = party, Role = role, PublicKeyPem = key.PublicKey.ExportPem() },
            new RegistrationCredentials(Bearer(party, key), previousToken, admin), Ct);
    }

    private Task<PartyPrincipal> As(string party) => engine.AuthenticateAsync(Bearer(party), Ct);

    private async Task<(PartyPrincipal Tdp, PartyPrincipal Tdc, PartyPrincipal Ccr)> PartiesAsync()
    {
        await Register("hospital-a", V1.Party.DataProvider);
        await Register("consumer-x", V1.Party.DataConsumer);
        await Register("cleanroom-1", V1.Party.CleanRoom);
        return (await As("hospital-a"), await As("consumer-x"), await As("cleanroom-1"));
    }

    private V1.ContractTerms Contract(double perRun = 8, double total = 20, string id = "contract-a") => new()
    {
        ContractId = id,
        DatasetId = "brats-a",
        AllowedConsumers = { "consumer-x" },
        Expires = Timestamp.FromDateTimeOffset(time.Now.AddDays(30)),
        MaxEpsilonPerRun = perRun,
        MaxEpsilonTotal = total,
        Delta = 1e-5,
        AllowedPipelineSha256 = { Pipeline },
    };

    private V1.ImportKeyRequest Import(DataKey key, V1.KeyPurpose purpose = V1.KeyPurpose.Dataset, V1.ContractTerms? contract = null, string? policy = null)
    {
        var request = new V1.ImportKeyRequest
        {
            KeyId = key.KeyId,
            Purpose = purpose,
            WrappedKey = ByteString.CopyFromUtf8(KeyWrap.Wrap(key, brokerKeys.WrapPublicKey).ToJson()),
            WrapAlgorithm = "ECDH-ES+A256GCM",
            ReleasePolicyJson = policy ?? dev.PolicyFor(Measurement),
        };
        if (contract is not null || purpose == V1.KeyPurpose.Dataset)
        {
            request.Contract = contract ?? Contract();
        }

        return request;
    }

    private async Task<V1.ReleaseKeyRequest> AttestedRequest(PartyPrincipal ccr, string keyId, RecipientPrivateKey ephemeral, string runId = "run-1",
        string measurement = "", string consumer = "consumer-x")
    {
        var nonce = await engine.GetAttestationNonceAsync(ccr, new V1.GetAttestationNonceRequest { RunId = runId }, Ct);
        var token = dev.IssueToken(new DevelopmentAttestationRequest(ccr.PartyId, ephemeral.PublicKey, nonce.Nonce, measurement.Length > 0 ? measurement : Measurement));
        return new V1.ReleaseKeyRequest
        {
            KeyId = keyId,
            AttestationToken = token,
            RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem(),
            RunId = runId,
            ContractId = "contract-a",
            Declared = new V1.PrivacyParameters { Epsilon = 2, Delta = 1e-5, Sigma = 1.0, SampleRate = 0.01, Steps = 1000, Accountant = "prv" },
            PipelineSha256 = Pipeline,
            Nonce = nonce.Nonce,
            Consumer = consumer,
        };
    }

    private async Task<KeyBrokerException> Refused(Func<Task> call) => await Assert.ThrowsAsync<KeyBrokerException>(call);

    [Fact]
    public async Task Registration_needs_the_admin_token_proof_of_possession_and_the_old_key_to_rotate()
    {
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => Register("hospital-a", V1.Party.DataProvider, admin: null))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => Register("hospital-a", V1.Party.DataProvider, admin: "wrong"))).Error);

        // The bearer must be signed by the key being registered.
        var mismatch = await Refused(() => engine.RegisterPartyAsync(
            new V1.RegisterPartyRequest { PartyId = "hospital-a", Role = V1.Party.DataProvider, PublicKeyPem = KeyOf("hospital-a").PublicKey.ExportPem() },
            new RegistrationCredentials(Bearer("hospital-a", SigningKey.Generate()), null, Admin), Ct));
        Assert.Equal(KeyBrokerError.Unauthenticated, mismatch.Error);

        var registered = await Register("hospital-a", V1.Party.DataProvider);
        Assert.Equal(KeyOf("hospital-a").Thumbprint, registered.KeyThumbprint);
        await Register("hospital-a", V1.Party.DataProvider, admin: null); // the same key again: no-op
        Assert.Equal(KeyBrokerError.FailedPrecondition, (await Refused(() => Register("hospital-a", V1.Party.CleanRoom))).Error);

        // Another key: refused without the registered key's token, accepted with it.
        using var next = SigningKey.Generate();
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => Register("hospital-a", V1.Party.DataProvider, admin: null, key: next))).Error);
        using var stranger = SigningKey.Generate();
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => Register("hospital-a", V1.Party.DataProvider, admin: null, key: next,
            previousToken: PartyTokens.Mint(stranger, "hospital-a", now: time.Now)))).Error);
        await Register("hospital-a", V1.Party.DataProvider, admin: null, key: next, previousToken: PartyTokens.Mint(KeyOf("hospital-a"), "hospital-a", now: time.Now));
        Assert.Equal(next.Thumbprint, (await engine.AuthenticateAsync(Bearer("hospital-a", next), Ct)).KeyThumbprint);
        Assert.Equal(KeyBrokerError.Unauthenticated, (await Refused(() => engine.AuthenticateAsync(Bearer("hospital-a"), Ct))).Error);
    }

    [Fact]
    public async Task Trust_on_first_use_registers_without_the_admin_token()
    {
        var verifier = new AttestationVerifier(new AttestationOptions { Authorities = [dev.AsTrusted()] }, dev, time);
        var tofu = new KeyBrokerEngine(new KeyBrokerOptions { Registration = RegistrationMode.TrustOnFirstUse }, new InMemoryRecordStore(), brokerKeys, verifier, time);
        var response = await tofu.RegisterPartyAsync(new V1.RegisterPartyRequest { PartyId = "hospital-b", Role = V1.Party.DataProvider, PublicKeyPem = KeyOf("hospital-b").PublicKey.ExportPem() },
            new RegistrationCredentials(Bearer("hospital-b"), null, null), Ct);
        Assert.Equal(KeyOf("hospital-b").Thumbprint, response.KeyThumbprint);
    }

    [Fact]
    public async Task A_dataset_key_goes_to_an_attested_clean_room_wrapped_to_its_ephemeral_key()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        var imported = await engine.ImportKeyAsync(tdp, Import(key), Ct);
        Assert.Equal(1, imported.Version);

        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var response = await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral), Ct);
        using var released = KeyWrap.Unwrap(WrappedKey.FromJson(response.WrappedKey.ToStringUtf8()), ephemeral);
        Assert.Equal(key.ExportKeyBytes(), released.ExportKeyBytes());
        Assert.True(response.Budget.EpsilonReserved > 0);
        Assert.Equal(20, response.Budget.EpsilonTotalCap);

        var trail = await engine.ListAuditAsync(tdp, new V1.ListAuditRequest { KeyId = key.KeyId }, Ct);
        Assert.True(trail.Verification.Intact);
        Assert.Equal(["import", "release"], trail.Records.Select(r => r.Action));
        Assert.Contains("cleanroom-1", trail.Records[1].Reason);

        // Stored at rest: encrypted, never the key bytes.
        var stored = (await store.GetAsync(KeyBrokerTables.Keys, key.KeyId, "key", Ct))!.Data;
        Assert.DoesNotContain(Convert.ToBase64String(key.ExportKeyBytes()), stored);
    }

    [Fact]
    public async Task A_replayed_nonce_an_unbound_key_and_a_failing_policy_are_refused_and_audited()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key), Ct);
        using var ephemeral = RecipientPrivateKey.GenerateEcP256();

        var request = await AttestedRequest(ccr, key.KeyId, ephemeral);
        await engine.ReleaseKeyAsync(ccr, request, Ct);
        var replay = await Refused(() => engine.ReleaseKeyAsync(ccr, request, Ct));
        Assert.Equal(KeyBrokerError.PermissionDenied, replay.Error);
        Assert.Contains("used before", replay.Message);

        using var other = RecipientPrivateKey.GenerateEcP256();
        var unbound = await AttestedRequest(ccr, key.KeyId, ephemeral);
        unbound.RequesterPublicKeyPem = other.PublicKey.ExportPem();
        Assert.Contains("does not bind the requester's public key", (await Refused(() => engine.ReleaseKeyAsync(ccr, unbound, Ct))).Message);

        var wrongCode = await AttestedRequest(ccr, key.KeyId, ephemeral, measurement: new string('9', 64));
        var policy = await Refused(() => engine.ReleaseKeyAsync(ccr, wrongCode, Ct));
        Assert.Equal(KeyBrokerError.PermissionDenied, policy.Error);
        Assert.Contains("claim 'x-mriseg-measurement'", policy.Message);

        var trail = await engine.ListAuditAsync(tdp, new V1.ListAuditRequest { KeyId = key.KeyId }, Ct);
        Assert.Equal(["import", "release", "deny", "deny", "deny"], trail.Records.Select(r => r.Action));
        Assert.All(trail.Records.Skip(2), r => Assert.False(r.Allowed));
        Assert.True(trail.Verification.Intact);
    }

    [Fact]
    public async Task Only_the_right_parties_import_release_revoke_and_read()
    {
        var (tdp, tdc, ccr) = await PartiesAsync();
        await Register("hospital-b", V1.Party.DataProvider);
        var otherTdp = await As("hospital-b");
        using var key = DataKey.Generate();

        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ImportKeyAsync(tdc, Import(key), Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ImportKeyAsync(tdp, Import(key, V1.KeyPurpose.Model), Ct))).Error);
        await engine.ImportKeyAsync(tdp, Import(key), Ct);

        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var asProvider = new V1.ReleaseKeyRequest { KeyId = key.KeyId, RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem() };
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ReleaseKeyAsync(tdp, asProvider, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ReleaseKeyAsync(tdc, asProvider, Ct))).Error);
        var noToken = await Refused(() => engine.ReleaseKeyAsync(ccr, new V1.ReleaseKeyRequest { KeyId = key.KeyId, RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem(), RunId = "run-1" }, Ct));
        Assert.Equal(KeyBrokerError.PermissionDenied, noToken.Error);

        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.RevokeKeyAsync(otherTdp, new V1.RevokeKeyRequest { KeyId = key.KeyId }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ListAuditAsync(otherTdp, new V1.ListAuditRequest { KeyId = key.KeyId }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.GetKeyStatusAsync(ccr, new V1.GetKeyStatusRequest { KeyId = key.KeyId }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.UpdateKeyPolicyAsync(otherTdp, new V1.UpdateKeyPolicyRequest { KeyId = key.KeyId, ReleasePolicyJson = dev.PolicyFor(Measurement) }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.GetAttestationNonceAsync(tdp, new V1.GetAttestationNonceRequest { RunId = "r" }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.GetBudgetAsync(otherTdp, new V1.GetBudgetRequest { ContractId = "contract-a" }, Ct))).Error);
        Assert.Equal(20, (await engine.GetBudgetAsync(tdc, new V1.GetBudgetRequest { ContractId = "contract-a" }, Ct)).EpsilonTotalCap);

        var trail = await engine.ListAuditAsync(tdp, new V1.ListAuditRequest { KeyId = key.KeyId }, Ct);
        Assert.Contains(trail.Records, r => r.Action == "deny" && r.Actor == "hospital-b" && r.Reason.StartsWith("revoke:", StringComparison.Ordinal));
        Assert.Contains(trail.Records, r => r.Action == "deny" && r.Actor == "consumer-x");
    }

    [Fact]
    public async Task An_output_key_goes_to_its_owner_without_attestation_and_to_the_clean_room_only_for_that_consumer()
    {
        var (tdp, tdc, ccr) = await PartiesAsync();
        await Register("consumer-y", V1.Party.DataConsumer);
        using var output = DataKey.Generate();
        await engine.ImportKeyAsync(tdc, Import(output, V1.KeyPurpose.Output), Ct);

        using var mine = RecipientPrivateKey.GenerateEcP256();
        var own = await engine.ReleaseKeyAsync(tdc, new V1.ReleaseKeyRequest { KeyId = output.KeyId, RequesterPublicKeyPem = mine.PublicKey.ExportPem() }, Ct);
        using (var unwrapped = KeyWrap.Unwrap(WrappedKey.FromJson(own.WrappedKey.ToStringUtf8()), mine))
        {
            Assert.Equal(output.KeyId, unwrapped.KeyId);
        }

        var otherConsumer = await As("consumer-y");
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ReleaseKeyAsync(otherConsumer,
            new V1.ReleaseKeyRequest { KeyId = output.KeyId, RequesterPublicKeyPem = mine.PublicKey.ExportPem() }, Ct))).Error);
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Refused(() => engine.ReleaseKeyAsync(tdp,
            new V1.ReleaseKeyRequest { KeyId = output.KeyId, RequesterPublicKeyPem = mine.PublicKey.ExportPem() }, Ct))).Error);

        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var forOther = await AttestedRequest(ccr, output.KeyId, ephemeral, consumer: "consumer-y");
        Assert.Contains("not for this output key's owner", (await Refused(() => engine.ReleaseKeyAsync(ccr, forOther, Ct))).Message);
        var forOwner = await AttestedRequest(ccr, output.KeyId, ephemeral);
        forOwner.Declared = null;
        forOwner.ContractId = "";
        await engine.ReleaseKeyAsync(ccr, forOwner, Ct);
    }

    [Fact]
    public async Task The_contract_is_checked_at_release()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key, contract: Contract(perRun: 3, total: 20)), Ct);
        using var ephemeral = RecipientPrivateKey.GenerateEcP256();

        async Task<string> Refusal(Action<V1.ReleaseKeyRequest> change)
        {
            var request = await AttestedRequest(ccr, key.KeyId, ephemeral, runId: "run-" + Guid.NewGuid().ToString("n")[..8]);
            change(request);
            var e = await Refused(() => engine.ReleaseKeyAsync(ccr, request, Ct));
            Assert.True(e.Error is KeyBrokerError.FailedPrecondition or KeyBrokerError.InvalidArgument, e.Error + ": " + e.Message);
            return e.Message;
        }

        Assert.Contains("does not allow pipeline", await Refusal(r => r.PipelineSha256 = new string('c', 64)));
        Assert.Contains("does not allow consumer", await Refusal(r => r.Consumer = "consumer-z"));
        Assert.Contains("the run names contract", await Refusal(r => r.ContractId = "contract-other"));
        Assert.Contains("declares ε 4", await Refusal(r => r.Declared.Epsilon = 4));
        Assert.Contains("above the contract's", await Refusal(r => r.Declared.Delta = 1e-3));
        Assert.Contains("per run", await Refusal(r => r.Declared.Steps = 100_000));
        Assert.Contains("sample_rate", await Refusal(r => r.Declared.SampleRate = 0));

        time.Advance(TimeSpan.FromDays(31));
        Assert.Contains("expired", await Refusal(_ => { }));
    }

    [Fact]
    public async Task A_revoked_key_is_never_released_and_its_material_is_erased()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key), Ct);
        var status = await engine.RevokeKeyAsync(tdp, new V1.RevokeKeyRequest { KeyId = key.KeyId, Reason = "consent withdrawn" }, Ct);
        Assert.True(status.Revoked);
        var stored = (await store.GetAsync(KeyBrokerTables.Keys, key.KeyId, "key", Ct))!.Data;
        Assert.Contains("\"material\":null", stored);

        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var e = await Refused(async () => await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral), Ct));
        Assert.Equal(KeyBrokerError.FailedPrecondition, e.Error);
        Assert.Contains("revoked", e.Message);
        Assert.Equal(KeyBrokerError.FailedPrecondition, (await Refused(() => engine.UpdateKeyPolicyAsync(tdp,
            new V1.UpdateKeyPolicyRequest { KeyId = key.KeyId, ReleasePolicyJson = dev.PolicyFor(Measurement) }, Ct))).Error);
    }

    [Fact]
    public async Task A_storage_writer_who_loosens_a_policy_gets_no_key()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key, policy: dev.PolicyFor(new string('0', 64))), Ct);
        var loose = dev.PolicyFor(Measurement);
        using var ephemeral = RecipientPrivateKey.GenerateEcP256();

        // Without the broker's keys: the record's MAC no longer verifies.
        var original = (await store.GetAsync(KeyBrokerTables.Keys, key.KeyId, "key", Ct))!.Data;
        store.Tamper(KeyBrokerTables.Keys, key.KeyId, "key", data =>
        {
            var at = data.LastIndexOf('\u001f');
            var node = System.Text.Json.Nodes.JsonNode.Parse(data[..at])!;
            node["policyJson"] = loose;
            return node.ToJsonString() + data[at..];
        });
        var e = await Refused(async () => await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral), Ct));
        Assert.Equal(KeyBrokerError.DataLoss, e.Error);
        Assert.Contains("integrity check", e.Message);

        // Even with a valid record MAC (say the MAC key leaked), the key material is bound to the policy it was stored with.
        store.Tamper(KeyBrokerTables.Keys, key.KeyId, "key", _ => original);
        var authenticated = new IntegrityRecordStore(store, brokerKeys.DeriveRecordMacKey());
        var record = (await authenticated.GetAsync(KeyBrokerTables.Keys, key.KeyId, "key", Ct))!;
        var node = System.Text.Json.Nodes.JsonNode.Parse(record.Data)!;
        node["policyJson"] = loose;
        await authenticated.ReplaceAsync(KeyBrokerTables.Keys, record with { Data = node.ToJsonString() }, Ct);
        var bound = await Refused(async () => await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral, runId: "run-2"), Ct));
        Assert.Equal(KeyBrokerError.DataLoss, bound.Error);
        Assert.Contains("does not authenticate", bound.Message);
    }

    [Fact]
    public async Task A_storage_writer_who_raises_a_contracts_cap_or_swaps_a_party_key_is_caught()
    {
        var (tdp, tdc, _) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key), Ct);
        store.Tamper(KeyBrokerTables.Contracts, "contract-a", "contract", data => data.Replace("\"maxEpsilonTotal\":20", "\"maxEpsilonTotal\":2000", StringComparison.Ordinal));
        Assert.Equal(KeyBrokerError.DataLoss, (await Refused(() => engine.GetBudgetAsync(tdc, new V1.GetBudgetRequest { ContractId = "contract-a" }, Ct))).Error);

        using var attacker = SigningKey.Generate();
        store.Tamper(KeyBrokerTables.Parties, "party", "consumer-x", data => data.Replace(KeyOf("consumer-x").Thumbprint, attacker.Thumbprint, StringComparison.Ordinal));
        Assert.Equal(KeyBrokerError.DataLoss, (await Refused(() => engine.AuthenticateAsync(Bearer("consumer-x", attacker), Ct))).Error);
    }

    [Fact]
    public async Task Updating_the_policy_bumps_the_version_and_applies_at_the_next_release()
    {
        var (tdp, _, ccr) = await PartiesAsync();
        using var key = DataKey.Generate();
        await engine.ImportKeyAsync(tdp, Import(key, policy: dev.PolicyFor(new string('0', 64))), Ct);
        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        await Refused(async () => await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral), Ct));

        var status = await engine.UpdateKeyPolicyAsync(tdp, new V1.UpdateKeyPolicyRequest { KeyId = key.KeyId, ReleasePolicyJson = dev.PolicyFor(Measurement) }, Ct);
        Assert.Equal(2, status.Version);
        Assert.Equal("contract-a", status.Contract.ContractId);
        await engine.ReleaseKeyAsync(ccr, await AttestedRequest(ccr, key.KeyId, ephemeral, runId: "run-2"), Ct);
    }

    [Fact]
    public async Task Imports_are_checked()
    {
        var (tdp, _, _) = await PartiesAsync();
        using var key = DataKey.Generate();
        using var stranger = RecipientPrivateKey.GenerateEcP256();

        var wrongRecipient = Import(key);
        wrongRecipient.WrappedKey = ByteString.CopyFromUtf8(KeyWrap.Wrap(key, stranger.PublicKey).ToJson());
        Assert.Contains("not to the broker's key", (await Refused(() => engine.ImportKeyAsync(tdp, wrongRecipient, Ct))).Message);

        using var other = DataKey.Generate();
        var wrongId = Import(key);
        wrongId.KeyId = other.KeyId;
        Assert.Contains("not key_id", (await Refused(() => engine.ImportKeyAsync(tdp, wrongId, Ct))).Message);

        var garbage = Import(key);
        garbage.WrappedKey = ByteString.CopyFromUtf8("{}");
        Assert.Equal(KeyBrokerError.InvalidArgument, (await Refused(() => engine.ImportKeyAsync(tdp, garbage, Ct))).Error);

        var untrusted = Import(key, policy: """{"version":"1.0.0","anyOf":[{"authority":"https://evil.example","allOf":[{"claim":"a","exists":true}]}]}""");
        Assert.Contains("not an attestation authority this broker trusts", (await Refused(() => engine.ImportKeyAsync(tdp, untrusted, Ct))).Message);

        var noContract = Import(key);
        noContract.Contract = null;
        Assert.Contains("contract is required", (await Refused(() => engine.ImportKeyAsync(tdp, noContract, Ct))).Message);

        await engine.ImportKeyAsync(tdp, Import(key), Ct);
        Assert.Equal(KeyBrokerError.AlreadyExists, (await Refused(() => engine.ImportKeyAsync(tdp, Import(key), Ct))).Error);
    }

    [Fact]
    public void Broker_keys_persist_with_owner_only_modes_and_bind_stored_keys()
    {
        var folder = Path.Combine(Directory.CreateTempSubdirectory("mriseg-kb-keys-").FullName, "keys");
        try
        {
            string wrapId, kekId, encrypted;
            using var key = DataKey.Generate();
            using (var first = BrokerKeyMaterial.LoadOrCreate(folder, create: true, out var created))
            {
                Assert.True(created);
                wrapId = first.WrapKeyId;
                kekId = first.KekId;
                encrypted = first.EncryptAtRest(key, "binding-1");
            }

            if (!OperatingSystem.IsWindows())
            {
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(folder));
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(folder, BrokerKeyMaterial.WrapKeyFile)));
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(folder, BrokerKeyMaterial.KekFile)));
            }

            using var second = BrokerKeyMaterial.LoadOrCreate(folder, create: false, out var createdAgain);
            Assert.False(createdAgain);
            Assert.Equal(wrapId, second.WrapKeyId);
            Assert.Equal(kekId, second.KekId);
            using (var decrypted = second.DecryptAtRest(encrypted, "binding-1"))
            {
                Assert.Equal(key.ExportKeyBytes(), decrypted.ExportKeyBytes());
            }

            Assert.Equal(KeyBrokerError.DataLoss, Assert.Throws<KeyBrokerException>(() => second.DecryptAtRest(encrypted, "binding-2")).Error);
            Assert.Throws<InvalidOperationException>(() => BrokerKeyMaterial.LoadOrCreate(folder + "-missing", create: false, out _));
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(folder)!, recursive: true);
        }
    }
}
