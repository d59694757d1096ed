namespace MriSeg.Preprocess;

/// <summary>A temporary folder only this service's user can read (0700), deleted on dispose.</summary>
internal sealed class PrivateFolder : IAsyncDisposable
{
    private PrivateFolder(string path) => Path = path;

    public string Path { get; }

    public static PrivateFolder Create()
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"mriseg-preprocess-{Guid.NewGuid():n}");
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

    public ValueTask DisposeAsync()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }

        return ValueTask.CompletedTask;
    }
}
