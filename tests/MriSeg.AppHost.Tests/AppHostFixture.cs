using Xunit;
using Aspire.Hosting;
using Aspire.Hosting.ApplicationModel;
using Aspire.Hosting.Testing;
using Grpc.Net.Client;
using MriSeg.Contracts;

namespace MriSeg.AppHost.Tests;

/// <summary>The whole-app test classes share one AppHost (a start costs 30-40 s) and run one after the other.</summary>
[CollectionDefinition(Name)]
public sealed class AppHostCollection : ICollectionFixture<AppHostFixture>
{
    public const string Name = "apphost";
}

/// <summary>
/// One AppHost for the whole-app tests (a start costs 30-40 s), with its own temporary storage and
/// endpoints file so it never shares state with a developer's AppHost or a parallel run.
/// </summary>
public sealed class AppHostFixture : IAsyncLifetime
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromMinutes(4);
    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("mriseg-apphost-test-");
    private readonly List<GrpcChannel> _channels = [];

    public DistributedApplication App { get; private set; } = null!;
    public string EndpointsFilePath => Path.Combine(_work.FullName, "endpoints.json");

    /// <summary>The services' key folders (MriSeg:KeysLocation): <c>keybroker/</c> and Packaging's owner keys in <c>keys/</c>.</summary>
    public string KeysLocation => Path.Combine(_work.FullName, "state");
    public TimeSpan TimeToHealthy { get; private set; }

    public async ValueTask InitializeAsync()
    {
        using var cts = new CancellationTokenSource(StartTimeout);
        var builder = await DistributedApplicationTestingBuilder.CreateAsync<Projects.MriSeg_AppHost>(
            [
                $"--MriSeg:StorageLocation={Path.Combine(_work.FullName, "azurite")}",
                $"--MriSeg:EndpointsFile={EndpointsFilePath}",
                $"--MriSeg:KeysLocation={KeysLocation}",
                // The tests drive the scenario themselves (ScenarioAppTests), with small sizes.
                "--MRISEG_SCENARIO=off",
            ],
            cts.Token);
        App = await builder.BuildAsync(cts.Token);
        var started = System.Diagnostics.Stopwatch.StartNew();
        await App.StartAsync(cts.Token);
        foreach (var service in ServiceCatalog.All)
        {
            await App.ResourceNotifications.WaitForResourceHealthyAsync(service.Name, cts.Token);
        }

        TimeToHealthy = started.Elapsed;
    }

    public GrpcChannel Channel(string service)
    {
        var channel = GrpcChannel.ForAddress(App.GetEndpoint(service, ServiceCatalog.GrpcEndpoint));
        _channels.Add(channel);
        return channel;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var channel in _channels)
        {
            channel.Dispose();
        }

        await App.DisposeAsync();
        try
        {
            _work.Delete(recursive: true);
        }
        catch (IOException)
        {
            // Azurite may still be closing its files; the folder is in the temp directory anyway.
        }
    }
}
