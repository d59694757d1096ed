using TorchSharp;

namespace MriSeg.Learning.Torch;

/// <summary>What <see cref="TorchRuntime"/> did to the TorchSharp native shim.</summary>
public enum ShimPatchStatus
{
    /// <summary>No change needed: the system libstdc++ has the version, or the shim does not need it.</summary>
    NotNeeded,

    /// <summary>The shim's GLIBCXX_3.4.32 need was already weak (patched by an earlier run).</summary>
    AlreadyPatched,

    /// <summary>This process set the weak flag on the shim.</summary>
    PatchedNow,
}

/// <summary>The torch backend this process uses, as set up by <see cref="TorchRuntime.Initialize"/>.</summary>
/// <param name="Backend">"cpu" or "cuda".</param>
/// <param name="Device">The device tensors should go to: "cpu" or "cuda:N".</param>
/// <param name="LibTorchSource">Where libtorch came from: the MRISEG_LIBTORCH_DIR folder, or "NuGet libtorch-cpu-linux-x64 2.10.0".</param>
/// <param name="LibTorchDirectory">The folder the libtorch libraries were loaded from.</param>
/// <param name="CudaAvailable">Whether the loaded libtorch reports a usable CUDA device.</param>
/// <param name="CudaDeviceCount">How many CUDA devices it sees.</param>
/// <param name="TorchSharpVersion">The managed TorchSharp package version.</param>
/// <param name="ShimPatch">What was done to libLibTorchSharp.so.</param>
/// <param name="ShimPath">The libLibTorchSharp.so that was loaded.</param>
/// <param name="LibStdCxx">What the system libstdc++ provides, in one line.</param>
public sealed record TorchBackendInfo(
    string Backend,
    string Device,
    string LibTorchSource,
    string LibTorchDirectory,
    bool CudaAvailable,
    int CudaDeviceCount,
    string TorchSharpVersion,
    ShimPatchStatus ShimPatch,
    string ShimPath,
    string LibStdCxx)
{
    /// <summary>True when the shim carries the weak-version patch (now or from an earlier run).</summary>
    public bool ShimPatched => ShimPatch is ShimPatchStatus.PatchedNow or ShimPatchStatus.AlreadyPatched;

    /// <summary>True when <see cref="Backend"/> is "cuda".</summary>
    public bool IsCuda => Backend == "cuda";

    /// <summary>A TorchSharp device for <see cref="Device"/>.</summary>
    public torch.Device CreateDevice() => new(Device);

    /// <summary>
    /// The device for an explicit request, which overrides MRISEG_DEVICE: "cpu"; "cuda" (this backend's CUDA device
    /// when it is one, else cuda:0), or the CPU when CUDA is missing and <paramref name="allowCpuFallback"/>, else null
    /// (the caller says why); anything else (null, "auto") this backend's device.
    /// </summary>
    public torch.Device? DeviceFor(string? requested, bool allowCpuFallback = false) => requested switch
    {
        "cpu" => new("cpu"),
        "cuda" when CudaAvailable => IsCuda ? CreateDevice() : new("cuda"),
        "cuda" => allowCpuFallback ? new("cpu") : null,
        _ => CreateDevice(),
    };

    /// <summary>The one-line summary that is logged.</summary>
    public override string ToString() =>
        $"backend {Backend}, device {Device}, libtorch {LibTorchSource} ({LibTorchDirectory}), " +
        $"CUDA devices {CudaDeviceCount}, TorchSharp {TorchSharpVersion}, shim {ShimPatch}";
}
