using System.Security.Cryptography;
using Azure.Storage.Blobs;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.KeyBroker;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Packaging;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>
/// Packaging's HandOffKey against the KeyBroker, both in-process over Azurite: a package sealed to the broker's key is handed
/// off as its owner (registered on first use with the operator's admin token), the broker holds it as the owner's, and an
/// attested clean room obtains the very key that opens the package.
/// </summary>
public sealed class PackagingHandOffTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private const string AdminToken = "handoff-operator-token";
    private const string Issuer = "http://localhost/dev-attestation";
    private const double Delta = 1e-5;

    private readonly AzuriteFixture azurite;
    private readonly string brokerKeys = Directory.CreateTempSubdirectory("mriseg-handoff-broker-").FullName;
    private readonly string ownerKeys = Directory.CreateTempSubdirectory("mriseg-handoff-owners-").FullName;
    private readonly string suffix = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly string pipeline = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly ServiceHost<KeyBrokerService> broker;
    private readonly V1.KeyBroker.KeyBrokerClient brokerClient;
    private readonly List<IDisposable> disposables = [];

    public PackagingHandOffTests(AzuriteFixture azurite)
    {
        this.azurite = azurite;
        azurite.Require();
        broker = new ServiceHost<KeyBrokerService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["KeyBroker:KeysDirectory"] = brokerKeys,
            ["KeyBroker:CreateKeys"] = "true",
            ["KeyBroker:Registration"] = "AdminToken",
            ["KeyBroker:AdminToken"] = AdminToken,
            ["KeyBroker:DevelopmentAuthority:Enabled"] = "true",
            ["KeyBroker:DevelopmentAuthority:Issuer"] = Issuer,
        });
        brokerClient = new V1.KeyBroker.KeyBrokerClient(broker.CreateChannel());
    }

    public void Dispose()
    {
        foreach (var d in disposables)
        {
            d.Dispose();
        }

        broker.Dispose();
        Directory.Delete(brokerKeys, recursive: true);
        Directory.Delete(ownerKeys, recursive: true);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private string Owner => "hospital-" + suffix;

    private string Consumer => "consumer-" + suffix;

    private string CleanRoom => "cleanroom-" + suffix;

    private string ContractId => "handoff-" + suffix;

    /// <summary>A Packaging service whose KeyBroker client reaches the in-process broker (or, with <paramref name="reachBroker"/> false, the address in settings).</summary>
    private V1.Packaging.PackagingClient Packaging(string? adminToken = AdminToken, bool reachBroker = true, Dictionary<string, string>? extra = null)
    {
        var settings = new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["Packaging:KeysDirectory"] = ownerKeys,
            ["Packaging:CreateOwnerKeys"] = "true",
            ["Packaging:AllowLocalPaths"] = "false",
            ["Packaging:KeyBrokerAddress"] = "http://localhost",
        };
        if (adminToken is not null)
        {
            settings["Packaging:KeyBrokerAdminToken"] = adminToken;
        }

        foreach (var (key, value) in extra ?? [])
        {
            settings[key] = value;
        }

        var host = new ServiceHost<PackagingService>(settings, reachBroker
            ? services => services.AddHttpClient(nameof(V1.KeyBroker.KeyBrokerClient)).ConfigurePrimaryHttpMessageHandler(() => broker.Server.CreateHandler())
            : null);
        disposables.Add(host);
        return new V1.Packaging.PackagingClient(host.CreateChannel());
    }

    private KeyBrokerParty Party(string id, SigningKey? key = null)
    {
        key ??= SigningKey.Generate();
        disposables.Add(key);
        return new KeyBrokerParty(brokerClient, id, key);
    }

    /// <summary>The broker's public key, as a registered party learns it.</summary>
    private async Task<string> BrokerKeyPemAsync()
    {
        var consumer = Party(Consumer);
        await consumer.RegisterAsync(PartyRole.DataConsumer, AdminToken, cancellationToken: Ct);
        return (await brokerClient.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), consumer.Credentials(), cancellationToken: Ct)).PublicKeyPem;
    }

    /// <summary>Seals a random blob; <paramref name="recipientPem"/> null: wrapped to the KeyBroker by the service itself.</summary>
    private async Task<(V1.SealResult Result, byte[] Plaintext)> SealAsync(V1.Packaging.PackagingClient packaging, string? recipientPem, string owner, bool alsoAskForBroker = false)
    {
        var plaintext = RandomNumberGenerator.GetBytes(50_000);
        var container = new BlobServiceClient(azurite.BlobConnectionString).GetBlobContainerClient("handoff-src-" + suffix);
        await container.CreateIfNotExistsAsync(cancellationToken: Ct);
        var name = $"shard-{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}.bin";
        await container.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(plaintext), Ct);
        using var call = packaging.Seal(new V1.SealRequest
        {
            Owner = owner,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = container.Name, Name = name } },
            ContentType = V1.ContentType.Dataset,
            RecipientPublicKeyPem = recipientPem ?? "",
            RecipientIsKeyBroker = recipientPem is null || alsoAskForBroker,
        }, cancellationToken: Ct);
        V1.SealResult? result = null;
        await foreach (var message in call.ResponseStream.ReadAllAsync(Ct))
        {
            result = message.Result ?? result;
        }

        return (result ?? throw new InvalidOperationException("Seal ended without a result"), plaintext);
    }

    private string Policy() => broker.Services.GetRequiredService<DevelopmentAttestationAuthority>().PolicyFor(measurement);

    private V1.ContractTerms Contract(string? contractId = null) => new()
    {
        ContractId = contractId ?? ContractId,
        DatasetId = "brats-" + suffix,
        AllowedConsumers = { Consumer },
        Expires = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow.AddDays(30)),
        MaxEpsilonPerRun = 8,
        MaxEpsilonTotal = 20,
        Delta = Delta,
        AllowedPipelineSha256 = { pipeline },
    };

    private V1.HandOffKeyRequest HandOff(V1.SealResult sealedResult, string? owner = null, V1.KeyPurpose purpose = V1.KeyPurpose.Dataset) => new()
    {
        Owner = owner ?? Owner,
        KeyId = sealedResult.Package.KeyId,
        WrappedDataKey = sealedResult.WrappedDataKey,
        WrapAlgorithm = sealedResult.WrapAlgorithm,
        ReleasePolicyJson = Policy(),
        Contract = purpose == V1.KeyPurpose.Dataset ? Contract() : null,
        Purpose = purpose,
    };

    private static async Task<RpcException> Fails(Func<Task> call) => await Assert.ThrowsAsync<RpcException>(call);

    [Fact]
    public async Task A_handed_off_key_belongs_to_its_owner_at_the_broker_and_the_attested_clean_room_gets_the_key_that_opens_the_package()
    {
        var packaging = Packaging();
        var (sealedResult, plaintext) = await SealAsync(packaging, await BrokerKeyPemAsync(), Owner);

        var response = await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct);
        Assert.Equal(sealedResult.Package.KeyId, response.KeyId);
        Assert.Equal(ContractId, response.ContractId);

        // The broker holds it as the owner's: the owner (its key from Packaging's key folder) reads its status and audit.
        var owner = Party(Owner, SigningKey.Load(Path.Combine(ownerKeys, Owner + ".key")));
        var status = await brokerClient.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = response.KeyId }, owner.Credentials(), cancellationToken: Ct);
        Assert.Equal(Owner, status.Owner);
        Assert.Equal(V1.KeyPurpose.Dataset, status.Purpose);
        Assert.Equal(1, status.Version);
        Assert.Equal(ContractId, status.Contract.ContractId);
        Assert.Equal(Owner, status.Contract.Owner);
        var audit = await owner.ReadAuditAsync(response.KeyId, Ct);
        Assert.True(audit.Intact);
        var import = Assert.Single(audit.Records);
        Assert.Equal(("import", Owner, V1.Party.DataProvider), (import.Action, import.Actor, import.ActorRole));

        // The attested clean room obtains the key, and it opens the sealed blob to the original bytes.
        var ccr = Party(CleanRoom);
        await ccr.RegisterAsync(PartyRole.CleanRoom, AdminToken, cancellationToken: Ct);
        using var http = broker.CreateClient();
        using var released = await ccr.ReleaseWithAttestationAsync(response.KeyId,
            new ReleaseRun("run-1", ContractId, Consumer, pipeline,
                new V1.PrivacyParameters { Epsilon = 2.1, Delta = Delta, Sigma = 1, SampleRate = 0.01, Steps = 1000, Accountant = "rdp" }),
            ccr.DevelopmentAttestation(http, Issuer, measurement), cancellationToken: Ct);
        var blob = new BlobServiceClient(azurite.BlobConnectionString)
            .GetBlobContainerClient(sealedResult.Package.Blob.Container).GetBlobClient(sealedResult.Package.Blob.Name);
        await using var sealedStream = await blob.OpenReadAsync(cancellationToken: Ct);
        using var signer = SigningKey.Load(Path.Combine(ownerKeys, Owner + ".key"));
        using var opened = await SealedPackage.OpenToMemoryAsync(sealedStream, released.Key, SignerCheck.Expect(signer.PublicKey), cancellationToken: Ct);
        Assert.Equal(plaintext, opened.ToArray());

        // A second hand-off of the same key: the broker already holds it.
        var again = await Fails(async () => await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct));
        Assert.Equal(StatusCode.AlreadyExists, again.StatusCode);
        Assert.Contains("already imported", again.Status.Detail);
    }

    [Fact]
    public async Task Packaging_wraps_to_the_key_broker_itself_when_asked_and_the_hand_off_takes_that_key()
    {
        var packaging = Packaging();
        var (sealedResult, _) = await SealAsync(packaging, recipientPem: null, Owner);
        var wrapped = WrappedKey.FromJson(System.Text.Encoding.UTF8.GetString(sealedResult.WrappedDataKey.Span));
        Assert.Equal(sealedResult.Package.KeyId, wrapped.KeyId);
        Assert.Equal(sealedResult.Package.KeyId, (await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct)).KeyId);

        // Two recipients at once is a mistake, refused before anything is sealed.
        var both = await Fails(async () => await SealAsync(packaging, await BrokerKeyPemAsync(), Owner, alsoAskForBroker: true));
        Assert.Equal(StatusCode.InvalidArgument, both.StatusCode);
        Assert.Contains("not both", both.Status.Detail);
    }

    [Fact]
    public async Task Bad_hand_offs_get_clear_statuses_and_the_broker_keeps_nothing()
    {
        var packaging = Packaging();
        var brokerPem = await BrokerKeyPemAsync();
        var (sealedResult, _) = await SealAsync(packaging, brokerPem, Owner);

        async Task<RpcException> HandOffFails(V1.HandOffKeyRequest request) =>
            await Fails(async () => await packaging.HandOffKeyAsync(request, cancellationToken: Ct));

        var empty = await HandOffFails(new V1.HandOffKeyRequest());
        Assert.Equal((StatusCode.InvalidArgument, true), (empty.StatusCode, empty.Status.Detail.Contains("owner is required", StringComparison.Ordinal)));

        var badId = HandOff(sealedResult);
        badId.KeyId = "not-a-key-id";
        Assert.Equal(StatusCode.InvalidArgument, (await HandOffFails(badId)).StatusCode);

        var noPurpose = HandOff(sealedResult);
        noPurpose.Purpose = V1.KeyPurpose.Unspecified;
        Assert.Contains("purpose is required", (await HandOffFails(noPurpose)).Status.Detail);

        var otherKeyId = HandOff(sealedResult);
        otherKeyId.KeyId = new string('a', 32);
        var mismatch = await HandOffFails(otherKeyId);
        Assert.Equal(StatusCode.InvalidArgument, mismatch.StatusCode);
        Assert.Contains("holds key", mismatch.Status.Detail);

        var conflictingOwner = HandOff(sealedResult);
        conflictingOwner.Contract.Owner = "somebody-else";
        Assert.Contains("differ", (await HandOffFails(conflictingOwner)).Status.Detail);

        // The broker's own checks come back with their code and reason.
        var untrusted = HandOff(sealedResult);
        untrusted.ReleasePolicyJson = DevelopmentAttestationAuthority.PolicyFor("https://attestation.invalid", measurement);
        var policy = await HandOffFails(untrusted);
        Assert.Equal(StatusCode.InvalidArgument, policy.StatusCode);
        Assert.Contains("the KeyBroker says", policy.Status.Detail);
        Assert.Contains("not an attestation authority this broker trusts", policy.Status.Detail);

        // A key wrapped to some other key (the caller's own recipient key) is not the broker's to unwrap.
        using var recipient = RecipientPrivateKey.GenerateEcP256();
        var (wrongRecipient, _) = await SealAsync(packaging, recipient.PublicKey.ExportPem(), Owner);
        var notForBroker = await HandOffFails(HandOff(wrongRecipient));
        Assert.Equal(StatusCode.InvalidArgument, notForBroker.StatusCode);
        Assert.Contains("not to the broker's key", notForBroker.Status.Detail);

        // The owner is a data provider at the broker now: a model key is the consumer's to hand off.
        var (model, _) = await SealAsync(packaging, brokerPem, Owner);
        var role = await HandOffFails(HandOff(model, purpose: V1.KeyPurpose.Model));
        Assert.Equal(StatusCode.FailedPrecondition, role.StatusCode);
        Assert.Contains("role never changes", role.Status.Detail);

        // None of it reached the broker's keys: the owner's first valid hand-off still works.
        Assert.Equal(sealedResult.Package.KeyId, (await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct)).KeyId);
        var garbage = HandOff(sealedResult);
        garbage.WrappedDataKey = ByteString.CopyFromUtf8("{not json");
        Assert.Equal(StatusCode.InvalidArgument, (await HandOffFails(garbage)).StatusCode);
    }

    [Fact]
    public async Task A_first_hand_off_without_the_admin_token_the_broker_needs_is_failed_precondition_naming_the_setting()
    {
        var brokerPem = await BrokerKeyPemAsync();
        var (sealedResult, _) = await SealAsync(Packaging(), brokerPem, "newcomer-" + suffix);
        var packaging = Packaging(adminToken: null);

        var e = await Fails(async () => await packaging.HandOffKeyAsync(HandOff(sealedResult, owner: "newcomer-" + suffix), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("Packaging:KeyBrokerAdminToken", e.Status.Detail);
    }

    [Fact]
    public async Task An_owner_registered_at_the_broker_under_another_key_is_failed_precondition()
    {
        var brokerPem = await BrokerKeyPemAsync();
        // The owner registered itself with a key of its own, not the one in Packaging's key folder.
        await Party(Owner).RegisterAsync(PartyRole.DataProvider, AdminToken, cancellationToken: Ct);
        var packaging = Packaging();
        var (sealedResult, _) = await SealAsync(packaging, brokerPem, Owner);

        var e = await Fails(async () => await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("registered with another key", e.Status.Detail);
    }

    [Fact]
    public async Task An_unreachable_key_broker_is_unavailable()
    {
        var brokerPem = await BrokerKeyPemAsync();
        var (sealedResult, _) = await SealAsync(Packaging(), brokerPem, Owner);
        var packaging = Packaging(reachBroker: false, extra: new()
        {
            ["Packaging:KeyBrokerAddress"] = $"http://127.0.0.1:{ServiceHost<PackagingService>.DeadPort}",
            ["Packaging:KeyBrokerTimeoutSeconds"] = "3",
        });

        var e = await Fails(async () => await packaging.HandOffKeyAsync(HandOff(sealedResult), cancellationToken: Ct));
        Assert.Equal(StatusCode.Unavailable, e.StatusCode);
        Assert.Contains("the KeyBroker cannot be reached", e.Status.Detail);
    }
}
