using System.Runtime.InteropServices;

namespace MriSeg.Learning.Torch;

/// <summary>
/// libtorch's cuDNN autotuner (PyTorch's <c>torch.backends.cudnn.benchmark</c>), which TorchSharp 0.107 does not expose:
/// set through libtorch's own <c>at::Context</c> (C++ symbols of libtorch_cpu.so, stable across the 2.x releases that
/// TorchSharp's shim binds). With it on, cuDNN times its algorithms for each new convolution shape and keeps the fastest.
/// </summary>
public static partial class CudnnBenchmark
{
    private const string LibTorchCpu = "libtorch_cpu.so";

    /// <summary>Whether the autotuner is on. Call <see cref="TorchRuntime.Initialize"/> first (libtorch must be loaded).</summary>
    /// <exception cref="TorchUnavailableException">The loaded libtorch lacks the symbols.</exception>
    public static bool Enabled
    {
        get => Call(() => Get(GlobalContext()));
        set => Call(() =>
        {
            Set(GlobalContext(), value);
            return true;
        });
    }

    private static bool Call(Func<bool> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            throw TorchUnavailableException.Create("cannot reach libtorch's cuDNN benchmark setting: " + e.Message, [],
                "use a libtorch 2.x (the one TorchSharp's shim was built for).");
        }
    }

    [LibraryImport(LibTorchCpu, EntryPoint = "_ZN2at13globalContextEv")]
    private static partial IntPtr GlobalContext();

    [LibraryImport(LibTorchCpu, EntryPoint = "_ZNK2at7Context14benchmarkCuDNNEv")]
    [return: MarshalAs(UnmanagedType.U1)]
    private static partial bool Get(IntPtr context);

    [LibraryImport(LibTorchCpu, EntryPoint = "_ZN2at7Context17setBenchmarkCuDNNEb")]
    private static partial void Set(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool value);
}
