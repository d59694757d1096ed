using MriSeg.Testing;
using System.Net;
using System.Text.Json;
using Grpc.Core;
using Grpc.Health.V1;
using MriSeg.Contracts;
using V1 = MriSeg.Contracts.V1;
using Xunit;

namespace MriSeg.Services.Tests;

public sealed class ServiceHostingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task The_last_pending_service_is_built_its_rpcs_refuse_an_empty_request_with_a_reason_not_unimplemented()
    {
        // The ModelVault was the last [PendingCapability] service: its RPCs now check their requests (before any storage).
        using var caller = new TestVaultCaller();
        using var modelVault = new ServiceHost<MriSeg.ModelVault.ModelVaultService>(caller.With([]));
        var client = caller.Client(modelVault);
        foreach (var call in new Func<Task>[]
        {
            () => client.SegmentAsync(new(), cancellationToken: Ct).ResponseAsync,
            () => client.GetModelAsync(new(), cancellationToken: Ct).ResponseAsync,
            () => client.CreateOutputKeyAsync(new(), cancellationToken: Ct).ResponseAsync,
        })
        {
            var e = await Assert.ThrowsAsync<RpcException>(call);
            Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
            Assert.False(string.IsNullOrWhiteSpace(e.Status.Detail));
        }

        Assert.Null(typeof(MriSeg.ModelVault.ModelVaultService).GetCustomAttributes(typeof(MriSeg.ServiceDefaults.PendingCapabilityAttribute), false).SingleOrDefault());
    }

    [Fact]
    public async Task Health_reports_unreachable_storage_and_liveness_stays_up()
    {
        using var host = new ServiceHost<MriSeg.KeyBroker.KeyBrokerService>();
        using var http = host.CreateClient();

        var health = await http.GetAsync("/health", Ct);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
        var report = JsonDocument.Parse(await health.Content.ReadAsStringAsync(Ct)).RootElement;
        Assert.Equal("Unhealthy", report.GetProperty("status").GetString());
        var blob = report.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "blob-storage");
        Assert.Equal("Unhealthy", blob.GetProperty("status").GetString());
        Assert.Contains($"127.0.0.1:{ServiceHost<MriSeg.KeyBroker.KeyBrokerService>.DeadPort}", blob.GetProperty("description").GetString());

        var alive = await http.GetAsync("/alive", Ct);
        Assert.Equal(HttpStatusCode.OK, alive.StatusCode);

        var grpcHealth = await new Health.HealthClient(host.CreateChannel()).CheckAsync(new HealthCheckRequest(), cancellationToken: Ct);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing, grpcHealth.Status);
    }

    [Fact]
    public async Task The_trainer_loads_libtorch_at_start_and_reports_its_backend_in_health()
    {
        using var host = new ServiceHost<MriSeg.Trainer.TrainerService>();
        using var http = host.CreateClient();
        // Overall unhealthy here (no storage), but the torch entry stands on its own.
        var response = await http.GetAsync("/health", Ct);
        var report = JsonDocument.Parse(await response.Content.ReadAsStringAsync(Ct)).RootElement;
        var torch = report.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == "torch");
        Assert.Equal("Healthy", torch.GetProperty("status").GetString());
        Assert.StartsWith("cpu backend on cpu", torch.GetProperty("description").GetString());
    }

    [Fact]
    public void A_service_without_storage_configuration_refuses_to_start_and_says_what_to_set()
    {
        using var host = new ServiceHost<MriSeg.Trainer.TrainerService>()
            .WithWebHostBuilder(b => b.UseSetting("ConnectionStrings:blobs", ""));
        var e = Assert.Throws<InvalidOperationException>(() => host.CreateClient());
        Assert.Contains("ConnectionStrings:blobs is not set", e.Message);
        Assert.Contains("ConnectionStrings__blobs", e.Message);
    }

    [Fact]
    public void The_catalogs_development_ports_are_the_ports_each_service_configures()
    {
        var root = RepositoryLayout.Root;
        foreach (var service in ServiceCatalog.All)
        {
            var folder = Directory.GetDirectories(Path.Combine(root, "services"))
                .Single(d => string.Equals(Path.GetFileName(d), service.Name, StringComparison.OrdinalIgnoreCase));
            using var settings = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "appsettings.json")));
            var endpoints = settings.RootElement.GetProperty("Kestrel").GetProperty("Endpoints");
            Assert.Equal(service.DevGrpcPort, new Uri(endpoints.GetProperty(ServiceCatalog.GrpcEndpoint).GetProperty("Url").GetString()!).Port);
            Assert.Equal("Http2", endpoints.GetProperty(ServiceCatalog.GrpcEndpoint).GetProperty("Protocols").GetString());
            Assert.Equal(service.DevHttpPort, new Uri(endpoints.GetProperty(ServiceCatalog.HttpEndpoint).GetProperty("Url").GetString()!).Port);
            Assert.Equal("Http1", endpoints.GetProperty(ServiceCatalog.HttpEndpoint).GetProperty("Protocols").GetString());
        }
    }
}
