namespace MriSeg.Contracts;

/// <summary>Where services (and the CLI, which finds their keys there) keep development-only state (keys, secrets) when no folder is configured.</summary>
public static class DevelopmentFolders
{
    /// <summary>
    /// <c>.mriseg/&lt;name&gt;</c> in the repository that holds <paramref name="contentRoot"/> (found by MriSeg.sln),
    /// else <c>MriSeg/&lt;name&gt;</c> in the user's local application data.
    /// </summary>
    public static string Resolve(string contentRoot, string name)
    {
        for (var dir = new DirectoryInfo(contentRoot); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "MriSeg.sln")))
            {
                return Path.Combine(dir.FullName, ".mriseg", name);
            }
        }

        return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "MriSeg", name);
    }
}
