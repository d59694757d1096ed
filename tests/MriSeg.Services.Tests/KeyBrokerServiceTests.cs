using System.Net;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Azure.Data.Tables;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.KeyBroker;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Audit;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;
using MriSeg.Privacy;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The KeyBroker in-process over Azurite: parties, import, attested release (development authority over HTTP), budgets, revocation, audit, restart.</summary>
public sealed class KeyBrokerServiceTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private const string AdminToken = "test-operator-token";
    private const string Issuer = "http://localhost/dev-attestation";
    private const double Delta = 1e-5;

    private readonly AzuriteFixture azurite;
    private readonly string keys = Directory.CreateTempSubdirectory("mriseg-keybroker-keys-").FullName;
    private readonly string suffix = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly string pipeline = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly Dictionary<string, SigningKey> partyKeys = [];
    private ServiceHost<KeyBrokerService> host;
    private V1.KeyBroker.KeyBrokerClient client;
    private HttpClient http;

    public KeyBrokerServiceTests(AzuriteFixture azurite)
    {
        this.azurite = azurite;
        azurite.Require();
        (host, client, http) = Start();
    }

    public void Dispose()
    {
        http.Dispose();
        host.Dispose();
        foreach (var key in partyKeys.Values)
        {
            key.Dispose();
        }

        Directory.Delete(keys, recursive: true);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Tdp => "hospital-" + suffix;

    private string OtherTdp => "hospital-b-" + suffix;

    private string Tdc => "consumer-" + suffix;

    private string Ccr => "cleanroom-" + suffix;

    private string ContractId => "contract-" + suffix;

    private (ServiceHost<KeyBrokerService>, V1.KeyBroker.KeyBrokerClient, HttpClient) Start()
    {
        var started = new ServiceHost<KeyBrokerService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["KeyBroker:KeysDirectory"] = keys,
            ["KeyBroker:CreateKeys"] = "true",
            ["KeyBroker:Registration"] = "AdminToken",
            ["KeyBroker:AdminToken"] = AdminToken,
            ["KeyBroker:DevelopmentAuthority:Enabled"] = "true",
            ["KeyBroker:DevelopmentAuthority:Issuer"] = Issuer,
        });
        return (started, new V1.KeyBroker.KeyBrokerClient(started.CreateChannel()), started.CreateClient());
    }

    private KeyBrokerParty Party(string id)
    {
        if (!partyKeys.TryGetValue(id, out var key))
        {
            partyKeys[id] = key = SigningKey.Generate();
        }

        return new KeyBrokerParty(client, id, key);
    }

    private async Task RegisterAllAsync()
    {
        await Party(Tdp).RegisterAsync(PartyRole.DataProvider, AdminToken, cancellationToken: Ct);
        await Party(OtherTdp).RegisterAsync(PartyRole.DataProvider, AdminToken, cancellationToken: Ct);
        await Party(Tdc).RegisterAsync(PartyRole.DataConsumer, AdminToken, cancellationToken: Ct);
        await Party(Ccr).RegisterAsync(PartyRole.CleanRoom, AdminToken, cancellationToken: Ct);
    }

    private string Policy(string? code = null) => host.Services.GetRequiredService<DevelopmentAttestationAuthority>().PolicyFor(code ?? measurement);

    private V1.ContractTerms Contract(double perRun = 8, double total = 20) => new()
    {
        ContractId = ContractId,
        DatasetId = "brats-" + suffix,
        AllowedConsumers = { Tdc },
        Expires = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddDays(30)),
        MaxEpsilonPerRun = perRun,
        MaxEpsilonTotal = total,
        Delta = Delta,
        AllowedPipelineSha256 = { pipeline },
    };

    private ReleaseRun Run(string runId, long steps = 1000) => new(runId, ContractId, Tdc, pipeline,
        new V1.PrivacyParameters { Epsilon = 1, Delta = Delta, Sigma = 1.0, SampleRate = 0.01, Steps = steps, Accountant = "rdp" });

    private Task<ReleasedKey> ReleaseAsync(string keyId, string runId, string? code = null) =>
        Party(Ccr).ReleaseWithAttestationAsync(keyId, Run(runId), Party(Ccr).DevelopmentAttestation(http, Issuer, code ?? measurement), cancellationToken: Ct);

    private async Task<DataKey> ImportDatasetKeyAsync(V1.ContractTerms? contract = null, string? policy = null)
    {
        var key = DataKey.Generate();
        var response = await Party(Tdp).ImportKeyAsync(key, V1.KeyPurpose.Dataset, policy ?? Policy(), contract ?? Contract(), cancellationToken: Ct);
        Assert.Equal(key.KeyId, response.KeyId);
        return key;
    }

    private async Task<List<V1.AuditRecord>> AuditAsync(string keyId)
    {
        using var call = client.ListAudit(new V1.ListAuditRequest { KeyId = keyId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        var records = new List<V1.AuditRecord>();
        await foreach (var record in call.ResponseStream.ReadAllAsync(Ct))
        {
            records.Add(record);
        }

        return records;
    }

    private static async Task<RpcException> Fails(Func<Task> call) => await Assert.ThrowsAsync<RpcException>(call);

    [Fact]
    public async Task Calls_without_valid_credentials_are_unauthenticated_while_health_needs_none()
    {
        await RegisterAllAsync();
        Assert.Equal(StatusCode.Unauthenticated, (await Fails(async () => await client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), cancellationToken: Ct))).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, (await Fails(async () => await client.ImportKeyAsync(new V1.ImportKeyRequest(), cancellationToken: Ct))).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, (await Fails(async () => await AuditWithout())).StatusCode);

        using var stranger = SigningKey.Generate();
        var forged = new Metadata { { "authorization", PartyTokens.Bearer(PartyTokens.Mint(stranger, Tdp)) } };
        var e = await Fails(async () => await client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), forged, cancellationToken: Ct));
        Assert.Equal(StatusCode.Unauthenticated, e.StatusCode);
        Assert.Contains("registered key", e.Status.Detail);
        var unregistered = new Metadata { { "authorization", PartyTokens.Bearer(PartyTokens.Mint(stranger, "nobody-" + suffix)) } };
        Assert.Equal(StatusCode.Unauthenticated, (await Fails(async () => await client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), unregistered, cancellationToken: Ct))).StatusCode);

        // A registered party is served; the health service needs no credentials.
        var brokerKey = await client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.Equal(["ECDH-ES+A256GCM"], brokerKey.Algorithms);
        var health = await new Health.HealthClient(host.CreateChannel()).CheckAsync(new HealthCheckRequest(), cancellationToken: Ct);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);

        async Task AuditWithout()
        {
            using var call = client.ListAudit(new V1.ListAuditRequest { KeyId = new string('0', 32) }, cancellationToken: Ct);
            await call.ResponseStream.MoveNext(Ct);
        }
    }

    [Fact]
    public async Task Registration_needs_the_admin_token_here()
    {
        var e = await Fails(() => Party("late-" + suffix).RegisterAsync(PartyRole.DataProvider, cancellationToken: Ct));
        Assert.Equal(StatusCode.PermissionDenied, e.StatusCode);
        Assert.Contains("admin token", e.Status.Detail);
        var wrong = await Fails(() => Party("late-" + suffix).RegisterAsync(PartyRole.DataProvider, "guess", cancellationToken: Ct));
        Assert.Equal(StatusCode.PermissionDenied, wrong.StatusCode);
    }

    [Fact]
    public async Task A_dataset_key_imported_by_its_owner_is_released_to_the_attested_clean_room_and_unwraps_with_the_ephemeral_key()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();

        using var released = await ReleaseAsync(key.KeyId, "run-1");
        Assert.Equal(key.ExportKeyBytes(), released.Key.ExportKeyBytes());
        var runEpsilon = RdpAccountant.ComputeEpsilon(0.01, 1.0, 1000, Delta).Epsilon;
        Assert.Equal(runEpsilon, released.Budget!.EpsilonReserved, 9);
        Assert.Equal(20, released.Budget.EpsilonTotalCap);

        // The released key opens what the owner sealed with it.
        var plaintext = RandomNumberGenerator.GetBytes(10_000);
        using var owner = SigningKey.Generate();
        var sealedStream = new MemoryStream();
        await SealedPackage.SealAsync(new MemoryStream(plaintext), sealedStream, key, owner, new SealOptions { ContentType = ContentType.Dataset, Owner = Tdp }, Ct);
        sealedStream.Position = 0;
        using var opened = await SealedPackage.OpenToMemoryAsync(sealedStream, released.Key, SignerCheck.Expect(owner.PublicKey), cancellationToken: Ct);
        Assert.Equal(plaintext, opened.ToArray());

        var status = await client.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = key.KeyId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.Equal(V1.KeyPurpose.Dataset, status.Purpose);
        Assert.Equal(Tdp, status.Owner);
        Assert.Equal(ContractId, status.Contract.ContractId);
        Assert.False(status.Revoked);

        var audit = await AuditAsync(key.KeyId);
        Assert.Equal(["import", "release"], audit.Select(r => r.Action));
        Assert.Equal(Ccr, audit[1].Actor);
        Assert.Equal(V1.Party.CleanRoom, audit[1].ActorRole);
        Assert.Equal(audit[0].Hash, audit[1].PreviousHash);
    }

    [Fact]
    public async Task The_wrong_party_is_permission_denied()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();
        using var other = DataKey.Generate();

        var consumerImport = await Fails(() => Party(Tdc).ImportKeyAsync(other, V1.KeyPurpose.Dataset, Policy(), Contract(), cancellationToken: Ct));
        Assert.Equal(StatusCode.PermissionDenied, consumerImport.StatusCode);
        Assert.Equal(StatusCode.PermissionDenied, (await Fails(async () => await client.RevokeKeyAsync(
            new V1.RevokeKeyRequest { KeyId = key.KeyId }, Party(OtherTdp).Credentials(), cancellationToken: Ct))).StatusCode);
        Assert.Equal(StatusCode.PermissionDenied, (await Fails(async () => await client.GetKeyStatusAsync(
            new V1.GetKeyStatusRequest { KeyId = key.KeyId }, Party(Tdc).Credentials(), cancellationToken: Ct))).StatusCode);

        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var providerRelease = await Fails(async () => await client.ReleaseKeyAsync(
            new V1.ReleaseKeyRequest { KeyId = key.KeyId, RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem() }, Party(OtherTdp).Credentials(), cancellationToken: Ct));
        Assert.Equal(StatusCode.PermissionDenied, providerRelease.StatusCode);
        Assert.Equal(StatusCode.PermissionDenied, (await Fails(async () => await client.GetAttestationNonceAsync(
            new V1.GetAttestationNonceRequest { RunId = "run-1" }, Party(Tdc).Credentials(), cancellationToken: Ct))).StatusCode);

        // The development authority attests clean rooms only.
        using var attest = new HttpRequestMessage(HttpMethod.Post, Issuer + "/attest") { Content = new StringContent("{}") };
        attest.Headers.TryAddWithoutValidation("authorization", PartyTokens.Bearer(Party(Tdp).MintToken()));
        using var refused = await http.SendAsync(attest, Ct);
        Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
        using var anonymous = await http.PostAsync(Issuer + "/attest", new StringContent("{}"), Ct);
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
    }

    [Fact]
    public async Task A_policy_the_attestation_does_not_satisfy_is_refused_with_its_reason_and_audited()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();
        var e = await Fails(() => ReleaseAsync(key.KeyId, "run-bad-code", code: new string('e', 64)));
        Assert.Equal(StatusCode.PermissionDenied, e.StatusCode);
        Assert.Contains("claim 'x-mriseg-measurement'", e.Status.Detail);

        var audit = await AuditAsync(key.KeyId);
        Assert.Equal("deny", audit[^1].Action);
        Assert.False(audit[^1].Allowed);
        Assert.Contains("x-mriseg-measurement", audit[^1].Reason);

        // Nothing was reserved for the refused run.
        var budget = await client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = ContractId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.Equal(0, budget.EpsilonReserved);
    }

    [Fact]
    public async Task Concurrent_runs_race_for_the_last_of_a_budget_and_exactly_one_wins()
    {
        await RegisterAllAsync();
        var one = PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 1000)], Delta);
        var two = PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 1000), new PrivacyEvent(0.01, 1.0, 1000)], Delta);
        using var key = await ImportDatasetKeyAsync(Contract(perRun: one * 1.01, total: (one + two) / 2));

        var outcomes = await Task.WhenAll(Enumerable.Range(0, 4).Select(async i =>
        {
            try
            {
                using var released = await ReleaseAsync(key.KeyId, "racer-" + i);
                return (StatusCode?)null;
            }
            catch (RpcException e)
            {
                Assert.Contains("budget exhausted", e.Status.Detail);
                return e.StatusCode;
            }
        }));
        Assert.Single(outcomes, o => o is null);
        Assert.All(outcomes.Where(o => o is not null), o => Assert.Equal(StatusCode.FailedPrecondition, o));

        var budget = await client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = ContractId }, Party(Tdc).Credentials(), cancellationToken: Ct);
        Assert.Equal(one, budget.EpsilonReserved, 9);
        Assert.Equal(0, budget.EpsilonSpent);

        // Budget exhausted for later runs too; the winner settles lower (it stopped early) and frees room for one more.
        var later = await Fails(() => ReleaseAsync(key.KeyId, "later-1"));
        Assert.Equal(StatusCode.FailedPrecondition, later.StatusCode);
        var winner = "racer-" + Array.FindIndex(outcomes, o => o is null);
        var settled = await client.SettlePrivacySpendAsync(new V1.SettlePrivacySpendRequest
        {
            RunId = winner,
            ContractId = ContractId,
            Spent = new V1.PrivacyParameters { Sigma = 1.0, SampleRate = 0.01, Steps = 200, Delta = Delta },
        }, Party(Ccr).Credentials(), cancellationToken: Ct);
        Assert.Equal(PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 200)], Delta), settled.EpsilonSpent, 9);
        Assert.Equal(0, settled.EpsilonReserved);
        using var afterSettle = await ReleaseAsync(key.KeyId, "later-2");
        Assert.Equal(key.KeyId, afterSettle.Key.KeyId);

        var more = await Fails(async () => await client.SettlePrivacySpendAsync(new V1.SettlePrivacySpendRequest
        {
            RunId = "later-2",
            ContractId = ContractId,
            Spent = new V1.PrivacyParameters { Sigma = 1.0, SampleRate = 0.01, Steps = 5000 },
        }, Party(Ccr).Credentials(), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, more.StatusCode);
    }

    [Fact]
    public async Task A_revoked_key_is_not_released()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();
        var status = await client.RevokeKeyAsync(new V1.RevokeKeyRequest { KeyId = key.KeyId, Reason = "consent withdrawn" }, Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.True(status.Revoked);
        var e = await Fails(() => ReleaseAsync(key.KeyId, "run-after-revoke"));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("revoked", e.Status.Detail);
        Assert.Equal(["import", "revoke", "deny"], (await AuditAsync(key.KeyId)).Select(r => r.Action));
    }

    [Fact]
    public async Task The_consumer_gets_its_own_output_key_without_attestation()
    {
        await RegisterAllAsync();
        using var output = DataKey.Generate();
        await Party(Tdc).ImportKeyAsync(output, V1.KeyPurpose.Output, Policy(), null, cancellationToken: Ct);
        using var mine = await Party(Tdc).ReleaseOwnOutputKeyAsync(output.KeyId, Ct);
        Assert.Equal(output.ExportKeyBytes(), mine.ExportKeyBytes());
        Assert.Equal(StatusCode.PermissionDenied, (await Fails(() => Party(Tdp).ReleaseOwnOutputKeyAsync(output.KeyId, Ct))).StatusCode);
    }

    [Fact]
    public async Task Bad_input_is_invalid_argument_with_a_reason()
    {
        await RegisterAllAsync();
        using var key = DataKey.Generate();
        var badPolicy = await Fails(() => Party(Tdp).ImportKeyAsync(key, V1.KeyPurpose.Dataset, """{"version":"1.0.0","anyOf":[{"authority":"x"}]}""", Contract(), cancellationToken: Ct));
        Assert.Equal(StatusCode.InvalidArgument, badPolicy.StatusCode);
        Assert.Contains("anyOf[0].authority", badPolicy.Status.Detail);

        var badId = await Fails(async () => await client.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = "../etc" }, Party(Tdp).Credentials(), cancellationToken: Ct));
        Assert.Equal(StatusCode.InvalidArgument, badId.StatusCode);
        var unknown = await Fails(async () => await client.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = new string('a', 32) }, Party(Tdp).Credentials(), cancellationToken: Ct));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        var garbage = await Fails(async () => await client.ImportKeyAsync(new V1.ImportKeyRequest
        {
            KeyId = key.KeyId,
            Purpose = V1.KeyPurpose.Dataset,
            WrappedKey = Google.Protobuf.ByteString.CopyFromUtf8("not a wrapped key"),
            ReleasePolicyJson = Policy(),
            Contract = Contract(),
        }, Party(Tdp).Credentials(), cancellationToken: Ct));
        Assert.Equal(StatusCode.InvalidArgument, garbage.StatusCode);
    }

    [Fact]
    public async Task A_restart_keeps_keys_contracts_budgets_and_the_audit_chain()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();
        using (await ReleaseAsync(key.KeyId, "before-restart"))
        {
        }

        var auditBefore = await AuditAsync(key.KeyId);
        http.Dispose();
        host.Dispose();
        (host, client, http) = Start();

        var status = await client.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = key.KeyId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.Equal(1, status.Version);
        var budget = await client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = ContractId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        Assert.Equal(RdpAccountant.ComputeEpsilon(0.01, 1.0, 1000, Delta).Epsilon, budget.EpsilonReserved, 9);

        // The key still decrypts (the key-encryption key persisted) and the chain continues where it was.
        using var released = await ReleaseAsync(key.KeyId, "after-restart");
        Assert.Equal(key.ExportKeyBytes(), released.Key.ExportKeyBytes());
        var auditAfter = await AuditAsync(key.KeyId);
        Assert.Equal(auditBefore.Select(r => r.Hash), auditAfter.Take(auditBefore.Count).Select(r => r.Hash));
        Assert.Equal(auditBefore[^1].Hash, auditAfter[auditBefore.Count].PreviousHash);
    }

    [Fact]
    public async Task Tampering_with_a_stored_audit_record_ends_the_listing_with_data_loss()
    {
        await RegisterAllAsync();
        using var key = await ImportDatasetKeyAsync();
        using (await ReleaseAsync(key.KeyId, "run-1"))
        {
        }

        var table = new TableServiceClient(azurite.TableConnectionString).GetTableClient(KeyBrokerTables.Audit);
        var entity = (await table.GetEntityAsync<TableEntity>(key.KeyId, AuditLog.RowOf(2), cancellationToken: Ct)).Value;
        // The stored document is JSON, U+001F, then its MAC; the MAC is kept (a writer without the broker's key has no other).
        var stored = entity.GetString("Data");
        var at = stored.LastIndexOf('\u001f');
        var data = JsonNode.Parse(stored[..at])!;
        data["actor"] = OtherTdp;
        entity["Data"] = data.ToJsonString() + stored[at..];
        await table.UpdateEntityAsync(entity, entity.ETag, TableUpdateMode.Replace, Ct);

        using var call = client.ListAudit(new V1.ListAuditRequest { KeyId = key.KeyId }, Party(Tdp).Credentials(), cancellationToken: Ct);
        var records = new List<V1.AuditRecord>();
        var e = await Fails(async () =>
        {
            await foreach (var record in call.ResponseStream.ReadAllAsync(Ct))
            {
                records.Add(record);
            }
        });
        Assert.Equal(StatusCode.DataLoss, e.StatusCode);
        Assert.Contains("broken at record 2", e.Status.Detail);
        Assert.Single(records);
    }

    [Fact]
    public async Task The_development_authority_publishes_openid_metadata_and_a_jwks_that_discovery_reads()
    {
        using var metadata = JsonDocument.Parse(await http.GetStringAsync(Issuer + "/.well-known/openid-configuration", Ct));
        Assert.Equal(Issuer, metadata.RootElement.GetProperty("issuer").GetString());
        var authority = host.Services.GetRequiredService<DevelopmentAttestationAuthority>();

        var cache = new OpenIdIssuerKeyCache(http, new IssuerKeyCacheOptions(), TimeProvider.System);
        var found = await cache.GetKeysAsync(new TrustedAuthority(Issuer, allowHttp: true), authority.KeyId, Ct);
        Assert.Single(found.WithKeyId(authority.KeyId));

        // Its signing key is per environment: persisted in the key folder (0600) and reused by the next start.
        var keyFile = Path.Combine(keys, "dev-attestation-signing.key");
        Assert.True(File.Exists(keyFile));
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));
        }
    }
}
