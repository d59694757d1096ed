using Aspire.Hosting.Testing;
using Xunit;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using MriSeg.Contracts;
using MriSeg.Contracts.V1;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.SelfCheck;
using MriSeg.Sealing;

namespace MriSeg.AppHost.Tests;

[Trait("Category", "App")]
[Collection(AppHostCollection.Name)]
public sealed class AppHostTests(AppHostFixture fixture)
{
    public static TheoryData<string> Services => [.. ServiceCatalog.All.Select(s => s.Name)];

    [Theory]
    [MemberData(nameof(Services))]
    public async Task Every_service_reports_serving_over_grpc_health(string service)
    {
        var client = new Health.HealthClient(fixture.Channel(service));
        var reply = await client.CheckAsync(new HealthCheckRequest(), deadline: DateTime.UtcNow.AddSeconds(20),
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, reply.Status);
    }

    [Theory]
    [MemberData(nameof(Services))]
    public async Task Every_service_lists_its_contract_through_reflection(string service)
    {
        var client = new ServerReflection.ServerReflectionClient(fixture.Channel(service));
        using var call = client.ServerReflectionInfo(cancellationToken: TestContext.Current.CancellationToken);
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" }, TestContext.Current.CancellationToken);
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(TestContext.Current.CancellationToken));
        var names = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();

        Assert.Contains(ServiceCatalog.Get(service).GrpcService, names);
        Assert.Contains("grpc.health.v1.Health", names);
    }

    [Fact]
    public async Task The_trainer_answers_a_run_it_does_not_know_with_not_found()
    {
        var client = new Trainer.TrainerClient(fixture.Channel(ServiceCatalog.Trainer));
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await client.GetRunAsync(new GetRunRequest { RunId = "r1" }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Contains("'r1'", e.Status.Detail);
    }

    [Fact]
    public async Task Azurite_blob_and_table_storage_take_writes_through_the_services_connection_strings()
    {
        var ct = TestContext.Current.CancellationToken;
        var blobs = new BlobServiceClient(await fixture.App.GetConnectionStringAsync(ServiceCatalog.BlobConnection, ct));
        var container = blobs.GetBlobContainerClient("apphost-test");
        await container.CreateIfNotExistsAsync(cancellationToken: ct);
        var blob = container.GetBlobClient("hello.txt");
        await blob.UploadAsync(BinaryData.FromString("sealed later"), overwrite: true, ct);
        Assert.Equal("sealed later", (await blob.DownloadContentAsync(ct)).Value.Content.ToString());

        var tables = new TableServiceClient(await fixture.App.GetConnectionStringAsync(ServiceCatalog.TableConnection, ct));
        var table = tables.GetTableClient("apphosttest");
        await table.CreateIfNotExistsAsync(ct);
        await table.UpsertEntityAsync(new TableEntity("p", "r") { ["Value"] = 42 }, cancellationToken: ct);
        Assert.Equal(42, (await table.GetEntityAsync<TableEntity>("p", "r", cancellationToken: ct)).Value.GetInt32("Value"));
    }

    [Fact]
    public async Task The_apphost_writes_an_endpoints_file_whose_addresses_answer()
    {
        var ct = TestContext.Current.CancellationToken;
        // The writer runs once every service is healthy, which the fixture already waited for.
        for (var i = 0; i < 50 && !File.Exists(fixture.EndpointsFilePath); i++)
        {
            await Task.Delay(100, ct);
        }

        var file = EndpointsFile.Read(fixture.EndpointsFilePath);
        Assert.True(file.WriterIsRunning());
        foreach (var service in ServiceCatalog.All)
        {
            var grpc = new Uri(file.Services[service.Name][ServiceCatalog.GrpcEndpoint]);
            using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(grpc);
            var reply = await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest(), cancellationToken: ct);
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, reply.Status);
        }
    }

    [Fact]
    public async Task The_security_self_check_passes_against_the_running_key_broker()
    {
        var ct = TestContext.Current.CancellationToken;
        using var http = new HttpClient();
        var authority = new Uri(fixture.App.GetEndpoint(ServiceCatalog.KeyBroker, ServiceCatalog.HttpEndpoint), "/dev-attestation");
        var check = new SecuritySelfCheck(new KeyBroker.KeyBrokerClient(fixture.Channel(ServiceCatalog.KeyBroker)), http,
            new SecuritySelfCheckOptions { AttestationUrl = authority });

        var report = await check.RunAsync(cancellationToken: ct);

        Assert.True(report.Passed, string.Join("\n", report.Attempts.Where(a => !a.Passed).Select(a => $"{a.Name}: {a.Outcome} {a.Status} {a.Reason} ({a.Note})")));
        Assert.Single(report.Attempts, a => a.Expected == SecuritySelfCheck.Granted && a.Outcome == SecuritySelfCheck.Granted);
        Assert.True(report.Attempts.Count(a => a.Outcome == SecuritySelfCheck.Denied) >= 11);
    }

    [Fact]
    public async Task Packaging_hands_a_sealed_key_to_the_key_broker_found_by_service_discovery()
    {
        var ct = TestContext.Current.CancellationToken;
        var suffix = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(4));
        var owner = "hospital-" + suffix;
        var broker = new KeyBroker.KeyBrokerClient(fixture.Channel(ServiceCatalog.KeyBroker));

        // A registered party learns the broker's key (trust on first use: the AppHost runs the services in Development).
        using var consumerKey = SigningKey.Generate();
        var consumer = new KeyBrokerParty(broker, "consumer-" + suffix, consumerKey);
        await consumer.RegisterAsync(PartyRole.DataConsumer, cancellationToken: ct);
        var brokerKey = await broker.GetBrokerKeyAsync(new GetBrokerKeyRequest(), consumer.Credentials(), cancellationToken: ct);

        var blobs = new BlobServiceClient(await fixture.App.GetConnectionStringAsync(ServiceCatalog.BlobConnection, ct));
        var container = blobs.GetBlobContainerClient("handoff-" + suffix);
        await container.CreateIfNotExistsAsync(cancellationToken: ct);
        await container.GetBlobClient("shard.bin").UploadAsync(BinaryData.FromBytes(new byte[4096]), ct);
        var packaging = new Packaging.PackagingClient(fixture.Channel(ServiceCatalog.Packaging));
        SealResult? sealedResult = null;
        using (var call = packaging.Seal(new SealRequest
        {
            Owner = owner,
            Source = new Location { Blob = new BlobRef { Container = container.Name, Name = "shard.bin" } },
            ContentType = MriSeg.Contracts.V1.ContentType.Model,
            RecipientPublicKeyPem = brokerKey.PublicKeyPem,
        }, cancellationToken: ct))
        {
            await foreach (var message in call.ResponseStream.ReadAllAsync(ct))
            {
                sealedResult = message.Result ?? sealedResult;
            }
        }

        Assert.NotNull(sealedResult);
        var policy = MriSeg.KeyRelease.Attestation.DevelopmentAttestationAuthority.PolicyFor(
            new Uri(fixture.App.GetEndpoint(ServiceCatalog.KeyBroker, ServiceCatalog.HttpEndpoint), "/dev-attestation").ToString(), new string('a', 64));
        var handedOff = await packaging.HandOffKeyAsync(new HandOffKeyRequest
        {
            Owner = owner,
            KeyId = sealedResult.Package.KeyId,
            WrappedDataKey = sealedResult.WrappedDataKey,
            WrapAlgorithm = sealedResult.WrapAlgorithm,
            ReleasePolicyJson = policy,
            Purpose = KeyPurpose.Model,
        }, cancellationToken: ct);
        Assert.Equal(sealedResult.Package.KeyId, handedOff.KeyId);

        // The owner (its key in Packaging's key folder under MriSeg:KeysLocation) sees its key at the broker.
        using var ownerKey = SigningKey.Load(Path.Combine(fixture.KeysLocation, "keys", owner + ".key"));
        var status = await broker.GetKeyStatusAsync(new GetKeyStatusRequest { KeyId = handedOff.KeyId },
            new KeyBrokerParty(broker, owner, ownerKey).Credentials(), cancellationToken: ct);
        Assert.Equal((owner, KeyPurpose.Model, 1), (status.Owner, status.Purpose, status.Version));
    }
}
