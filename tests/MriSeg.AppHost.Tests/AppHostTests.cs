using Aspire.Hosting.Testing;
using Xunit;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using MriSeg.Contracts;
using MriSeg.Contracts.V1;

namespace MriSeg.AppHost.Tests;

[Trait("Category", "App")]
public sealed class AppHostTests(AppHostFixture fixture) : IClassFixture<AppHostFixture>
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
    public async Task An_rpc_not_built_yet_answers_unimplemented_naming_the_capability()
    {
        var client = new Trainer.TrainerClient(fixture.Channel(ServiceCatalog.Trainer));
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
            await client.GetRunAsync(new GetRunRequest { RunId = "r1" }, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal(StatusCode.Unimplemented, e.StatusCode);
        Assert.Contains("/mriseg.v1.Trainer/GetRun", e.Status.Detail);
        Assert.Contains("the clean-room run", e.Status.Detail);
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
}
