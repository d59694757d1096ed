namespace MriSeg.Cli.Tests;

/// <summary>
/// <c>keys</c> and <c>selfcheck security</c> where they fail before or at the KeyBroker: bad files, bad options, nobody
/// listening. (Against a running KeyBroker they are exercised by the Services and AppHost tests through the same library.)
/// </summary>
public sealed class KeysCommandTests : IDisposable
{
    private readonly TempFolder temp = new();
    private readonly string closed = $"keybroker=http://127.0.0.1:{Ports.Closed()}";

    public void Dispose() => temp.Dispose();

    private string P(string name) => Path.Combine(temp.Path, name);

    private static string OneLineFailure(CliRun run)
    {
        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.Equal("", run.Stdout);
        // Progress lines may precede it on stderr; the failure itself is one line.
        var line = Assert.Single(run.StderrLines, l => l.StartsWith("error: ", StringComparison.Ordinal));
        return line;
    }

    /// <summary>An owner key pair, a data key (sealed from a small file), a policy and a contract file.</summary>
    private async Task<string> PrepareAsync()
    {
        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--out", P("owner"))).ExitCode);
        await File.WriteAllBytesAsync(P("data.bin"), new byte[1000], TestContext.Current.CancellationToken);
        var seal = await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("data.sealed"), "--type", "dataset", "--owner", "hospital-a",
            "--key-out", P("data.key"), "--signing-key", P("owner.key"), "--json");
        Assert.True(seal.ExitCode == 0, seal.ToString());
        await File.WriteAllTextAsync(P("contract.json"), """
            { "contract_id": "c-1", "dataset_id": "d-1", "allowed_consumers": ["consumer-x"], "expires": "2030-01-01T00:00:00Z",
              "max_epsilon_per_run": 4, "max_epsilon_total": 8, "delta": 1e-5 }
            """, TestContext.Current.CancellationToken);
        await File.WriteAllTextAsync(P("policy.json"), """
            { "version": "1.0.0", "anyOf": [ { "authority": "http://localhost:5132/dev-attestation",
              "allOf": [ { "claim": "x-mriseg-measurement", "equals": "00" } ] } ] }
            """, TestContext.Current.CancellationToken);
        return seal.Json().GetProperty("info").GetProperty("keyId").GetString()!;
    }

    /// <summary>keys import with the prepared files; <paramref name="changes"/> replace or add options (a null value drops one).</summary>
    private string[] Import(params (string Option, string? Value)[] changes)
    {
        var options = new List<(string Option, string? Value)>
        {
            ("--key", P("data.key")), ("--purpose", "dataset"), ("--policy", P("policy.json")), ("--contract", P("contract.json")),
            ("--party", "hospital-a"), ("--signing-key", P("owner.key")), ("--endpoint", closed),
        };
        foreach (var (option, value) in changes)
        {
            options.RemoveAll(o => o.Option == option);
            options.Add((option, value));
        }

        return ["keys", "import", .. options.Where(o => o.Value is not null).SelectMany(o => new[] { o.Option, o.Value! })];
    }

    [Fact]
    public async Task Import_checks_its_files_before_calling_the_broker()
    {
        var keyId = await PrepareAsync();

        await File.WriteAllTextAsync(P("bad-contract.json"), """{ "contract_id": "c", "epsilon": 3 }""", TestContext.Current.CancellationToken);
        var badContract = OneLineFailure(await CliRun.RunAsync(Import(("--contract", P("bad-contract.json")))));
        Assert.Contains("--contract", badContract);
        Assert.Contains("not a contract", badContract);

        await File.WriteAllTextAsync(P("bad-policy.json"), """{ "version": "1.0.0", "anyOf": [] }""", TestContext.Current.CancellationToken);
        Assert.Contains("--policy", OneLineFailure(await CliRun.RunAsync(Import(("--policy", P("bad-policy.json"))))));

        var wrongId = OneLineFailure(await CliRun.RunAsync(Import(("--key-id", new string('0', 32)))));
        Assert.Contains($"the key file holds key {keyId}", wrongId);

        var noContract = OneLineFailure(await CliRun.RunAsync(Import(("--contract", null))));
        Assert.Contains("--contract is required for a dataset key", noContract);

        var badParty = OneLineFailure(await CliRun.RunAsync(Import(("--party", "Hospital A"))));
        Assert.Contains("not a party id", badParty);
    }

    [Fact]
    public async Task An_unreachable_broker_is_one_line_naming_its_address()
    {
        await PrepareAsync();
        var line = OneLineFailure(await CliRun.RunAsync(Import()));
        Assert.Contains("Unavailable", line);
        Assert.Contains(closed["keybroker=".Length..], line);
        Assert.Contains("--endpoint", line);

        var budget = OneLineFailure(await CliRun.RunAsync("keys", "budget", "--contract", "c-1", "--party", "hospital-a", "--signing-key", P("owner.key"), "--endpoint", closed));
        Assert.Contains("reading the budget of contract c-1", budget);
    }

    [Fact]
    public async Task Budget_wants_exactly_one_of_key_id_and_contract()
    {
        await PrepareAsync();
        var neither = await CliRun.RunAsync("keys", "budget", "--party", "hospital-a", "--signing-key", P("owner.key"));
        Assert.Equal(1, neither.ExitCode);
        Assert.Contains("exactly one of --key-id and --contract", neither.Stderr);
    }

    [Fact]
    public async Task Selfcheck_without_a_key_broker_fails_with_one_line()
    {
        var run = await CliRun.RunAsync("selfcheck", "security", "--endpoint", closed, "--attestation-url", $"http://127.0.0.1:{Ports.Closed()}/dev-attestation");
        var line = OneLineFailure(run);
        Assert.Contains("selfcheck security: the development attestation authority", line);
        Assert.Contains("does not answer", line);
    }
}
