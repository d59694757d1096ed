using System.Net;
using System.Net.Sockets;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;

namespace MriSeg.Services.Tests;

/// <summary>
/// A service in-process on the test server, with storage connection strings that point at a port
/// where nothing listens (most tests need no storage, and some check what happens without it), unless
/// settings say otherwise.
/// </summary>
public sealed class ServiceHost<TService> : WebApplicationFactory<TService> where TService : class
{
    public static readonly int DeadPort = FindClosedPort();

    private readonly IReadOnlyDictionary<string, string> settings;
    private readonly Action<IServiceCollection>? configureServices;
    private readonly Lazy<string> keyBrokerKeys = new(() => Directory.CreateTempSubdirectory("mriseg-host-keybroker-").FullName);

    public ServiceHost()
        : this(new Dictionary<string, string>())
    {
    }

    /// <param name="settings">Configuration applied after the defaults (e.g. real storage connection strings).</param>
    /// <param name="configureServices">Changes to the service's registrations after its own (e.g. a client's handler into another in-process service).</param>
    public ServiceHost(IReadOnlyDictionary<string, string> settings, Action<IServiceCollection>? configureServices = null)
    {
        this.settings = settings;
        this.configureServices = configureServices;
    }

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseEnvironment("Testing");
        builder.UseSetting("ConnectionStrings:blobs", AzuriteStyle("BlobEndpoint"));
        builder.UseSetting("ConnectionStrings:tables", AzuriteStyle("TableEndpoint"));
        // The KeyBroker needs a folder for its own keys outside Development: a temporary one (deleted on dispose).
        builder.UseSetting("KeyBroker:KeysDirectory", keyBrokerKeys.Value);
        builder.UseSetting("KeyBroker:CreateKeys", "true");
        foreach (var (key, value) in settings)
        {
            builder.UseSetting(key, value);
        }

        if (configureServices is not null)
        {
            builder.ConfigureTestServices(configureServices);
        }
    }

    protected override void Dispose(bool disposing)
    {
        base.Dispose(disposing);
        if (disposing && keyBrokerKeys.IsValueCreated)
        {
            try
            {
                Directory.Delete(keyBrokerKeys.Value, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    public GrpcChannel CreateChannel() =>
        GrpcChannel.ForAddress(Server.BaseAddress, new GrpcChannelOptions { HttpHandler = Server.CreateHandler() });

    private static string AzuriteStyle(string endpoint) =>
        $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;{endpoint}=http://127.0.0.1:{DeadPort}/devstoreaccount1;";

    private static int FindClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
