using System.Security.Cryptography;
using System.Text;

namespace MriSeg.Sealing;

/// <summary>Files only their owner may read (mode 0600 on Unix), and the temporary-file-then-rename pattern.</summary>
internal static class SecureFile
{
    public static FileStream CreateNew(string path, bool asynchronous)
    {
        var options = new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            BufferSize = 0,
            Options = asynchronous ? FileOptions.Asynchronous : FileOptions.None,
        };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        return new FileStream(path, options);
    }

    /// <summary>A temporary path beside <paramref name="destination"/>: ".name.&lt;random&gt;.partial".</summary>
    public static string TemporaryPathBeside(string destination)
    {
        var full = Path.GetFullPath(destination);
        var directory = Path.GetDirectoryName(full) ?? throw new SealedPackageException(SealingError.InvalidArgument, $"no folder for {destination}");
        return Path.Combine(directory, $".{Path.GetFileName(full)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.partial");
    }

    public static void CheckDestination(string destination, bool overwrite)
    {
        if (!overwrite && (File.Exists(destination) || Directory.Exists(destination)))
        {
            throw new SealedPackageException(SealingError.DestinationExists, $"destination exists: {destination}");
        }
    }

    public static void DeleteQuietly(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public static void WriteAllText(string path, string text, bool overwrite)
    {
        CheckDestination(path, overwrite);
        var temp = TemporaryPathBeside(path);
        var bytes = Encoding.UTF8.GetBytes(text);
        try
        {
            using (var stream = CreateNew(temp, asynchronous: false))
            {
                stream.Write(bytes);
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, path, overwrite);
        }
        catch (IOException e) when (!overwrite && File.Exists(path))
        {
            throw new SealedPackageException(SealingError.DestinationExists, $"destination exists: {path}", innerException: e);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(bytes);
            DeleteQuietly(temp);
        }
    }
}
