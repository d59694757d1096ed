using System.Runtime.InteropServices;

namespace MriSeg.Learning.Torch;

/// <summary>
/// libgomp's wait policy, set in the native environment before libtorch (and with it libgomp) loads.
/// </summary>
/// <remarks>
/// With the default (active) policy, OpenMP threads spin at every barrier. When the CPU is shared (other processes,
/// parallel test projects, other engineers' builds on a 2-core machine) a spinning thread holds a core while the thread
/// it waits for is descheduled, and a 0.3 s training step became 5-10 s here, single-threaded in CPU time (perf: 70 % of
/// samples in libgomp's spin loop). PASSIVE makes waiting threads sleep; on an idle machine the difference is within the
/// noise of <c>mriseg bench dp</c>. A value the user set (OMP_WAIT_POLICY, or GOMP_SPINCOUNT) is left alone. .NET's
/// <see cref="Environment.SetEnvironmentVariable(string, string)"/> does not reach native getenv on Unix, hence setenv.
/// </remarks>
internal static partial class OpenMpSettings
{
    public const string WaitPolicyVariable = "OMP_WAIT_POLICY";

    /// <summary>Sets OMP_WAIT_POLICY=PASSIVE unless the user chose a policy; returns a line for the load report.</summary>
    public static string EnsurePassiveWaiting()
    {
        if (Environment.GetEnvironmentVariable(WaitPolicyVariable) is { Length: > 0 } set)
        {
            return $"{WaitPolicyVariable}={set} (from the environment)";
        }

        if (Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") is { Length: > 0 } spin)
        {
            return $"GOMP_SPINCOUNT={spin} (from the environment)";
        }

        if (!OperatingSystem.IsLinux())
        {
            return "OpenMP wait policy: default";
        }

        try
        {
            return SetEnv(WaitPolicyVariable, "PASSIVE", 0) == 0
                ? $"{WaitPolicyVariable}=PASSIVE (set before loading libtorch)"
                : $"{WaitPolicyVariable}: setenv failed, OpenMP default";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return $"{WaitPolicyVariable}: no libc setenv ({e.GetType().Name}), OpenMP default";
        }
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);
}
