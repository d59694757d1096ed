using Aspire.Hosting.ApplicationModel;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using MriSeg.Contracts;

namespace MriSeg.AppHost;

/// <summary>
/// Once every service is healthy, writes their addresses to the endpoints file that the
/// <c>mriseg</c> CLI reads, and removes it on shutdown.
/// </summary>
public sealed class EndpointsFileWriter(IServiceProvider services, string path) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var notifications = services.GetRequiredService<ResourceNotificationService>();
        var model = services.GetRequiredService<DistributedApplicationModel>();
        var logger = services.GetRequiredService<ILogger<EndpointsFileWriter>>();
        try
        {
            foreach (var service in ServiceCatalog.All)
            {
                await notifications.WaitForResourceHealthyAsync(service.Name, stoppingToken);
            }

            var file = new EndpointsFile
            {
                ProcessId = Environment.ProcessId,
                Dashboard = services.GetRequiredService<IConfiguration>()["ASPNETCORE_URLS"]?.Split(';')[0],
                Services = model.Resources.OfType<ProjectResource>().Where(r => ServiceCatalog.All.Any(s => s.Name == r.Name))
                    .ToDictionary(
                        r => r.Name,
                        r => r.Annotations.OfType<EndpointAnnotation>()
                            .Where(e => e.AllocatedEndpoint is not null)
                            .ToDictionary(e => e.Name, e => e.AllocatedEndpoint!.UriString),
                        StringComparer.OrdinalIgnoreCase),
            };
            foreach (var storage in model.Resources.OfType<AzuriteResource>())
            {
                if (await storage.ConnectionStringExpression.GetValueAsync(stoppingToken) is { } connection)
                {
                    file.Storage[storage.Name] = connection;
                }
            }

            file.Write(path);
            logger.LogInformation("All MriSeg services are healthy; their endpoints are in {Path} for the mriseg CLI.", path);
            await Task.Delay(Timeout.Infinite, stoppingToken);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            TryDelete(path);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            if (File.Exists(path) && EndpointsFile.Read(path).ProcessId == Environment.ProcessId)
            {
                File.Delete(path);
            }
        }
        catch (IOException)
        {
            // Best effort: a stale file names a process that is gone, and the CLI says so.
        }
        catch (InvalidDataException)
        {
        }
    }
}
