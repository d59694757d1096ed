using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging;
using MriSeg.Contracts.V1;

namespace MriSeg.Cli.Tests;

/// <summary>
/// A real Kestrel server on 127.0.0.1 (cleartext HTTP/2, like the services) serving grpc.health.v1,
/// server reflection and the chosen MriSeg gRPC services, whose RPCs answer UNIMPLEMENTED.
/// </summary>
internal sealed class GrpcTestServer : IAsyncDisposable
{
    private readonly WebApplication app;

    private GrpcTestServer(WebApplication app, Uri address)
    {
        this.app = app;
        Address = address;
    }

    public Uri Address { get; }

    /// <param name="services">Which MriSeg services to host: their gRPC names as ServiceCatalog spells them.</param>
    /// <param name="healthy">False: a failing health check, so grpc.health.v1 answers NOT_SERVING.</param>
    /// <param name="port">0: any free port.</param>
    public static async Task<GrpcTestServer> StartAsync(IReadOnlyCollection<string> services, bool healthy = true, int port = 0)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, port, o => o.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks()
            .AddCheck("test", () => healthy ? HealthCheckResult.Healthy() : HealthCheckResult.Unhealthy("test says no"));

        var app = builder.Build();
        foreach (var name in services)
        {
            Map(app, name);
        }

        app.MapGrpcReflectionService();
        app.MapGrpcHealthChecksService();
        await app.StartAsync(TestContext.Current.CancellationToken);

        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        return new GrpcTestServer(app, new Uri(address));
    }

    public async ValueTask DisposeAsync()
    {
        await app.StopAsync();
        await app.DisposeAsync();
    }

    private static void Map(WebApplication app, string grpcService)
    {
        Action<WebApplication> map = Stubs.TryGetValue(grpcService, out var found)
            ? found
            : throw new ArgumentException($"No stub for {grpcService}.", nameof(grpcService));
        map(app);
    }

    private static readonly Dictionary<string, Action<WebApplication>> Stubs = new()
    {
        [Preprocess.Descriptor.FullName] = a => a.MapGrpcService<PreprocessStub>(),
        [Packaging.Descriptor.FullName] = a => a.MapGrpcService<PackagingStub>(),
        [KeyBroker.Descriptor.FullName] = a => a.MapGrpcService<KeyBrokerStub>(),
        [Trainer.Descriptor.FullName] = a => a.MapGrpcService<TrainerStub>(),
        [ModelVault.Descriptor.FullName] = a => a.MapGrpcService<ModelVaultStub>(),
    };

    private sealed class PreprocessStub : Preprocess.PreprocessBase;
    private sealed class PackagingStub : Packaging.PackagingBase;
    private sealed class KeyBrokerStub : KeyBroker.KeyBrokerBase;
    private sealed class TrainerStub : Trainer.TrainerBase;
    private sealed class ModelVaultStub : ModelVault.ModelVaultBase;
}
