using MriSeg.Learning.Torch;

namespace MriSeg.Learning.Tests;

public sealed class DeviceSelectionTests
{
    private const string Source = "NuGet libtorch-cpu-linux-x64 2.10.0";

    [Theory]
    [InlineData(null, DeviceRequest.Auto, null)]
    [InlineData("", DeviceRequest.Auto, null)]
    [InlineData(" Auto ", DeviceRequest.Auto, null)]
    [InlineData("cpu", DeviceRequest.Cpu, null)]
    [InlineData("CUDA", DeviceRequest.Cuda, null)]
    [InlineData("cuda:1", DeviceRequest.Cuda, 1)]
    public void Device_values_are_parsed(string? value, DeviceRequest expected, int? index)
    {
        var settings = TorchRuntimeSettings.Parse(null, value, null);
        Assert.Equal(expected, settings.Device);
        Assert.Equal(index, settings.CudaIndex);
    }

    [Theory]
    [InlineData("gpu")]
    [InlineData("cuda:")]
    [InlineData("cuda:-1")]
    public void Unknown_device_values_are_rejected_clearly(string value)
    {
        var ex = Assert.Throws<TorchUnavailableException>(() => TorchRuntimeSettings.Parse(null, value, null));
        Assert.Contains("MRISEG_DEVICE", ex.Message, StringComparison.Ordinal);
        Assert.Contains(value, ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null, false)]
    [InlineData("0", false)]
    [InlineData("1", true)]
    [InlineData("true", true)]
    public void Fallback_flag_is_parsed(string? value, bool expected) =>
        Assert.Equal(expected, TorchRuntimeSettings.Parse(null, null, value).AllowCpuFallback);

    [Fact]
    public void Fallback_flag_garbage_is_rejected() =>
        Assert.Throws<TorchUnavailableException>(() => TorchRuntimeSettings.Parse(null, null, "maybe"));

    [Fact]
    public void Blank_libtorch_dir_means_unset() =>
        Assert.Null(TorchRuntimeSettings.Parse("  ", null, null).LibTorchDirectory);

    [Theory]
    [InlineData("auto", true, 2, "cuda", "cuda:0")]
    [InlineData("auto", false, 0, "cpu", "cpu")]
    [InlineData("auto", true, 0, "cpu", "cpu")]
    [InlineData("cpu", true, 2, "cpu", "cpu")]
    [InlineData("cuda", true, 1, "cuda", "cuda:0")]
    [InlineData("cuda:1", true, 2, "cuda", "cuda:1")]
    public void Device_is_resolved(string request, bool available, int count, string backend, string device)
    {
        var (b, d, warning) = TorchRuntime.ResolveDevice(TorchRuntimeSettings.Parse(null, request, null), available, count, Source);
        Assert.Equal(backend, b);
        Assert.Equal(device, d);
        Assert.Null(warning);
    }

    [Fact]
    public void Cuda_without_cuda_is_a_clear_error()
    {
        var settings = TorchRuntimeSettings.Parse(null, "cuda", null);

        var ex = Assert.Throws<TorchUnavailableException>(() => TorchRuntime.ResolveDevice(settings, false, 0, Source));

        Assert.Contains("MRISEG_DEVICE", ex.Message, StringComparison.Ordinal);
        Assert.Contains(Source, ex.Message, StringComparison.Ordinal);
        Assert.Contains("MRISEG_LIBTORCH_DIR", ex.Message, StringComparison.Ordinal);
        Assert.Contains("MRISEG_ALLOW_CPU_FALLBACK=1", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cuda_index_beyond_the_devices_is_a_clear_error()
    {
        var ex = Assert.Throws<TorchUnavailableException>(
            () => TorchRuntime.ResolveDevice(TorchRuntimeSettings.Parse(null, "cuda:2", null), true, 2, Source));
        Assert.Contains("cuda:2", ex.Message, StringComparison.Ordinal);
        Assert.Contains("2 CUDA device(s)", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Cuda_without_cuda_falls_back_to_cpu_only_when_allowed()
    {
        var (backend, device, warning) = TorchRuntime.ResolveDevice(TorchRuntimeSettings.Parse(null, "cuda", "1"), false, 0, Source);

        Assert.Equal("cpu", backend);
        Assert.Equal("cpu", device);
        Assert.Contains("not available", warning, StringComparison.Ordinal);
    }
}

[Collection(TorchCollection.Name)]
public sealed class ExplicitDeviceRequestTests(TorchRuntimeFixture fixture)
{
    private static TorchBackendInfo Info(string backend, string device, bool cudaAvailable) =>
        new(backend, device, "test", "/nowhere", cudaAvailable, cudaAvailable ? 2 : 0, "0.107.0", ShimPatchStatus.NotNeeded, "/nowhere/shim", "test");

    [Theory]
    // A CPU-only libtorch: cuda is refused (null) unless the CPU fallback is allowed.
    [InlineData("cpu", "cpu", false, "cpu", false, "cpu")]
    [InlineData("cpu", "cpu", false, "cuda", false, null)]
    [InlineData("cpu", "cpu", false, "cuda", true, "cpu")]
    [InlineData("cpu", "cpu", false, null, false, "cpu")]
    // CUDA chosen by MRISEG_DEVICE=cuda:1: a cuda request keeps that index.
    [InlineData("cuda", "cuda:1", true, "cuda", false, "cuda:1")]
    [InlineData("cuda", "cuda:1", true, "auto", false, "cuda:1")]
    [InlineData("cuda", "cuda:1", true, "cpu", false, "cpu")]
    // CUDA present but MRISEG_DEVICE=cpu: the explicit request wins.
    [InlineData("cpu", "cpu", true, "cuda", false, "cuda")]
    [InlineData("cpu", "cpu", true, null, false, "cpu")]
    public void An_explicit_request_picks_the_device(string backend, string device, bool cudaAvailable, string? requested, bool fallback, string? expected)
    {
        Assert.NotNull(fixture.Info);
        var chosen = Info(backend, device, cudaAvailable).DeviceFor(requested, fallback);
        if (expected is null)
        {
            Assert.Null(chosen);
            return;
        }

        Assert.NotNull(chosen);
        var (type, index) = expected.Split(':') is [var t, var i] ? (t, int.Parse(i, System.Globalization.CultureInfo.InvariantCulture)) : (expected, -1);
        Assert.Equal(type, chosen.type.ToString().ToLowerInvariant());
        if (index >= 0)
        {
            Assert.Equal(index, chosen.index);
        }
    }
}
