using System.Diagnostics;
using System.Text.Json;
using MriSeg.Testing;

namespace MriSeg.Learning.Tests;

/// <summary>
/// The -p:MriSegTorchBackend=cuda switch of MriSeg.Learning.csproj, checked by MSBuild evaluation only:
/// TorchSharp-cuda-linux cannot be restored from this machine's feed, so no test restores or builds it.
/// </summary>
public sealed class CudaBuildSwitchTests
{
    private const string Project = "libs/MriSeg.Learning/MriSeg.Learning.csproj";

    [Fact]
    public void Cuda_references_TorchSharp_cuda_linux_and_no_cpu_libtorch()
    {
        var items = Evaluate("-p:MriSegTorchBackend=cuda");

        var packages = Identities(items, "PackageReference");
        Assert.Contains("TorchSharp-cuda-linux", packages);
        Assert.Contains("TorchSharp", packages);
        Assert.DoesNotContain("libtorch-cpu-linux-x64", packages);
        Assert.Equal("TorchSharp-cuda-linux 0.107.0", Metadata(items)["MriSeg.TorchPackage"]);
        Assert.DoesNotContain("MriSeg.LibTorchCpuPackageNativeDir", Metadata(items).Keys);
        Assert.DoesNotContain(Identities(items, "None"), f => f.Contains("libtorch", StringComparison.Ordinal));
    }

    [Fact]
    public void Default_references_the_cpu_libtorch_and_copies_it()
    {
        var items = Evaluate();

        var packages = Identities(items, "PackageReference");
        Assert.Contains("TorchSharp", packages);
        Assert.Contains("libtorch-cpu-linux-x64", packages);
        Assert.DoesNotContain("TorchSharp-cuda-linux", packages);
        Assert.StartsWith("libtorch-cpu-linux-x64 ", Metadata(items)["MriSeg.TorchPackage"], StringComparison.Ordinal);
        Assert.Contains(Identities(items, "None"), f => f.EndsWith("/libtorch_cpu.so", StringComparison.Ordinal));
    }

    [Fact]
    public void Unknown_backend_fails_naming_the_allowed_values()
    {
        var (exitCode, stdout, stderr) = RunMSBuild("-t:MriSegCheckTorchBackend", "-p:MriSegTorchBackend=rocm");
        var output = stdout + stderr;

        Assert.NotEqual(0, exitCode);
        Assert.Contains("MriSegTorchBackend='rocm' is not supported", output, StringComparison.Ordinal);
        Assert.Contains("cpu", output, StringComparison.Ordinal);
        Assert.Contains("cuda", output, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("cuda")]
    public void Allowed_backends_pass_the_check(string backend)
    {
        var (exitCode, stdout, stderr) = RunMSBuild("-t:MriSegCheckTorchBackend", $"-p:MriSegTorchBackend={backend}");

        Assert.True(exitCode == 0, stdout + stderr);
    }

    private static JsonElement Evaluate(params string[] properties)
    {
        var (exitCode, stdout, stderr) = RunMSBuild(["-getItem:PackageReference,AssemblyMetadata,None", .. properties]);
        Assert.True(exitCode == 0, stdout + stderr);
        using var json = JsonDocument.Parse(stdout);
        return json.RootElement.GetProperty("Items").Clone();
    }

    private static List<string> Identities(JsonElement items, string itemType) =>
        items.TryGetProperty(itemType, out var list)
            ? list.EnumerateArray().Select(i => i.GetProperty("Identity").GetString()!).ToList()
            : [];

    private static Dictionary<string, string> Metadata(JsonElement items) =>
        items.TryGetProperty("AssemblyMetadata", out var list)
            ? list.EnumerateArray().ToDictionary(i => i.GetProperty("Identity").GetString()!, i => i.GetProperty("Value").GetString()!)
            : [];

    private static (int ExitCode, string Stdout, string Stderr) RunMSBuild(params string[] arguments)
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        var start = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = RepositoryLayout.Root,
        };
        foreach (var arg in new[] { "msbuild", Project, "-nologo" }.Concat(arguments))
        {
            start.ArgumentList.Add(arg);
        }

        // A test run started by dotnet test may carry the outer build's MSBuild settings; evaluate afresh.
        foreach (var name in start.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase) ||
                     k.Equals("MriSegTorchBackend", StringComparison.OrdinalIgnoreCase)).ToList())
        {
            start.Environment.Remove(name);
        }

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        if (!process.WaitForExit(TimeSpan.FromMinutes(1)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("dotnet msbuild " + string.Join(' ', arguments) + " timed out");
        }

        return (process.ExitCode, stdout.Result, stderr.Result);
    }
}
