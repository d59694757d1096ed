using MriSeg.Learning.Benchmark;
using MriSeg.Learning.Performance;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class DpBenchmarkTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    [Fact]
    public void Tiny_benchmark_reports_both_throughputs_and_their_ratio()
    {
        Assert.NotNull(fixture.Info);
        var result = DpBenchmark.Run(16, 2, CPU, 2, new DpBenchmarkOptions { Model = UNetTests.Tiny, Warmup = 0, SlicesPerGroup = 2, Threads = 1 });
        output.WriteLine(result.ToString());
        Assert.Equal(4, result.Batch);
        Assert.Equal(2, result.NonPrivateStepMs.Count);
        Assert.Equal(2, result.DpStepMs.Count);
        Assert.True(result.NonPrivateSamplesPerSecond > 0);
        Assert.True(result.DpSamplesPerSecond > 0);
        Assert.Equal(result.DpSamplesPerSecond / result.NonPrivateSamplesPerSecond, result.Ratio, 12);
        Assert.Equal(UNetTests.Tiny.ParameterCount, result.Parameters);
        Assert.Equal(1, result.Threads);
        Assert.Throws<ArgumentOutOfRangeException>(() => DpBenchmark.Run(18, 2, CPU, 1, new DpBenchmarkOptions { Model = UNetTests.Tiny }));
    }

    [Fact]
    public void Malloc_tuning_applies_on_linux_glibc()
    {
        Assert.Equal(OperatingSystem.IsLinux(), CpuAllocator.KeepFreedMemory());
        Assert.Equal(OperatingSystem.IsLinux(), CpuAllocator.IsTuned);
    }

    /// <summary>The measurement (reference U-Net, 128x128, batch 8); about a minute on 2 cores, so explicit only.</summary>
    [Fact(Explicit = true)]
    public void Reference_unet_at_128_batch_8()
    {
        Assert.NotNull(fixture.Info);
        var result = DpBenchmark.Run(128, 8, CPU, 10, new DpBenchmarkOptions { Warmup = 2 });
        output.WriteLine(result.ToString());
        output.WriteLine("non-private ms: " + string.Join(", ", result.NonPrivateStepMs.Select(v => v.ToString("F0", System.Globalization.CultureInfo.InvariantCulture))));
        output.WriteLine("DP ms:          " + string.Join(", ", result.DpStepMs.Select(v => v.ToString("F0", System.Globalization.CultureInfo.InvariantCulture))));
        Assert.True(result.Ratio >= 0.8, $"DP/non-private ratio {result.Ratio:F3} is below the goal of 0.8 (on a shared CPU, rerun when it is quiet).");
    }
}
