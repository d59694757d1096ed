using Microsoft.Extensions.Diagnostics.HealthChecks;
using MriSeg.Learning.Torch;

namespace MriSeg.Trainer;

/// <summary>
/// Loads libtorch when the service starts, so the log says at once which backend and device the
/// trainer uses, and reports it as a health check: a trainer that cannot load libtorch is not ready.
/// </summary>
public sealed class TorchHealthCheck(ILogger<TorchHealthCheck> logger) : IHealthCheck, IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            TorchRuntime.Initialize(logger);
        }
        catch (TorchUnavailableException e)
        {
            // Keep serving: health and every RPC then say why training cannot run.
            logger.LogError(e, "libtorch is unavailable: {Reason}", e.Message);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            var info = TorchRuntime.Initialize(logger);
            return Task.FromResult(HealthCheckResult.Healthy($"{info.Backend} backend on {info.Device}, libtorch from {info.LibTorchSource}"));
        }
        catch (TorchUnavailableException e)
        {
            return Task.FromResult(new HealthCheckResult(context.Registration.FailureStatus, e.Message, e));
        }
    }
}
