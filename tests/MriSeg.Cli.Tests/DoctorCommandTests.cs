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
