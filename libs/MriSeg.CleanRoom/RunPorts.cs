using Azure;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Grpc.Core;
using MriSeg.KeyRelease.Client;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.CleanRoom;

/// <summary>Where the run's sealed packages come from.</summary>
public interface IPackageSource
{
    /// <summary>The sealed bytes of <paramref name="blob"/> (ciphertext: memory is fine), or null when it does not exist.</summary>
    Task<byte[]?> FetchAsync(V1.BlobRef blob, CancellationToken cancellationToken);
}

/// <summary>The owners' registered signing keys (who must have sealed a package).</summary>
public interface ISignerDirectory
{
    /// <summary>The registered signing key of <paramref name="owner"/>, or null.</summary>
    Task<SignerPublicKey?> FindAsync(string owner, CancellationToken cancellationToken);
}

/// <summary>The KeyBroker as the clean room sees it: attestation, key release, settlement.</summary>
public interface IKeySource
{
    /// <summary>The clean room's party id.</summary>
    string PartyId { get; }

    /// <summary>
    /// An attestation token whose runtime data binds <paramref name="runtimeKey"/> (here: the run's output signing key), with
    /// a broker nonce of <paramref name="runId"/>.
    /// </summary>
    Task<string> AttestAsync(string runId, RecipientPublicKey runtimeKey, CancellationToken cancellationToken);

    /// <summary>Releases <paramref name="keyId"/> wrapped to <paramref name="ephemeral"/> under a fresh attestation.</summary>
    Task<ReleasedKey> ReleaseAsync(string keyId, ReleaseRun run, RecipientPrivateKey ephemeral, CancellationToken cancellationToken);

    /// <summary>Settles what the run spent on <paramref name="contractId"/>.</summary>
    Task<V1.BudgetStatus> SettleAsync(string runId, string contractId, V1.PrivacyParameters spent, CancellationToken cancellationToken);
}

/// <summary>Where the sealed outputs go.</summary>
public interface IOutputSink
{
    /// <summary>Uploads <paramref name="sealedBytes"/> as a new blob (never replacing one); returns its ref with the ETag.</summary>
    Task<V1.BlobRef> UploadAsync(string container, string name, ReadOnlyMemory<byte> sealedBytes, CancellationToken cancellationToken);

    /// <summary>Deletes a blob this run uploaded (rollback of a partial upload).</summary>
    Task DeleteAsync(V1.BlobRef blob, CancellationToken cancellationToken);
}

/// <summary>
/// Where a run's sealed checkpoints live (the consumer's container, under <c>checkpoints/&lt;run-id&gt;/</c>): unlike the
/// outputs, a checkpoint blob may be replaced and is removed when the run ends.
/// </summary>
public interface ICheckpointStore
{
    /// <summary>Writes <paramref name="sealedBytes"/> as <paramref name="name"/>, replacing a blob of that name; returns once it is durable.</summary>
    Task PutAsync(string container, string name, ReadOnlyMemory<byte> sealedBytes, CancellationToken cancellationToken);

    /// <summary>The bytes of <paramref name="name"/>, or null when it does not exist.</summary>
    Task<byte[]?> GetAsync(string container, string name, CancellationToken cancellationToken);

    /// <summary>The names of the blobs under <paramref name="prefix"/> (none when the container does not exist).</summary>
    Task<IReadOnlyList<string>> ListAsync(string container, string prefix, CancellationToken cancellationToken);

    /// <summary>Deletes <paramref name="name"/> if it exists.</summary>
    Task DeleteAsync(string container, string name, CancellationToken cancellationToken);
}

/// <summary>Packages from Blob storage.</summary>
public sealed class BlobPackageSource(BlobServiceClient blobs) : IPackageSource
{
    /// <inheritdoc />
    public async Task<byte[]?> FetchAsync(V1.BlobRef blob, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(blob);
        var client = blobs.GetBlobContainerClient(blob.Container).GetBlobClient(blob.Name);
        try
        {
            var conditions = string.IsNullOrEmpty(blob.Etag) ? null : new BlobRequestConditions { IfMatch = new ETag(blob.Etag) };
            var content = await client.DownloadContentAsync(new BlobDownloadOptions { Conditions = conditions }, cancellationToken).ConfigureAwait(false);
            return content.Value.Content.ToArray();
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
        catch (RequestFailedException e) when (e.Status == 412)
        {
            // Azurite answers a conditional read of a missing blob with 412: tell the two apart.
            if (!await client.ExistsAsync(cancellationToken).ConfigureAwait(false))
            {
                return null;
            }

            throw new CleanRoomRunException(RunFailure.TamperedPackage, $"blob {blob.Container}/{blob.Name} was replaced: its ETag is no longer {blob.Etag}");
        }
    }
}

/// <summary>Signing keys registered by the Packaging service in table <c>parties</c> (partition <c>owner</c>, column <c>PublicKeyPem</c>).</summary>
public sealed class TableSignerDirectory(TableServiceClient tables) : ISignerDirectory
{
    /// <summary>The table Packaging registers owners' keys in.</summary>
    public const string TableName = "parties";

    /// <inheritdoc />
    public async Task<SignerPublicKey?> FindAsync(string owner, CancellationToken cancellationToken)
    {
        try
        {
            var found = await tables.GetTableClient(TableName).GetEntityIfExistsAsync<TableEntity>("owner", owner, cancellationToken: cancellationToken).ConfigureAwait(false);
            return found.HasValue && found.Value!.GetString("PublicKeyPem") is { Length: > 0 } pem ? SignerPublicKey.FromPem(pem) : null;
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
    }
}

/// <summary>Fixed signing keys (tests, or keys pinned in configuration).</summary>
public sealed class StaticSignerDirectory(IReadOnlyDictionary<string, string> publicKeyPems) : ISignerDirectory
{
    /// <inheritdoc />
    public Task<SignerPublicKey?> FindAsync(string owner, CancellationToken cancellationToken) =>
        Task.FromResult(publicKeyPems.TryGetValue(owner, out var pem) ? SignerPublicKey.FromPem(pem) : null);
}

/// <summary>The KeyBroker through <see cref="KeyBrokerParty"/> (the clean room's party) and an attestation provider.</summary>
public sealed class KeyBrokerKeySource(KeyBrokerParty party, AttestationProvider attestation) : IKeySource
{
    /// <inheritdoc />
    public string PartyId => party.PartyId;

    /// <inheritdoc />
    public async Task<string> AttestAsync(string runId, RecipientPublicKey runtimeKey, CancellationToken cancellationToken)
    {
        var nonce = await party.Client.GetAttestationNonceAsync(new V1.GetAttestationNonceRequest { RunId = runId }, party.Credentials(), cancellationToken: cancellationToken);
        return await attestation(nonce.Nonce, runtimeKey, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public Task<ReleasedKey> ReleaseAsync(string keyId, ReleaseRun run, RecipientPrivateKey ephemeral, CancellationToken cancellationToken) =>
        party.ReleaseWithAttestationAsync(keyId, run, attestation, ephemeral, cancellationToken);

    /// <inheritdoc />
    public async Task<V1.BudgetStatus> SettleAsync(string runId, string contractId, V1.PrivacyParameters spent, CancellationToken cancellationToken) =>
        await party.Client.SettlePrivacySpendAsync(new V1.SettlePrivacySpendRequest { RunId = runId, ContractId = contractId, Spent = spent },
            party.Credentials(), cancellationToken: cancellationToken);

    /// <summary>A one-line reason for a broker refusal.</summary>
    public static string Describe(RpcException e)
    {
        ArgumentNullException.ThrowIfNull(e);
        return $"{e.StatusCode}: {e.Status.Detail}";
    }
}

/// <summary>Sealed outputs to Blob storage, each a new blob (If-None-Match: *).</summary>
public sealed class BlobOutputSink(BlobServiceClient blobs) : IOutputSink
{
    /// <inheritdoc />
    public async Task<V1.BlobRef> UploadAsync(string container, string name, ReadOnlyMemory<byte> sealedBytes, CancellationToken cancellationToken)
    {
        var containerClient = blobs.GetBlobContainerClient(container);
        await containerClient.CreateIfNotExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        var info = await containerClient.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(sealedBytes),
            new BlobUploadOptions { Conditions = new BlobRequestConditions { IfNoneMatch = ETag.All } }, cancellationToken).ConfigureAwait(false);
        return new V1.BlobRef { Container = container, Name = name, Etag = info.Value.ETag.ToString() };
    }

    /// <inheritdoc />
    public async Task DeleteAsync(V1.BlobRef blob, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(blob);
        await blobs.GetBlobContainerClient(blob.Container).GetBlobClient(blob.Name).DeleteIfExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
    }
}

/// <summary>Sealed checkpoints in Blob storage.</summary>
public sealed class BlobCheckpointStore(BlobServiceClient blobs) : ICheckpointStore
{
    /// <inheritdoc />
    public async Task PutAsync(string container, string name, ReadOnlyMemory<byte> sealedBytes, CancellationToken cancellationToken)
    {
        var containerClient = blobs.GetBlobContainerClient(container);
        await containerClient.CreateIfNotExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        await containerClient.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(sealedBytes), overwrite: true, cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async Task<byte[]?> GetAsync(string container, string name, CancellationToken cancellationToken)
    {
        try
        {
            var content = await blobs.GetBlobContainerClient(container).GetBlobClient(name).DownloadContentAsync(cancellationToken).ConfigureAwait(false);
            return content.Value.Content.ToArray();
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null;
        }
    }

    /// <inheritdoc />
    public async Task<IReadOnlyList<string>> ListAsync(string container, string prefix, CancellationToken cancellationToken)
    {
        var names = new List<string>();
        try
        {
            await foreach (var item in blobs.GetBlobContainerClient(container).GetBlobsAsync(BlobTraits.None, BlobStates.None, prefix, cancellationToken).ConfigureAwait(false))
            {
                names.Add(item.Name);
            }
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
        }

        return names;
    }

    /// <inheritdoc />
    public async Task DeleteAsync(string container, string name, CancellationToken cancellationToken)
    {
        try
        {
            await blobs.GetBlobContainerClient(container).GetBlobClient(name).DeleteIfExistsAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
        }
    }
}
