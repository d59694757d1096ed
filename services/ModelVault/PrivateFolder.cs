namespace MriSeg.ModelVault;

/// <summary>A temporary folder only this service's user can read (0700), deleted on dispose: Segment's inputs and outputs.</summary>
internal sealed class PrivateFolder : IDisposable
{
    private PrivateFolder(string path) => Path = path;

    public string Path { get; }

    public static PrivateFolder Create()
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"mriseg-modelvault-{Guid.NewGuid():n}");
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(path);
        }
        else
        {
            Directory.CreateDirectory(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        return new PrivateFolder(path);
    }

    /// <summary>A sub-folder, created.</summary>
    public string Sub(string name) => Directory.CreateDirectory(System.IO.Path.Combine(Path, name)).FullName;

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
