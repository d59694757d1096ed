using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;

namespace MriSeg.Cli.Endpoints;

/// <summary>Where a service's address came from, in order of precedence.</summary>
internal enum EndpointSource
{
    /// <summary><c>--endpoint NAME=URL</c>.</summary>
    Override,
    /// <summary>The endpoints file the AppHost writes.</summary>
    File,
    /// <summary>http://localhost:DevGrpcPort from <see cref="ServiceCatalog"/>.</summary>
    DevPort,
}

internal enum EndpointsFileState
{
    /// <summary>No file was looked for (no repository, no variable).</summary>
    None,
    /// <summary>Every service was given with --endpoint, so the file was not read.</summary>
    NotRead,
    Missing,
    Used,
    /// <summary>Used, but the AppHost that wrote it no longer runs.</summary>
    Stale,
}

internal sealed record ResolvedEndpoint(
    string Service,
    string GrpcService,
    Uri Address,
    EndpointSource Source);

internal sealed record EndpointResolution(
    IReadOnlyList<ResolvedEndpoint> Endpoints,
    string? File,
    EndpointsFileState FileState,
    IReadOnlyList<string> Warnings)
{
    public ResolvedEndpoint Get(string service) =>
        Endpoints.FirstOrDefault(e => string.Equals(e.Service, service, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"Unknown service '{service}'.", nameof(service));
}

/// <summary>
/// Decides each service's gRPC address: <c>--endpoint</c> first, then the AppHost's endpoints file,
/// then the development port. Pure apart from reading the file, so precedence is unit-testable.
/// </summary>
internal static class EndpointResolver
{
    public static EndpointResolution Resolve(IReadOnlyList<EndpointOverride> overrides, EndpointsFileLocation? location)
    {
        var duplicate = overrides.GroupBy(o => o.Service, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
        if (duplicate is not null)
        {
            throw new CliException($"--endpoint names '{duplicate.Key}' more than once.");
        }

        var warnings = new List<string>();
        var needsFile = ServiceCatalog.All.Any(s => !overrides.Any(o => Same(o.Service, s.Name)));
        var (file, state) = needsFile ? ReadFile(location, warnings) : (null, location is null ? EndpointsFileState.None : EndpointsFileState.NotRead);

        var endpoints = new List<ResolvedEndpoint>();
        foreach (var service in ServiceCatalog.All)
        {
            var chosen = overrides.FirstOrDefault(o => Same(o.Service, service.Name));
            if (chosen is not null)
            {
                endpoints.Add(new(service.Name, service.GrpcService, chosen.Address, EndpointSource.Override));
            }
            else if (FromFile(file, service, location, warnings) is { } fromFile)
            {
                endpoints.Add(new(service.Name, service.GrpcService, fromFile, EndpointSource.File));
            }
            else
            {
                endpoints.Add(new(service.Name, service.GrpcService, DevAddress(service), EndpointSource.DevPort));
            }
        }

        return new EndpointResolution(endpoints, location?.Path, state, warnings);
    }

    public static Uri DevAddress(ServiceInfo service) => new($"http://localhost:{service.DevGrpcPort}");

    private static (EndpointsFile? File, EndpointsFileState State) ReadFile(EndpointsFileLocation? location, List<string> warnings)
    {
        if (location is null)
        {
            return (null, EndpointsFileState.None);
        }

        if (!File.Exists(location.Path))
        {
            if (location.Explicit)
            {
                warnings.Add($"{EndpointsFile.EnvironmentVariable} names {location.Path}, which does not exist; using the development ports.");
            }

            return (null, EndpointsFileState.Missing);
        }

        EndpointsFile file;
        try
        {
            file = EndpointsFile.Read(location.Path);
        }
        catch (InvalidDataException e)
        {
            throw new CliException(e.Message, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{location.Path}: cannot read the endpoints file ({e.Message}).", e);
        }

        if (file.Version != 1)
        {
            throw new CliException($"{location.Path}: endpoints file version {file.Version} is not supported (expected 1).");
        }

        if (!file.WriterIsRunning())
        {
            warnings.Add($"{location.Path} was written by process {file.ProcessId}, which is no longer running; its addresses are probably stale.");
            return (file, EndpointsFileState.Stale);
        }

        return (file, EndpointsFileState.Used);
    }

    private static Uri? FromFile(EndpointsFile? file, ServiceInfo service, EndpointsFileLocation? location, List<string> warnings)
    {
        if (file is null)
        {
            return null;
        }

        if (!file.Services.TryGetValue(service.Name, out var endpoints)
            || !endpoints.TryGetValue(ServiceCatalog.GrpcEndpoint, out var url))
        {
            warnings.Add($"{location?.Path} has no {ServiceCatalog.GrpcEndpoint} endpoint for {service.Name}; using its development port.");
            return null;
        }

        return GrpcAddress.TryParse(url, out var address)
            ? address
            : throw new CliException($"{location?.Path}: {service.Name} has an invalid {ServiceCatalog.GrpcEndpoint} address '{url}'.");
    }

    private static bool Same(string a, string b) => string.Equals(a, b, StringComparison.OrdinalIgnoreCase);
}
