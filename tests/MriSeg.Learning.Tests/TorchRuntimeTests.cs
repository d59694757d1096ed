using Microsoft.Extensions.Logging;
using MriSeg.Learning.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class TorchRuntimeTests(TorchRuntimeFixture fixture)
{
    private TorchBackendInfo Info => fixture.Info;

    [Fact]
    public void Backend_is_the_bundled_cpu_libtorch()
    {
        Assert.Equal("cpu", Info.Backend);
        Assert.Equal("cpu", Info.Device);
        Assert.False(Info.IsCuda);
        Assert.False(Info.CudaAvailable);
        Assert.Equal(0, Info.CudaDeviceCount);
        Assert.Equal("NuGet libtorch-cpu-linux-x64 2.10.0", Info.LibTorchSource);
        Assert.Equal(Path.Combine(AppContext.BaseDirectory, TorchRuntime.CpuLibTorchFolder), Info.LibTorchDirectory);
        Assert.Equal("0.107.0", Info.TorchSharpVersion);
        Assert.Equal(DeviceType.CPU, Info.CreateDevice().type);
    }

    [Fact]
    public void Shim_patch_status_matches_the_system_libstdcxx()
    {
        Assert.Equal(Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", TorchRuntime.ShimFileName), Info.ShimPath);
        var systemHasIt = SystemLibStdCxx.Probe().Defines(TorchRuntime.RequiredGlibcxxVersion);
        var shim = ElfVersionInfo.Read(Info.ShimPath);
        Assert.True(shim.Requires(TorchRuntime.RequiredGlibcxxVersion));
        if (systemHasIt)
        {
            // e.g. Ubuntu 24.04: nothing to patch.
            Assert.Equal(shim.RequiresNonWeak(TorchRuntime.RequiredGlibcxxVersion), !Info.ShimPatched);
        }
        else
        {
            // e.g. Debian 12: the shim cannot have loaded without the weak flag.
            Assert.True(Info.ShimPatched);
            Assert.False(shim.RequiresNonWeak(TorchRuntime.RequiredGlibcxxVersion));
        }

        Assert.Contains(TorchRuntime.RequiredGlibcxxVersion, Info.LibStdCxx, StringComparison.Ordinal);
    }

    [Fact]
    public void One_information_line_names_backend_device_and_libtorch_source()
    {
        var lines = fixture.Logger.Entries.Where(e => e.Level >= LogLevel.Information).ToList();

        var (_, line) = Assert.Single(lines);
        Assert.Contains("backend cpu", line, StringComparison.Ordinal);
        Assert.Contains("device cpu", line, StringComparison.Ordinal);
        Assert.Contains("NuGet libtorch-cpu-linux-x64 2.10.0", line, StringComparison.Ordinal);
        Assert.Contains(Info.ShimPatch.ToString(), line, StringComparison.Ordinal);
    }

    [Fact]
    public void Initialize_is_idempotent_and_thread_safe()
    {
        var logger = new ListLogger();
        var results = new TorchBackendInfo[16];
        Parallel.For(0, results.Length, i => results[i] = TorchRuntime.Initialize(logger));

        Assert.All(results, r => Assert.Same(Info, r));
        Assert.Same(Info, TorchRuntime.Current);
        Assert.Empty(logger.Entries);
    }

    [Fact]
    public void Exactly_one_libtorch_is_mapped_and_torchsharp_did_not_copy_its_fallback()
    {
        var mapped = File.ReadLines("/proc/self/maps")
            .Select(l => l.IndexOf('/', StringComparison.Ordinal) is var i and >= 0 ? l[i..] : "")
            .Where(p => Path.GetFileName(p) is "libtorch_cpu.so" or "libc10.so")
            .Distinct()
            .ToList();

        Assert.Equal(2, mapped.Count);
        Assert.All(mapped, p => Assert.Equal(Info.LibTorchDirectory, Path.GetDirectoryName(p)));
        Assert.False(Directory.Exists(Path.Combine(AppContext.BaseDirectory, "cpu")), "TorchSharp's copy-everything fallback ran");
    }

    [Fact]
    public void Conv2d_weight_gradient_matches_central_finite_differences()
    {
        using var scope = NewDisposeScope();
        manual_seed(20240611);
        var conv = nn.Conv2d(2, 4, 3, dtype: ScalarType.Float64);
        var x = randn([2, 2, 16, 16], dtype: ScalarType.Float64);
        var r = randn([2, 4, 14, 14], dtype: ScalarType.Float64);

        // Non-linear in the weights, so the finite difference checks more than a linear map.
        Tensor Loss()
        {
            var y = conv.forward(x);
            return (y.tanh() * r).sum() + y.pow(2).mean();
        }

        var loss = Loss();
        Assert.Equal([2L, 4, 14, 14], conv.forward(x).shape);
        loss.backward();
        var weight = conv.weight!;
        var grad = weight.grad!.clone();
        Assert.Equal(weight.shape, grad.shape);

        const double h = 1e-5;
        long[][] entries = [[0, 0, 0, 0], [1, 1, 2, 1], [2, 0, 1, 2], [3, 1, 0, 0], [3, 0, 2, 2]];
        foreach (var e in entries)
        {
            double plus, minus;
            using (no_grad())
            {
                var w = weight[e[0], e[1], e[2], e[3]];
                var original = w.item<double>();
                w.fill_(original + h);
                plus = Loss().item<double>();
                w.fill_(original - h);
                minus = Loss().item<double>();
                w.fill_(original);
            }

            var numeric = (plus - minus) / (2 * h);
            var analytic = grad[e[0], e[1], e[2], e[3]].item<double>();
            Assert.True(Math.Abs(analytic) > 1e-3, $"gradient at [{string.Join(",", e)}] is too small to test: {analytic}");
            Assert.True(Math.Abs(numeric - analytic) <= 1e-7 * Math.Max(1, Math.Abs(analytic)),
                $"weight[{string.Join(",", e)}]: autograd {analytic:R}, finite difference {numeric:R}");
        }
    }
}
