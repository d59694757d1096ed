using Azure;
using Azure.Data.Tables;
using MriSeg.Sealing;

namespace MriSeg.Packaging;

/// <summary>Why an owner's key does not match its registration, or it has none; becomes FAILED_PRECONDITION.</summary>
public sealed class PartyRegistrationException(string message) : Exception(message);

/// <summary>An owner's registered signing public key.</summary>
public sealed record RegisteredParty(string Owner, string PublicKeyPem, string Thumbprint, DateTimeOffset? RegisteredAt);

/// <summary>
/// The owners' public signing keys in Table storage, table <c>parties</c>: partition <c>owner</c>, row key the
/// canonical owner id, columns <c>PublicKeyPem</c> and <c>Thumbprint</c>. Registration is trust on first use:
/// the first Seal for an owner registers its key; later ones must use the same key (no silent rotation).
/// Verify reads it to know whose signature to expect.
/// </summary>
public sealed class PartyRegistry(TableServiceClient tables)
{
    public const string TableName = "parties";
    public const string OwnerPartition = "owner";

    private volatile bool _tableExists;

    /// <summary>The registered key of <paramref name="owner"/>, or null. The thumbprint is recomputed from the PEM.</summary>
    public async Task<RegisteredParty?> FindAsync(string owner, CancellationToken cancellationToken)
    {
        var table = tables.GetTableClient(TableName);
        NullableResponse<TableEntity> found;
        try
        {
            found = await table.GetEntityIfExistsAsync<TableEntity>(OwnerPartition, owner, cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        catch (RequestFailedException e) when (e.Status == 404)
        {
            return null; // no table yet: nobody registered
        }

        if (!found.HasValue || found.Value!.GetString("PublicKeyPem") is not { Length: > 0 } pem)
        {
            return null;
        }

        try
        {
            using var key = SignerPublicKey.FromPem(pem);
            return new RegisteredParty(owner, pem, key.Thumbprint, found.Value.Timestamp);
        }
        catch (SealedPackageException)
        {
            throw new PartyRegistrationException($"the registered key of owner '{owner}' in table {TableName} is not a P-256 public key PEM");
        }
    }

    /// <summary>Registers <paramref name="key"/> for <paramref name="owner"/> unless registered; refuses a different registered key.</summary>
    public async Task EnsureRegisteredAsync(string owner, SignerPublicKey key, CancellationToken cancellationToken)
    {
        var existing = await FindAsync(owner, cancellationToken).ConfigureAwait(false);
        if (existing is null)
        {
            var table = tables.GetTableClient(TableName);
            if (!_tableExists)
            {
                await table.CreateIfNotExistsAsync(cancellationToken).ConfigureAwait(false);
                _tableExists = true;
            }

            try
            {
                await table.AddEntityAsync(new TableEntity(OwnerPartition, owner)
                {
                    ["PublicKeyPem"] = key.ExportPem(),
                    ["Thumbprint"] = key.Thumbprint,
                }, cancellationToken).ConfigureAwait(false);
                return;
            }
            catch (RequestFailedException e) when (e.Status == 409)
            {
                existing = await FindAsync(owner, cancellationToken).ConfigureAwait(false);
            }
        }

        if (existing is not null && !string.Equals(existing.Thumbprint, key.Thumbprint, StringComparison.Ordinal))
        {
            throw new PartyRegistrationException(
                $"owner '{owner}' is registered with signing key {existing.Thumbprint[..16]}…, but the service's key for it is {key.Thumbprint[..16]}…: packages it sealed would not verify (rotate the registration first)");
        }
    }
}
