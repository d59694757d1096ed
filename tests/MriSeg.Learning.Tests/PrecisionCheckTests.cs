using MriSeg.Learning.Benchmark;
using MriSeg.Learning.Torch;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class PrecisionCheckTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    [Fact]
    public void Cpu_rows_agree_within_their_bars_and_bfloat16_is_measured_as_coarser()
    {
        Assert.NotNull(fixture.Info);
        var rows = PrecisionCheck.Agreement(CPU, 16, [1, 2, 3], UNetTests.Tiny, seed: 3);
        foreach (var row in rows)
        {
            output.WriteLine($"{row.Comparison}: {row.MaxRelativeError:E2} (norm {row.MaxNormRelativeError:E2}, cos {row.MinCosine:F6})");
        }

        // No cross-device or TF32 rows on the CPU.
        Assert.Equal(["float64 folded vs float64 micro-batching", "float32 folded vs float64 on the CPU", "bfloat16 folded vs float64 on the CPU"],
            rows.Select(r => r.Comparison));
        Assert.All(rows, r => Assert.True(r.Passed, r.Comparison));
        Assert.InRange(rows[0].MaxRelativeError, 0, 1e-12);
        // float32 is really rounded (a copy in float64 would show 0) yet far inside its bar.
        Assert.InRange(rows[1].MaxRelativeError, 1e-9, PrecisionCheck.Float32Tolerance / 10);
        // bfloat16 has no bar; it must show its 8-bit mantissa, well above float32.
        Assert.Null(rows[2].Tolerance);
        Assert.True(rows[2].MaxRelativeError > 100 * rows[1].MaxRelativeError);
        Assert.InRange(rows[2].MinCosine, 0.9, 1.0);
    }

    [Fact]
    public void Cudnn_autotuner_switch_reaches_libtorch()
    {
        Assert.NotNull(fixture.Info);
        var before = CudnnBenchmark.Enabled;
        try
        {
            CudnnBenchmark.Enabled = !before;
            Assert.Equal(!before, CudnnBenchmark.Enabled);
            CudnnBenchmark.Enabled = before;
            Assert.Equal(before, CudnnBenchmark.Enabled);
        }
        finally
        {
            CudnnBenchmark.Enabled = before;
        }
    }

    [Fact]
    public void Speed_times_both_precisions()
    {
        Assert.NotNull(fixture.Info);
        var timing = PrecisionCheck.Speed(CPU, 16, 2, 1, UNetTests.Tiny);
        Assert.Equal(["float32", "bfloat16"], timing.Select(t => t.Precision));
        Assert.All(timing, t => Assert.True(t.NonPrivateStepMs > 0 && t.PerPatientGradientsMs > 0));
    }
}
