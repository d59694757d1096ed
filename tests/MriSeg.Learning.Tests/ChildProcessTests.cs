using System.Diagnostics;
using System.Reflection;
using MriSeg.Learning.Torch;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

/// <summary>
/// TorchRuntime.Initialize works once per process, so the environment-variable paths run in a child
/// process: this test assembly again, running only <see cref="Child_scenario"/>.
/// </summary>
public sealed class ChildProcessTests
{
    private const string ScenarioVariable = "MRISEG_TEST_CHILD_SCENARIO";
    private const string ResultVariable = "MRISEG_TEST_CHILD_RESULT";
    private static readonly string[] CpuFiles = ["libc10.so", "libtorch_cpu.so", "libtorch.so", "libgomp-98b21ff3.so.1"];

    [Fact]
    public void Libtorch_dir_libraries_are_the_only_libtorch_loaded()
    {
        // Symlinks to the NuGet package files: a different inode from the bundled libtorch-cpu/ copy,
        // so /proc/self/maps shows which copy the process really bound.
        var packageFolder = typeof(TorchRuntime).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .Single(a => a.Key == "MriSeg.LibTorchCpuPackageNativeDir").Value!;
        Assert.SkipUnless(File.Exists(Path.Combine(packageFolder, "libtorch_cpu.so")), $"NuGet package folder {packageFolder} is not on this machine");
        using var temp = new TempFolder();
        foreach (var file in CpuFiles)
        {
            File.CreateSymbolicLink(temp.File(file), Path.Combine(packageFolder, file));
        }

        var result = RunChild("libtorch-dir", new() { ["MRISEG_LIBTORCH_DIR"] = temp.Path, ["MRISEG_TEST_EXPECTED_LIBTORCH"] = packageFolder });

        Assert.Equal("ok", result);
    }

    [Fact]
    public void Cuda_request_without_cuda_fails_with_a_clear_message()
    {
        Assert.Equal("ok", RunChild("cuda-required", new() { ["MRISEG_DEVICE"] = "cuda" }));
    }

    [Fact]
    public void Cuda_request_without_cuda_falls_back_to_cpu_when_allowed()
    {
        Assert.Equal("ok", RunChild("cuda-fallback", new() { ["MRISEG_DEVICE"] = "cuda", ["MRISEG_ALLOW_CPU_FALLBACK"] = "1" }));
    }

    [Fact]
    public void Missing_libtorch_dir_fails_with_a_clear_message()
    {
        Assert.Equal("ok", RunChild("bad-dir", new() { ["MRISEG_LIBTORCH_DIR"] = "/nonexistent/torch/lib" }));
    }

    [Fact(Explicit = true)]
    public void Child_scenario()
    {
        var scenario = Environment.GetEnvironmentVariable(ScenarioVariable);
        var resultFile = Environment.GetEnvironmentVariable(ResultVariable);
        Assert.NotNull(scenario);
        Assert.NotNull(resultFile);
        switch (scenario)
        {
            case "libtorch-dir":
                var dir = Environment.GetEnvironmentVariable("MRISEG_LIBTORCH_DIR")!;
                var expected = Environment.GetEnvironmentVariable("MRISEG_TEST_EXPECTED_LIBTORCH")!;
                var info = TorchRuntime.Initialize();
                Assert.Equal(dir, info.LibTorchSource);
                Assert.Equal(dir, info.LibTorchDirectory);
                Assert.Equal("cpu", info.Backend);
                using (var scope = NewDisposeScope())
                {
                    var y = nn.Conv2d(1, 2, 3).forward(ones(1, 1, 5, 5));
                    Assert.Equal([1L, 2, 3, 3], y.shape);
                }

                var mapped = File.ReadLines("/proc/self/maps")
                    .Select(l => l.IndexOf('/', StringComparison.Ordinal) is var i and >= 0 ? l[i..] : "")
                    .Where(p => Path.GetFileName(p) is "libtorch_cpu.so" or "libc10.so" or "libtorch.so")
                    .Distinct()
                    .ToList();
                Assert.Equal(3, mapped.Count);
                Assert.All(mapped, p => Assert.Equal(expected, Path.GetDirectoryName(p)));
                break;
            case "cuda-required":
                var ex = Assert.Throws<TorchUnavailableException>(() => TorchRuntime.Initialize());
                Assert.Contains("MRISEG_DEVICE asks for CUDA", ex.Message, StringComparison.Ordinal);
                Assert.Contains("MRISEG_ALLOW_CPU_FALLBACK=1", ex.Message, StringComparison.Ordinal);
                Assert.Null(TorchRuntime.Current);
                break;
            case "cuda-fallback":
                var fallback = TorchRuntime.Initialize();
                Assert.Equal("cpu", fallback.Backend);
                Assert.Equal("cpu", fallback.Device);
                break;
            case "bad-dir":
                var bad = Assert.Throws<TorchUnavailableException>(() => TorchRuntime.Initialize());
                Assert.Contains("MRISEG_LIBTORCH_DIR=/nonexistent/torch/lib is not a folder", bad.Message, StringComparison.Ordinal);
                Assert.Contains("What was tried", bad.Message, StringComparison.Ordinal);
                Assert.Contains("libstdc++", bad.Message, StringComparison.Ordinal);
                Assert.DoesNotContain("Failed to load native component", bad.Message, StringComparison.Ordinal);
                break;
            default:
                Assert.Fail($"unknown scenario {scenario}");
                break;
        }

        File.WriteAllText(resultFile, "ok");
    }

    private static string RunChild(string scenario, Dictionary<string, string> environment)
    {
        using var temp = new TempFolder();
        var resultFile = temp.File("result.txt");
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } h && File.Exists(h) ? h : "dotnet";
        var start = new ProcessStartInfo(host)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            "exec", typeof(ChildProcessTests).Assembly.Location,
            "-method", $"{typeof(ChildProcessTests).FullName}.{nameof(Child_scenario)}", "-explicit", "only", "-noLogo", "-noColor",
        })
        {
            start.ArgumentList.Add(arg);
        }

        foreach (var name in new[] { "MRISEG_LIBTORCH_DIR", "MRISEG_DEVICE", "MRISEG_ALLOW_CPU_FALLBACK" })
        {
            start.Environment.Remove(name);
        }

        foreach (var (name, value) in environment)
        {
            start.Environment[name] = value;
        }

        start.Environment[ScenarioVariable] = scenario;
        start.Environment[ResultVariable] = resultFile;

        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        var stderr = process.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"child scenario {scenario} timed out");
        }

        var output = $"exit {process.ExitCode}\n{stdout.Result}\n{stderr.Result}";
        Assert.True(process.ExitCode == 0, output);
        Assert.True(File.Exists(resultFile), "the child ran no test:\n" + output);
        return File.ReadAllText(resultFile);
    }
}
