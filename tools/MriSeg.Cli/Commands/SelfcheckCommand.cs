using System.CommandLine;
using Grpc.Net.Client;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;
using MriSeg.KeyRelease.SelfCheck;
using Spectre.Console;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg selfcheck security</c>: a thin host over KeyRelease's <see cref="SecuritySelfCheck"/>, run against the
/// KeyBroker the endpoints resolve to. One line per attempt; exit code 0 only when every attempt came out as expected.
/// </summary>
internal static class SelfcheckCommand
{
    /// <summary>The development authority's path below the KeyBroker's HTTP endpoint (its default issuer's path).</summary>
    public const string DevelopmentAuthorityPath = "/dev-attestation";

    public static Command Create(CliApp app)
    {
        var command = new Command("selfcheck", "Checks of the running system.");
        command.Subcommands.Add(Security(app));
        return command;
    }

    private static Command Security(CliApp app)
    {
        var attestationUrl = new Option<string>("--attestation-url")
        {
            Description = "Where the KeyBroker's development attestation authority answers (default: the keybroker http endpoint of the endpoints file, "
                + $"else http://localhost:{ServiceCatalog.Get(ServiceCatalog.KeyBroker).DevHttpPort}, + {DevelopmentAuthorityPath}).",
            HelpName = "URL",
        };
        var admin = new Option<string>("--admin-token")
        {
            Description = $"The operator's admin token, where the KeyBroker needs it to register the throwaway parties (default: ${KeysCommand.AdminTokenVariable}).",
            HelpName = "TOKEN",
        };
        var command = new Command("security",
            "Attack the running KeyBroker with throwaway parties and keys: every attempt must be DENIED for its reason, the legitimate release GRANTED (exit 1 otherwise).");
        command.Options.Add(attestationUrl);
        command.Options.Add(admin);

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var endpoint = context.ResolveEndpoints().Get(ServiceCatalog.KeyBroker);
            var authority = AttestationUrl(app, context.GetValue(attestationUrl));
            context.Output.Verbose($"keybroker: {GrpcAddress.Display(endpoint.Address)} ({ServicesCommand.Text(endpoint.Source)}); development authority: {authority}");
            using var channel = GrpcChannel.ForAddress(endpoint.Address);
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
            var check = new SecuritySelfCheck(new V1.KeyBroker.KeyBrokerClient(channel), http, new SecuritySelfCheckOptions
            {
                AttestationUrl = authority,
                AdminToken = context.GetValue(admin) is { Length: > 0 } token ? token
                    : Environment.GetEnvironmentVariable(KeysCommand.AdminTokenVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null,
            });

            SecuritySelfCheckReport report;
            try
            {
                var done = 0;
                report = await context.Output.StatusAsync($"security self-check against the KeyBroker at {GrpcAddress.Display(endpoint.Address)}", status =>
                    check.RunAsync(attempt => status($"{++done} attempts made; last: {attempt.Name}: {attempt.Outcome}"), cancellationToken));
            }
            catch (SelfCheckSetupException e)
            {
                var unreachable = e.InnerException is Grpc.Core.RpcException rpc ? KeysCommand.Hint(rpc, endpoint) : "";
                throw new CliException($"selfcheck security: {e.Message}{unreachable}", e);
            }

            context.Output.WriteResult(report, Render);
            if (report.Passed)
            {
                return ExitCodes.Success;
            }

            var failed = report.Attempts.Where(a => !a.Passed).ToList();
            context.Output.Error($"{failed.Count} of {report.Attempts.Count} attempts did not come out as expected: {string.Join("; ", failed.Select(a => $"{a.Name}: {a.Note}"))}");
            return ExitCodes.Failure;
        });
        return command;
    }

    /// <summary>--attestation-url, else the endpoints file's keybroker http endpoint, else its development port; plus the authority's path.</summary>
    private static Uri AttestationUrl(CliApp app, string? given)
    {
        if (given is not null)
        {
            return GrpcAddress.TryParse(given, out var explicitUrl)
                ? explicitUrl
                : throw new CliException($"--attestation-url '{given}': not an absolute http:// or https:// URL");
        }

        var http = $"http://localhost:{ServiceCatalog.Get(ServiceCatalog.KeyBroker).DevHttpPort}";
        if (app.Environment.LocateEndpointsFile() is { } location && File.Exists(location.Path))
        {
            try
            {
                var file = EndpointsFile.Read(location.Path);
                if (file.WriterIsRunning() && file.Services.TryGetValue(ServiceCatalog.KeyBroker, out var endpoints)
                    && endpoints.TryGetValue(ServiceCatalog.HttpEndpoint, out var url) && GrpcAddress.TryParse(url, out var fromFile))
                {
                    http = GrpcAddress.Display(fromFile);
                }
            }
            catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
            {
                // The gRPC resolution reports a broken file; the development port is the fallback here.
            }
        }

        return new Uri(http.TrimEnd('/') + DevelopmentAuthorityPath);
    }

    private static void Render(IAnsiConsole console, SecuritySelfCheckReport report)
    {
        var lines = new List<string>();
        var widest = 0;
        var number = 0;
        foreach (var a in report.Attempts)
        {
            number++;
            var verdict = a.Passed ? "[green]PASS[/]" : "[red]FAIL[/]";
            var outcome = a.Outcome == a.Expected ? $"[bold]{a.Outcome,-8}[/]" : $"[red bold]{a.Outcome,-8}[/]";
            var line = $"{number,2} {verdict} {outcome} {Markup.Escape(a.Status),-19} {Markup.Escape(a.Name)} [grey]— {Markup.Escape(a.Reason)}[/]";
            if (a.Note is not null)
            {
                line += $" [red]({Markup.Escape(a.Note)})[/]";
            }

            lines.Add(line);
            widest = Math.Max(widest, Markup.Remove(line).Length);
        }

        // One line per attempt, also when stdout is a file: no wrapping at the console's width (a terminal may still fold it).
        console.Profile.Width = Math.Max(console.Profile.Width, widest + 1);
        foreach (var line in lines)
        {
            console.MarkupLine(line);
        }

        var passed = report.Attempts.Count(a => a.Passed);
        console.MarkupLine(report.Passed
            ? $"[green]passed[/]: all {report.Attempts.Count} attempts came out as expected ({report.Seconds.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)} s; parties {Markup.Escape(report.Setup.Provider)}, {Markup.Escape(report.Setup.CleanRoom)}, …)"
            : $"[red]FAILED[/]: {passed} of {report.Attempts.Count} attempts as expected ({report.Seconds.ToString("0.0", System.Globalization.CultureInfo.InvariantCulture)} s)");
    }
}
