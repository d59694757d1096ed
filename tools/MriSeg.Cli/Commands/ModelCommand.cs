using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Grpc.Core;
using Grpc.Net.Client;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using Spectre.Console;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg model pull|list|show</c>: the model consumer's registry at the ModelVault. <c>pull</c> has the vault download a
/// run's sealed outputs, verify their signatures and attestation, obtain the consumer's output key and register the model.
/// </summary>
internal static class ModelCommand
{
    public static Command Create(CliApp app)
    {
        var command = new Command("model", "The model consumer's registry at the ModelVault: pull a clean-room run's model, list and show registered models.");
        command.Subcommands.Add(Pull(app));
        command.Subcommands.Add(List(app));
        command.Subcommands.Add(Show(app));
        return command;
    }

    private static Command Pull(CliApp app)
    {
        var run = new Option<string>("--run") { Description = "The clean-room run whose outputs to pull (its outputs/<run>/ in the consumer's container).", HelpName = "ID", Required = true };
        var expect = new Option<string>("--expect-measurement")
        {
            Description = "The trainer code measurement (hex) the outputs' attestation must name; needed unless the vault has ModelVault:AllowedMeasurements.",
            HelpName = "HEX",
        };
        var command = new Command("pull", "Pull, verify, decrypt and register a run's model at the ModelVault; shows progress and prints the record.") { run, expect };
        var caller = VaultCallerOptions.AddTo(command);
        app.SetAction(command, async (context, ct) =>
        {
            var runId = context.GetValue(run)!;
            if (!Ids.IsName(runId))
            {
                throw new CliException($"--run '{runId}': not a run id ({Ids.NameRule})");
            }

            var measurement = context.GetValue(expect);
            if (measurement is not null && !(measurement.Length is >= 16 and <= 256 && measurement.All(char.IsAsciiHexDigit)))
            {
                throw new CliException($"--expect-measurement '{measurement}': not a code measurement (16 to 256 hex digits)");
            }

            using var vault = ModelVaultConnection.Open(context, caller);
            var record = await vault.CallAsync($"pulling run {runId}", async () =>
            {
                using var call = vault.Client.PullModel(new V1.PullModelRequest { RunId = runId, ExpectedCodeMeasurement = measurement ?? "" }, cancellationToken: ct);
                V1.ModelRecord? registered = null;
                await foreach (var message in call.ResponseStream.ReadAllAsync(ct))
                {
                    if (message.Progress is { State: V1.JobState.Running or V1.JobState.Succeeded } p && p.Message.Length > 0)
                    {
                        context.Output.Progress(p.Message);
                    }

                    registered = message.Model ?? registered;
                }

                return registered ?? throw new CliException($"pulling run {runId}: the ModelVault's stream ended without the model's record");
            });
            context.Output.WriteResult(ModelView.Of(record), Render);
            return ExitCodes.Success;
        });
        return command;
    }

    private static Command List(CliApp app)
    {
        var command = new Command("list", "The models registered at the ModelVault, newest first.");
        var caller = VaultCallerOptions.AddTo(command);
        app.SetAction(command, async (context, ct) =>
        {
            using var vault = ModelVaultConnection.Open(context, caller);
            var response = await vault.CallAsync("listing models", () => vault.Client.ListModelsAsync(new V1.ListModelsRequest(), cancellationToken: ct).ResponseAsync);
            var views = new ModelList([.. response.Models.Select(ModelView.Of)]);
            context.Output.WriteResult(views, (console, list) =>
            {
                if (list.Models.Count == 0)
                {
                    console.MarkupLine("no models registered (mriseg model pull --run ID registers a run's model)");
                    return;
                }

                var table = new Table().Border(TableBorder.Simple);
                foreach (var column in new[] { "model", "run", "registered (UTC)", "ε", "δ", "dice", "trained on" })
                {
                    table.AddColumn(column);
                }

                foreach (var m in list.Models)
                {
                    table.AddRow(
                        Markup.Escape(m.ModelId), Markup.Escape(m.RunId), m.Registered?.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture) ?? "",
                        m.Privacy is null ? "-" : Num(m.Privacy.Epsilon), m.Privacy is null ? "-" : m.Privacy.Delta.ToString("G3", CultureInfo.InvariantCulture),
                        m.Metrics.TryGetValue("dice", out var dice) ? Num(dice) : "-",
                        Markup.Escape(string.Join(", ", m.Datasets.Select(d => d.Provider))));
                }

                console.Write(table);
            });
            return ExitCodes.Success;
        });
        return command;
    }

    private static Command Show(CliApp app)
    {
        var id = new Argument<string>("id") { Description = "The model's id (mriseg model list shows them)." };
        var command = new Command("show", "One registered model's record: provenance, privacy spent, datasets, metrics.") { id };
        var caller = VaultCallerOptions.AddTo(command);
        app.SetAction(command, async (context, ct) =>
        {
            var modelId = context.GetValue(id)!;
            if (!Ids.IsName(modelId))
            {
                throw new CliException($"'{modelId}': not a model id ({Ids.NameRule})");
            }

            using var vault = ModelVaultConnection.Open(context, caller);
            var record = await vault.CallAsync($"model {modelId}", () => vault.Client.GetModelAsync(new V1.GetModelRequest { ModelId = modelId }, cancellationToken: ct).ResponseAsync);
            context.Output.WriteResult(ModelView.Of(record), Render);
            return ExitCodes.Success;
        });
        return command;
    }

    private static void Render(IAnsiConsole console, ModelView m)
    {
        console.MarkupLine($"model [bold]{Markup.Escape(m.ModelId)}[/] (run {Markup.Escape(m.RunId)}, registered {m.Registered?.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture) ?? "?"} UTC)");
        var grid = new Grid().AddColumn(new GridColumn().PadLeft(2).PadRight(2)).AddColumn();
        void Row(string name, string value) => grid.AddRow(Markup.Escape(name), Markup.Escape(value));
        Row("privacy", m.Privacy is not { } p ? "not stated (non-private?)"
            : string.Create(CultureInfo.InvariantCulture, $"ε = {Num(p.Epsilon)}, δ = {p.Delta:G3} ({p.Accountant}; σ = {Num(p.Sigma)}, q = {Num(p.SampleRate)}, {p.Steps} steps)"));
        Row("trained on", m.Datasets.Count == 0 ? "-" : string.Join("; ", m.Datasets.Select(d => $"{d.Provider}: {d.Patients} patients, {d.Slices} slices")));
        Row("metrics", m.Metrics.Count == 0 ? "-" : string.Join(", ", m.Metrics.OrderBy(x => x.Key, StringComparer.Ordinal).Select(x => $"{x.Key} {Num(x.Value)}")));
        Row("input", m.Modalities.Count == 0 ? "?" : $"{string.Join(", ", m.Modalities)} -> {string.Join(", ", m.LabelChannels)}");
        Row("code measurement", m.CodeMeasurement);
        Row("weights SHA-256", m.ModelSha256);
        console.Write(grid);
    }

    private static string Num(double value) => value.ToString("0.####", CultureInfo.InvariantCulture);

    internal sealed record ModelList(IReadOnlyList<ModelView> Models);

    /// <summary>The <c>--json</c> form of a <see cref="V1.ModelRecord"/>.</summary>
    internal sealed record ModelView(
        string ModelId, string RunId, DateTimeOffset? Registered, string CodeMeasurement, string ModelSha256, PrivacyView? Privacy,
        IReadOnlyList<DatasetView> Datasets, IReadOnlyDictionary<string, double> Metrics, IReadOnlyList<string> Modalities, IReadOnlyList<string> LabelChannels,
        JsonElement? Architecture)
    {
        public static ModelView Of(V1.ModelRecord r) => new(
            r.ModelId, r.RunId, r.Registered?.ToDateTimeOffset(), r.CodeMeasurement, r.ModelSha256,
            r.Privacy is { } p ? new PrivacyView(p.Epsilon, p.Delta, p.Sigma, p.SampleRate, p.Steps, p.Accountant) : null,
            [.. r.Datasets.Select(d => new DatasetView(d.DatasetId, d.Provider, d.Patients, d.Slices))],
            r.Metrics.Where(x => double.IsFinite(x.Value)).OrderBy(x => x.Key, StringComparer.Ordinal).ToDictionary(x => x.Key, x => x.Value),
            [.. r.Modalities], [.. r.LabelChannels], Parse(r.Architecture));

        private static JsonElement? Parse(string json)
        {
            if (string.IsNullOrWhiteSpace(json))
            {
                return null;
            }

            try
            {
                using var document = JsonDocument.Parse(json);
                return document.RootElement.Clone();
            }
            catch (JsonException)
            {
                return null;
            }
        }
    }

    internal sealed record PrivacyView(double Epsilon, double Delta, double Sigma, double SampleRate, long Steps, string Accountant);

    internal sealed record DatasetView(string DatasetId, string Provider, int Patients, int Slices);
}

/// <summary>A client to the ModelVault; calls that fail become one line naming the vault's address where it is unreachable.</summary>
internal sealed class ModelVaultConnection : IDisposable
{
    /// <summary>The services' message limit (MriSeg.ServiceDefaults' GrpcHostingExtensions.MaxMessageBytes): an inline volume and its mask fit.</summary>
    public const int MaxMessageBytes = 64 * 1024 * 1024;

    private readonly GrpcChannel _channel;
    private readonly SigningKey _key;

    private ModelVaultConnection(GrpcChannel channel, ResolvedEndpoint endpoint, SigningKey key, string party)
    {
        _channel = channel;
        _key = key;
        Endpoint = endpoint;
        Client = new V1.ModelVault.ModelVaultClient(channel.WithPartyTokens(key, party, PartyTokens.ModelVaultAudience));
    }

    public V1.ModelVault.ModelVaultClient Client { get; }

    public ResolvedEndpoint Endpoint { get; }

    /// <summary>A connection whose calls are signed by the caller's party key (the vault authenticates every call).</summary>
    public static ModelVaultConnection Open(CommandContext context, VaultCallerOptions caller)
    {
        var (party, keyPath) = caller.Resolve(context);
        SigningKey key;
        try
        {
            key = SigningKey.Load(keyPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or SealedPackageException)
        {
            throw new CliException($"--party-key {keyPath}: {(e is FileNotFoundException or DirectoryNotFoundException ? "no such file" : e.Message)} "
                + $"(the ModelVault accepts calls signed by the consumer's party key, or by a key listed in its ModelVault:Callers)", e);
        }

        var endpoint = context.ResolveEndpoints().Get(ServiceCatalog.ModelVault);
        var channel = GrpcChannel.ForAddress(endpoint.Address, new GrpcChannelOptions { MaxReceiveMessageSize = MaxMessageBytes, MaxSendMessageSize = MaxMessageBytes });
        return new ModelVaultConnection(channel, endpoint, key, party);
    }

    public async Task<T> CallAsync<T>(string what, Func<Task<T>> call)
    {
        try
        {
            return await call();
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled)
        {
            throw new OperationCanceledException($"{what}: cancelled", e);
        }
        catch (RpcException e)
        {
            throw new CliException($"{what}: {ErrorText.OneLine(e)}{Hint(e)}", e);
        }
    }

    public void Dispose()
    {
        _channel.Dispose();
        _key.Dispose();
    }

    private string Hint(RpcException e) => e.StatusCode switch
    {
        // The client's own failure to reach the vault carries a debug exception; the vault's UNAVAILABLE (e.g. the KeyBroker down) does not.
        StatusCode.Unavailable or StatusCode.DeadlineExceeded when e.Status.DebugException is not null =>
            $" (modelvault at {GrpcAddress.Display(Endpoint.Address)}, from the {ServicesCommand.Text(Endpoint.Source)}: is the AppHost running? dotnet run --project MriSeg.AppHost)",
        StatusCode.NotFound when e.Status.Detail.Contains("no model", StringComparison.Ordinal) => " (mriseg model list shows the registered models)",
        StatusCode.Unauthenticated => " (--party and --party-key name who calls: the vault's consumer with its party key, or a caller listed in ModelVault:Callers)",
        StatusCode.InvalidArgument when e.Status.Detail.Contains("expected_code_measurement", StringComparison.Ordinal) => " (pass --expect-measurement HEX: the Trainer's code measurement)",
        _ => "",
    };
}

/// <summary>
/// Who calls the ModelVault: <c>--party</c> (default the consumer <c>tdc</c>, or <c>$MRISEG_PARTY</c>) and <c>--party-key</c>
/// (default <c>$MRISEG_PARTY_KEY</c>, else <c>.mriseg/keys/&lt;party&gt;.key</c> of the repository around the current folder,
/// where the services keep the consumer's key in development).
/// </summary>
internal sealed record VaultCallerOptions(Option<string?> Party, Option<string?> KeyPath)
{
    public const string DefaultParty = "tdc";

    public static VaultCallerOptions AddTo(Command command)
    {
        var party = new Option<string?>("--party") { Description = $"The party the calls are made as (default ${{MRISEG_PARTY}}, else {DefaultParty}).", HelpName = "ID" };
        var key = new Option<string?>("--party-key")
        {
            Description = "Its signing key, PKCS#8 PEM (default $MRISEG_PARTY_KEY, else .mriseg/keys/<party>.key of this repository).",
            HelpName = "FILE",
        };
        command.Options.Add(party);
        command.Options.Add(key);
        return new VaultCallerOptions(party, key);
    }

    public (string Party, string KeyPath) Resolve(CommandContext context)
    {
        var party = context.GetValue(Party) ?? (context.Environment.GetEnvironmentVariable("MRISEG_PARTY") is { Length: > 0 } p ? p : DefaultParty);
        if (!Ids.IsPartyId(party))
        {
            throw new CliException($"--party '{party}': not a party id ({Ids.PartyIdRule})");
        }

        var key = context.GetValue(KeyPath)
            ?? (context.Environment.GetEnvironmentVariable("MRISEG_PARTY_KEY") is { Length: > 0 } k ? k : null)
            ?? Path.Combine(DevelopmentFolders.Resolve(System.Environment.CurrentDirectory, "keys"), party + ".key");
        return (party, Path.GetFullPath(key));
    }
}
