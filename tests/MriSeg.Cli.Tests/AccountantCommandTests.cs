using MriSeg.Privacy;

namespace MriSeg.Cli.Tests;

public sealed class AccountantCommandTests
{
    [Theory]
    [InlineData("rdp")]
    [InlineData("prv")]
    public async Task Epsilon_json_is_the_libraries_epsilon(string accountant)
    {
        var run = await CliRun.RunAsync("accountant", "--q", "0.01", "--sigma", "1.0", "--steps", "1000", "--delta", "1e-5", "--accountant", accountant, "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var expected = PrivacyAccounting.ComputeEpsilon(0.01, 1.0, 1000, 1e-5, AccountantKinds.Parse(accountant)).Epsilon;
        Assert.Equal(expected, run.Json().GetProperty("epsilon").GetDouble(), 12);
        Assert.InRange(expected, 0.5, 5);
    }

    [Fact]
    public async Task Target_epsilon_gives_a_sigma_that_reaches_it_and_no_less()
    {
        var run = await CliRun.RunAsync("accountant", "--target-epsilon", "8", "--q", "0.05", "--steps", "500", "--delta", "1e-4", "--accountant", "rdp", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var sigma = run.Json().GetProperty("sigma").GetDouble();
        Assert.True(RdpAccountant.ComputeEpsilon(0.05, sigma, 500, 1e-4).Epsilon <= 8);
        Assert.True(RdpAccountant.ComputeEpsilon(0.05, sigma * 0.999, 500, 1e-4).Epsilon > 8);
    }

    [Fact]
    public async Task Conflicting_or_out_of_range_arguments_are_one_line_errors()
    {
        var both = await CliRun.RunAsync("accountant", "--q", "0.01", "--sigma", "1", "--target-epsilon", "2", "--steps", "10", "--delta", "1e-5");
        Assert.Equal(1, both.ExitCode);
        Assert.Single(both.StderrLines);
        Assert.Empty(both.Stdout);

        var badQ = await CliRun.RunAsync("accountant", "--q", "1.5", "--sigma", "1", "--steps", "10", "--delta", "1e-5");
        Assert.NotEqual(0, badQ.ExitCode);
        Assert.Single(badQ.StderrLines);
    }
}
