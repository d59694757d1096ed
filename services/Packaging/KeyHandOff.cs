using MriSeg.ServiceDefaults;
using System.Collections.Concurrent;
using System.Text;
using Grpc.Core;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Packaging;

/// <summary>
/// HandOffKey: forwards a data key, already wrapped to the KeyBroker's public key, to the broker's ImportKey, authenticated
/// as the owner (a party token per call, signed with the owner's signing key from the key folder). The owner is registered
/// with the broker on its first hand-off (role from the key's purpose; trust on first use where the broker allows it,
/// else the operator's admin token <c>Packaging:KeyBrokerAdminToken</c>). The service never sees the key in the clear.
/// </summary>
public sealed class KeyHandOff(V1.KeyBroker.KeyBrokerClient broker, OwnerKeyStore keys, BrokerRegistrations registered, PackagingSettings settings, ILogger<KeyHandOff> logger)
{

    public async Task<V1.HandOffKeyResponse> HandOffAsync(V1.HandOffKeyRequest request, CancellationToken cancellationToken)
    {
        // 1. The request, as far as it can be checked here (the broker checks policy and contract terms).
        var ownerText = !string.IsNullOrEmpty(request.Owner) ? request.Owner : request.Contract?.Owner ?? "";
        if (string.IsNullOrEmpty(ownerText))
        {
            throw GrpcErrors.InvalidArgument("owner is required (or contract.owner): the owner whose signing key authenticates the import");
        }

        var owner = OwnerIds.Canonicalize(ownerText, out var ownerError) ?? throw GrpcErrors.InvalidArgument(ownerError);
        if (!string.IsNullOrEmpty(request.Owner) && !string.IsNullOrEmpty(request.Contract?.Owner)
            && OwnerIds.Canonicalize(request.Contract.Owner, out _) != owner)
        {
            throw GrpcErrors.InvalidArgument($"owner '{owner}' and contract.owner '{OwnerIds.Printable(request.Contract.Owner)}' differ");
        }

        if (!Ids.IsKeyId(request.KeyId))
        {
            throw GrpcErrors.InvalidArgument($"key_id '{OwnerIds.Printable(request.KeyId)}' is not a data key id (32 lower-case hex digits)");
        }

        var role = PartyRoles.OwnerOf(request.Purpose)
            ?? throw GrpcErrors.InvalidArgument("purpose is required: KEY_PURPOSE_DATASET, KEY_PURPOSE_MODEL or KEY_PURPOSE_OUTPUT");
        if (request.WrappedDataKey.IsEmpty)
        {
            throw GrpcErrors.InvalidArgument("wrapped_data_key is required: the data key wrapped to the KeyBroker's public key (Seal with recipient_public_key_pem = KeyBroker.GetBrokerKey)");
        }

        WrappedKey wrapped;
        try
        {
            wrapped = WrappedKey.FromJson(Encoding.UTF8.GetString(request.WrappedDataKey.Span));
        }
        catch (Exception e) when (e is SealedPackageException or ArgumentException or DecoderFallbackException)
        {
            throw GrpcErrors.InvalidArgument("wrapped_data_key is not a wrapped-key document: " + (e is SealedPackageException ? e.Message : "not UTF-8 JSON"));
        }

        if (wrapped.KeyId != request.KeyId)
        {
            throw GrpcErrors.InvalidArgument($"wrapped_data_key holds key {wrapped.KeyId}, not key_id {request.KeyId}");
        }

        if (string.IsNullOrWhiteSpace(request.ReleasePolicyJson))
        {
            throw GrpcErrors.InvalidArgument("release_policy_json is required (the Azure Key Vault secure-key-release grammar)");
        }

        if (request.Purpose == V1.KeyPurpose.Dataset && request.Contract is null)
        {
            throw GrpcErrors.InvalidArgument("contract is required for a dataset key");
        }

        // 2. The owner's identity towards the broker: its signing key, registered.
        var signer = await keys.GetAsync(owner, cancellationToken);
        var party = new KeyBrokerParty(broker, owner, signer);
        await EnsureRegisteredAsync(party, signer.Thumbprint, role, cancellationToken);

        // 3. The import.
        V1.ImportKeyResponse imported;
        try
        {
            imported = await party.ImportWrappedKeyAsync(request.KeyId, request.Purpose, request.WrappedDataKey, request.WrapAlgorithm, request.ReleasePolicyJson,
                request.Contract, Deadline(), cancellationToken);
        }
        catch (RpcException e)
        {
            throw FromBroker(e, $"importing key {request.KeyId} for owner '{owner}'");
        }

        logger.LogInformation("Handed key {KeyId} ({Purpose}) of owner {Owner} to the KeyBroker, version {Version}, contract {Contract}",
            imported.KeyId, request.Purpose, owner, imported.Version, request.Contract?.ContractId ?? "(none)");
        return new V1.HandOffKeyResponse { KeyId = imported.KeyId, ContractId = request.Contract?.ContractId ?? "" };
    }

    /// <summary>The KeyBroker's public key, fetched as <paramref name="owner"/> (registered first with the role of <paramref name="purpose"/>'s owner).</summary>
    public async Task<RecipientPublicKey> BrokerRecipientAsync(string owner, V1.KeyPurpose purpose, CancellationToken cancellationToken)
    {
        var role = PartyRoles.OwnerOf(purpose) ?? throw GrpcErrors.InvalidArgument($"no key purpose for this content type ({purpose})");
        var signer = await keys.GetAsync(owner, cancellationToken);
        var party = new KeyBrokerParty(broker, owner, signer);
        await EnsureRegisteredAsync(party, signer.Thumbprint, role, cancellationToken);
        V1.BrokerKey brokerKey;
        try
        {
            brokerKey = await broker.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), party.Credentials(), Deadline(), cancellationToken);
        }
        catch (RpcException e)
        {
            throw FromBroker(e, $"fetching the KeyBroker's public key as '{owner}'");
        }

        try
        {
            return RecipientPublicKey.FromPem(brokerKey.PublicKeyPem);
        }
        catch (SealedPackageException e)
        {
            throw GrpcErrors.FailedPrecondition($"the KeyBroker's public key is unusable: {e.Message}");
        }
    }

    private async Task EnsureRegisteredAsync(KeyBrokerParty party, string thumbprint, PartyRole role, CancellationToken cancellationToken)
    {
        var cacheKey = party.PartyId + "\n" + thumbprint + "\n" + role;
        if (registered.Contains(cacheKey))
        {
            return;
        }

        try
        {
            // The admin token goes only with a first registration: never to replace a key the owner registered itself.
            await party.EnsureRegisteredAsync(role, settings.KeyBrokerAdminToken, cancellationToken, Deadline());
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.PermissionDenied && e.Status.Detail.Contains(KeyBrokerParty.FirstRegistrationNeedsAdmin, StringComparison.Ordinal))
        {
            throw GrpcErrors.FailedPrecondition(settings.KeyBrokerAdminToken is null
                ? $"owner '{party.PartyId}' is not registered with the KeyBroker, which needs the operator's admin token for a first registration: set Packaging:KeyBrokerAdminToken"
                : $"owner '{party.PartyId}' is not registered with the KeyBroker, and it refused Packaging:KeyBrokerAdminToken: {OneLine(e.Status.Detail)}");
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.PermissionDenied or StatusCode.FailedPrecondition or StatusCode.Unauthenticated)
        {
            // Another registered key, another role, a token the broker does not accept: the owner's registration is in the way.
            throw GrpcErrors.FailedPrecondition($"registering owner '{party.PartyId}' (key {thumbprint[..16]}…) with the KeyBroker as {role.ShortName()}: {OneLine(e.Status.Detail)}");
        }
        catch (RpcException e)
        {
            throw FromBroker(e, $"registering owner '{party.PartyId}'");
        }

        registered.Add(cacheKey);
    }

    /// <summary>
    /// A broker's refusal as this service's status. The caller's own mistakes keep their code (INVALID_ARGUMENT,
    /// ALREADY_EXISTS, NOT_FOUND, PERMISSION_DENIED, FAILED_PRECONDITION); the broker not accepting this service's
    /// credentials for the owner is FAILED_PRECONDITION (the caller's credentials are not involved); the broker
    /// unreachable or out of time is UNAVAILABLE.
    /// </summary>
    private RpcException FromBroker(RpcException e, string what)
    {
        var detail = OneLine(e.Status.Detail);
        switch (e.StatusCode)
        {
            case StatusCode.InvalidArgument or StatusCode.AlreadyExists or StatusCode.NotFound or StatusCode.PermissionDenied or StatusCode.FailedPrecondition:
                return new RpcException(new Status(e.StatusCode, $"{what}: the KeyBroker says: {detail}"));
            case StatusCode.Unauthenticated:
                return GrpcErrors.FailedPrecondition($"{what}: the KeyBroker does not accept the owner's credentials: {detail}");
            case StatusCode.Unavailable or StatusCode.DeadlineExceeded:
                logger.LogWarning("{What}: the KeyBroker is unreachable ({Status}): {Detail}", what, e.StatusCode, detail);
                return new RpcException(new Status(StatusCode.Unavailable, $"{what}: the KeyBroker cannot be reached ({e.StatusCode}: {detail})"));
            case StatusCode.Cancelled:
                return new RpcException(new Status(StatusCode.Cancelled, $"{what}: cancelled"));
            default:
                logger.LogError("{What}: the KeyBroker answered {Status}: {Detail}", what, e.StatusCode, detail);
                return new RpcException(new Status(StatusCode.Internal, $"{what}: the KeyBroker answered {e.StatusCode}: {detail}"));
        }
    }

    private DateTime Deadline() => DateTime.UtcNow + settings.KeyBrokerTimeout;

    private static string OneLine(string text) => text.ReplaceLineEndings(" ");
}

/// <summary>The owner keys this process registered with the KeyBroker, or found registered: one RegisterParty per owner key and role.</summary>
public sealed class BrokerRegistrations
{
    private readonly ConcurrentDictionary<string, bool> _done = new(StringComparer.Ordinal);

    public bool Contains(string key) => _done.ContainsKey(key);

    public void Add(string key) => _done[key] = true;
}
