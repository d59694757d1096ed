using System.Buffers.Binary;

namespace MriSeg.Learning.Torch;

/// <summary>What <see cref="ElfVersionPatcher.MarkWeak"/> did.</summary>
public enum WeakPatchOutcome
{
    /// <summary>The file does not need the version at all; nothing written.</summary>
    NotRequired,

    /// <summary>Every entry for the version already had the weak flag; nothing written.</summary>
    AlreadyWeak,

    /// <summary>The weak flag was set and the file replaced.</summary>
    Patched,
}

/// <summary>
/// Sets <c>VER_FLG_WEAK</c> on <c>Vernaux</c> entries of an ELF64 shared object, so that glibc's
/// loader accepts a library whose needed symbol version is missing (it then only warns with
/// LD_DEBUG). Only the two-byte <c>vna_flags</c> field changes.
/// </summary>
public static class ElfVersionPatcher
{
    /// <summary>The <c>VER_FLG_WEAK</c> bit of <c>vna_flags</c>.</summary>
    public const ushort VerFlagWeak = 0x2;

    /// <summary>True when <paramref name="path"/> needs <paramref name="versionName"/> without the weak flag.</summary>
    /// <exception cref="ElfFormatException">The file is not a well-formed ELF64 LE shared object.</exception>
    public static bool RequiresNonWeak(string path, string versionName) =>
        ElfVersionInfo.Read(path).RequiresNonWeak(versionName);

    /// <summary>
    /// Marks every needed <paramref name="versionName"/> entry weak. Idempotent. The new contents go
    /// to a temporary file in the same folder that is then renamed over the original (atomic on one
    /// file system, and a process that has the old file mapped keeps its copy); the file mode and
    /// modification time are kept, so an incremental build does not copy the original back.
    /// </summary>
    /// <exception cref="ElfFormatException">The file is not a well-formed ELF64 LE shared object.</exception>
    /// <exception cref="IOException">The file or its folder cannot be written; the message says which.</exception>
    public static WeakPatchOutcome MarkWeak(string path, string versionName)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentException.ThrowIfNullOrEmpty(versionName);
        var image = File.ReadAllBytes(path);
        var entries = ElfVersionInfo.Parse(path, image).Needs.Where(n => n.VersionName == versionName).ToList();
        if (entries.Count == 0)
        {
            return WeakPatchOutcome.NotRequired;
        }

        if (entries.All(e => e.IsWeak))
        {
            return WeakPatchOutcome.AlreadyWeak;
        }

        foreach (var entry in entries.Where(e => !e.IsWeak))
        {
            BinaryPrimitives.WriteUInt16LittleEndian(image.AsSpan((int)entry.FlagsOffset, 2), (ushort)(entry.Flags | VerFlagWeak));
        }

        if (ElfVersionInfo.Parse(path, image).RequiresNonWeak(versionName))
        {
            throw new InvalidOperationException($"Patching '{path}' did not make {versionName} weak; the file was left unchanged.");
        }

        ReplaceAtomically(path, image);
        return WeakPatchOutcome.Patched;
    }

    private static void ReplaceAtomically(string path, byte[] contents)
    {
        var fullPath = Path.GetFullPath(path);
        var folder = Path.GetDirectoryName(fullPath) ?? throw new IOException($"'{fullPath}' has no parent folder.");
        var temp = Path.Combine(folder, $".{Path.GetFileName(fullPath)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            var mode = OperatingSystem.IsWindows() ? default : File.GetUnixFileMode(fullPath);
            var modified = File.GetLastWriteTimeUtc(fullPath);
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                stream.Write(contents);
                stream.Flush(flushToDisk: true);
            }

            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(temp, mode); // creation applied the umask
            }

            File.SetLastWriteTimeUtc(temp, modified);
            File.Move(temp, fullPath, overwrite: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            TryDelete(temp);
            throw new IOException(
                $"Cannot patch '{fullPath}': writing a temporary file in '{folder}' and renaming it over the original failed " +
                $"({ex.Message}). The folder must be writable by this user.", ex);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Best effort: a stray temporary file is harmless.
        }
    }
}
