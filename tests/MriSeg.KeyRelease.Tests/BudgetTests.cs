using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Storage;
using MriSeg.Privacy;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Tests;

public sealed class BudgetTests
{
    private const double Delta = 1e-5;
    private static readonly string Pipeline = new('a', 64);

    private readonly FakeTime time = new();
    private readonly InMemoryRecordStore store = new();
    private readonly ContractLedger ledger;

    public BudgetTests() => ledger = new ContractLedger(store, time);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private ContractTerms Terms(double perRun, double total, string id = "contract-1") =>
        ContractTerms.FromRequest(new V1.ContractTerms
        {
            ContractId = id,
            DatasetId = "brats-site-a",
            AllowedConsumers = { "consumer-x" },
            Expires = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(time.Now.AddDays(30)),
            MaxEpsilonPerRun = perRun,
            MaxEpsilonTotal = total,
            Delta = Delta,
        }, "hospital-a", dataset: true, time.Now);

    private static RunDeclaration Run(string runId, double q = 0.01, double sigma = 1.0, long steps = 1000, string cleanRoom = "cleanroom-a") =>
        new(runId, cleanRoom, "consumer-x", new DeclaredPrivacy(0, Delta, sigma, q, steps), Pipeline);

    [Fact]
    public void Composition_across_runs_is_the_RDP_accountant_and_tighter_than_adding_epsilon()
    {
        PrivacyEvent a = new(0.01, 1.0, 1000), b = new(0.02, 1.2, 500), c = new(0.01, 1.0, 1000);
        var composed = PrivacyComposition.Epsilon([a, b, c], Delta);

        var accountant = new RdpAccountant();
        accountant.Compose(a);
        accountant.Compose(b);
        accountant.Compose(c);
        Assert.Equal(accountant.GetEpsilon(Delta), composed, 12);

        var sum = PrivacyComposition.Epsilon([a], Delta) + PrivacyComposition.Epsilon([b], Delta) + PrivacyComposition.Epsilon([c], Delta);
        Assert.True(composed < 0.8 * sum, $"composed {composed} vs sum {sum}");
        Assert.Equal(0, PrivacyComposition.Epsilon([], Delta));
    }

    [Fact]
    public async Task A_run_reserves_once_per_contract_and_the_view_reports_spent_and_reserved()
    {
        await ledger.AttachKeyAsync(Terms(perRun: 5, total: 10), new string('1', 32), Ct);
        var first = await ledger.ReserveAsync("contract-1", Run("run-1"), Ct);
        Assert.True(first.Granted, first.Reason);
        var expected = PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 1000)], Delta);
        Assert.Equal(expected, first.RunEpsilon, 12);
        Assert.Equal(0, first.Budget.EpsilonSpent);
        Assert.Equal(expected, first.Budget.EpsilonReserved, 12);
        Assert.Equal(10 - expected, first.Budget.EpsilonRemaining, 12);

        // The same run asking for another key of the contract spends nothing more.
        var again = await ledger.ReserveAsync("contract-1", Run("run-1"), Ct);
        Assert.True(again.Granted);
        Assert.Equal(expected, again.Budget.EpsilonReserved, 12);

        // The same run with other parameters is refused.
        var changed = await ledger.ReserveAsync("contract-1", Run("run-1", steps: 2000), Ct);
        Assert.False(changed.Granted);
        Assert.Contains("reserved other parameters", changed.Reason);
    }

    [Fact]
    public async Task The_per_run_cap_is_the_brokers_RDP_epsilon_at_the_contracts_delta()
    {
        var run = Run("run-big", q: 0.05, sigma: 0.8, steps: 2000);
        var epsilon = PrivacyComposition.Epsilon([new PrivacyEvent(0.05, 0.8, 2000)], Delta);
        await ledger.AttachKeyAsync(Terms(perRun: epsilon * 0.99, total: 100), new string('1', 32), Ct);
        var refused = await ledger.ReserveAsync("contract-1", run, Ct);
        Assert.False(refused.Granted);
        Assert.Contains("per run", refused.Reason);
    }

    [Fact]
    public async Task The_total_cap_refuses_the_run_that_would_exceed_it_counting_composition_not_the_sum()
    {
        var one = PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 1000)], Delta);
        var three = PrivacyComposition.Epsilon(Enumerable.Repeat(new PrivacyEvent(0.01, 1.0, 1000), 3), Delta);
        var four = PrivacyComposition.Epsilon(Enumerable.Repeat(new PrivacyEvent(0.01, 1.0, 1000), 4), Delta);
        Assert.True(three < 3 * one);

        // A cap between three and four runs composed: three fit (adding ε would have allowed only two and a bit).
        var cap = (three + four) / 2;
        Assert.True(cap < 3 * one, "adding ε would refuse the third run");
        await ledger.AttachKeyAsync(Terms(perRun: one * 1.01, total: cap), new string('1', 32), Ct);
        for (var i = 0; i < 3; i++)
        {
            Assert.True((await ledger.ReserveAsync("contract-1", Run("run-" + i), Ct)).Granted);
        }

        var fourth = await ledger.ReserveAsync("contract-1", Run("run-3"), Ct);
        Assert.False(fourth.Granted);
        Assert.Contains("budget exhausted", fourth.Reason);
        Assert.Equal(three, fourth.Budget.EpsilonReserved, 9);
    }

    [Fact]
    public async Task Racing_runs_cannot_both_spend_the_last_of_a_budget()
    {
        var one = PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 1000)], Delta);
        var two = PrivacyComposition.Epsilon(Enumerable.Repeat(new PrivacyEvent(0.01, 1.0, 1000), 2), Delta);
        await ledger.AttachKeyAsync(Terms(perRun: one * 1.01, total: (one + two) / 2), new string('1', 32), Ct);

        // Every racer reads the ledger before any of them writes: the worst interleaving, every time.
        const int Racers = 6;
        var gated = new ContractLedger(new ReadBarrierStore(store, KeyBrokerTables.Contracts, Racers), time);
        var outcomes = await Task.WhenAll(Enumerable.Range(0, Racers).Select(i =>
            Task.Run(() => gated.ReserveAsync("contract-1", Run("racer-" + i), Ct), Ct)));

        Assert.Single(outcomes, o => o.Granted);
        Assert.All(outcomes.Where(o => !o.Granted), o => Assert.Contains("budget exhausted", o.Reason));
        var (record, _) = (await ledger.GetAsync("contract-1", Ct))!.Value;
        Assert.Single(record.Runs);
    }

    [Fact]
    public async Task Settling_lower_frees_budget_and_settling_higher_or_by_another_clean_room_is_refused()
    {
        await ledger.AttachKeyAsync(Terms(perRun: 5, total: 10), new string('1', 32), Ct);
        Assert.True((await ledger.ReserveAsync("contract-1", Run("run-1"), Ct)).Granted);

        var other = await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.SettleAsync("contract-1", "run-1", "cleanroom-b", new PrivacyEvent(0.01, 1.0, 500), Ct));
        Assert.Equal(KeyBrokerError.PermissionDenied, other.Error);
        var more = await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.SettleAsync("contract-1", "run-1", "cleanroom-a", new PrivacyEvent(0.01, 1.0, 1001), Ct));
        Assert.Contains("never spends more", more.Message);
        var lessNoise = await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.SettleAsync("contract-1", "run-1", "cleanroom-a", new PrivacyEvent(0.01, 0.5, 10), Ct));
        Assert.Contains("same q and σ", lessNoise.Message);

        var settled = await ledger.SettleAsync("contract-1", "run-1", "cleanroom-a", new PrivacyEvent(0.01, 1.0, 400), Ct);
        Assert.Equal(PrivacyComposition.Epsilon([new PrivacyEvent(0.01, 1.0, 400)], Delta), settled.EpsilonSpent, 12);
        Assert.Equal(0, settled.EpsilonReserved);

        // Settled once: the same report again is a no-op, another is refused, and the run cannot reserve again.
        await ledger.SettleAsync("contract-1", "run-1", "cleanroom-a", new PrivacyEvent(0.01, 1.0, 400), Ct);
        await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.SettleAsync("contract-1", "run-1", "cleanroom-a", new PrivacyEvent(0.01, 1.0, 300), Ct));
        Assert.Contains("already settled", (await ledger.ReserveAsync("contract-1", Run("run-1"), Ct)).Reason);
    }

    [Fact]
    public async Task A_contract_id_is_owned_and_its_terms_are_not_silently_changed_by_another_import()
    {
        await ledger.AttachKeyAsync(Terms(perRun: 5, total: 10), new string('1', 32), Ct);
        await ledger.AttachKeyAsync(Terms(perRun: 5, total: 10), new string('2', 32), Ct); // another shard, same terms
        var different = await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.AttachKeyAsync(Terms(perRun: 5, total: 20), new string('3', 32), Ct));
        Assert.Equal(KeyBrokerError.FailedPrecondition, different.Error);
        var foreign = Terms(perRun: 5, total: 10) with { Owner = "hospital-b" };
        Assert.Equal(KeyBrokerError.PermissionDenied, (await Assert.ThrowsAsync<KeyBrokerException>(() => ledger.AttachKeyAsync(foreign, new string('4', 32), Ct))).Error);
        var (record, _) = (await ledger.GetAsync("contract-1", Ct))!.Value;
        Assert.Equal([new string('1', 32), new string('2', 32)], record.KeyIds);
    }

    [Theory]
    [InlineData(0, 10, 1e-5, "must be > 0")]
    [InlineData(11, 10, 1e-5, "exceeds max_epsilon_total")]
    [InlineData(1, 10, 0, "delta must be in (0, 1)")]
    [InlineData(1, 10, double.NaN, "finite")]
    public void Dataset_contract_terms_are_checked(double perRun, double total, double delta, string expected)
    {
        var e = Assert.Throws<KeyBrokerException>(() => ContractTerms.FromRequest(new V1.ContractTerms
        {
            ContractId = "c",
            DatasetId = "d",
            AllowedConsumers = { "consumer-x" },
            Expires = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(time.Now.AddDays(1)),
            MaxEpsilonPerRun = perRun,
            MaxEpsilonTotal = total,
            Delta = delta,
        }, "hospital-a", dataset: true, time.Now));
        Assert.Contains(expected, e.Message);
    }
}

/// <summary>Holds the first <c>count</c> reads of one table until all of them have happened.</summary>
internal sealed class ReadBarrierStore(IRecordStore inner, string table, int count) : IRecordStore
{
    private readonly TaskCompletionSource _all = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _reads;

    public async Task<StoredRecord?> GetAsync(string t, string partition, string row, CancellationToken cancellationToken)
    {
        var record = await inner.GetAsync(t, partition, row, cancellationToken);
        if (t == table)
        {
            var n = Interlocked.Increment(ref _reads);
            if (n == count)
            {
                _all.SetResult();
            }

            if (n <= count)
            {
                await _all.Task.WaitAsync(TimeSpan.FromSeconds(10), cancellationToken);
            }
        }

        return record;
    }

    public Task<string> InsertAsync(string t, StoredRecord record, CancellationToken cancellationToken) => inner.InsertAsync(t, record, cancellationToken);

    public Task<string> ReplaceAsync(string t, StoredRecord record, CancellationToken cancellationToken) => inner.ReplaceAsync(t, record, cancellationToken);

    public Task DeleteAsync(string t, string partition, string row, string etag, CancellationToken cancellationToken) => inner.DeleteAsync(t, partition, row, etag, cancellationToken);

    public Task SubmitAsync(string t, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken) => inner.SubmitAsync(t, writes, cancellationToken);

    public IAsyncEnumerable<StoredRecord> QueryAsync(string t, string partition, string? fromRow, CancellationToken cancellationToken) => inner.QueryAsync(t, partition, fromRow, cancellationToken);
}
