using System.CommandLine;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Probing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary><c>mriseg services</c> (alias <c>status</c>): is each service up, and is it the right one?</summary>
internal static class ServicesCommand
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    public static Command Create(CliApp app)
    {
        var wait = new Option<double?>("--wait")
        {
            Description = "Poll for up to SECONDS until every service is serving.",
            HelpName = "SECONDS",
        };
        wait.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<double?>() is < 0 or double.NaN)
            {
                r.AddError("--wait must be zero or more seconds.");
            }
        });

        var timeout = new Option<double>("--timeout")
        {
            Description = "Deadline of each check, in seconds.",
            HelpName = "SECONDS",
            DefaultValueFactory = _ => 3,
        };
        timeout.Validators.Add(r =>
        {
            if (r.GetValueOrDefault<double>() is <= 0 or > 600 or double.NaN)
            {
                r.AddError("--timeout must be more than 0 and at most 600 seconds.");
            }
        });

        var command = new Command("services", "Health, reflection and latency of the five MriSeg services (exit code 1 unless all serve).")
        {
            wait,
            timeout,
        };
        command.Aliases.Add("status");

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var waitFor = context.GetValue(wait) is { } seconds ? TimeSpan.FromSeconds(seconds) : (TimeSpan?)null;
            var reports = await CheckAsync(context, TimeSpan.FromSeconds(context.GetValue(timeout)), waitFor, cancellationToken);

            context.Output.WriteResult(reports, Render);
            if (reports.All(r => r.Ok))
            {
                return ExitCodes.Success;
            }

            context.Output.Error(Reason(reports, waitFor));
            return ExitCodes.Failure;
        });
        return command;
    }

    private static async Task<IReadOnlyList<ServiceReport>> CheckAsync(
        CommandContext context, TimeSpan timeout, TimeSpan? waitFor, CancellationToken cancellationToken)
    {
        async Task<IReadOnlyList<ServiceReport>> Once() =>
            await Task.WhenAll(context.ResolveEndpoints().Endpoints.Select(e => ServiceProbe.ProbeAsync(e, timeout, cancellationToken)));

        if (waitFor is not { } limit)
        {
            return await Once();
        }

        var until = DateTime.UtcNow + limit;
        return await context.Output.StatusAsync($"checking services (waiting up to {limit.TotalSeconds:0.#} s)", async status =>
        {
            while (true)
            {
                var reports = await Once();
                var remaining = until - DateTime.UtcNow;
                if (reports.All(r => r.Ok) || remaining <= TimeSpan.Zero)
                {
                    return reports;
                }

                var pending = reports.Where(r => !r.Ok).Select(r => r.Service);
                status($"waiting for services: {reports.Count(r => r.Ok)} of {reports.Count} serving (not yet: {string.Join(", ", pending)})");
                await Task.Delay(remaining < PollInterval ? remaining : PollInterval, cancellationToken);
            }
        });
    }

    /// <summary>One line: what is wrong, and the likely fix.</summary>
    internal static string Reason(IReadOnlyList<ServiceReport> reports, TimeSpan? waited)
    {
        var parts = new List<string>();
        var unreachable = reports.Where(r => r.Status == HealthState.Unreachable).ToList();
        if (unreachable.Count > 0)
        {
            var part = $"{unreachable.Count} of {reports.Count} services unreachable ({string.Join(", ", unreachable.Select(r => r.Service))})";
            if (unreachable.Any(r => r.Source != EndpointSource.Override))
            {
                part += ": is the AppHost running? dotnet run --project MriSeg.AppHost";
            }

            parts.Add(part);
        }

        var unwell = reports.Where(r => !r.Ok && r.Status != HealthState.Unreachable).ToList();
        if (unwell.Count > 0)
        {
            parts.Add($"{unwell.Count} of {reports.Count} services not ready: "
                + string.Join(", ", unwell.Select(r => $"{r.Service} ({r.Error ?? r.Status.ToWire()})")));
        }

        var reason = string.Join("; ", parts);
        return waited is { } w ? $"after waiting {w.TotalSeconds:0.#} s, {reason}" : reason;
    }

    private static void Render(IAnsiConsole console, IReadOnlyList<ServiceReport> reports)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Service").AddColumn("Address").AddColumn("From").AddColumn("Health")
            .AddColumn("Reflection").AddColumn(new TableColumn("Latency").RightAligned());
        var notes = reports.Any(r => r.Error is not null);
        if (notes)
        {
            table.AddColumn("Note");
        }

        foreach (var r in reports)
        {
            var colour = r.Ok ? "green" : r.Status == HealthState.Unreachable ? "red" : "yellow";
            List<string> cells =
            [
                Markup.Escape(r.Service),
                Markup.Escape(GrpcAddress.Display(r.Address)),
                Markup.Escape(Text(r.Source)),
                $"[{colour}]{r.Status.ToWire()}[/]",
                r.Reflection switch
                {
                    ReflectionState.Listed => $"[green]{Markup.Escape(r.GrpcService)}[/]",
                    ReflectionState.NotListed => $"[yellow]not {Markup.Escape(r.GrpcService)}[/]",
                    ReflectionState.Unavailable => "[yellow]unavailable[/]",
                    _ => "[grey]-[/]",
                },
                r.LatencyMs is { } ms ? $"{ms:0.0} ms" : "[grey]-[/]",
            ];
            if (notes)
            {
                cells.Add(Markup.Escape(r.Error ?? ""));
            }

            table.AddRow([.. cells]);
        }

        console.Write(table);
    }

    internal static string Text(EndpointSource source) => source switch
    {
        EndpointSource.Override => "--endpoint",
        EndpointSource.File => "endpoints file",
        _ => "development port",
    };
}
