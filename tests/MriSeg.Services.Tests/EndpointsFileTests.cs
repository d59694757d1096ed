using MriSeg.Contracts;
using Xunit;

namespace MriSeg.Services.Tests;

public sealed class EndpointsFileTests
{
    [Fact]
    public void Round_trips_and_knows_whether_its_writer_runs()
    {
        using var temp = new TempFolder();
        var path = Path.Combine(temp.Path, "sub", "endpoints.json");
        new EndpointsFile
        {
            ProcessId = Environment.ProcessId,
            Services = new(StringComparer.OrdinalIgnoreCase) { ["trainer"] = new() { ["grpc"] = "http://127.0.0.1:1234" } },
        }.Write(path);

        var read = EndpointsFile.Read(path);
        Assert.Equal("http://127.0.0.1:1234", read.Services["TRAINER"]["grpc"]);
        Assert.True(read.WriterIsRunning());
        Assert.False((read with { ProcessId = int.MaxValue }).WriterIsRunning());
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, "*.tmp-*"));
    }

    [Fact]
    public void A_malformed_file_gives_an_error_naming_it()
    {
        using var temp = new TempFolder();
        var path = Path.Combine(temp.Path, "endpoints.json");
        File.WriteAllText(path, "{ not json");
        var e = Assert.Throws<InvalidDataException>(() => EndpointsFile.Read(path));
        Assert.StartsWith(path, e.Message);
    }

    [Fact]
    public void The_default_path_is_in_the_repository_containing_the_start_folder()
    {
        using var temp = new TempFolder();
        File.WriteAllText(Path.Combine(temp.Path, "MriSeg.sln"), "");
        var nested = Directory.CreateDirectory(Path.Combine(temp.Path, "a", "b")).FullName;
        Assert.Equal(Path.Combine(temp.Path, ".mriseg", "endpoints.json"), EndpointsFile.DefaultPath(nested));
    }

    private sealed class TempFolder : IDisposable
    {
        public string Path { get; } = Directory.CreateTempSubdirectory("mriseg-test-").FullName;

        public void Dispose() => Directory.Delete(Path, recursive: true);
    }
}
