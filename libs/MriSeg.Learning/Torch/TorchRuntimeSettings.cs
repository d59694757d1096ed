using System.Globalization;

namespace MriSeg.Learning.Torch;

/// <summary>Which device MRISEG_DEVICE asks for.</summary>
public enum DeviceRequest
{
    /// <summary>CUDA when available, else CPU.</summary>
    Auto,

    /// <summary>CPU even when CUDA is available.</summary>
    Cpu,

    /// <summary>CUDA; an error when unavailable unless CPU fallback is allowed.</summary>
    Cuda,
}

/// <summary>The environment settings <see cref="TorchRuntime"/> reads.</summary>
/// <param name="LibTorchDirectory">MRISEG_LIBTORCH_DIR: a folder with libc10.so, libtorch_cpu.so, libtorch.so (and the CUDA ones), or null.</param>
/// <param name="Device">MRISEG_DEVICE: auto (default), cpu, cuda or cuda:N.</param>
/// <param name="CudaIndex">N of cuda:N, or null.</param>
/// <param name="AllowCpuFallback">MRISEG_ALLOW_CPU_FALLBACK=1: use the CPU when CUDA was asked for but is missing.</param>
public sealed record TorchRuntimeSettings(string? LibTorchDirectory, DeviceRequest Device, int? CudaIndex, bool AllowCpuFallback)
{
    /// <summary>Environment variable naming a libtorch folder (e.g. a PyTorch install's torch/lib).</summary>
    public const string LibTorchDirVariable = "MRISEG_LIBTORCH_DIR";

    /// <summary>Environment variable choosing the device.</summary>
    public const string DeviceVariable = "MRISEG_DEVICE";

    /// <summary>Environment variable allowing CPU when CUDA was requested but is unavailable.</summary>
    public const string AllowCpuFallbackVariable = "MRISEG_ALLOW_CPU_FALLBACK";

    /// <summary>Reads the settings from the process environment.</summary>
    /// <exception cref="TorchUnavailableException">A value is not understood.</exception>
    public static TorchRuntimeSettings FromEnvironment() => Parse(
        Environment.GetEnvironmentVariable(LibTorchDirVariable),
        Environment.GetEnvironmentVariable(DeviceVariable),
        Environment.GetEnvironmentVariable(AllowCpuFallbackVariable));

    /// <summary>Parses raw variable values (null or empty means unset).</summary>
    /// <exception cref="TorchUnavailableException">A value is not understood.</exception>
    public static TorchRuntimeSettings Parse(string? libTorchDirectory, string? device, string? allowCpuFallback)
    {
        var dir = string.IsNullOrWhiteSpace(libTorchDirectory) ? null : libTorchDirectory.Trim();
        var (request, index) = ParseDevice(device);
        return new TorchRuntimeSettings(dir, request, index, ParseFlag(allowCpuFallback));
    }

    private static (DeviceRequest, int?) ParseDevice(string? value)
    {
        var text = (value ?? "").Trim().ToLowerInvariant();
        switch (text)
        {
            case "" or "auto": return (DeviceRequest.Auto, null);
            case "cpu": return (DeviceRequest.Cpu, null);
            case "cuda": return (DeviceRequest.Cuda, null);
            default: break;
        }

        if (text.StartsWith("cuda:", StringComparison.Ordinal)
            && int.TryParse(text.AsSpan(5), NumberStyles.None, CultureInfo.InvariantCulture, out var index))
        {
            return (DeviceRequest.Cuda, index);
        }

        throw new TorchUnavailableException(
            $"{DeviceVariable}='{value}' is not understood. Use auto (the default: CUDA when available), cpu, cuda or cuda:N.");
    }

    private static bool ParseFlag(string? value)
    {
        var text = (value ?? "").Trim().ToLowerInvariant();
        return text switch
        {
            "" or "0" or "false" or "no" or "off" => false,
            "1" or "true" or "yes" or "on" => true,
            _ => throw new TorchUnavailableException($"{AllowCpuFallbackVariable}='{value}' is not understood. Use 1 or 0."),
        };
    }
}
