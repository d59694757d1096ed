namespace MriSeg.Privacy.Tests;

public sealed class CalibrationAndBudgetTests
{
    [Theory]
    [InlineData(AccountantKind.Rdp, 2.0, 0.01, 500L, 1e-5)]
    [InlineData(AccountantKind.Rdp, 0.5, 0.004, 5000L, 1e-6)]
    [InlineData(AccountantKind.Rdp, 10.0, 0.1, 2000L, 1e-5)]
    [InlineData(AccountantKind.Prv, 2.0, 0.01, 500L, 1e-5)]
    [InlineData(AccountantKind.Prv, 4.0, 0.05, 200L, 1e-4)]
    public void Sigma_reaches_the_target_to_a_tenth_of_a_percent(AccountantKind kind, double target, double q, long steps, double delta)
    {
        var r = NoiseCalibration.FindNoiseMultiplier(target, delta, q, steps, kind);
        double Eps(double sigma) => PrivacyAccounting.ComputeEpsilon(q, sigma, steps, delta, kind).Epsilon;
        Assert.True(Eps(r.NoiseMultiplier) <= target);
        Assert.True(Eps(r.NoiseMultiplier * (1 - 0.001)) > target);
        Assert.Equal(Eps(r.NoiseMultiplier), r.Epsilon);
        Assert.True(r.LowerEpsilon > target && r.LowerNoiseMultiplier >= r.NoiseMultiplier * (1 - 0.001));
    }

    [Fact]
    public void Calibration_edge_cases()
    {
        Assert.Equal(0.0, NoiseCalibration.FindNoiseMultiplier(1.0, 1e-5, 0.0, 100).NoiseMultiplier);
        Assert.Equal(0.0, NoiseCalibration.FindNoiseMultiplier(1.0, 1e-5, 0.1, 0).NoiseMultiplier);
        Assert.Throws<ArgumentOutOfRangeException>(() => NoiseCalibration.FindNoiseMultiplier(-1.0, 1e-5, 0.1, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => NoiseCalibration.FindNoiseMultiplier(1.0, 0.0, 0.1, 10));
        Assert.Throws<ArgumentOutOfRangeException>(() => NoiseCalibration.FindNoiseMultiplier(0.005, 1e-5, 0.1, 10, AccountantKind.Prv));

        // RDP with delta fixed cannot go below about 0.1 with orders <= 63.
        Assert.Throws<ArgumentOutOfRangeException>(() => NoiseCalibration.FindNoiseMultiplier(0.01, 1e-5, 0.1, 10));
    }

    [Theory]
    [InlineData(AccountantKind.Rdp, 0.01, 1.0, 1e-5, 3.0)]
    [InlineData(AccountantKind.Rdp, 0.1, 0.7, 1e-5, 8.0)]
    [InlineData(AccountantKind.Prv, 0.02, 1.1, 1e-5, 1.5)]
    public void Max_steps_is_the_last_step_within_budget(AccountantKind kind, double q, double sigma, double delta, double budget)
    {
        long n = PrivacyBudget.MaxSteps(kind, q, sigma, delta, budget);
        double Eps(long steps) => PrivacyAccounting.ComputeEpsilon(q, sigma, steps, delta, kind).Epsilon;
        Assert.True(n > 0);
        Assert.True(Eps(n) <= budget, $"eps({n}) = {Eps(n)}");
        Assert.True(Eps(n + 1) > budget, $"eps({n + 1}) = {Eps(n + 1)}");
    }

    [Fact]
    public void Budget_accounts_for_what_was_already_spent()
    {
        var ledger = new RdpAccountant();
        ledger.Compose(0.01, 0.8, 400); // an earlier run
        long fresh = PrivacyBudget.MaxSteps(AccountantKind.Rdp, 0.02, 1.0, 1e-5, 4.0);
        long remaining = ledger.RemainingSteps(0.02, 1.0, 1e-5, 4.0);
        Assert.True(remaining < fresh);
        Assert.Equal(remaining, PrivacyBudget.MaxSteps(AccountantKind.Rdp, 0.02, 1.0, 1e-5, 4.0, ledger.History));
        Assert.True(ledger.CanTakeSteps(0.02, 1.0, 1e-5, 4.0, remaining));
        Assert.False(ledger.CanTakeSteps(0.02, 1.0, 1e-5, 4.0, remaining + 1));
        Assert.Equal(400, ledger.TotalSteps); // the what-if did not touch the ledger

        // Already over budget: nothing remains. Nothing leaks: the limit is returned.
        Assert.Equal(0, ledger.RemainingSteps(0.02, 1.0, 1e-5, 0.5));
        Assert.Equal(1000, ledger.RemainingSteps(0.0, 1.0, 1e-5, 4.0, limit: 1000));
    }

    [Fact]
    public void Training_loop_stops_before_the_budget_is_exceeded()
    {
        IPrivacyAccountant ledger = new RdpAccountant();
        const double q = 0.05, sigma = 1.5, delta = 1e-5, budget = 1.5;
        long allowed = ledger.RemainingSteps(q, sigma, delta, budget);
        long taken = 0;
        while (ledger.CanTakeSteps(q, sigma, delta, budget))
        {
            ledger.Step(q, sigma);
            taken++;
        }

        Assert.True(allowed > 10, allowed.ToString());
        Assert.Equal(allowed, taken);
        Assert.True(ledger.GetEpsilon(delta) <= budget);
        Assert.Single(ledger.History);
    }

    [Fact]
    public void Search_finds_the_boundary_from_any_guess()
    {
        static double F(long n) => Math.Sqrt(n);
        foreach (long guess in new long[] { 0, 1, 5, 99, 100, 101, 5000, 1_000_000 })
        {
            Assert.Equal(100, PrivacyBudget.SearchLastWithin(F, 10.0, guess, 10_000_000));
        }

        Assert.Equal(0, PrivacyBudget.SearchLastWithin(n => 1.0 + n, 0.5, 10, 100));
        Assert.Equal(100, PrivacyBudget.SearchLastWithin(_ => 0.0, 0.5, 10, 100));
    }
}
