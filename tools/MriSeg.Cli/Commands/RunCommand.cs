using System.CommandLine;
using System.Globalization;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;
using Spectre.Console;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg run</c>: the clean-room run through the Trainer — <c>describe</c> (the clean room's measurement and a release
/// policy for it), <c>start</c> (a StartRunRequest as JSON), <c>watch</c>, <c>get</c>, <c>list</c>, <c>cancel</c>.
/// </summary>
internal static class RunCommand
{
    public static Command Create(CliApp app)
    {
        var command = new Command("run", "The clean-room run (phase 5) through the Trainer service.");

        var describe = new Command("describe", "The clean room's party id, code measurement, attestation issuer and a release policy that accepts it.");
        var policyOut = new Option<string?>("--policy-out") { Description = "Write the release policy to FILE (for `mriseg keys import --policy`).", HelpName = "FILE" };
        describe.Options.Add(policyOut);
        app.SetAction(describe, async (context, ct) =>
        {
            var d = await CallAsync(context, "DescribeCleanRoom", (t, c) => t.DescribeCleanRoomAsync(new V1.DescribeCleanRoomRequest(), cancellationToken: c).ResponseAsync, ct);
            if (context.GetValue(policyOut) is { } file)
            {
                if (d.ReleasePolicyJson.Length == 0)
                {
                    throw new CliException("the clean room offers no release policy (hardware attestation: write one for its claims, see docs/examples/keybroker/)");
                }

                await File.WriteAllTextAsync(file, d.ReleasePolicyJson, ct);
            }

            context.Output.WriteResult(Json(d), (console, _) => console.MarkupLine(Markup.Escape(
                $"clean room {d.PartyId}: measurement {d.CodeMeasurement}, issuer {d.AttestationIssuer} ({(d.HardwareBacked ? "hardware" : "development, not hardware-backed")}), device {d.Device}")));
            return ExitCodes.Success;
        });

        var start = new Command("start", "Start a run from a StartRunRequest in protobuf JSON (see `mriseg scenario run` for one made for you); then watch it.");
        var request = new Option<string>("--request") { Description = "The StartRunRequest (JSON: run_id, consumer, datasets, base_model, pipeline, contract_id, output_key_id, dataset_contracts).", Required = true, HelpName = "FILE" };
        var detach = new Option<bool>("--detach") { Description = "Return once started instead of watching to the end." };
        start.Options.Add(request);
        start.Options.Add(detach);
        app.SetAction(start, async (context, ct) =>
        {
            V1.StartRunRequest parsed;
            try
            {
                parsed = JsonParser.Default.Parse<V1.StartRunRequest>(await File.ReadAllTextAsync(context.GetValue(request)!, ct));
            }
            catch (Exception e) when (e is IOException or InvalidProtocolBufferException or InvalidJsonException or UnauthorizedAccessException)
            {
                throw new CliException($"--request {context.GetValue(request)}: {e.Message}", e);
            }

            var info = await CallAsync(context, "StartRun", (t, c) => t.StartRunAsync(parsed, cancellationToken: c).ResponseAsync, ct);
            return context.GetValue(detach) ? Show(context, info) : await WatchAsync(context, info.RunId, ct);
        });

        var runId = new Argument<string>("run-id") { Description = "The run id." };
        var watch = new Command("watch", "Follow a run's progress to its end (exit code 1 unless it succeeds).") { runId };
        app.SetAction(watch, (context, ct) => WatchAsync(context, context.GetValue(runId)!, ct));

        var get = new Command("get", "A run's state, privacy spent and sealed outputs.") { runId };
        app.SetAction(get, async (context, ct) =>
            Show(context, await CallAsync(context, "GetRun", (t, c) => t.GetRunAsync(new V1.GetRunRequest { RunId = context.GetValue(runId)! }, cancellationToken: c).ResponseAsync, ct)));

        var reason = new Option<string>("--reason") { Description = "Why (kept with the run).", DefaultValueFactory = _ => "cancelled from the command line" };
        var cancel = new Command("cancel", "Stop a run at its next step; the privacy already spent stays spent.") { runId, reason };
        app.SetAction(cancel, async (context, ct) =>
            Show(context, await CallAsync(context, "CancelRun", (t, c) => t.CancelRunAsync(new V1.CancelRunRequest { RunId = context.GetValue(runId)!, Reason = context.GetValue(reason)! }, cancellationToken: c).ResponseAsync, ct)));

        var consumer = new Option<string?>("--consumer") { Description = "Only this consumer's runs.", HelpName = "ID" };
        var list = new Command("list", "The runs the Trainer knows.") { consumer };
        app.SetAction(list, async (context, ct) =>
        {
            var runs = await CallAsync(context, "ListRuns", (t, c) => t.ListRunsAsync(new V1.ListRunsRequest { Consumer = context.GetValue(consumer) ?? "" }, cancellationToken: c).ResponseAsync, ct);
            context.Output.WriteResult(Json(runs), (console, _) =>
            {
                var table = new Table().AddColumns("run", "consumer", "state", "phase", "ε", "created");
                foreach (var r in runs.Runs)
                {
                    table.AddRow(Markup.Escape(r.RunId), Markup.Escape(r.Consumer), r.State.ToString(), r.Phase.ToString(),
                        r.Privacy is { } p ? p.Epsilon.ToString("F3", CultureInfo.InvariantCulture) : "", r.Created?.ToDateTimeOffset().ToString("u", CultureInfo.InvariantCulture) ?? "");
                }

                console.Write(table);
            });
            return ExitCodes.Success;
        });

        foreach (var sub in new[] { describe, start, watch, get, cancel, list })
        {
            command.Subcommands.Add(sub);
        }

        return command;
    }

    private static async Task<int> WatchAsync(CommandContext context, string runId, CancellationToken ct)
    {
        await CallAsync(context, "WatchRun", async (t, c) =>
        {
            using var call = t.WatchRun(new V1.WatchRunRequest { RunId = runId }, cancellationToken: c);
            await foreach (var p in call.ResponseStream.ReadAllAsync(c))
            {
                context.Output.Progress(p.Describe());
            }

            return true;
        }, ct);
        var info = await CallAsync(context, "GetRun", (t, c) => t.GetRunAsync(new V1.GetRunRequest { RunId = runId }, cancellationToken: c).ResponseAsync, ct);
        Show(context, info);
        return info.State == V1.JobState.Succeeded ? ExitCodes.Success : ExitCodes.Failure;
    }

    private static int Show(CommandContext context, V1.RunInfo info)
    {
        context.Output.WriteResult(Json(info), (console, _) =>
        {
            console.MarkupLine(Markup.Escape($"run {info.RunId} for {info.Consumer}: {info.State}, phase {info.Phase}" + (info.Error.Length > 0 ? $": {info.Error}" : "")));
            if (info.Privacy is { } p)
            {
                console.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture, $"privacy: ε {p.Epsilon:F3}, δ {p.Delta:G2}, σ {p.Sigma:F3}, q {p.SampleRate:F4}, {p.Steps} steps ({p.Accountant})")));
            }

            foreach (var o in info.Outputs)
            {
                console.MarkupLine(Markup.Escape($"output: {o.Blob.Container}/{o.Blob.Name}"));
            }
        });
        return ExitCodes.Success;
    }

    /// <summary>A contract message as the JSON document <c>--json</c> prints (protobuf's JSON mapping).</summary>
    private static System.Text.Json.Nodes.JsonNode Json(IMessage message) => System.Text.Json.Nodes.JsonNode.Parse(JsonFormatter.Default.Format(message))!;

    private static async Task<T> CallAsync<T>(CommandContext context, string what, Func<V1.Trainer.TrainerClient, CancellationToken, Task<T>> call, CancellationToken ct)
    {
        var endpoint = context.ResolveEndpoints().Get(ServiceCatalog.Trainer);
        using var channel = GrpcChannel.ForAddress(endpoint.Address);
        try
        {
            return await call(new V1.Trainer.TrainerClient(channel), ct);
        }
        catch (RpcException e)
        {
            var hint = e.StatusCode is StatusCode.Unavailable ? $" (trainer at {endpoint.Address}: is the AppHost running? dotnet run --project MriSeg.AppHost)" : "";
            throw new CliException($"{what}: {ErrorText.OneLine(e)}{hint}", e);
        }
    }
}
