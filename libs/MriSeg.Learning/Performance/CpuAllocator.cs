using System.Runtime.InteropServices;

namespace MriSeg.Learning.Performance;

/// <summary>
/// Tunes glibc malloc, which libtorch's CPU allocator uses, for training loops. By default glibc
/// returns freed memory at the top of the heap to the OS and serves large blocks with fresh mmaps,
/// so every step page-faults (and zeroes) its activations and gradients anew; the folded DP step,
/// with G copies of every weight and weight gradient, pays that most. Keeping freed memory mapped
/// removes those faults at the cost of a resident set that stays at its peak.
/// </summary>
public static class CpuAllocator
{
    private const int MTrimThreshold = -1;
    private const int MMmapThreshold = -3;

    /// <summary>glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): blocks up to this come from the heap.</summary>
    public const int MaxMmapThreshold = 32 * 1024 * 1024;

    private static int s_applied;

    /// <summary>True once <see cref="KeepFreedMemory"/> has changed the allocator in this process.</summary>
    public static bool IsTuned => Volatile.Read(ref s_applied) == 1;

    /// <summary>
    /// Stops glibc from trimming the heap and serves blocks up to 32 MiB from it, process-wide.
    /// Does nothing (and returns false) off Linux or where mallopt is missing or refuses.
    /// </summary>
    public static bool KeepFreedMemory()
    {
        if (IsTuned)
        {
            return true;
        }

        if (!OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            // -1 disables trimming; a fixed mmap threshold also stops glibc's dynamic adjustment.
            var ok = Mallopt(MTrimThreshold, -1) == 1 && Mallopt(MMmapThreshold, MaxMmapThreshold) == 1;
            if (ok)
            {
                Volatile.Write(ref s_applied, 1);
            }

            return ok;
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException)
        {
            return false;
        }
    }

    // A plain DllImport: blittable ints need no marshalling, and LibraryImport would need unsafe code.
#pragma warning disable SYSLIB1054
    [DllImport("libc.so.6", EntryPoint = "mallopt", ExactSpelling = true)]
    private static extern int Mallopt(int parameter, int value);
#pragma warning restore SYSLIB1054
}
