namespace MriSeg.Testing;

/// <summary>Where the repository is, seen from a test's output folder.</summary>
public static class RepositoryLayout
{
    private const string SolutionFile = "MriSeg.sln";

    /// <summary>The repository root (the nearest folder above the tests holding MriSeg.sln), or null.</summary>
    public static string? FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, SolutionFile)))
            {
                return dir.FullName;
            }
        }

        return null;
    }

    public static string Root => FindRoot() ?? throw new InvalidOperationException($"{SolutionFile} not found above {AppContext.BaseDirectory}");
}
