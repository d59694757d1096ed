namespace MriSeg.Infra.Tests;

/// <summary>Every .bicep file under infra/ compiles and lints with no error and no warning.</summary>
public sealed class BicepTests(BicepBuild bicep)
{
    public static TheoryData<string> Files => [.. Infra.BicepFiles()];

    [Theory]
    [MemberData(nameof(Files))]
    public void Builds_and_lints_without_errors_or_warnings(string file)
    {
        bicep.SkipIfUnavailable();
        Assert.True(File.Exists(bicep.CompiledPath(file)), $"bicep build wrote no template for {file}.\n{bicep.Build.Describe()}");
        var diagnostics = bicep.Diagnostics.TryGetValue(file, out var found) ? found : [];
        Assert.True(diagnostics.Count == 0, $"{file}:\n{string.Join('\n', diagnostics)}");
    }

    [Fact]
    public void Bicep_exits_zero_and_reports_nothing_else()
    {
        bicep.SkipIfUnavailable();
        Assert.True(bicep.Build.ExitCode == 0, "bicep build: " + bicep.Build.Describe());
        Assert.True(bicep.Lint.ExitCode == 0, "bicep lint: " + bicep.Lint.Describe());
        Assert.True(bicep.Unattributed.Count == 0, string.Join('\n', bicep.Unattributed));
    }

    [Fact]
    public void Infra_has_the_templates_azd_needs()
    {
        var files = Infra.BicepFiles();
        Assert.Contains("infra/main.bicep", files);
        Assert.True(files.Count >= 10, $"expected main.bicep and its modules, found: {string.Join(", ", files)}");
    }
}
