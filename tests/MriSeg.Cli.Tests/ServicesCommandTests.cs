using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using MriSeg.Contracts;

namespace MriSeg.Cli.Tests;

/// <summary>`mriseg services` run in-process against closed ports and against a real in-process gRPC server.</summary>
public sealed class ServicesCommandTests
{
    private static readonly string[] AllGrpcServices = [.. ServiceCatalog.All.Select(s => s.GrpcService)];

    [Fact]
    public async Task Against_nothing_listening_it_exits_1_with_json_saying_unreachable()
    {
        var port = Ports.Closed();

        var run = await CliRun.RunAsync(["services", "--json", .. EveryServiceAt($"http://127.0.0.1:{port}")]);

        Assert.True(run.ExitCode == 1, run.ToString());
        var reports = run.Json().EnumerateArray().ToList();
        Assert.Equal(ServiceCatalog.All.Select(s => s.Name), reports.Select(r => r.GetProperty("service").GetString()));
        Assert.All(reports, r =>
        {
            Assert.Equal("UNREACHABLE", r.GetProperty("status").GetString());
            Assert.False(r.GetProperty("ok").GetBoolean());
            Assert.Equal("override", r.GetProperty("source").GetString());
            Assert.Equal($"http://127.0.0.1:{port}", r.GetProperty("address").GetString());
            Assert.Equal(JsonValueKind.Null, r.GetProperty("latencyMs").ValueKind);
        });
        var reason = Assert.Single(run.StderrLines);
        Assert.StartsWith("error: 5 of 5 services unreachable", reason);
    }

    [Fact]
    public async Task A_server_that_never_answers_is_unreachable_after_the_deadline()
    {
        // Accepts connections (the kernel's backlog does) but never speaks HTTP/2.
        using var silent = new TcpListener(IPAddress.Loopback, 0);
        silent.Start();
        var port = ((IPEndPoint)silent.LocalEndpoint).Port;
        var stopwatch = Stopwatch.StartNew();

        var run = await CliRun.RunAsync(["services", "--json", "--timeout", "0.3", .. EveryServiceAt($"http://127.0.0.1:{port}")]);

        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.All(run.Json().EnumerateArray(), r =>
        {
            Assert.Equal("UNREACHABLE", r.GetProperty("status").GetString());
            Assert.Equal("no answer within 0.3 s", r.GetProperty("error").GetString());
        });
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(5), $"took {stopwatch.Elapsed}");
    }

    [Fact]
    public async Task A_serving_server_that_lists_the_service_is_reported_serving()
    {
        await using var server = await GrpcTestServer.StartAsync([Trainer]);
        var closed = $"http://127.0.0.1:{Ports.Closed()}";

        var run = await CliRun.RunAsync(
            ["services", "--json", .. EveryServiceAt(closed, except: ServiceCatalog.Trainer), "--endpoint", $"trainer={server.Address}"]);

        Assert.True(run.ExitCode == 1, run.ToString());
        var trainer = Report(run, ServiceCatalog.Trainer);
        Assert.Equal("SERVING", trainer.GetProperty("status").GetString());
        Assert.Equal("listed", trainer.GetProperty("reflection").GetString());
        Assert.Equal(Trainer, trainer.GetProperty("grpcService").GetString());
        Assert.True(trainer.GetProperty("ok").GetBoolean());
        Assert.True(trainer.GetProperty("latencyMs").GetDouble() > 0);
        Assert.Equal(JsonValueKind.Null, trainer.GetProperty("error").ValueKind);
        Assert.Equal("UNREACHABLE", Report(run, ServiceCatalog.Packaging).GetProperty("status").GetString());
        // Only the four others are named as unreachable; addresses given by hand get no AppHost hint.
        var reason = Assert.Single(run.StderrLines);
        Assert.Contains("4 of 5 services unreachable", reason);
        Assert.DoesNotContain("trainer", reason);
        Assert.DoesNotContain("AppHost", reason);
    }

    [Fact]
    public async Task All_five_serving_exits_0_with_nothing_on_stderr()
    {
        await using var server = await GrpcTestServer.StartAsync(AllGrpcServices);

        var run = await CliRun.RunAsync(["services", "--json", .. EveryServiceAt(server.Address.ToString())]);

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal("", run.Stderr);
        Assert.All(run.Json().EnumerateArray(), r =>
        {
            Assert.Equal("SERVING", r.GetProperty("status").GetString());
            Assert.Equal("listed", r.GetProperty("reflection").GetString());
        });
    }

    [Fact]
    public async Task A_different_service_at_the_address_fails_through_reflection()
    {
        await using var server = await GrpcTestServer.StartAsync([Trainer]);

        var run = await CliRun.RunAsync(["services", "--json", .. EveryServiceAt(server.Address.ToString())]);

        Assert.True(run.ExitCode == 1, run.ToString());
        var packaging = Report(run, ServiceCatalog.Packaging);
        Assert.Equal("SERVING", packaging.GetProperty("status").GetString());
        Assert.Equal("not-listed", packaging.GetProperty("reflection").GetString());
        Assert.False(packaging.GetProperty("ok").GetBoolean());
        Assert.Contains("4 of 5 services not ready", Assert.Single(run.StderrLines));
    }

    [Fact]
    public async Task A_not_serving_health_status_fails()
    {
        await using var server = await GrpcTestServer.StartAsync(AllGrpcServices, healthy: false);

        var run = await CliRun.RunAsync(["status", "--json", .. EveryServiceAt(server.Address.ToString())]);

        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.All(run.Json().EnumerateArray(), r => Assert.Equal("NOT_SERVING", r.GetProperty("status").GetString()));
        Assert.Contains("NOT_SERVING", Assert.Single(run.StderrLines));
    }

    [Fact]
    public async Task Without_json_it_prints_a_table_for_people()
    {
        await using var server = await GrpcTestServer.StartAsync(AllGrpcServices);

        var run = await CliRun.RunAsync(["services", .. EveryServiceAt(server.Address.ToString())]);

        Assert.True(run.ExitCode == 0, run.ToString());
        foreach (var service in ServiceCatalog.All)
        {
            var row = Assert.Single(run.Stdout.Split('\n'), l => l.Contains($" {service.Name} ", StringComparison.Ordinal));
            Assert.Contains("SERVING", row);
            Assert.Contains(service.GrpcService, row);
            Assert.Contains("--endpoint", row);
        }

        Assert.DoesNotContain("\u001b[", run.Stdout);
    }

    [Fact]
    public async Task Wait_polls_until_a_late_server_is_serving()
    {
        var port = Ports.Closed();
        var stopwatch = Stopwatch.StartNew();
        var run = CliRun.RunAsync(["services", "--json", "--wait", "20", .. EveryServiceAt($"http://127.0.0.1:{port}")]);
        await Task.Delay(1500, TestContext.Current.CancellationToken);
        Assert.False(run.IsCompleted, "services --wait returned before the server was up");

        await using var server = await GrpcTestServer.StartAsync(AllGrpcServices, port: port);
        var result = await run;

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.True(stopwatch.Elapsed < TimeSpan.FromSeconds(15), $"took {stopwatch.Elapsed}");
        Assert.Contains(result.StderrLines, l => l.StartsWith("waiting for services: 0 of 5 serving", StringComparison.Ordinal));
        Assert.Equal(5, result.Json().GetArrayLength());
    }

    [Fact]
    public async Task Wait_gives_up_after_its_limit()
    {
        var port = Ports.Closed();
        var stopwatch = Stopwatch.StartNew();

        var run = await CliRun.RunAsync(["services", "--json", "--wait", "1", .. EveryServiceAt($"http://127.0.0.1:{port}")]);

        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.InRange(stopwatch.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(10));
        Assert.StartsWith("error: after waiting 1 s, 5 of 5 services unreachable", run.StderrLines[^1]);
        Assert.Equal(5, run.Json().GetArrayLength());
    }

    private static string Trainer => ServiceCatalog.Get(ServiceCatalog.Trainer).GrpcService;

    private static JsonElement Report(CliRun run, string service) =>
        run.Json().EnumerateArray().Single(r => r.GetProperty("service").GetString() == service);

    private static IEnumerable<string> EveryServiceAt(string url, string? except = null) =>
        ServiceCatalog.All.Where(s => s.Name != except).SelectMany(s => new[] { "--endpoint", $"{s.Name}={url}" });
}
