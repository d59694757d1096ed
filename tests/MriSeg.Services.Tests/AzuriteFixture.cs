using MriSeg.Testing;
using System.ComponentModel;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Xunit;

namespace MriSeg.Services.Tests;

/// <summary>
/// Azurite blob and table storage for in-process service tests: started from the npm install the AppHost build
/// makes (<c>MriSeg.AppHost/azurite/node_modules/.bin</c>), on free loopback ports, with a temporary data folder,
/// stopped (with its folder) on dispose. Where Node.js or that install is missing, <see cref="SkipReason"/> says so
/// and tests call <see cref="Require"/> to skip.
/// </summary>
public sealed class AzuriteFixture : IAsyncLifetime
{
    // The emulator's published development account (documented by Microsoft; not a secret).
    private const string Account = "devstoreaccount1";
    private const string AccountKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(30);

    private readonly List<Process> processes = [];
    private string? location;

    public string? SkipReason { get; private set; }

    /// <summary>Azurite's data folder (every blob and table it stores), while running.</summary>
    public string? Location => location;

    public string BlobConnectionString { get; private set; } = "";

    public string TableConnectionString { get; private set; } = "";

    /// <summary>Skips the calling test when Azurite could not run here.</summary>
    public void Require()
    {
        if (SkipReason is not null)
        {
            Assert.Skip(SkipReason);
        }
    }

    public async ValueTask InitializeAsync()
    {
        var bin = Path.Combine(RepositoryLayout.Root, "MriSeg.AppHost", "azurite", "node_modules", ".bin");
        if (!NodeRuns())
        {
            SkipReason = "Node.js is not on PATH: the storage tests run Azurite from npm (install Node.js 20+ and build MriSeg.AppHost).";
            return;
        }

        if (!File.Exists(Path.Combine(bin, "azurite-blob")) || !File.Exists(Path.Combine(bin, "azurite-table")))
        {
            SkipReason = $"Azurite is not installed in {bin}: building MriSeg.AppHost installs it from npm (dotnet build MriSeg.AppHost).";
            return;
        }

        location = Directory.CreateTempSubdirectory("mriseg-azurite-").FullName;
        var blobPort = await StartAsync(Path.Combine(bin, "azurite-blob"), "--blobHost", "--blobPort");
        var tablePort = await StartAsync(Path.Combine(bin, "azurite-table"), "--tableHost", "--tablePort");
        BlobConnectionString = ConnectionString("BlobEndpoint", blobPort);
        TableConnectionString = ConnectionString("TableEndpoint", tablePort);
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var process in processes)
        {
            try
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                    await process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(10)).Token);
                }
            }
            catch (Exception e) when (e is InvalidOperationException or Win32Exception or OperationCanceledException)
            {
            }
            finally
            {
                process.Dispose();
            }
        }

        if (location is not null)
        {
            try
            {
                Directory.Delete(location, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    // 127.0.0.1, not localhost: with a host name Azurite expects the account in the host name.
    private static string ConnectionString(string endpoint, int port) =>
        $"DefaultEndpointsProtocol=http;AccountName={Account};AccountKey={AccountKey};{endpoint}=http://127.0.0.1:{port}/{Account};";

    /// <summary>Starts one Azurite service on a free port; retries with another port if it loses a race for it.</summary>
    private async Task<int> StartAsync(string program, string hostFlag, string portFlag)
    {
        var lastOutput = "";
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var port = FreePort();
            var start = new ProcessStartInfo(program)
            {
                ArgumentList = { hostFlag, "127.0.0.1", portFlag, port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--location", location!, "--skipApiVersionCheck", "--silent" },
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
            var process = Process.Start(start) ?? throw new InvalidOperationException($"{program} did not start");
            process.OutputDataReceived += (_, e) => { if (e.Data is not null) { output.Enqueue(e.Data); } };
            process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { output.Enqueue(e.Data); } };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            processes.Add(process);

            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < StartTimeout && !process.HasExited)
            {
                switch (await ListenerAsync(port))
                {
                    case Listener.Azurite:
                        return port;
                    case Listener.Other:
                        // Another server (a test's Kestrel) took the port between FreePort and Azurite's bind: Azurite
                        // cannot listen there, so try another port rather than hand out a connection string to the wrong server.
                        process.Kill(entireProcessTree: true);
                        await process.WaitForExitAsync();
                        output.Enqueue($"port {port} is served by another program");
                        break;
                }

                await Task.Delay(100);
            }

            lastOutput = string.Join(" | ", output.TakeLast(5));
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                throw new InvalidOperationException($"{Path.GetFileName(program)} did not listen on 127.0.0.1:{port} within {StartTimeout.TotalSeconds} s: {lastOutput}");
            }
        }

        throw new InvalidOperationException($"{Path.GetFileName(program)} exited three times before listening: {lastOutput}");
    }

    private enum Listener
    {
        None,
        Azurite,
        Other,
    }

    /// <summary>Who answers HTTP on the port: Azurite (its responses carry "Server: Azurite-…"), another server, or nobody yet.</summary>
    private static async Task<Listener> ListenerAsync(int port)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        try
        {
            using var response = await http.GetAsync(new Uri($"http://127.0.0.1:{port}/"));
            return response.Headers.Server.ToString().StartsWith("Azurite", StringComparison.Ordinal) ? Listener.Azurite : Listener.Other;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return Listener.None;
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static bool NodeRuns()
    {
        try
        {
            using var node = Process.Start(new ProcessStartInfo("node", "--version") { RedirectStandardOutput = true, UseShellExecute = false });
            if (node is null)
            {
                return false;
            }

            node.StandardOutput.ReadToEnd();
            return node.WaitForExit(10_000) && node.ExitCode == 0;
        }
        catch (Win32Exception)
        {
            return false;
        }
    }
}
