using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Benchmark;

/// <summary>Times work that may run asynchronously on a GPU.</summary>
internal static class DeviceTiming
{
    /// <summary>
    /// Wall-clock and this process's CPU milliseconds of <paramref name="step"/>. On CUDA it waits for the device's
    /// queued work before starting the clock and before stopping it, so the time covers the step's kernels, not only
    /// their launch.
    /// </summary>
    public static (double WallMs, double CpuMs) Measure(Device device, Action step)
    {
        var isCuda = device.type == DeviceType.CUDA;
        if (isCuda)
        {
            cuda.synchronize(device);
        }

        using var process = Process.GetCurrentProcess();
        var cpu = process.TotalProcessorTime;
        var watch = Stopwatch.StartNew();
        step();
        if (isCuda)
        {
            cuda.synchronize(device);
        }

        var wall = watch.Elapsed.TotalMilliseconds;
        process.Refresh();
        return (wall, (process.TotalProcessorTime - cpu).TotalMilliseconds);
    }
}
