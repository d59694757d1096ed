using System.Text.Json.Nodes;
using Azure.Data.Tables;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;
using MriSeg.Services.Tests;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Tests;

/// <summary>
/// A restart of a stateless broker (Key Vault KEK, keyring and state in tables): a new engine over the same table
/// storage (in memory, and Table storage in Azurite) and the same vault keeps the parties, keys, budget, audit chain and
/// the development authority's key, across a KEK rotation in between.
/// </summary>
public sealed class KeyVaultRestartTests(AzuriteFixture azurite) : IClassFixture<AzuriteFixture>, IDisposable
{
    private const string Admin = "operator-secret";
    private const string Issuer = "http://localhost:5132/dev-attestation";
    private const string SecretName = "kek-restart-test";
    private static readonly string Measurement = new('7', 64);
    private static readonly string Pipeline = new('b', 64);

    private readonly FakeTime time = new(DateTimeOffset.UtcNow);
    private readonly FakeSecretClient vault = new();
    private readonly Dictionary<string, SigningKey> partyKeys = [];
    private readonly List<IDisposable> owned = [];

    public void Dispose()
    {
        foreach (var item in owned)
        {
            item.Dispose();
        }

        foreach (var key in partyKeys.Values)
        {
            key.Dispose();
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private SigningKey KeyOf(string party) => partyKeys.TryGetValue(party, out var key) ? key : partyKeys[party] = SigningKey.Generate();

    /// <summary>What a KeyBroker process holds: its engine, its keys and its development authority.</summary>
    private sealed record Broker(KeyBrokerEngine Engine, BrokerKeyMaterial Keys, DevelopmentAttestationAuthority Dev);

    /// <summary>Starts a broker as Program.cs does with <c>KeyBroker:Kek:Source=keyvault</c>: nothing carried over but the tables and the vault.</summary>
    private async Task<Broker> StartAsync(IRecordStore tables)
    {
        var keys = await BrokerKeyMaterial.LoadOrCreateAsync(new KeyVaultKeyEncryptionKeySource(vault, SecretName, create: true), tables, create: true, time, Ct);
        var dev = new DevelopmentAttestationAuthority(Issuer, keys.CreateDevelopmentSigningKey()!, time);
        owned.Add(keys);
        owned.Add(dev);
        var verifier = new AttestationVerifier(new AttestationOptions { Authorities = [dev.AsTrusted()] }, dev, time);
        return new Broker(new KeyBrokerEngine(new KeyBrokerOptions { Registration = RegistrationMode.AdminToken, AdminToken = Admin }, tables, keys, verifier, time), keys, dev);
    }

    private async Task<PartyPrincipal> As(Broker broker, string party) =>
        await broker.Engine.AuthenticateAsync(PartyTokens.Bearer(PartyTokens.Mint(KeyOf(party), party, now: time.Now)), Ct);

    private async Task RegisterAsync(Broker broker, string party, V1.Party role)
    {
        var key = KeyOf(party);
        await broker.Engine.RegisterPartyAsync(new V1.RegisterPartyRequest { PartyId = party, Role = role, PublicKeyPem = key.PublicKey.ExportPem() },
            new RegistrationCredentials(PartyTokens.Bearer(PartyTokens.Mint(key, party, now: time.Now)), null, Admin), Ct);
    }

    private V1.ImportKeyRequest Import(Broker broker, DataKey key) => new()
    {
        KeyId = key.KeyId,
        Purpose = V1.KeyPurpose.Dataset,
        WrappedKey = ByteString.CopyFromUtf8(KeyWrap.Wrap(key, broker.Keys.WrapPublicKey).ToJson()),
        WrapAlgorithm = "ECDH-ES+A256GCM",
        ReleasePolicyJson = broker.Dev.PolicyFor(Measurement),
        Contract = new V1.ContractTerms
        {
            ContractId = "contract-a",
            DatasetId = "brats-a",
            AllowedConsumers = { "consumer-x" },
            Expires = Timestamp.FromDateTimeOffset(time.Now.AddDays(30)),
            MaxEpsilonPerRun = 8,
            MaxEpsilonTotal = 20,
            Delta = 1e-5,
            AllowedPipelineSha256 = { Pipeline },
        },
    };

    private async Task<DataKey> ReleaseAsync(Broker broker, string keyId, string runId)
    {
        var ccr = await As(broker, "cleanroom-1");
        using var ephemeral = RecipientPrivateKey.GenerateEcP256();
        var nonce = await broker.Engine.GetAttestationNonceAsync(ccr, new V1.GetAttestationNonceRequest { RunId = runId }, Ct);
        var response = await broker.Engine.ReleaseKeyAsync(ccr, new V1.ReleaseKeyRequest
        {
            KeyId = keyId,
            AttestationToken = broker.Dev.IssueToken(new DevelopmentAttestationRequest(ccr.PartyId, ephemeral.PublicKey, nonce.Nonce, Measurement)),
            RequesterPublicKeyPem = ephemeral.PublicKey.ExportPem(),
            RunId = runId,
            ContractId = "contract-a",
            Declared = new V1.PrivacyParameters { Epsilon = 2, Delta = 1e-5, Sigma = 1.0, SampleRate = 0.01, Steps = 1000, Accountant = "rdp" },
            PipelineSha256 = Pipeline,
            Nonce = nonce.Nonce,
            Consumer = "consumer-x",
        }, Ct);
        return KeyWrap.Unwrap(WrappedKey.FromJson(response.WrappedKey.ToStringUtf8()), ephemeral);
    }

    private async Task<string> StoredKekIdAsync(IRecordStore tables, Broker broker, string keyId)
    {
        var authenticated = new IntegrityRecordStore(tables, broker.Keys.DeriveRecordMacKey());
        var record = (await authenticated.GetAsync(KeyBrokerTables.Keys, keyId, "key", Ct))!;
        return JsonNode.Parse(record.Data)!["kekId"]!.GetValue<string>();
    }

    [Theory]
    [InlineData("memory")]
    [InlineData("azurite")]
    public async Task A_restart_keeps_keys_budget_and_the_audit_chain_across_a_kek_rotation(string storage)
    {
        IRecordStore tables;
        if (storage == "azurite")
        {
            azurite.Require();
            tables = new TableRecordStore(new TableServiceClient(azurite.TableConnectionString));
        }
        else
        {
            tables = new InMemoryRecordStore();
        }

        // First process: creates the secret (v1) and the keyring, registers the parties, imports a key, releases it once.
        var first = await StartAsync(tables);
        var v1 = vault.IdOf(SecretName, Assert.Single(vault.Versions(SecretName)).Version);
        Assert.Equal(v1, first.Keys.KekId);
        await RegisterAsync(first, "hospital-a", V1.Party.DataProvider);
        await RegisterAsync(first, "consumer-x", V1.Party.DataConsumer);
        await RegisterAsync(first, "cleanroom-1", V1.Party.CleanRoom);
        using var key = DataKey.Generate();
        await first.Engine.ImportKeyAsync(await As(first, "hospital-a"), Import(first, key), Ct);
        using (var released = await ReleaseAsync(first, key.KeyId, "run-1"))
        {
            Assert.Equal(key.ExportKeyBytes(), released.ExportKeyBytes());
        }

        var auditBefore = await first.Engine.ListAuditAsync(await As(first, "hospital-a"), new V1.ListAuditRequest { KeyId = key.KeyId }, Ct);
        Assert.True(auditBefore.Verification.Intact);
        var budgetBefore = await first.Engine.GetBudgetAsync(await As(first, "hospital-a"), new V1.GetBudgetRequest { ContractId = "contract-a" }, Ct);
        Assert.True(budgetBefore.EpsilonReserved > 0);
        Assert.Equal(v1, await StoredKekIdAsync(tables, first, key.KeyId));

        // Between the processes the operator rotates the KEK: v2 is current.
        var v2 = vault.IdOf(SecretName, vault.AddVersion(SecretName, Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32))));

        // Second process: nothing from the first but the tables and the vault.
        var second = await StartAsync(tables);
        Assert.Equal(v2, second.Keys.KekId);
        Assert.False(second.Keys.Created);
        Assert.Equal(first.Keys.WrapKeyId, second.Keys.WrapKeyId);
        Assert.Equal(first.Dev.KeyId, second.Dev.KeyId);
        Assert.Equal(2, vault.Versions(SecretName).Count); // Create did not make another

        // The parties authenticate (records verify under the same MAC key), the key (wrapped under v1) is released, the
        // budget is where it was, and the audit chain continues where it stopped.
        var tdp = await As(second, "hospital-a");
        var status = await second.Engine.GetKeyStatusAsync(tdp, new V1.GetKeyStatusRequest { KeyId = key.KeyId }, Ct);
        Assert.Equal(1, status.Version);
        var budgetAfter = await second.Engine.GetBudgetAsync(tdp, new V1.GetBudgetRequest { ContractId = "contract-a" }, Ct);
        Assert.Equal(budgetBefore.EpsilonReserved, budgetAfter.EpsilonReserved, 12);
        using (var released = await ReleaseAsync(second, key.KeyId, "run-2"))
        {
            Assert.Equal(key.ExportKeyBytes(), released.ExportKeyBytes());
        }

        var auditAfter = await second.Engine.ListAuditAsync(tdp, new V1.ListAuditRequest { KeyId = key.KeyId }, Ct);
        Assert.True(auditAfter.Verification.Intact, auditAfter.Verification.Problem);
        Assert.Equal(auditBefore.Records.Select(r => r.Hash), auditAfter.Records.Take(auditBefore.Records.Count).Select(r => r.Hash));
        Assert.Equal(auditBefore.Records[^1].Hash, auditAfter.Records[auditBefore.Records.Count].PreviousHash);
        Assert.Equal("release", auditAfter.Records[^1].Action);

        // An update re-wraps the key under the current version, and it is still released.
        await second.Engine.UpdateKeyPolicyAsync(tdp, new V1.UpdateKeyPolicyRequest { KeyId = key.KeyId, ReleasePolicyJson = second.Dev.PolicyFor(Measurement) }, Ct);
        Assert.Equal(v2, await StoredKekIdAsync(tables, second, key.KeyId));
        using (var released = await ReleaseAsync(second, key.KeyId, "run-3"))
        {
            Assert.Equal(key.ExportKeyBytes(), released.ExportKeyBytes());
        }
    }
}
