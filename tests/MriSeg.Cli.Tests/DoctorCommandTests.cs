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
    public async Task Bench_dp_says_what_it_runs_on_and_can_turn_the_cudnn_autotuner_on()
    {
        var run = await CliRun.RunAsync("bench", "dp", "--size", "32", "--batch", "1", "--iterations", "1", "--cudnn-benchmark", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains(run.StderrLines, l => l.StartsWith("torch: running on cpu (backend cpu; libtorch from NuGet libtorch-cpu-linux-x64", StringComparison.Ordinal));
        var last = System.Text.Json.JsonDocument.Parse(run.Stdout.TrimEnd().Split('\n')[^1]).RootElement;
        Assert.True(last.GetProperty("cudnn_benchmark").GetBoolean());
    }

    [Fact]
    public async Task Bench_precision_reports_each_comparison_and_passes_on_the_cpu()
    {
        var run = await CliRun.RunAsync("bench", "precision", "--size", "16", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var last = System.Text.Json.JsonDocument.Parse(run.Stdout.TrimEnd().Split('\n')[^1]).RootElement;
        Assert.True(last.GetProperty("passed").GetBoolean());
        var rows = last.GetProperty("agreement").EnumerateArray().ToList();
        Assert.Equal(3, rows.Count);
        Assert.InRange(rows[0].GetProperty("max_relative_error").GetDouble(), 0, 1e-12);
        Assert.Equal(System.Text.Json.JsonValueKind.Null, rows[2].GetProperty("tolerance").ValueKind);
        Assert.Empty(last.GetProperty("timing").EnumerateArray());
    }

    [Fact]
    public async Task Bench_precision_refuses_a_size_the_unet_cannot_take()
    {
        var run = await CliRun.RunAsync("bench", "precision", "--size", "24");
        Assert.Equal(1, run.ExitCode);
        Assert.Contains("multiple of 16", run.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bench_dp_refuses_a_size_the_unet_cannot_take()
    {
        var run = await CliRun.RunAsync("bench", "dp", "--size", "100");
        Assert.Equal(1, run.ExitCode);
        Assert.Single(run.StderrLines);
    }
}
