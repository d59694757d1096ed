using System.Text;
using System.Text.Json;
using MriSeg.Cli.Commands;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Formats;
using MriSeg.Imaging.Preprocessing;

namespace MriSeg.Cli.Tests;

/// <summary>Phantoms written once for the preprocess command tests (small, so the whole class runs in seconds).</summary>
public sealed class SmallPhantomsFixture : IDisposable
{
    public SmallPhantomsFixture()
    {
        var run = CliRun.RunAsync("phantoms", "--out", Root, "--sites", "2", "--patients", "2", "--shape", "48x48x24", "--seed", "5").GetAwaiter().GetResult();
        if (run.ExitCode != 0)
        {
            throw new InvalidOperationException(run.ToString());
        }

        CaseIds = [.. Directory.GetDirectories(Root, "Phantom_*", SearchOption.AllDirectories).Select(Path.GetFileName).Order(StringComparer.Ordinal)!];
    }

    public string Root { get; } = Directory.CreateTempSubdirectory("mriseg-cli-phantoms-").FullName;

    public IReadOnlyList<string> CaseIds { get; }

    public void Dispose() => Directory.Delete(Root, recursive: true);
}

public sealed class PreprocessCommandTests(SmallPhantomsFixture phantoms) : IClassFixture<SmallPhantomsFixture>, IDisposable
{
    private readonly TempFolder temp = new();

    public void Dispose() => temp.Dispose();

    private static CliEnvironment WithSecret(string? secret) =>
        new() { LocateEndpointsFile = () => null, GetEnvironmentVariable = name => name == PreprocessCommand.KeyVariable ? secret : null };

    [Fact]
    public async Task Phantoms_go_end_to_end_into_a_shard_that_inspect_reads_with_the_same_counts()
    {
        var shard = Path.Combine(temp.Path, "site.safetensors");
        var run = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", phantoms.Root, "--out", shard, "--size", "32", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.Json();
        Assert.Equal(["patients", "slices", "tumour_slices", "channels", "size", "output", "skipped"], json.EnumerateObject().Select(p => p.Name));
        Assert.Equal(4, json.GetProperty("patients").GetInt32());
        Assert.Equal(4, json.GetProperty("channels").GetInt32());
        Assert.Equal(32, json.GetProperty("size").GetInt32());
        Assert.Equal(shard, json.GetProperty("output").GetString());
        Assert.Equal(0, json.GetProperty("skipped").GetArrayLength());
        var slices = json.GetProperty("slices").GetInt32();
        var tumourSlices = json.GetProperty("tumour_slices").GetInt32();
        Assert.InRange(tumourSlices, 1, slices);

        // No key given: one is generated beside the output, owner-only, and said so on stderr.
        var keyFile = PreprocessCommand.DefaultKeyPath(shard);
        Assert.True(File.Exists(keyFile));
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));
        }

        Assert.Contains(run.StderrLines, l => l.StartsWith("pseudonym key: generated " + keyFile, StringComparison.Ordinal));

        var inspect = await CliRun.RunAsync("inspect", shard, "--json");
        Assert.True(inspect.ExitCode == 0, inspect.ToString());
        var view = inspect.Json();
        Assert.Equal("dataset-shard", view.GetProperty("kind").GetString());
        Assert.Equal(slices, view.GetProperty("slices").GetInt32());
        Assert.Equal(tumourSlices, view.GetProperty("tumourSlices").GetInt32());
        Assert.Equal(4, view.GetProperty("patients").GetInt32());
        Assert.Equal("32x32", view.GetProperty("size").GetString());
        Assert.Equal("brats-volumes", view.GetProperty("sourceLayout").GetString());
        Assert.Equal(["images", "masks", "patient"], view.GetProperty("tensors").EnumerateArray().Select(t => t.GetProperty("name").GetString()).Order(StringComparer.Ordinal));

        // The pseudonyms are the HMAC of the case names under the generated key, and the names are nowhere in the file.
        var key = PseudonymKey.Load(keyFile);
        var dataset = DatasetShard.Load(shard);
        Assert.Equal(phantoms.CaseIds.Select(key.Pseudonym).Order(StringComparer.Ordinal), dataset.PatientIds);
        var bytes = File.ReadAllBytes(shard);
        Assert.All(phantoms.CaseIds.Append("site-").Append(phantoms.Root), s => Assert.True(bytes.AsSpan().IndexOf(Encoding.UTF8.GetBytes(s)) < 0, s));

        // Run again: the key beside the output is reused, so the shard is the same to the byte.
        var again = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", phantoms.Root, "--out", shard, "--size", "32", "--json");
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Equal(bytes, File.ReadAllBytes(shard));
        Assert.Contains(again.StderrLines, l => l.StartsWith("pseudonym key: " + keyFile, StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_key_comes_from_a_file_or_the_environment_and_decides_the_pseudonyms()
    {
        var keyFile = Path.Combine(temp.Path, "provider.key");
        File.WriteAllText(keyFile, "a secret of the provider, long enough\n");
        var fromFile = Path.Combine(temp.Path, "a.safetensors");
        var fromEnvironment = Path.Combine(temp.Path, "b.safetensors");
        var otherKey = Path.Combine(temp.Path, "c.safetensors");

        Assert.Equal(0, (await CliRun.RunAsync(WithSecret("ignored: the file wins"), "preprocess", "--input", phantoms.Root, "--out", fromFile, "--size", "16", "--pseudonym-key", keyFile)).ExitCode);
        Assert.Equal(0, (await CliRun.RunAsync(WithSecret("a secret of the provider, long enough"), "preprocess", "--input", phantoms.Root, "--out", fromEnvironment, "--size", "16")).ExitCode);
        Assert.Equal(0, (await CliRun.RunAsync(WithSecret("another provider's secret, long too"), "preprocess", "--input", phantoms.Root, "--out", otherKey, "--size", "16")).ExitCode);

        var expected = phantoms.CaseIds.Select(PseudonymKey.FromText("a secret of the provider, long enough").Pseudonym).Order(StringComparer.Ordinal);
        Assert.Equal(expected, DatasetShard.Load(fromFile).PatientIds);
        Assert.Equal(File.ReadAllBytes(fromFile), File.ReadAllBytes(fromEnvironment));
        Assert.Empty(DatasetShard.Load(otherKey).PatientIds.Intersect(expected));
        Assert.False(File.Exists(PreprocessCommand.DefaultKeyPath(fromFile)));
        Assert.False(File.Exists(PreprocessCommand.DefaultKeyPath(fromEnvironment)));
    }

    [Fact]
    public async Task Options_shape_the_dataset()
    {
        var shard = Path.Combine(temp.Path, "brats.safetensors");
        var run = await CliRun.RunAsync(WithSecret("a secret of the provider, long enough"), "preprocess", "--input", phantoms.Root, "--out", shard,
            "--size", "native", "--modalities", "t1ce,flair", "--labels", "brats", "--tumour-free-share", "all", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(48, run.Json().GetProperty("size").GetInt32());
        var d = DatasetShard.Load(shard);
        Assert.Equal(["t1ce", "flair"], d.Modalities);
        Assert.Equal(LabelScheme.BratsRegions, d.Labels);
        Assert.Equal("all-brain@native", d.Provenance.SliceSelection);
        Assert.True(d.Count > d.TumourSlices);
    }

    [Fact]
    public async Task A_broken_case_is_skipped_with_a_warning_and_strict_makes_it_an_error()
    {
        var input = Path.Combine(temp.Path, "input");
        foreach (var file in Directory.GetFiles(phantoms.Root, "*", SearchOption.AllDirectories))
        {
            var to = Path.Combine(input, Path.GetRelativePath(phantoms.Root, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
        }

        var broken = phantoms.CaseIds[1];
        File.Delete(Directory.GetFiles(input, $"{broken}_t1ce.nii.gz", SearchOption.AllDirectories).Single());
        var shard = Path.Combine(temp.Path, "out.safetensors");
        var env = WithSecret("a secret of the provider, long enough");

        var run = await CliRun.RunAsync(env, "preprocess", "--input", input, "--out", shard, "--size", "16", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(3, run.Json().GetProperty("patients").GetInt32());
        var skipped = Assert.Single(run.Json().GetProperty("skipped").EnumerateArray());
        Assert.Equal(broken, skipped.GetProperty("case").GetString());
        Assert.Equal($"missing t1ce (expected {broken}_t1ce.nii.gz)", skipped.GetProperty("reason").GetString());
        Assert.Contains($"warning: skipped case {broken}: missing t1ce (expected {broken}_t1ce.nii.gz)", run.StderrLines);

        var strict = await CliRun.RunAsync(env, "preprocess", "--input", input, "--out", Path.Combine(temp.Path, "strict.safetensors"), "--size", "16", "--strict", "--parallelism", "1");
        Assert.Equal(1, strict.ExitCode);
        Assert.Empty(strict.Stdout);
        Assert.Equal($"error: case {broken}: missing t1ce (expected {broken}_t1ce.nii.gz)", Assert.Single(strict.StderrLines));
        Assert.False(File.Exists(Path.Combine(temp.Path, "strict.safetensors")));
    }

    [Theory]
    [InlineData("--size", "7", "--size '7'")]
    [InlineData("--size", "big", "--size 'big'")]
    [InlineData("--labels", "all", "unknown label scheme \"all\"")]
    [InlineData("--modalities", "flair,pd", "unknown modality \"pd\"")]
    [InlineData("--tumour-free-share", "1.5", "--tumour-free-share '1.5'")]
    public async Task Bad_options_are_one_line_and_no_output(string option, string value, string expected)
    {
        var shard = Path.Combine(temp.Path, "x.safetensors");
        var run = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", phantoms.Root, "--out", shard, option, value);
        Assert.Equal(1, run.ExitCode);
        Assert.Empty(run.Stdout);
        Assert.Contains(expected, Assert.Single(run.StderrLines));
        Assert.False(File.Exists(shard));
        Assert.False(File.Exists(PreprocessCommand.DefaultKeyPath(shard)), "no key is generated for a run that cannot start");
    }

    [Fact]
    public async Task Bad_input_folders_and_keys_are_one_line()
    {
        var shard = Path.Combine(temp.Path, "x.safetensors");
        var missing = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", Path.Combine(temp.Path, "absent"), "--out", shard);
        Assert.Equal(1, missing.ExitCode);
        Assert.EndsWith("absent: no such folder", Assert.Single(missing.StderrLines));

        Directory.CreateDirectory(Path.Combine(temp.Path, "empty"));
        var empty = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", Path.Combine(temp.Path, "empty"), "--out", shard);
        Assert.Equal(1, empty.ExitCode);
        Assert.Contains("no case found", Assert.Single(empty.StderrLines));

        File.WriteAllText(Path.Combine(temp.Path, "short.key"), "short");
        var shortKey = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", phantoms.Root, "--out", shard, "--pseudonym-key", Path.Combine(temp.Path, "short.key"));
        Assert.Equal(1, shortKey.ExitCode);
        Assert.Contains("at least 16 bytes", Assert.Single(shortKey.StderrLines));

        var noKeyFile = await CliRun.RunAsync(WithSecret(null), "preprocess", "--input", phantoms.Root, "--out", shard, "--pseudonym-key", Path.Combine(temp.Path, "none.key"));
        Assert.Equal(1, noKeyFile.ExitCode);
        Assert.Contains("none.key: no such file", Assert.Single(noKeyFile.StderrLines));
    }

    [Fact]
    public async Task Inspect_shows_a_safetensors_file_that_is_not_a_shard_by_its_header()
    {
        var path = Path.Combine(temp.Path, "model.safetensors");
        SafeTensors.Save(path, [SafeTensor.Create("w", new[] { 1f, 2f, 3f }, 3)], new Dictionary<string, string> { ["format"] = "something-else" });
        var run = await CliRun.RunAsync("inspect", path, "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal("safetensors", run.Json().GetProperty("kind").GetString());
        Assert.Equal("w", run.Json().GetProperty("tensors")[0].GetProperty("name").GetString());

        // A shard that lies about its contents is one line.
        var bad = Path.Combine(temp.Path, "bad.safetensors");
        SafeTensors.Save(bad, [SafeTensor.Create("images", new[] { (Half)1 }, 1, 1, 1, 1)], new Dictionary<string, string> { ["format"] = DatasetShard.Format, ["version"] = "1" });
        var broken = await CliRun.RunAsync("inspect", bad);
        Assert.Equal(1, broken.ExitCode);
        Assert.Single(broken.StderrLines);
    }

    [Fact]
    public async Task Bench_preprocess_reports_the_ratio_to_decompression_on_its_last_line()
    {
        var run = await CliRun.RunAsync("bench", "preprocess", "--input", phantoms.Root, "--iterations", "1", "--size", "32", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var last = JsonDocument.Parse(run.Stdout.TrimEnd().Split('\n')[^1]).RootElement;
        Assert.Equal(4, last.GetProperty("cases").GetInt32());
        Assert.Equal(20, last.GetProperty("volumes").GetInt32());
        Assert.Equal(20L * 48 * 48 * 24 * 2 - (4L * 48 * 48 * 24) + (20L * 352), last.GetProperty("decompressed_bytes").GetInt64());
        Assert.True(last.GetProperty("ratio").GetDouble() > 0);
        Assert.True(last.GetProperty("gunzip_ms_per_volume").GetDouble() > 0);
        // Timing starts after the untimed runs that let the JIT settle (at least one, never more than the cap).
        Assert.InRange(last.GetProperty("warmup_runs").GetInt32(), 1, MriSeg.Imaging.Preprocessing.PreprocessBenchmark.MaxWarmupRuns);

        var notVolumes = await CliRun.RunAsync("bench", "preprocess", "--input", Path.Combine(temp.Path));
        Assert.Equal(1, notVolumes.ExitCode);
        Assert.Single(notVolumes.StderrLines);
    }
}
