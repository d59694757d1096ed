using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace MriSeg.ServiceDefaults;

/// <summary>
/// gRPC hosting shared by the five services: the service itself, server reflection, the standard
/// gRPC health service (fed by the ASP.NET Core health checks, so it reports NOT_SERVING while
/// storage is unreachable), and the HTTP health endpoints.
/// </summary>
public static class GrpcHostingExtensions
{
    /// <summary>Large enough for a NIfTI volume sent inline to Segment; bulk data goes through blobs.</summary>
    public const int MaxMessageBytes = 64 * 1024 * 1024;

    public static TBuilder AddGrpcHosting<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        builder.Services.AddGrpc(options =>
        {
            options.Interceptors.Add<PendingCapabilityInterceptor>();
            options.MaxReceiveMessageSize = MaxMessageBytes;
            options.MaxSendMessageSize = MaxMessageBytes;
            options.EnableDetailedErrors = builder.Environment.IsDevelopment();
        });
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks();
        return builder;
    }

    public static WebApplication MapGrpcHosting<TService>(this WebApplication app) where TService : class
    {
        app.MapGrpcService<TService>();
        app.MapGrpcReflectionService();
        app.MapGrpcHealthChecksService();
        app.MapDefaultEndpoints();
        return app;
    }
}
