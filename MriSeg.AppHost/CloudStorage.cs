using Aspire.Hosting.ApplicationModel;
using MriSeg.Contracts;

namespace MriSeg.AppHost;

/// <summary>
/// Storage in publish mode (the manifest that describes the cloud deployment, infra/): the Azure Storage
/// account that infra/main.bicep deploys, named by the <c>storage</c> parameter. The connection strings
/// are the account's service URIs, which the services open with their managed identity
/// (<c>StorageConnection</c> in ServiceDefaults); no keys. Azurite is for local runs only.
/// </summary>
public static class CloudStorage
{
    /// <summary>The parameter naming the storage account (azd output AZURE_STORAGE_ACCOUNT_NAME).</summary>
    public const string AccountParameter = "storage";

    public static (IResourceBuilder<IResourceWithConnectionString> Blobs, IResourceBuilder<IResourceWithConnectionString> Tables) Add(
        IDistributedApplicationBuilder builder)
    {
        var account = builder.AddParameter(AccountParameter)
            .WithDescription("Name of the Azure Storage account that infra/main.bicep deploys (output AZURE_STORAGE_ACCOUNT_NAME).");
        // Azure public cloud endpoints, as infra/modules/storage.bicep outputs them.
        var blobs = builder.AddConnectionString(ServiceCatalog.BlobConnection,
            ReferenceExpression.Create($"https://{account}.blob.core.windows.net/"));
        var tables = builder.AddConnectionString(ServiceCatalog.TableConnection,
            ReferenceExpression.Create($"https://{account}.table.core.windows.net/"));
        return (blobs, tables);
    }
}
