using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;

namespace MriSeg.Learning.Torch;

/// <summary>
/// Loads libtorch and TorchSharp's native shim for this process and picks the device.
/// Call <see cref="Initialize"/> before any other TorchSharp use.
/// </summary>
/// <remarks>
/// How TorchSharp 0.107 loads natives: the static constructor of <c>TorchSharp.torch</c> runs
/// <c>LoadNativeBackend</c>, which calls <c>NativeLibrary.TryLoad("torch_cpu")</c> and then
/// <c>TryLoad("LibTorchSharp")</c> relative to TorchSharp.dll. Those by-name loads probe the host's
/// NATIVE_DLL_SEARCH_DIRECTORIES (bin/runtimes/linux-x64/native/ for a portable build, the app folder
/// for a RID-specific publish), then TorchSharp.dll's folder, then plain dlopen(name). Its
/// [DllImport("LibTorchSharp")] calls resolve the same way. If the shim does not load, it copies
/// every libtorch file from the NuGet cache into bin/cpu/ and retries (about 600 MB) - so this class
/// loads the shim itself first and never lets TorchSharp start unless that worked.
/// <para>
/// Which libtorch wins: glibc satisfies a DT_NEEDED entry or a bare dlopen("libtorch_cpu.so") with
/// an already-loaded object of that soname, but a dlopen by path loads that file even if another
/// copy is loaded. So the libraries are preloaded by absolute path from one folder (MRISEG_LIBTORCH_DIR,
/// or the libtorch-cpu/ folder this library copies next to the app); the shim's DT_NEEDED
/// libtorch.so/libc10.so/libtorch_cpu.so and TorchSharp's "torch_cpu"/"torch_cuda" probes then bind
/// to them. The CPU package's files are kept off the probe path on purpose (see the .csproj): a
/// second libtorch_cpu loaded by path aborts the process in its static initialisers.
/// </para>
/// </remarks>
public static partial class TorchRuntime
{
    /// <summary>The libstdc++ symbol version the TorchSharp 0.107 shim asks for (GCC 13).</summary>
    public const string RequiredGlibcxxVersion = "GLIBCXX_3.4.32";

    /// <summary>The shim's file name on Linux.</summary>
    public const string ShimFileName = "libLibTorchSharp.so";

    /// <summary>Folder under the application where the CPU libtorch is copied.</summary>
    public const string CpuLibTorchFolder = "libtorch-cpu";

    private const string CpuPackageId = "libtorch-cpu-linux-x64";
    private static readonly string[] CpuLibraries = ["libc10.so", "libtorch_cpu.so", "libtorch.so"];

    // Dependency order; the CUDA ones are optional so a CPU-only PyTorch folder works too.
    private static readonly (string Name, bool Required)[] DirectoryLibraries =
    [
        ("libc10.so", true), ("libc10_cuda.so", false), ("libtorch_cpu.so", true), ("libtorch_cuda.so", false), ("libtorch.so", true),
    ];

    private static readonly Lock Gate = new();
    private static TorchBackendInfo? s_info;

    /// <summary>The result of a successful <see cref="Initialize"/>, or null before it.</summary>
    public static TorchBackendInfo? Current => Volatile.Read(ref s_info);

    /// <summary>
    /// Makes TorchSharp usable: finds libLibTorchSharp.so, patches it when the system libstdc++
    /// lacks GLIBCXX_3.4.32, preloads libtorch (MRISEG_LIBTORCH_DIR or the bundled CPU build),
    /// starts TorchSharp and chooses the device from MRISEG_DEVICE. Thread-safe; later calls return
    /// the first result. Logs one line with backend, device and libtorch source.
    /// </summary>
    /// <exception cref="TorchUnavailableException">Loading failed or the requested device is unusable.</exception>
    public static TorchBackendInfo Initialize(ILogger? logger = null)
    {
        if (Volatile.Read(ref s_info) is { } ready)
        {
            return ready;
        }

        lock (Gate)
        {
            if (s_info is { } done)
            {
                return done;
            }

            var log = logger ?? NullLogger.Instance;
            var info = Load(TorchRuntimeSettings.FromEnvironment(), log);
            LogReady(log, info.Backend, info.Device, info.LibTorchSource, info.LibTorchDirectory, info.TorchSharpVersion, info.ShimPatch);
            Volatile.Write(ref s_info, info);
            return info;
        }
    }

    private static TorchBackendInfo Load(TorchRuntimeSettings settings, ILogger log)
    {
        var tried = new List<string>();
        var torchSharpVersion = TorchSharpVersion();
        if (!OperatingSystem.IsLinux())
        {
            return LoadWithTorchSharpDefaults(settings, tried, torchSharpVersion);
        }

        if (RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            throw TorchUnavailableException.Create(
                $"TorchSharp's Linux natives are built for x64 only; this process is {RuntimeInformation.ProcessArchitecture}.",
                tried, "run on linux-x64.");
        }

        var probeDirectories = NativeProbeDirectories();
        tried.Add("TorchSharp's native search path: " + string.Join(", ", probeDirectories));
        var shim = probeDirectories.Select(d => Path.Combine(d, ShimFileName)).FirstOrDefault(File.Exists)
            ?? throw TorchUnavailableException.Create($"{ShimFileName} is not on TorchSharp's native search path.", tried,
                "reference the TorchSharp package from the application (it ships runtimes/linux-x64/native/" + ShimFileName +
                ") and rebuild; for a single-file or trimmed publish, publish with -r linux-x64.");
        tried.Add("shim: " + shim);

        var libStdCxx = SystemLibStdCxx.Probe();
        tried.Add("libstdc++: " + libStdCxx.Describe(RequiredGlibcxxVersion));
        var patch = EnsureShimLoadable(shim, libStdCxx, tried, log);

        var (directory, source, libraries) = ChooseLibTorch(settings, probeDirectories, tried);
        tried.Add(OpenMpSettings.EnsurePassiveWaiting());
        foreach (var library in libraries)
        {
            Preload(library, tried, _ => "check that " + directory + " is a complete libtorch for linux-x64; a CUDA build also needs " +
                "its CUDA libraries (for a pip install, the <site-packages>/nvidia/*/lib folders) on LD_LIBRARY_PATH.");
        }

        Preload(shim, tried, reason => reason.Contains("GLIBCXX", StringComparison.Ordinal)
            ? $"the shim still asks for a newer libstdc++ than this system has; delete {shim} and rebuild so that it is patched " +
              "afresh, or install a libstdc++ from GCC 13 or newer."
            : $"the shim of TorchSharp {torchSharpVersion} is built against libtorch 2.10.x; check that {directory} holds a " +
              "matching libtorch (an undefined symbol means another version).");

        StartTorchSharp(DeviceType.CPU, tried);
        var (cudaAvailable, cudaCount) = QueryCuda(tried);

        var (backend, device, warning) = ResolveDevice(settings, cudaAvailable, cudaCount, source, tried);
        if (warning is not null)
        {
            LogCpuFallback(log, warning);
        }

        if (backend == "cuda")
        {
            StartTorchSharp(DeviceType.CUDA, tried);
        }

        return new TorchBackendInfo(backend, device, source, directory, cudaAvailable, cudaCount, torchSharpVersion,
            patch, shim, libStdCxx.Describe(RequiredGlibcxxVersion));
    }

    /// <summary>Chooses backend and device; pure, so it is unit-tested without a GPU.</summary>
    internal static (string Backend, string Device, string? Warning) ResolveDevice(
        TorchRuntimeSettings settings, bool cudaAvailable, int cudaCount, string source, IReadOnlyList<string>? tried = null)
    {
        var usable = cudaAvailable && cudaCount > 0;
        switch (settings.Device)
        {
            case DeviceRequest.Cpu:
                return ("cpu", "cpu", null);
            case DeviceRequest.Auto:
                return usable ? ("cuda", "cuda:0", null) : ("cpu", "cpu", null);
            default:
                var index = settings.CudaIndex ?? 0;
                string? problem = !usable
                    ? $"CUDA is not available with the libtorch from {source} (a CPU-only build, or no NVIDIA driver/GPU visible)"
                    : index >= cudaCount ? $"cuda:{index} was requested but libtorch sees {cudaCount} CUDA device(s)" : null;
                if (problem is null)
                {
                    return ("cuda", $"cuda:{index}", null);
                }

                if (settings.AllowCpuFallback)
                {
                    return ("cpu", "cpu", problem);
                }

                throw TorchUnavailableException.Create(
                    $"{TorchRuntimeSettings.DeviceVariable} asks for CUDA but {problem}.",
                    [.. tried ?? [], $"{TorchRuntimeSettings.DeviceVariable}={(settings.CudaIndex is { } i ? $"cuda:{i}" : "cuda")}", "libtorch: " + source],
                    $"set {TorchRuntimeSettings.LibTorchDirVariable} to a CUDA libtorch (e.g. <site-packages>/torch/lib of a CUDA PyTorch), " +
                    $"or {TorchRuntimeSettings.DeviceVariable}=cpu, or {TorchRuntimeSettings.AllowCpuFallbackVariable}=1 to run on the CPU instead.");
        }
    }

    private static ShimPatchStatus EnsureShimLoadable(string shim, LibStdCxxFinding libStdCxx, List<string> tried, ILogger log)
    {
        ElfVersionInfo versions;
        try
        {
            versions = ElfVersionInfo.Read(shim);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw TorchUnavailableException.Create($"{shim} could not be read: {ex.Message}", tried,
                "restore the TorchSharp package again (dotnet restore --force) and rebuild.", ex);
        }

        if (!versions.Requires(RequiredGlibcxxVersion))
        {
            tried.Add($"the shim does not need {RequiredGlibcxxVersion}");
            return ShimPatchStatus.NotNeeded;
        }

        if (!versions.RequiresNonWeak(RequiredGlibcxxVersion))
        {
            tried.Add($"the shim's {RequiredGlibcxxVersion} need is already weak");
            return ShimPatchStatus.AlreadyPatched;
        }

        if (libStdCxx.Defines(RequiredGlibcxxVersion))
        {
            tried.Add("libstdc++ is new enough; shim left unchanged");
            return ShimPatchStatus.NotNeeded;
        }

        // An unreadable libstdc++ also ends here: the weak flag is harmless where the version exists.
        try
        {
            var outcome = ElfVersionPatcher.MarkWeak(shim, RequiredGlibcxxVersion);
            tried.Add($"set VER_FLG_WEAK on the shim's {RequiredGlibcxxVersion} need: {outcome}");
            LogPatched(log, shim, RequiredGlibcxxVersion);
            return outcome == WeakPatchOutcome.Patched ? ShimPatchStatus.PatchedNow : ShimPatchStatus.AlreadyPatched;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            tried.Add("patching failed: " + ex.Message);
            throw TorchUnavailableException.Create(
                $"{shim} needs {RequiredGlibcxxVersion}, which the system libstdc++ lacks, and the shim is not writable so it cannot be patched.",
                tried,
                $"make {Path.GetDirectoryName(shim)} writable for this user and start again (the fix is a one-byte change made " +
                "automatically), or start once as the owner of the application folder, or use a system whose libstdc++ is from " +
                "GCC 13 or newer (e.g. Ubuntu 24.04).", ex);
        }
    }

    private static (string Directory, string Source, IReadOnlyList<string> Libraries) ChooseLibTorch(
        TorchRuntimeSettings settings, IReadOnlyList<string> probeDirectories, List<string> tried)
    {
        var alreadyLoaded = MappedFiles().FirstOrDefault(p => Path.GetFileName(p) == "libtorch_cpu.so");
        if (alreadyLoaded is not null)
        {
            // Loading another libtorch now would abort the process; use what is there.
            var loadedFrom = Path.GetDirectoryName(alreadyLoaded)!;
            if (settings.LibTorchDirectory is { } wanted && !SameFile(Path.Combine(wanted, "libtorch_cpu.so"), alreadyLoaded))
            {
                throw TorchUnavailableException.Create(
                    $"libtorch was already loaded from {loadedFrom} before TorchRuntime.Initialize, so " +
                    $"{TorchRuntimeSettings.LibTorchDirVariable}={wanted} cannot take effect.",
                    tried, "call TorchRuntime.Initialize() before any other TorchSharp call.");
            }

            tried.Add("libtorch already loaded from " + loadedFrom);
            return (loadedFrom, settings.LibTorchDirectory ?? NuGetSource(), []);
        }

        // What TorchSharp's own "torch_cpu" probe would dlopen by path.
        var onProbePath = probeDirectories.Select(d => Path.Combine(d, "libtorch_cpu.so")).FirstOrDefault(File.Exists);
        if (settings.LibTorchDirectory is { } requested)
        {
            var directory = Path.GetFullPath(requested);
            tried.Add($"{TorchRuntimeSettings.LibTorchDirVariable}={directory}");
            if (!Directory.Exists(directory))
            {
                throw TorchUnavailableException.Create($"{TorchRuntimeSettings.LibTorchDirVariable}={requested} is not a folder.", tried,
                    "point it at a folder with libc10.so, libtorch_cpu.so and libtorch.so, e.g. the torch/lib folder of a PyTorch " +
                    "install (python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))'), or unset it to use the CPU libtorch.");
            }

            var missing = DirectoryLibraries.Where(l => l.Required && !File.Exists(Path.Combine(directory, l.Name))).Select(l => l.Name).ToList();
            if (missing.Count > 0)
            {
                throw TorchUnavailableException.Create($"{directory} lacks {string.Join(", ", missing)}.", tried,
                    $"point {TorchRuntimeSettings.LibTorchDirVariable} at a libtorch lib folder (PyTorch: <site-packages>/torch/lib).");
            }

            if (onProbePath is not null && !SameFile(onProbePath, Path.Combine(directory, "libtorch_cpu.so")))
            {
                throw TorchUnavailableException.Create(
                    $"{onProbePath} is on the runtime's native search path, so TorchSharp's loader would load it as a second " +
                    $"libtorch next to the one in {directory}, which aborts the process.", tried,
                    "remove the application's direct reference to a libtorch-* package (MriSeg.Learning carries the CPU libtorch " +
                    $"in {CpuLibTorchFolder}/, off that path), or unset {TorchRuntimeSettings.LibTorchDirVariable}.");
            }

            var present = DirectoryLibraries.Select(l => Path.Combine(directory, l.Name)).Where(File.Exists).ToList();
            return (directory, directory, present);
        }

        if (onProbePath is not null)
        {
            // An app that references a libtorch package itself (e.g. a -p:MriSegTorchBackend=cuda build): use that
            // copy, as TorchSharp would, with its CUDA libraries when the package has them.
            var directory = Path.GetDirectoryName(onProbePath)!;
            tried.Add("libtorch on the native search path: " + directory);
            return (directory, NuGetSource(), DirectoryLibraries
                .Where(l => l.Required || File.Exists(Path.Combine(directory, l.Name))).Select(l => Path.Combine(directory, l.Name)).ToList());
        }

        var candidates = new List<string> { Path.Combine(AppContext.BaseDirectory, CpuLibTorchFolder) };
        if (BuildMetadata("MriSeg.LibTorchCpuPackageNativeDir") is { Length: > 0 } packageFolder)
        {
            candidates.Add(packageFolder);
        }

        foreach (var candidate in candidates)
        {
            var complete = CpuLibraries.All(l => File.Exists(Path.Combine(candidate, l)));
            tried.Add($"CPU libtorch in {candidate}: {(complete ? "found" : "missing")}");
            if (complete)
            {
                return (candidate, NuGetSource(), CpuLibraries.Select(l => Path.Combine(candidate, l)).ToList());
            }
        }

        throw TorchUnavailableException.Create("no libtorch was found.", tried,
            $"rebuild the application so that {CpuLibTorchFolder}/ is copied next to it (do not set MriSegCopyCpuLibTorch=false), " +
            $"or set {TorchRuntimeSettings.LibTorchDirVariable} to a libtorch lib folder.");
    }

    private static void Preload(string path, List<string> tried, Func<string, string> fix)
    {
        try
        {
            NativeLibrary.Load(path);
            tried.Add("loaded " + path);
        }
        catch (Exception ex) when (ex is DllNotFoundException or BadImageFormatException)
        {
            // The last line of the runtime's message is dlerror(), the useful part.
            var reason = ex.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? ex.Message;
            tried.Add($"loading {path} failed: {reason}");
            throw TorchUnavailableException.Create($"{Path.GetFileName(path)} did not load: {reason}", tried, fix(reason), ex);
        }
    }

    private static void StartTorchSharp(DeviceType deviceType, List<string> tried)
    {
        try
        {
            // The natives are loaded, so TorchSharp's by-name probes find them and its copy fallback never runs.
            if (deviceType == DeviceType.CUDA)
            {
                torch.InitializeDeviceType(DeviceType.CUDA);
            }
            else
            {
                torch.TryInitializeDeviceType(DeviceType.CPU);
            }

            tried.Add($"TorchSharp initialised for {deviceType}");
        }
        catch (Exception ex) when (ex is TypeInitializationException or NotSupportedException or InvalidOperationException
            or DllNotFoundException or EntryPointNotFoundException or ExternalException)
        {
            var root = ex is TypeInitializationException { InnerException: { } inner } ? inner : ex;
            var first = root.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? root.Message;
            throw TorchUnavailableException.Create($"TorchSharp failed to initialise {deviceType} after its native libraries loaded: {first}",
                tried, "check that the libtorch version matches TorchSharp (0.107 expects libtorch 2.10.x); the inner exception has TorchSharp's trace.", ex);
        }
    }

    private static (bool Available, int Count) QueryCuda(List<string> tried)
    {
        try
        {
            var available = torch.cuda.is_available();
            var count = available ? torch.cuda.device_count() : 0;
            tried.Add($"CUDA available: {available}, devices: {count}");
            return (available, count);
        }
        catch (Exception ex) when (ex is ExternalException or InvalidOperationException or DllNotFoundException or EntryPointNotFoundException)
        {
            // A broken CUDA install should read as "no CUDA", so cpu/auto still work.
            tried.Add("querying CUDA failed: " + ex.Message);
            return (false, 0);
        }
    }

    private static TorchBackendInfo LoadWithTorchSharpDefaults(TorchRuntimeSettings settings, List<string> tried, string torchSharpVersion)
    {
        // Only the Linux path needs the patch and preloads; elsewhere TorchSharp's own loader is used.
        StartTorchSharp(DeviceType.CPU, tried);
        var (cudaAvailable, cudaCount) = QueryCuda(tried);
        const string source = "TorchSharp default loader";
        var (backend, device, _) = ResolveDevice(settings, cudaAvailable, cudaCount, source, tried);
        if (backend == "cuda")
        {
            StartTorchSharp(DeviceType.CUDA, tried);
        }

        return new TorchBackendInfo(backend, device, source, AppContext.BaseDirectory, cudaAvailable, cudaCount, torchSharpVersion,
            ShimPatchStatus.NotNeeded, "", "not checked on this OS");
    }

    private static List<string> NativeProbeDirectories()
    {
        var directories = new List<string>();
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string hostList)
        {
            directories.AddRange(hostList.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        }

        // typeof does not run torch's static constructor, so this loads nothing native.
        var torchSharpFolder = Path.GetDirectoryName(typeof(torch).Assembly.Location);
        if (!string.IsNullOrEmpty(torchSharpFolder))
        {
            directories.Add(torchSharpFolder);
        }

        directories.Add(AppContext.BaseDirectory);
        return directories.Select(d => Path.TrimEndingDirectorySeparator(Path.GetFullPath(d))).Distinct(StringComparer.Ordinal).ToList();
    }

    private static IEnumerable<string> MappedFiles()
    {
        try
        {
            return File.ReadLines("/proc/self/maps")
                .Select(line => line.IndexOf('/', StringComparison.Ordinal) is var i and >= 0 ? line[i..] : null)
                .OfType<string>()
                .Distinct(StringComparer.Ordinal)
                .ToList();
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    private static bool SameFile(string a, string b) =>
        string.Equals(Canonical(a), Canonical(b), StringComparison.Ordinal);

    private static string Canonical(string path)
    {
        var full = Path.GetFullPath(path);
        try
        {
            return File.ResolveLinkTarget(full, returnFinalTarget: true)?.FullName ?? full;
        }
        catch (IOException)
        {
            return full;
        }
    }

    private static string NuGetSource() =>
        BuildMetadata("MriSeg.TorchPackage") is { Length: > 0 } package
            ? "NuGet " + package
            : $"NuGet {CpuPackageId} {BuildMetadata("MriSeg.LibTorchCpuPackageVersion") ?? "(unknown version)"}";

    private static string? BuildMetadata(string key) =>
        typeof(TorchRuntime).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().FirstOrDefault(a => a.Key == key)?.Value;

    private static string TorchSharpVersion()
    {
        var assembly = typeof(torch).Assembly;
        var informational = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        return informational?.Split('+')[0] ?? assembly.GetName().Version?.ToString(3) ?? "unknown";
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "Torch backend {Backend}, device {Device}, libtorch from {LibTorchSource} ({LibTorchDirectory}), TorchSharp {TorchSharpVersion}, shim {ShimPatch}")]
    private static partial void LogReady(ILogger logger, string backend, string device, string libTorchSource, string libTorchDirectory,
        string torchSharpVersion, ShimPatchStatus shimPatch);

    [LoggerMessage(EventId = 2, Level = LogLevel.Debug, Message = "Marked the {Version} need of {Shim} weak: the system libstdc++ lacks it")]
    private static partial void LogPatched(ILogger logger, string shim, string version);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "CUDA was requested but {Reason}; using the CPU because MRISEG_ALLOW_CPU_FALLBACK=1")]
    private static partial void LogCpuFallback(ILogger logger, string reason);
}
