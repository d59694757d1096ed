using MriSeg.Contracts;
using MriSeg.ServiceDefaults;

namespace MriSeg.Preprocess;

/// <summary>The Preprocess service's settings (section <c>Preprocess</c>), resolved once at start.</summary>
public sealed class PreprocessSettings
{
    public const string Section = "Preprocess";

    /// <summary>
    /// <c>Preprocess:AllowLocalPaths</c>: whether a job may read or write paths on the service's machine (default: in
    /// Development only). Blob sources and outputs are always allowed.
    /// </summary>
    public bool AllowLocalPaths { get; init; }

    /// <summary>
    /// <c>Preprocess:PseudonymKeysDirectory</c>: the providers' pseudonymisation secrets, <c>&lt;provider&gt;.pseudonym</c>
    /// (mode 0600). Default in Development: <c>.mriseg/pseudonym-keys</c> in the repository. Required otherwise.
    /// </summary>
    public string? PseudonymKeysDirectory { get; init; }

    /// <summary><c>Preprocess:CreatePseudonymKeys</c>: generate a provider's secret on first use (default: in Development only).</summary>
    public bool CreatePseudonymKeys { get; init; }

    /// <summary><c>Preprocess:MaxParallelism</c>: volumes processed at once (default: the processor count).</summary>
    public int MaxParallelism { get; init; } = Environment.ProcessorCount;

    /// <summary><c>Preprocess:ProgressIntervalMs</c>: least time between two progress messages (default 250 ms).</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(250);

    public static PreprocessSettings From(IConfiguration configuration, IHostEnvironment environment)
    {
        var section = configuration.GetSection(Section);
        var development = environment.IsDevelopment();
        var keys = section["PseudonymKeysDirectory"];
        return new PreprocessSettings
        {
            AllowLocalPaths = section.GetValue("AllowLocalPaths", development),
            CreatePseudonymKeys = section.GetValue("CreatePseudonymKeys", development),
            MaxParallelism = Math.Max(1, section.GetValue("MaxParallelism", Environment.ProcessorCount)),
            ProgressInterval = TimeSpan.FromMilliseconds(Math.Max(0, section.GetValue("ProgressIntervalMs", 250))),
            PseudonymKeysDirectory = !string.IsNullOrWhiteSpace(keys)
                ? Path.GetFullPath(keys, environment.ContentRootPath)
                : development ? DevelopmentFolders.Resolve(environment.ContentRootPath, "pseudonym-keys") : null,
        };
    }
}
