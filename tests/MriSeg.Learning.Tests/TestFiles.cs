namespace MriSeg.Learning.Tests;

/// <summary>Temporary folders and the pristine shim the ELF tests work on.</summary>
internal sealed class TempFolder : IDisposable
{
    public TempFolder()
    {
        Path = Directory.CreateTempSubdirectory("mriseg-learning-tests-").FullName;
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Copies the unpatched libLibTorchSharp.so 0.107.0 from the output folder into this folder.</summary>
    public string CopyPristineShim(string name = "libLibTorchSharp.so")
    {
        var source = System.IO.Path.Combine(AppContext.BaseDirectory, "testdata", "libLibTorchSharp.pristine.so");
        Assert.True(System.IO.File.Exists(source), $"test data missing: {source}");
        var target = File(name);
        System.IO.File.Copy(source, target);
        return target;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Leave it for the OS temp cleaner.
        }
    }
}
