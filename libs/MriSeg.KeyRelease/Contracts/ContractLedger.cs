using System.Text.Json;
using System.Text.Json.Serialization;
using MriSeg.KeyRelease.Storage;
using MriSeg.Privacy;

namespace MriSeg.KeyRelease.Contracts;

/// <summary>One run's privacy spend on a contract: reserved at its first key release, settled by the clean room.</summary>
/// <param name="RunId">The run.</param>
/// <param name="CleanRoom">The clean room (party id) that reserved it; only it settles.</param>
/// <param name="Consumer">The consumer the run trains for.</param>
/// <param name="SampleRate">Poisson sampling rate q declared.</param>
/// <param name="NoiseMultiplier">Noise multiplier σ declared.</param>
/// <param name="Steps">Steps declared (reserved).</param>
/// <param name="DeclaredEpsilon">ε the run declared (its own accountant).</param>
/// <param name="DeclaredDelta">δ the run declared.</param>
/// <param name="PipelineSha256">The pipeline it runs.</param>
/// <param name="ReservedAt">When it was reserved.</param>
/// <param name="SettledSteps">Steps actually taken, once settled.</param>
/// <param name="SettledAt">When it was settled.</param>
public sealed record PrivacyRun(
    string RunId, string CleanRoom, string Consumer, double SampleRate, double NoiseMultiplier, long Steps,
    double DeclaredEpsilon, double DeclaredDelta, string PipelineSha256, DateTimeOffset ReservedAt,
    long? SettledSteps = null, DateTimeOffset? SettledAt = null)
{
    /// <summary>Whether the clean room settled it.</summary>
    [JsonIgnore]
    public bool Settled => SettledSteps is not null;

    /// <summary>What the run counts for: the settled steps once settled, the reserved ones before.</summary>
    [JsonIgnore]
    public PrivacyEvent Event => new(SampleRate, NoiseMultiplier, SettledSteps ?? Steps);
}

/// <summary>A contract and its ledger (table <see cref="KeyBrokerTables.Contracts"/>, partition = contract id, row "contract").</summary>
/// <param name="Terms">The terms.</param>
/// <param name="KeyIds">The keys that serve it.</param>
/// <param name="Runs">The runs that spent on it, oldest first.</param>
public sealed record ContractRecord(ContractTerms Terms, IReadOnlyList<string> KeyIds, IReadOnlyList<PrivacyRun> Runs);

/// <summary>A contract's budget: caps and what the runs composed spend, all at the contract's δ.</summary>
/// <param name="ContractId">The contract.</param>
/// <param name="DatasetId">Its dataset.</param>
/// <param name="EpsilonTotalCap">The total cap.</param>
/// <param name="EpsilonPerRunCap">The per-run cap.</param>
/// <param name="EpsilonSpent">ε of the settled runs composed.</param>
/// <param name="EpsilonReserved">What the unsettled runs add: ε(all runs composed) − <paramref name="EpsilonSpent"/>.</param>
/// <param name="Delta">The contract's δ.</param>
public sealed record BudgetView(string ContractId, string DatasetId, double EpsilonTotalCap, double EpsilonPerRunCap, double EpsilonSpent, double EpsilonReserved, double Delta)
{
    /// <summary>The cap less everything composed (never negative).</summary>
    public double EpsilonRemaining => Math.Max(0, EpsilonTotalCap - EpsilonSpent - EpsilonReserved);
}

/// <summary>The declared privacy of a run asking for a dataset key.</summary>
/// <param name="RunId">The run.</param>
/// <param name="CleanRoom">The clean room asking.</param>
/// <param name="Consumer">The consumer it trains for.</param>
/// <param name="Declared">q, σ and steps (and the run's own ε, δ).</param>
/// <param name="PipelineSha256">Its pipeline.</param>
public sealed record RunDeclaration(string RunId, string CleanRoom, string Consumer, DeclaredPrivacy Declared, string PipelineSha256);

/// <summary>Declared DP parameters.</summary>
/// <param name="Epsilon">ε by the run's accountant (informative; the broker computes its own).</param>
/// <param name="Delta">δ of that ε (must not exceed the contract's).</param>
/// <param name="NoiseMultiplier">σ.</param>
/// <param name="SampleRate">q.</param>
/// <param name="Steps">Steps.</param>
public sealed record DeclaredPrivacy(double Epsilon, double Delta, double NoiseMultiplier, double SampleRate, long Steps)
{
    /// <summary>Null when valid, else the problem.</summary>
    public string? Problem()
    {
        if (!double.IsFinite(SampleRate) || SampleRate <= 0 || SampleRate > 1)
        {
            return "sample_rate (q) must be in (0, 1]";
        }

        if (!double.IsFinite(NoiseMultiplier) || NoiseMultiplier <= 0)
        {
            return "sigma must be a finite number > 0";
        }

        if (Steps < 1)
        {
            return "steps must be ≥ 1";
        }

        if (!double.IsFinite(Epsilon) || Epsilon < 0)
        {
            return "epsilon must be finite and ≥ 0";
        }

        return !double.IsFinite(Delta) || Delta < 0 || Delta >= 1 ? "delta must be in [0, 1)" : null;
    }
}

/// <summary>
/// Privacy composition across runs: each run is a Poisson-subsampled Gaussian mechanism (q, σ, steps); RDP adds up per
/// Rényi order over runs (MriSeg.Privacy's <see cref="RdpAccountant"/>, Opacus's orders), and ε comes from the summed
/// curve at the contract's δ with the optimal conversion — tighter than adding the runs' ε.
/// </summary>
public static class PrivacyComposition
{
    /// <summary>ε of the runs composed, at <paramref name="delta"/> (0 for none).</summary>
    public static double Epsilon(IEnumerable<PrivacyEvent> runs, double delta)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var accountant = new RdpAccountant();
        foreach (var run in runs)
        {
            accountant.Compose(run);
        }

        return accountant.History.Count == 0 ? 0 : accountant.GetPrivacySpent(delta).Epsilon;
    }

    /// <summary>The budget view of a contract record.</summary>
    public static BudgetView View(ContractRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        var t = record.Terms;
        if (!t.HasBudget)
        {
            return new BudgetView(t.ContractId, t.DatasetId, 0, 0, 0, 0, t.Delta);
        }

        var spent = Epsilon(record.Runs.Where(r => r.Settled).Select(r => r.Event), t.Delta);
        var all = Epsilon(record.Runs.Select(r => r.Event), t.Delta);
        return new BudgetView(t.ContractId, t.DatasetId, t.MaxEpsilonTotal, t.MaxEpsilonPerRun, spent, Math.Max(0, all - spent), t.Delta);
    }
}

/// <summary>The outcome of a reservation.</summary>
/// <param name="Granted">Whether the run may have the key.</param>
/// <param name="Reason">Why (the ε figures).</param>
/// <param name="Budget">The budget after it.</param>
/// <param name="RunEpsilon">The broker's ε for the run alone at the contract's δ.</param>
public sealed record Reservation(bool Granted, string Reason, BudgetView Budget, double RunEpsilon);

/// <summary>
/// Contracts and their privacy ledgers. Every change is a read-modify-write of the contract's one record guarded by its
/// ETag: two runs racing for the last of a budget both compute, one replace wins, the loser re-reads and (the budget
/// now spent) is refused. Retries are bounded (<see cref="MaxAttempts"/>).
/// </summary>
public sealed class ContractLedger(IRecordStore store, TimeProvider time)
{
    /// <summary>Most runs a contract's ledger records (its record must fit one table entity).</summary>
    public const int MaxRuns = 100;

    /// <summary>Optimistic-concurrency attempts before giving up (UNAVAILABLE).</summary>
    public const int MaxAttempts = 16;

    /// <summary>Tolerance of the cap comparisons (floating point).</summary>
    public const double Tolerance = 1e-9;

    private const string Row = "contract";
    private static readonly JsonSerializerOptions Options = StoreJson.Options;

    /// <summary>The contract and its ETag, or null.</summary>
    public async Task<(ContractRecord Record, string ETag)?> GetAsync(string contractId, CancellationToken cancellationToken)
    {
        var stored = await store.GetAsync(KeyBrokerTables.Contracts, contractId, Row, cancellationToken).ConfigureAwait(false);
        if (stored is null)
        {
            return null;
        }

        var record = JsonSerializer.Deserialize<ContractRecord>(stored.Data, Options);
        return record is null || record.Terms.ContractId != contractId
            ? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the stored record of contract {contractId} is unreadable")
            : (record, stored.ETag!);
    }

    /// <summary>
    /// Records <paramref name="terms"/> for a newly imported key: creates the contract, or adds the key to an existing
    /// contract with the same owner and the same terms (several shards of one dataset under one contract).
    /// </summary>
    public async Task AttachKeyAsync(ContractTerms terms, string keyId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(terms);
        await UpdateAsync(terms.ContractId, existing =>
        {
            if (existing is null)
            {
                return new ContractRecord(terms, [keyId], []);
            }

            if (existing.Terms.Owner != terms.Owner)
            {
                throw KeyBrokerException.PermissionDenied($"contract '{terms.ContractId}' belongs to another party");
            }

            if (!existing.Terms.SameAs(terms))
            {
                throw KeyBrokerException.FailedPrecondition($"contract '{terms.ContractId}' exists with other terms: change them with UpdateKeyPolicy, or use another contract id");
            }

            return existing.KeyIds.Contains(keyId) ? null : existing with { KeyIds = [.. existing.KeyIds, keyId] };
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Replaces a contract's terms (its owner's update). The runs already recorded stay: a lower cap never gives back
    /// what was spent; it only refuses further runs.
    /// </summary>
    public async Task<ContractRecord> ReplaceTermsAsync(ContractTerms terms, string keyId, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(terms);
        return await UpdateAsync(terms.ContractId, existing =>
        {
            if (existing is null)
            {
                return new ContractRecord(terms, [keyId], []);
            }

            if (existing.Terms.Owner != terms.Owner)
            {
                throw KeyBrokerException.PermissionDenied($"contract '{terms.ContractId}' belongs to another party");
            }

            if (existing.Terms.HasBudget != terms.HasBudget)
            {
                throw KeyBrokerException.FailedPrecondition($"contract '{terms.ContractId}': a budget cannot be added to or removed from a contract");
            }

            return existing with { Terms = terms, KeyIds = existing.KeyIds.Contains(keyId) ? existing.KeyIds : [.. existing.KeyIds, keyId] };
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Reserves a run's declared spend, atomically. The same run asking again with the same parameters (another key of
    /// the contract) is granted without spending twice; other parameters, or a settled run, are refused. Otherwise the
    /// run's own ε (broker's RDP at the contract's δ) must fit the per-run cap, and all runs composed with it the total.
    /// </summary>
    public async Task<Reservation> ReserveAsync(string contractId, RunDeclaration run, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(run);
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var found = await GetAsync(contractId, cancellationToken).ConfigureAwait(false)
                ?? throw KeyBrokerException.NotFound($"contract '{contractId}' does not exist");
            var (record, etag) = found;
            var terms = record.Terms;
            var d = run.Declared;
            var runEvent = new PrivacyEvent(d.SampleRate, d.NoiseMultiplier, d.Steps);
            var runEpsilon = PrivacyComposition.Epsilon([runEvent], terms.Delta);
            var existing = record.Runs.FirstOrDefault(r => r.RunId == run.RunId);
            if (existing is not null)
            {
                var view = PrivacyComposition.View(record);
                if (existing.Settled)
                {
                    return new Reservation(false, $"run '{run.RunId}' already settled its spend on contract '{contractId}'", view, runEpsilon);
                }

                if (existing.CleanRoom != run.CleanRoom || existing.Consumer != run.Consumer || existing.PipelineSha256 != run.PipelineSha256
                    || !existing.SampleRate.Equals(d.SampleRate) || !existing.NoiseMultiplier.Equals(d.NoiseMultiplier) || existing.Steps != d.Steps)
                {
                    return new Reservation(false, $"run '{run.RunId}' reserved other parameters (clean room, consumer, pipeline, q, σ or steps) on contract '{contractId}'", view, runEpsilon);
                }

                return new Reservation(true, $"run '{run.RunId}' already holds its reservation (ε {Ids.Num(runEpsilon)})", view, runEpsilon);
            }

            if (runEpsilon > terms.MaxEpsilonPerRun + Tolerance)
            {
                return new Reservation(false,
                    $"the run's ε {Ids.Num(runEpsilon)} (RDP of q={Ids.Num(d.SampleRate)}, σ={Ids.Num(d.NoiseMultiplier)}, {d.Steps} steps at δ={Ids.Num(terms.Delta)}) exceeds the contract's {Ids.Num(terms.MaxEpsilonPerRun)} per run",
                    PrivacyComposition.View(record), runEpsilon);
            }

            if (record.Runs.Count >= MaxRuns)
            {
                return new Reservation(false, $"contract '{contractId}' has recorded {MaxRuns} runs, the most a ledger holds", PrivacyComposition.View(record), runEpsilon);
            }

            var composed = PrivacyComposition.Epsilon(record.Runs.Select(r => r.Event).Append(runEvent), terms.Delta);
            if (composed > terms.MaxEpsilonTotal + Tolerance)
            {
                var before = PrivacyComposition.View(record);
                return new Reservation(false,
                    $"budget exhausted: with this run (ε {Ids.Num(runEpsilon)}) the contract's runs compose to ε {Ids.Num(composed)}, over its total {Ids.Num(terms.MaxEpsilonTotal)} (remaining {Ids.Num(before.EpsilonRemaining)})",
                    before, runEpsilon);
            }

            var entry = new PrivacyRun(run.RunId, run.CleanRoom, run.Consumer, d.SampleRate, d.NoiseMultiplier, d.Steps, d.Epsilon, d.Delta, run.PipelineSha256, time.GetUtcNow());
            var updated = record with { Runs = [.. record.Runs, entry] };
            try
            {
                await store.ReplaceAsync(KeyBrokerTables.Contracts, new StoredRecord(contractId, Row, Serialize(updated), etag), cancellationToken).ConfigureAwait(false);
                return new Reservation(true, $"reserved ε {Ids.Num(runEpsilon)}; the contract's runs compose to ε {Ids.Num(composed)} of {Ids.Num(terms.MaxEpsilonTotal)}",
                    PrivacyComposition.View(updated), runEpsilon);
            }
            catch (RecordConflictException)
            {
                await Backoff(attempt, cancellationToken).ConfigureAwait(false); // another run changed the ledger: recompute
            }
        }

        throw new KeyBrokerException(KeyBrokerError.Unavailable, $"contract '{contractId}': the ledger kept changing; retry");
    }

    /// <summary>
    /// Settles a run's actual spend, reported by the clean room that reserved it. Only a run that stopped early may settle
    /// lower: the same q and σ and at most the reserved steps (so its RDP curve is below the reserved one at every
    /// order); more than reserved, or other parameters, are refused. Settling twice with the same steps is a no-op.
    /// </summary>
    public async Task<BudgetView> SettleAsync(string contractId, string runId, string cleanRoom, PrivacyEvent spent, CancellationToken cancellationToken)
    {
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var found = await GetAsync(contractId, cancellationToken).ConfigureAwait(false)
                ?? throw KeyBrokerException.NotFound($"contract '{contractId}' does not exist");
            var (record, etag) = found;
            var run = record.Runs.FirstOrDefault(r => r.RunId == runId)
                ?? throw KeyBrokerException.FailedPrecondition($"run '{runId}' has no reservation on contract '{contractId}'");
            if (run.CleanRoom != cleanRoom)
            {
                throw KeyBrokerException.PermissionDenied($"run '{runId}' was reserved by another clean room");
            }

            if (!run.SampleRate.Equals(spent.SampleRate) || !run.NoiseMultiplier.Equals(spent.NoiseMultiplier))
            {
                throw KeyBrokerException.FailedPrecondition(
                    $"run '{runId}' reserved q={Ids.Num(run.SampleRate)}, σ={Ids.Num(run.NoiseMultiplier)}; a settlement reports the same q and σ");
            }

            if (spent.Steps > run.Steps)
            {
                throw KeyBrokerException.FailedPrecondition($"run '{runId}' reserved {run.Steps} steps and reports {spent.Steps}: a run never spends more than it reserved");
            }

            if (run.Settled)
            {
                return run.SettledSteps == spent.Steps
                    ? PrivacyComposition.View(record)
                    : throw KeyBrokerException.FailedPrecondition($"run '{runId}' already settled {run.SettledSteps} steps");
            }

            var updated = record with { Runs = record.Runs.Select(r => r.RunId == runId ? r with { SettledSteps = spent.Steps, SettledAt = time.GetUtcNow() } : r).ToList() };
            try
            {
                await store.ReplaceAsync(KeyBrokerTables.Contracts, new StoredRecord(contractId, Row, Serialize(updated), etag), cancellationToken).ConfigureAwait(false);
                return PrivacyComposition.View(updated);
            }
            catch (RecordConflictException)
            {
                await Backoff(attempt, cancellationToken).ConfigureAwait(false);
            }
        }

        throw new KeyBrokerException(KeyBrokerError.Unavailable, $"contract '{contractId}': the ledger kept changing; retry");
    }

    private async Task<ContractRecord> UpdateAsync(string contractId, Func<ContractRecord?, ContractRecord?> change, CancellationToken cancellationToken)
    {
        for (var attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var found = await GetAsync(contractId, cancellationToken).ConfigureAwait(false);
            var updated = change(found?.Record);
            if (updated is null)
            {
                return found!.Value.Record;
            }

            try
            {
                if (found is null)
                {
                    await store.InsertAsync(KeyBrokerTables.Contracts, new StoredRecord(contractId, Row, Serialize(updated)), cancellationToken).ConfigureAwait(false);
                }
                else
                {
                    await store.ReplaceAsync(KeyBrokerTables.Contracts, new StoredRecord(contractId, Row, Serialize(updated), found.Value.ETag), cancellationToken).ConfigureAwait(false);
                }

                return updated;
            }
            catch (RecordConflictException)
            {
                await Backoff(attempt, cancellationToken).ConfigureAwait(false);
            }
        }

        throw new KeyBrokerException(KeyBrokerError.Unavailable, $"contract '{contractId}': the record kept changing; retry");
    }

    // A short randomised pause so that racing writers spread out.
    private static Task Backoff(int attempt, CancellationToken cancellationToken) =>
        Task.Delay(TimeSpan.FromMilliseconds(Random.Shared.Next(1, 5 << Math.Min(attempt, 5))), cancellationToken);

    private static string Serialize(ContractRecord record) => JsonSerializer.Serialize(record, Options);
}
