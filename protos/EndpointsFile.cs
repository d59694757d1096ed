using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace MriSeg.Contracts;

/// <summary>
/// The file the AppHost writes once its services have addresses, so that the <c>mriseg</c> CLI run
/// from the repository finds them without arguments. Ports are allocated per run (no fixed ports to
/// collide with a second AppHost or a test run), so a file is more robust than well-known ports.
/// </summary>
public sealed record EndpointsFile
{
    public const string EnvironmentVariable = "MRISEG_ENDPOINTS_FILE";
    public const string RelativePath = ".mriseg/endpoints.json";
    private const string SolutionFile = "MriSeg.sln";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    public int Version { get; init; } = 1;
    public DateTimeOffset WrittenAt { get; init; } = DateTimeOffset.UtcNow;
    /// <summary>The AppHost process; a file whose writer is gone is stale.</summary>
    public int ProcessId { get; init; }
    public string? Dashboard { get; init; }
    /// <summary>Service name → endpoint name (<c>grpc</c>, <c>http</c>) → URL.</summary>
    // Populate, so that reading keeps the case-insensitive comparer.
    [JsonObjectCreationHandling(JsonObjectCreationHandling.Populate)]
    public Dictionary<string, Dictionary<string, string>> Services { get; init; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Local storage connection strings by connection name (<c>blobs</c>, <c>tables</c>): the Azurite emulator's, whose
    /// account key is the published development key, so that <c>mriseg scenario run</c> can stage the parties' files.
    /// </summary>
    [JsonObjectCreationHandling(JsonObjectCreationHandling.Populate)]
    public Dictionary<string, string> Storage { get; init; } = new(StringComparer.OrdinalIgnoreCase);

    public bool WriterIsRunning()
    {
        try
        {
            using var p = Process.GetProcessById(ProcessId);
            return !p.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    /// <summary>
    /// Where the file lives: <c>$MRISEG_ENDPOINTS_FILE</c>, else <c>.mriseg/endpoints.json</c> in the
    /// repository that contains <paramref name="startDirectory"/> (the nearest folder up with MriSeg.sln);
    /// null when neither applies.
    /// </summary>
    public static string? DefaultPath(string? startDirectory = null)
    {
        var fromEnvironment = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(fromEnvironment))
        {
            return Path.GetFullPath(fromEnvironment);
        }

        for (var dir = new DirectoryInfo(startDirectory ?? Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, SolutionFile)))
            {
                return Path.Combine(dir.FullName, RelativePath);
            }
        }

        return null;
    }

    public static EndpointsFile Read(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<EndpointsFile>(File.ReadAllText(path), Json)
                ?? throw new InvalidDataException($"{path}: empty endpoints file.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not a valid endpoints file ({e.Message}).", e);
        }
    }

    /// <summary>Writes atomically (temp file, then rename) so a reader never sees half a file.</summary>
    public void Write(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temp = path + ".tmp-" + Environment.ProcessId;
        File.WriteAllText(temp, JsonSerializer.Serialize(this, Json));
        File.Move(temp, path, overwrite: true);
    }
}
