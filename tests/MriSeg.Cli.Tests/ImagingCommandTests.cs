namespace MriSeg.Cli.Tests;

public sealed class ImagingCommandTests
{
    [Fact]
    public async Task Phantoms_writes_brats_layout_cases_that_inspect_reads_as_brats_label_maps()
    {
        using var temp = new TempFolder();
        var run = await CliRun.RunAsync("phantoms", "--out", temp.Path, "--sites", "2", "--patients", "2", "--shape", "32x32x16", "--seed", "7", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Equal(4, run.Json().GetProperty("cases").GetInt32());
        var caseFolders = Directory.GetDirectories(Path.Combine(temp.Path, "site-1"));
        Assert.Equal(2, caseFolders.Length);
        var caseId = Path.GetFileName(caseFolders[0]);
        foreach (var modality in new[] { "flair", "t1", "t1ce", "t2", "seg" })
        {
            Assert.True(File.Exists(Path.Combine(caseFolders[0], $"{caseId}_{modality}.nii.gz")), modality);
        }

        var inspect = await CliRun.RunAsync("inspect", Path.Combine(caseFolders[0], $"{caseId}_seg.nii.gz"), "--json");
        Assert.True(inspect.ExitCode == 0, inspect.ToString());
        var view = inspect.Json();
        Assert.Equal("32x32x16", view.GetProperty("size").GetString());
        var labels = view.GetProperty("labels").EnumerateObject().Select(p => int.Parse(p.Name, System.Globalization.CultureInfo.InvariantCulture)).ToList();
        Assert.Subset(new HashSet<int> { 0, 1, 2, 4 }, labels.ToHashSet());
        Assert.Contains(2, labels);
    }

    [Fact]
    public async Task Inspect_rejects_a_truncated_nifti_in_one_line_naming_the_file()
    {
        using var temp = new TempFolder();
        Assert.Equal(0, (await CliRun.RunAsync("phantoms", "--out", temp.Path, "--sites", "1", "--patients", "1", "--shape", "32x32x16")).ExitCode);
        var flair = Directory.GetFiles(temp.Path, "*_flair.nii.gz", SearchOption.AllDirectories).Single();
        var truncated = Path.Combine(temp.Path, "truncated.nii.gz");
        File.WriteAllBytes(truncated, File.ReadAllBytes(flair)[..200]);

        var run = await CliRun.RunAsync("inspect", truncated);

        Assert.Equal(1, run.ExitCode);
        Assert.Empty(run.Stdout);
        Assert.Single(run.StderrLines);
        Assert.Contains("truncated.nii.gz", run.Stderr);
    }
}
