namespace MriSeg.Cli.Tests;

public sealed class DoctorCommandTests
{
    [Fact]
    public async Task Doctor_loads_libtorch_runs_a_convolution_and_names_backend_and_device()
    {
        var run = await CliRun.RunAsync("doctor", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var result = run.Json();
        Assert.Equal("ok", result.GetProperty("convolutionCheck").GetString());
        var torch = result.GetProperty("torch");
        Assert.Equal("cpu", torch.GetProperty("backend").GetString());
        Assert.Equal("cpu", torch.GetProperty("device").GetString());
        Assert.StartsWith("NuGet libtorch-cpu-linux-x64", torch.GetProperty("libTorchSource").GetString());
        Assert.Empty(run.Stderr);
    }
}

public sealed class BenchDpCommandTests
{
    [Fact]
    public async Task Bench_dp_json_last_line_holds_both_throughputs_and_their_ratio()
    {
        var run = await CliRun.RunAsync("bench", "dp", "--size", "32", "--batch", "2", "--iterations", "1", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var last = System.Text.Json.JsonDocument.Parse(run.Stdout.TrimEnd().Split('\n')[^1]).RootElement;
        var (plain, dp, ratio) = (last.GetProperty("non_private_samples_per_second").GetDouble(),
            last.GetProperty("dp_samples_per_second").GetDouble(), last.GetProperty("ratio").GetDouble());
        Assert.True(plain > 0 && dp > 0);
        Assert.Equal(dp / plain, ratio, 2);
    }

    [Fact]
    public async Task Bench_dp_refuses_a_size_the_unet_cannot_take()
    {
        var run = await CliRun.RunAsync("bench", "dp", "--size", "100");
        Assert.Equal(1, run.ExitCode);
        Assert.Single(run.StderrLines);
    }
}
