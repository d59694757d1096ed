namespace MriSeg.CleanRoom.Tests;

public sealed class SoftwareMeasurementTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("mriseg-measure-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ChangesWithAnyCodeByteOrTheConfigurationButNotWithOtherFiles()
    {
        File.WriteAllBytes(Path.Combine(_dir, "a.dll"), [1, 2, 3]);
        Directory.CreateDirectory(Path.Combine(_dir, "runtimes"));
        File.WriteAllBytes(Path.Combine(_dir, "runtimes", "libx.so"), [4, 5]);
        File.WriteAllText(Path.Combine(_dir, "app.runtimeconfig.json"), "{}");
        var baseline = SoftwareMeasurement.Compute(_dir, "cfg"u8);

        Assert.Equal(baseline, SoftwareMeasurement.Compute(_dir, "cfg"u8));
        Assert.Matches("^[0-9a-f]{64}$", baseline);
        Assert.NotEqual(baseline, SoftwareMeasurement.Compute(_dir, "cfg2"u8));

        File.WriteAllText(Path.Combine(_dir, "notes.txt"), "not code");
        Assert.Equal(baseline, SoftwareMeasurement.Compute(_dir, "cfg"u8));

        File.WriteAllBytes(Path.Combine(_dir, "runtimes", "libx.so"), [4, 6]);
        Assert.NotEqual(baseline, SoftwareMeasurement.Compute(_dir, "cfg"u8));
    }

    [Fact]
    public void RenamingAFileChangesTheMeasurement()
    {
        File.WriteAllBytes(Path.Combine(_dir, "a.dll"), [1]);
        var before = SoftwareMeasurement.Compute(_dir, []);
        File.Move(Path.Combine(_dir, "a.dll"), Path.Combine(_dir, "b.dll"));
        Assert.NotEqual(before, SoftwareMeasurement.Compute(_dir, []));
    }
}
