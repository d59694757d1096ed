namespace MriSeg.Privacy;

/// <summary>
/// A privacy ledger for the Poisson-subsampled Gaussian mechanism: it records steps (merged into runs
/// of identical (q, σ)) and reports the ε spent so far for a given δ. Not thread-safe.
/// </summary>
public interface IPrivacyAccountant
{
    /// <summary>Which accountant this is.</summary>
    AccountantKind Kind { get; }

    /// <summary>The runs composed so far, oldest first; consecutive steps with equal (q, σ) are merged.</summary>
    IReadOnlyList<PrivacyEvent> History { get; }

    /// <summary>Total number of steps over the history.</summary>
    long TotalSteps { get; }

    /// <summary>Records one step.</summary>
    void Step(double sampleRate, double noiseMultiplier);

    /// <summary>Records <paramref name="steps"/> steps at once (for example a finished training run).</summary>
    void Compose(double sampleRate, double noiseMultiplier, long steps);

    /// <summary>The ε spent so far for this δ (an upper bound; 0 for an empty history).</summary>
    double GetEpsilon(double delta);

    /// <summary>An independent copy of this accountant with the same history and settings.</summary>
    IPrivacyAccountant Clone();

    /// <summary>Forgets the history.</summary>
    void Reset();
}

/// <summary>History bookkeeping shared by the accountants.</summary>
public abstract class PrivacyAccountantBase : IPrivacyAccountant
{
    private readonly List<PrivacyEvent> _history = [];

    /// <inheritdoc />
    public abstract AccountantKind Kind { get; }

    /// <inheritdoc />
    public IReadOnlyList<PrivacyEvent> History => _history;

    /// <inheritdoc />
    public long TotalSteps => _history.Sum(e => e.Steps);

    /// <inheritdoc />
    public void Step(double sampleRate, double noiseMultiplier) => Compose(sampleRate, noiseMultiplier, 1);

    /// <inheritdoc />
    public void Compose(double sampleRate, double noiseMultiplier, long steps)
    {
        var e = new PrivacyEvent(sampleRate, noiseMultiplier, steps);
        e.Validate();
        if (steps == 0)
        {
            return;
        }

        if (_history.Count > 0)
        {
            var last = _history[^1];
            if (last.SampleRate == sampleRate && last.NoiseMultiplier == noiseMultiplier)
            {
                _history[^1] = last with { Steps = checked(last.Steps + steps) };
                OnHistoryChanged();
                return;
            }
        }

        _history.Add(e);
        OnHistoryChanged();
    }

    /// <summary>Records a run.</summary>
    public void Compose(PrivacyEvent run) => Compose(run.SampleRate, run.NoiseMultiplier, run.Steps);

    /// <summary>Records several runs, in order.</summary>
    public void Compose(IEnumerable<PrivacyEvent> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        foreach (var run in runs)
        {
            Compose(run);
        }
    }

    /// <inheritdoc />
    public abstract double GetEpsilon(double delta);

    /// <inheritdoc />
    public abstract IPrivacyAccountant Clone();

    /// <inheritdoc />
    public void Reset()
    {
        _history.Clear();
        OnHistoryChanged();
    }

    /// <summary>Called after every change of the history (for caches).</summary>
    protected virtual void OnHistoryChanged()
    {
    }

    /// <summary>Copies this accountant's history into <paramref name="target"/>.</summary>
    protected T CopyHistoryTo<T>(T target)
        where T : PrivacyAccountantBase
    {
        ArgumentNullException.ThrowIfNull(target);
        foreach (var e in _history)
        {
            target._history.Add(e);
        }

        target.OnHistoryChanged();
        return target;
    }

    /// <summary>Throws when δ is not in (0, 1).</summary>
    protected static void ValidateDelta(double delta)
    {
        if (double.IsNaN(delta) || delta <= 0.0 || delta >= 1.0)
        {
            throw new ArgumentOutOfRangeException(nameof(delta), delta, "delta must be in (0, 1).");
        }
    }
}
