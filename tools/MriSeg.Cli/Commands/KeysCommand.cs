using System.CommandLine;
using Grpc.Core;
using Grpc.Net.Client;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Contracts;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Policy;
using MriSeg.Sealing;
using Spectre.Console;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg keys import|release|budget|audit|register</c>: a party's side of the KeyBroker (KeyRelease's
/// <see cref="KeyBrokerParty"/>). Every call carries a party token signed with <c>--signing-key</c>, the party's registered key.
/// </summary>
internal static class KeysCommand
{
    /// <summary>Environment variable read when <c>--admin-token</c> is not given (keeps the token off the command line).</summary>
    public const string AdminTokenVariable = "MRISEG_ADMIN_TOKEN";

    internal static readonly string[] Purposes = ["dataset", "model", "output"];
    internal static readonly string[] Roles = ["provider", "consumer", "cleanroom"];

    public static Command Create(CliApp app)
    {
        var command = new Command("keys", "Data keys at the KeyBroker: import, release your own output key, budgets, audit trails, registration.");
        command.Subcommands.Add(Import(app));
        command.Subcommands.Add(Release(app));
        command.Subcommands.Add(Budget(app));
        command.Subcommands.Add(Audit(app));
        command.Subcommands.Add(Register(app));
        return command;
    }

    /// <summary>The options every keys command takes: who calls.</summary>
    private sealed class PartyOptions
    {
        public Option<string> Party { get; } = new("--party") { Description = "Your party id at the KeyBroker (e.g. hospital-a).", HelpName = "ID", Required = true };

        public Option<string> SigningKey { get; } = new("--signing-key")
        {
            Description = "Your signing key (PKCS#8 PEM from `mriseg keygen`), the one registered for --party.",
            HelpName = "FILE",
            Required = true,
        };

        public void AddTo(Command command)
        {
            command.Options.Add(Party);
            command.Options.Add(SigningKey);
        }

        /// <summary>The caller, with a client to the KeyBroker (dispose the connection).</summary>
        public BrokerConnection Connect(CommandContext context)
        {
            var partyId = context.GetValue(Party)!;
            if (!MriSeg.KeyRelease.Ids.IsPartyId(partyId))
            {
                throw new CliException($"--party '{partyId}': not a party id ({MriSeg.KeyRelease.Ids.PartyIdRule})");
            }

            var key = KeyFiles.LoadSigningKey(context.GetValue(SigningKey)!, "--signing-key");
            var endpoint = context.ResolveEndpoints().Get(ServiceCatalog.KeyBroker);
            var channel = GrpcChannel.ForAddress(endpoint.Address);
            var client = new V1.KeyBroker.KeyBrokerClient(channel);
            return new BrokerConnection(new KeyBrokerParty(client, partyId, key), client, channel, key, endpoint);
        }
    }

    internal sealed record BrokerConnection(KeyBrokerParty Party, V1.KeyBroker.KeyBrokerClient Client, GrpcChannel Channel, SigningKey Key, ResolvedEndpoint Endpoint)
        : IDisposable
    {
        public void Dispose()
        {
            Channel.Dispose();
            Key.Dispose();
        }

        /// <summary>Runs a call; a refusal or an unreachable broker becomes one line naming the broker's address.</summary>
        public async Task<T> CallAsync<T>(string what, Func<Task<T>> call)
        {
            try
            {
                return await call();
            }
            catch (RpcException e)
            {
                throw new CliException($"{what}: {ErrorText.OneLine(e)}{Hint(e, Endpoint)}", e);
            }
        }
    }

    internal static string Hint(RpcException e, ResolvedEndpoint endpoint) => e.StatusCode switch
    {
        StatusCode.Unavailable or StatusCode.DeadlineExceeded =>
            $" (keybroker at {GrpcAddress.Display(endpoint.Address)}, from the {ServicesCommand.Text(endpoint.Source)}: is the AppHost running? dotnet run --project MriSeg.AppHost)",
        StatusCode.Unauthenticated when e.Status.Detail.Contains("not registered", StringComparison.Ordinal) => " (register first: mriseg keys register)",
        StatusCode.PermissionDenied when e.Status.Detail.Contains("admin token", StringComparison.Ordinal) =>
            $" (give the operator's token with --admin-token or ${AdminTokenVariable})",
        _ => "",
    };

    private static Option<string> AdminTokenOption() => new("--admin-token")
    {
        Description = $"The operator's admin token, where the KeyBroker needs it for a first registration (default: ${AdminTokenVariable}).",
        HelpName = "TOKEN",
    };

    private static string? AdminToken(CommandContext context, Option<string> option) =>
        context.GetValue(option) is { Length: > 0 } given ? given
        : Environment.GetEnvironmentVariable(AdminTokenVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null;

    // ---- import ---------------------------------------------------------------------------------------------------

    private static Command Import(CliApp app)
    {
        var party = new PartyOptions();
        var keyFile = new Option<string>("--key") { Description = "The data key file, as `mriseg seal --key-out` writes it.", HelpName = "KEYFILE", Required = true };
        var keyId = new Option<string>("--key-id") { Description = "The key's id; checked against the key file (optional).", HelpName = "ID" };
        var purpose = new Option<string>("--purpose") { Description = "What the key opens: dataset (providers), model or output (the consumer).", Required = true };
        purpose.AcceptOnlyFromAmong(Purposes);
        var policy = new Option<string>("--policy") { Description = "The release policy (Azure Key Vault secure-key-release JSON).", HelpName = "POLICY.json", Required = true };
        var contract = new Option<string>("--contract") { Description = "The contract terms (JSON; required for dataset keys).", HelpName = "CONTRACT.json" };
        var brokerKey = new Option<string>("--broker-key")
        {
            Description = "Wrap only to a broker key with this thumbprint (hex SHA-256, learnt out of band).",
            HelpName = "THUMBPRINT",
        };
        var admin = AdminTokenOption();

        var command = new Command("import", "Wrap a data key to the KeyBroker's public key and import it with its release policy and contract (registers --party if needed).");
        party.AddTo(command);
        foreach (var option in new Option[] { keyFile, keyId, purpose, policy, contract, brokerKey, admin })
        {
            command.Options.Add(option);
        }

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var keyPurpose = ParsePurpose(context.GetValue(purpose)!);
            var policyJson = ReadPolicy(context.GetValue(policy)!);
            var contractPath = context.GetValue(contract);
            var terms = contractPath is null ? null : ReadContract(contractPath);
            if (terms is null && keyPurpose == V1.KeyPurpose.Dataset)
            {
                throw new CliException("--contract is required for a dataset key (the contract terms: dataset, allowed consumers, expiry, ε per run and in total, δ)");
            }

            using var dataKey = KeyFiles.LoadDataKey(context.GetValue(keyFile)!, "--key");
            if (context.GetValue(keyId) is { Length: > 0 } expectedId && !string.Equals(expectedId, dataKey.KeyId, StringComparison.OrdinalIgnoreCase))
            {
                throw new CliException($"--key-id {expectedId}: the key file holds key {dataKey.KeyId}");
            }

            using var broker = party.Connect(context);
            var role = PartyRoles.OwnerOf(keyPurpose)!.Value;
            await broker.CallAsync($"registering {broker.Party.PartyId} as {role.ShortName()}",
                () => broker.Party.EnsureRegisteredAsync(role, AdminToken(context, admin), cancellationToken));
            var brokerKeyInfo = await broker.CallAsync("asking for the broker's key",
                () => broker.Client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), broker.Party.Credentials(), cancellationToken: cancellationToken).ResponseAsync);
            var thumbprint = RecipientPublicKey.FromPem(brokerKeyInfo.PublicKeyPem).Thumbprint;
            V1.ImportKeyResponse response;
            try
            {
                response = await broker.CallAsync($"importing key {dataKey.KeyId}",
                    () => broker.Party.ImportKeyAsync(dataKey, keyPurpose, policyJson, terms, context.GetValue(brokerKey), cancellationToken));
            }
            catch (InvalidOperationException e)
            {
                throw new CliException("--broker-key: " + e.Message, e);
            }

            context.Output.WriteResult(new ImportResult(response.KeyId, response.Version, context.GetValue(purpose)!, broker.Party.PartyId, terms?.ContractId, thumbprint), (console, r) =>
            {
                console.MarkupLine($"imported {Markup.Escape(r.Purpose)} key [bold]{Markup.Escape(r.KeyId)}[/] (version {r.Version}) for {Markup.Escape(r.Party)}"
                    + (r.ContractId is null ? "" : $" under contract [bold]{Markup.Escape(r.ContractId)}[/]"));
                console.MarkupLine($"[grey]wrapped to the broker's key {Markup.Escape(r.BrokerKey)}; keep the key file only as long as you need it[/]");
            });
            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record ImportResult(string KeyId, int Version, string Purpose, string Party, string? ContractId, string BrokerKey);

    internal static V1.KeyPurpose ParsePurpose(string text) => text switch
    {
        "dataset" => V1.KeyPurpose.Dataset,
        "model" => V1.KeyPurpose.Model,
        "output" => V1.KeyPurpose.Output,
        _ => throw new CliException($"--purpose {text}: expected one of {string.Join(", ", Purposes)}"),
    };

    internal static string ReadPolicy(string path)
    {
        var text = ReadText(path, "--policy");
        try
        {
            return ReleasePolicy.Parse(text).Json;
        }
        catch (ReleasePolicyException e)
        {
            throw new CliException($"--policy {path}: {e.Message}", e);
        }
    }

    internal static V1.ContractTerms ReadContract(string path)
    {
        var text = ReadText(path, "--contract");
        try
        {
            return ContractJson.Parse(text);
        }
        catch (FormatException e)
        {
            throw new CliException($"--contract {path}: {e.Message}", e);
        }
    }

    private static string ReadText(string path, string option)
    {
        var full = KeyFiles.RequireFile(path, option);
        try
        {
            return File.ReadAllText(full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{option} {path}: {e.Message}", e);
        }
    }

    // ---- release --------------------------------------------------------------------------------------------------

    private static Command Release(CliApp app)
    {
        var party = new PartyOptions();
        var keyId = new Option<string>("--key-id") { Description = "Your output key's id.", HelpName = "ID", Required = true };
        var output = new Option<string>("--out") { Description = "Where to write the key (JSON, mode 0600), as `mriseg open --key` reads it.", HelpName = "KEYFILE", Required = true };
        var force = new Option<bool>("--force") { Description = "Replace an existing key file." };
        var command = new Command("release", "Obtain your own output key (the consumer, outside the clean room): wrapped to a fresh key pair here, unwrapped, saved.");
        party.AddTo(command);
        command.Options.Add(keyId);
        command.Options.Add(output);
        command.Options.Add(force);

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var overwrite = context.GetValue(force);
            var outPath = KeyFiles.RequireDestination(context.GetValue(output)!, "--out", overwrite);
            using var broker = party.Connect(context);
            var id = context.GetValue(keyId)!;
            using var key = await broker.CallAsync($"releasing key {id}", () => broker.Party.ReleaseOwnOutputKeyAsync(id, cancellationToken));
            var temp = KeyFiles.TemporaryBeside(outPath);
            try
            {
                key.Save(temp);
                File.Move(temp, outPath, overwrite);
            }
            catch (Exception e) when (e is SealedPackageException or IOException or UnauthorizedAccessException)
            {
                KeyFiles.DeleteQuietly(temp);
                throw new CliException($"--out {outPath}: {e.Message}", e);
            }

            context.Output.WriteResult(new ReleaseResult(key.KeyId, outPath), (console, r) =>
                console.MarkupLine($"released key [bold]{Markup.Escape(r.KeyId)}[/] to {Markup.Escape(r.KeyFile)} [grey](mode 0600; whoever holds it can decrypt what it sealed)[/]"));
            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record ReleaseResult(string KeyId, string KeyFile);

    // ---- budget ---------------------------------------------------------------------------------------------------

    private static Command Budget(CliApp app)
    {
        var party = new PartyOptions();
        var keyId = new Option<string>("--key-id") { Description = "A key whose contract's budget to show (you must own it).", HelpName = "ID" };
        var contract = new Option<string>("--contract") { Description = "The contract id.", HelpName = "ID" };
        var command = new Command("budget", "A contract's privacy budget: caps, ε spent and reserved, remaining (its owner, allowed consumers, the clean room).");
        party.AddTo(command);
        command.Options.Add(keyId);
        command.Options.Add(contract);
        command.Validators.Add(r =>
        {
            if ((r.GetValue(keyId) is null) == (r.GetValue(contract) is null))
            {
                r.AddError("give exactly one of --key-id and --contract.");
            }
        });

        app.SetAction(command, async (context, cancellationToken) =>
        {
            using var broker = party.Connect(context);
            var contractId = context.GetValue(contract);
            if (contractId is null)
            {
                var id = context.GetValue(keyId)!;
                var status = await broker.CallAsync($"reading key {id}",
                    () => broker.Client.GetKeyStatusAsync(new V1.GetKeyStatusRequest { KeyId = id }, broker.Party.Credentials(), cancellationToken: cancellationToken).ResponseAsync);
                contractId = status.Contract?.ContractId is { Length: > 0 } c ? c : throw new CliException($"key {id} serves no contract (only dataset keys carry a budget)");
            }

            var budget = await broker.CallAsync($"reading the budget of contract {contractId}",
                () => broker.Client.GetBudgetAsync(new V1.GetBudgetRequest { ContractId = contractId }, broker.Party.Credentials(), cancellationToken: cancellationToken).ResponseAsync);
            var result = new BudgetResult(budget.ContractId, budget.DatasetId, budget.EpsilonTotalCap, budget.EpsilonPerRunCap, budget.EpsilonSpent, budget.EpsilonReserved,
                Math.Max(0, budget.EpsilonTotalCap - budget.EpsilonSpent - budget.EpsilonReserved), budget.Delta);
            context.Output.WriteResult(result, RenderBudget);
            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record BudgetResult(string ContractId, string DatasetId, double EpsilonTotalCap, double EpsilonPerRunCap, double EpsilonSpent,
        double EpsilonReserved, double EpsilonRemaining, double Delta);

    private static void RenderBudget(IAnsiConsole console, BudgetResult r)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("contract").AddColumn(Markup.Escape(r.ContractId));
        table.AddRow("dataset", Markup.Escape(r.DatasetId));
        table.AddRow("ε total cap", Num(r.EpsilonTotalCap));
        table.AddRow("ε per run cap", Num(r.EpsilonPerRunCap));
        table.AddRow("ε spent (settled runs)", Num(r.EpsilonSpent));
        table.AddRow("ε reserved (unsettled runs)", Num(r.EpsilonReserved));
        table.AddRow("[bold]ε remaining[/]", $"[bold]{Num(r.EpsilonRemaining)}[/]");
        table.AddRow("δ", r.Delta.ToString("g3", System.Globalization.CultureInfo.InvariantCulture));
        console.Write(table);
        console.MarkupLine("[grey]runs compose by RDP (per Rényi order), so the remaining ε is not simply cap minus a sum of runs' ε[/]");
    }

    private static string Num(double value) => value.ToString("0.####", System.Globalization.CultureInfo.InvariantCulture);

    // ---- audit ----------------------------------------------------------------------------------------------------

    private static Command Audit(CliApp app)
    {
        var party = new PartyOptions();
        var keyId = new Option<string>("--key-id") { Description = "Your key's id.", HelpName = "ID", Required = true };
        var command = new Command("audit", "A key's audit trail (owner only): every decision, and whether the hash chain verifies (checked here and by the broker).");
        party.AddTo(command);
        command.Options.Add(keyId);

        app.SetAction(command, async (context, cancellationToken) =>
        {
            using var broker = party.Connect(context);
            var id = context.GetValue(keyId)!;
            var reading = await broker.CallAsync($"reading the audit trail of key {id}", () => broker.Party.ReadAuditAsync(id, cancellationToken));
            var result = new AuditResult(id, reading.Intact, reading.Problem, reading.Records.Select(r => new AuditLine(
                r.Sequence, r.At?.ToDateTimeOffset(), r.Actor, r.ActorRole switch
                {
                    V1.Party.DataProvider => "TDP",
                    V1.Party.DataConsumer => "TDC",
                    V1.Party.CleanRoom => "CCR",
                    _ => "",
                }, r.Action, r.Allowed, r.Reason, r.PreviousHash, r.Hash)).ToList());
            context.Output.WriteResult(result, RenderAudit);
            if (!reading.Intact)
            {
                context.Output.Error($"the audit chain of key {id} does not verify: {reading.Problem}");
                return ExitCodes.Failure;
            }

            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record AuditLine(long Sequence, DateTimeOffset? At, string Actor, string Role, string Action, bool Allowed, string Reason, string PreviousHash, string Hash);

    internal sealed record AuditResult(string KeyId, bool ChainVerified, string? Problem, IReadOnlyList<AuditLine> Records);

    private static void RenderAudit(IAnsiConsole console, AuditResult r)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn(new TableColumn("#").RightAligned()).AddColumn("at (UTC)").AddColumn("actor").AddColumn("action").AddColumn("reason").AddColumn("hash");
        foreach (var line in r.Records)
        {
            var action = line.Allowed ? $"[green]{Markup.Escape(line.Action)}[/]" : $"[red]{Markup.Escape(line.Action)}[/]";
            table.AddRow(line.Sequence.ToString(System.Globalization.CultureInfo.InvariantCulture),
                line.At?.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.fff", System.Globalization.CultureInfo.InvariantCulture) ?? "",
                Markup.Escape(line.Role.Length > 0 ? $"{line.Actor} ({line.Role})" : line.Actor), action, Markup.Escape(line.Reason),
                Markup.Escape(line.Hash.Length >= 16 ? line.Hash[..16] + "…" : line.Hash));
        }

        console.Write(table);
        console.MarkupLine(r.ChainVerified
            ? $"chain: [green]verified[/] ({r.Records.Count} records; every hash recomputed here, and the broker checked its head)"
            : $"chain: [red]BROKEN[/]: {Markup.Escape(r.Problem ?? "")}");
    }

    // ---- register -------------------------------------------------------------------------------------------------

    private static Command Register(CliApp app)
    {
        var party = new PartyOptions();
        var role = new Option<string>("--role") { Description = "provider (TDP), consumer (TDC) or cleanroom (CCR); a party's role never changes.", Required = true };
        role.AcceptOnlyFromAmong(Roles);
        var previous = new Option<string>("--previous-key") { Description = "Rotate to --signing-key: the currently registered signing key signs for it.", HelpName = "FILE" };
        var admin = AdminTokenOption();
        var command = new Command("register", "Register --signing-key's public key for --party with a role (the same key again is a no-op).");
        party.AddTo(command);
        command.Options.Add(role);
        command.Options.Add(previous);
        command.Options.Add(admin);

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var partyRole = context.GetValue(role) switch
            {
                "provider" => PartyRole.DataProvider,
                "consumer" => PartyRole.DataConsumer,
                "cleanroom" => PartyRole.CleanRoom,
                var other => throw new CliException($"--role {other}: expected one of {string.Join(", ", Roles)}"),
            };
            using var previousKey = context.GetValue(previous) is { } previousPath ? KeyFiles.LoadSigningKey(previousPath, "--previous-key") : null;
            using var broker = party.Connect(context);
            var response = await broker.CallAsync($"registering {broker.Party.PartyId}",
                () => broker.Party.RegisterAsync(partyRole, AdminToken(context, admin), previousKey, cancellationToken));
            context.Output.WriteResult(new RegisterResult(response.PartyId, context.GetValue(role)!, response.KeyThumbprint), (console, r) =>
                console.MarkupLine($"registered [bold]{Markup.Escape(r.Party)}[/] as {Markup.Escape(r.Role)} with key {Markup.Escape(r.KeyThumbprint)}"));
            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record RegisterResult(string Party, string Role, string KeyThumbprint);
}
