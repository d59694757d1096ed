using Azure.Core;
using Azure.Data.Tables;
using Azure.Identity;
using Azure.Storage.Blobs;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using MriSeg.Contracts;

namespace MriSeg.ServiceDefaults;

/// <summary>
/// Registers <see cref="BlobServiceClient"/> and <see cref="TableServiceClient"/> from Aspire connection
/// strings (<c>ConnectionStrings__blobs</c>, <c>ConnectionStrings__tables</c>) with health checks that
/// really reach the storage, as the Aspire Azure client integrations would (they are not served here).
/// A connection string is either an account connection string (Azurite, keys) or a service URI,
/// which then authenticates with the workload's managed identity (<see cref="DefaultAzureCredential"/>).
/// </summary>
public static class StorageClientsExtensions
{
    /// <summary>A health probe must answer quickly, not wait out the SDK's retries.</summary>
    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(5);

    public static TBuilder AddStorageClients<TBuilder>(this TBuilder builder) where TBuilder : IHostApplicationBuilder
    {
        var blobs = RequireConnectionString(builder.Configuration, ServiceCatalog.BlobConnection);
        var tables = RequireConnectionString(builder.Configuration, ServiceCatalog.TableConnection);

        builder.Services.AddSingleton(_ => StorageConnection.CreateBlobClient(blobs));
        builder.Services.AddSingleton(_ => StorageConnection.CreateTableClient(tables));

        builder.Services.AddHealthChecks()
            .AddCheck<BlobStorageHealthCheck>("blob-storage", failureStatus: null, tags: [ServiceDefaultsExtensions.ReadyTag], timeout: ProbeTimeout)
            .AddCheck<TableStorageHealthCheck>("table-storage", failureStatus: null, tags: [ServiceDefaultsExtensions.ReadyTag], timeout: ProbeTimeout);
        return builder;
    }

    private static string RequireConnectionString(IConfiguration configuration, string name) =>
        configuration.GetConnectionString(name) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException(
                $"ConnectionStrings:{name} is not set. Run the services through the AppHost " +
                $"(dotnet run --project MriSeg.AppHost) or set the environment variable ConnectionStrings__{name}.");
}

/// <summary>Builds storage clients from either kind of connection string.</summary>
public static class StorageConnection
{
    private static readonly Lazy<TokenCredential> Credential = new(() => new DefaultAzureCredential());

    public static bool IsServiceUri(string connectionString) =>
        Uri.TryCreate(connectionString, UriKind.Absolute, out var uri) && uri.Scheme is "https" or "http";

    public static BlobServiceClient CreateBlobClient(string connectionString) =>
        IsServiceUri(connectionString)
            ? new BlobServiceClient(new Uri(connectionString), Credential.Value)
            : new BlobServiceClient(connectionString);

    public static TableServiceClient CreateTableClient(string connectionString) =>
        IsServiceUri(connectionString)
            ? new TableServiceClient(new Uri(connectionString), Credential.Value)
            : new TableServiceClient(connectionString);
}

/// <summary>Healthy when the blob service answers a one-item container listing.</summary>
public sealed class BlobStorageHealthCheck(BlobServiceClient client) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            await using var pages = client.GetBlobContainersAsync(cancellationToken: cancellationToken)
                .AsPages(pageSizeHint: 1).GetAsyncEnumerator(cancellationToken);
            await pages.MoveNextAsync();
            return HealthCheckResult.Healthy($"blob storage at {client.Uri} answers");
        }
        catch (Exception e)
        {
            return StorageProbe.Unreachable(context, "blob", client.Uri, e);
        }
    }
}

/// <summary>Healthy when the table service answers a one-item table query.</summary>
public sealed class TableStorageHealthCheck(TableServiceClient client) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            await using var pages = client.QueryAsync(maxPerPage: 1, cancellationToken: cancellationToken)
                .AsPages().GetAsyncEnumerator(cancellationToken);
            await pages.MoveNextAsync();
            return HealthCheckResult.Healthy($"table storage at {client.Uri} answers");
        }
        catch (Exception e)
        {
            return StorageProbe.Unreachable(context, "table", client.Uri, e);
        }
    }
}

internal static class StorageProbe
{
    // A probe cancelled by its time limit means the storage did not answer (the SDK was still retrying).
    public static HealthCheckResult Unreachable(HealthCheckContext context, string kind, Uri uri, Exception e) =>
        new(context.Registration.FailureStatus,
            e is OperationCanceledException
                ? $"{kind} storage at {uri} did not answer within {context.Registration.Timeout.TotalSeconds:0} s"
                : $"{kind} storage at {uri} is unreachable: {e.Message}",
            e);
}
