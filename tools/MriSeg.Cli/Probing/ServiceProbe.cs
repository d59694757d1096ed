using System.Diagnostics;
using System.Text.Json.Serialization;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using V1 = Grpc.Reflection.V1;
using V1Alpha = Grpc.Reflection.V1Alpha;

namespace MriSeg.Cli.Probing;

/// <summary>grpc.health.v1 statuses as the protocol spells them, plus what a client sees when there is no answer.</summary>
internal enum HealthState
{
    [JsonStringEnumMemberName("SERVING")] Serving,
    [JsonStringEnumMemberName("NOT_SERVING")] NotServing,
    [JsonStringEnumMemberName("UNKNOWN")] Unknown,
    [JsonStringEnumMemberName("SERVICE_UNKNOWN")] ServiceUnknown,
    /// <summary>No connection, or no answer before the deadline.</summary>
    [JsonStringEnumMemberName("UNREACHABLE")] Unreachable,
    /// <summary>Something answered, but not with a health status (e.g. no health service).</summary>
    [JsonStringEnumMemberName("ERROR")] Error,
}

internal static class HealthStateText
{
    /// <summary>The name as the JSON output and the health protocol spell it.</summary>
    public static string ToWire(this HealthState state) => state switch
    {
        HealthState.Serving => "SERVING",
        HealthState.NotServing => "NOT_SERVING",
        HealthState.Unknown => "UNKNOWN",
        HealthState.ServiceUnknown => "SERVICE_UNKNOWN",
        HealthState.Unreachable => "UNREACHABLE",
        _ => "ERROR",
    };
}

internal enum ReflectionState
{
    /// <summary>Server reflection lists the service's expected gRPC service.</summary>
    Listed,
    /// <summary>Reflection answers without it: something else is at this address.</summary>
    NotListed,
    /// <summary>No reflection answer (not served, or failed).</summary>
    Unavailable,
    /// <summary>The server was unreachable.</summary>
    NotChecked,
}

/// <param name="LatencyMs">One cheap RPC's round trip on the already open connection; null when unreachable.</param>
/// <param name="Error">Why the service is not OK (or a side note such as reflection failing); null when all is well.</param>
internal sealed record ServiceReport(
    string Service,
    string GrpcService,
    Uri Address,
    EndpointSource Source,
    HealthState Status,
    ReflectionState Reflection,
    double? LatencyMs,
    string? Error)
{
    /// <summary>SERVING, and not a different service at this address.</summary>
    public bool Ok => Status == HealthState.Serving && Reflection != ReflectionState.NotListed;
}

/// <summary>Checks one service: grpc.health.v1 Check, server reflection, and a timed round trip.</summary>
internal static class ServiceProbe
{
    public static async Task<ServiceReport> ProbeAsync(ResolvedEndpoint endpoint, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var handler = new SocketsHttpHandler { ConnectTimeout = timeout };
        using var channel = GrpcChannel.ForAddress(endpoint.Address, new GrpcChannelOptions { HttpHandler = handler });
        var health = new Health.HealthClient(channel);

        ServiceReport Report(HealthState status, ReflectionState reflection, double? latencyMs, string? error) =>
            new(endpoint.Service, endpoint.GrpcService, endpoint.Address, endpoint.Source, status, reflection, latencyMs, error);

        HealthState status;
        try
        {
            // The first call also connects; the latency below is timed on the open connection.
            status = Map((await health.CheckAsync(new HealthCheckRequest(), deadline: Deadline(timeout), cancellationToken: cancellationToken)).Status);
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            var state = e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded ? HealthState.Unreachable : HealthState.Error;
            var reason = e.StatusCode == StatusCode.DeadlineExceeded ? $"no answer within {timeout.TotalSeconds:0.###} s" : ErrorText.OneLine(e);
            return Report(state, state == HealthState.Unreachable ? ReflectionState.NotChecked : ReflectionState.Unavailable, null, reason);
        }

        var (reflection, reflectionError) = await ReflectAsync(channel, endpoint.GrpcService, timeout, cancellationToken);

        // Timed on the open connection with a cheap RPC: the first calls pay for connecting and JIT,
        // and a health Check runs the server's dependency probes (storage), which is not network latency.
        double? latency = null;
        try
        {
            var stopwatch = Stopwatch.StartNew();
            if (reflection is ReflectionState.Listed or ReflectionState.NotListed)
            {
                await ReflectAsync(channel, endpoint.GrpcService, timeout, cancellationToken);
            }
            else
            {
                await health.CheckAsync(new HealthCheckRequest(), deadline: Deadline(timeout), cancellationToken: cancellationToken);
            }

            latency = Math.Round(stopwatch.Elapsed.TotalMilliseconds, 2);
        }
        catch (RpcException) when (!cancellationToken.IsCancellationRequested)
        {
            // It answered a moment ago; no latency is all this costs.
        }

        var error = status != HealthState.Serving ? $"health check says {status.ToWire()}"
            : reflection == ReflectionState.NotListed ? $"server reflection does not list {endpoint.GrpcService}: another service is at this address"
            : reflectionError;
        return Report(status, reflection, latency, error);
    }

    private static async Task<(ReflectionState State, string? Error)> ReflectAsync(
        GrpcChannel channel, string expected, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            IReadOnlyList<string>? names;
            try
            {
                names = await ListV1Async(channel, timeout, cancellationToken);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Unimplemented)
            {
                // Older servers offer only the v1alpha protocol.
                names = await ListV1AlphaAsync(channel, timeout, cancellationToken);
            }

            if (names is null)
            {
                return (ReflectionState.Unavailable, "server reflection gave no service list");
            }

            return (names.Contains(expected, StringComparer.Ordinal) ? ReflectionState.Listed : ReflectionState.NotListed, null);
        }
        catch (RpcException e) when (!cancellationToken.IsCancellationRequested)
        {
            return (ReflectionState.Unavailable, "server reflection: " + ErrorText.OneLine(e));
        }
    }

    private static async Task<IReadOnlyList<string>?> ListV1Async(GrpcChannel channel, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var client = new V1.ServerReflection.ServerReflectionClient(channel);
        using var call = client.ServerReflectionInfo(deadline: Deadline(timeout), cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new V1.ServerReflectionRequest { ListServices = "" }, cancellationToken);
        await call.RequestStream.CompleteAsync();
        return await call.ResponseStream.MoveNext(cancellationToken) && call.ResponseStream.Current.ListServicesResponse is { } list
            ? [.. list.Service.Select(s => s.Name)]
            : null;
    }

    private static async Task<IReadOnlyList<string>?> ListV1AlphaAsync(GrpcChannel channel, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var client = new V1Alpha.ServerReflection.ServerReflectionClient(channel);
        using var call = client.ServerReflectionInfo(deadline: Deadline(timeout), cancellationToken: cancellationToken);
        await call.RequestStream.WriteAsync(new V1Alpha.ServerReflectionRequest { ListServices = "" }, cancellationToken);
        await call.RequestStream.CompleteAsync();
        return await call.ResponseStream.MoveNext(cancellationToken) && call.ResponseStream.Current.ListServicesResponse is { } list
            ? [.. list.Service.Select(s => s.Name)]
            : null;
    }

    private static DateTime Deadline(TimeSpan timeout) => DateTime.UtcNow + timeout;

    private static HealthState Map(HealthCheckResponse.Types.ServingStatus status) => status switch
    {
        HealthCheckResponse.Types.ServingStatus.Serving => HealthState.Serving,
        HealthCheckResponse.Types.ServingStatus.NotServing => HealthState.NotServing,
        HealthCheckResponse.Types.ServingStatus.ServiceUnknown => HealthState.ServiceUnknown,
        _ => HealthState.Unknown,
    };
}
