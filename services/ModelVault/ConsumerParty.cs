using MriSeg.ServiceDefaults;
using Azure.Storage.Blobs;
using MriSeg.CleanRoom.Consumer;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.ModelVault;

/// <summary>
/// The vault's work as the consumer at the KeyBroker. PullModel: the request checked against the vault's policy, the
/// consumer's signing key loaded, then <see cref="ModelPuller"/> (download, verify signatures and attestation, release the
/// consumer's own output key at the KeyBroker, decrypt in memory, register). CreateOutputKey: a fresh data key wrapped to
/// the broker and imported as the consumer's output key. The key file is read on each call, so a key provisioned later is
/// used without a restart.
/// </summary>
public sealed class ConsumerParty(
    ModelVaultSettings settings, BlobServiceClient blobs, ModelRegistry registry, V1.KeyBroker.KeyBrokerClient broker, IIssuerKeySource issuerKeys,
    ILogger<ConsumerParty> logger)
{
    /// <summary>Pulls and registers; <paramref name="progress"/> gets the library's one-line messages.</summary>
    /// <exception cref="Grpc.Core.RpcException">The request or the vault's settings cannot work.</exception>
    /// <exception cref="ModelPullException">A check failed; nothing was registered.</exception>
    public async Task<V1.ModelRecord> PullAsync(V1.PullModelRequest request, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!Ids.IsName(request.RunId))
        {
            throw GrpcErrors.InvalidArgument($"run_id '{Ids.Printable(request.RunId)}' is not a run id ({Ids.NameRule})");
        }

        var policy = Policy(request.ExpectedCodeMeasurement);
        if (settings.Authorities.Count == 0)
        {
            throw GrpcErrors.FailedPrecondition(
                "the vault trusts no attestation authority, so no run's outputs can be verified: set ModelVault:Attestation:Authorities (or ModelVault:DevelopmentAuthority:Enabled in local runs)");
        }

        using var key = LoadKey();
        var party = new KeyBrokerParty(broker, settings.Consumer, key, settings.Audience);
        var verifier = new ProvenanceVerifier(new AttestationOptions { Audience = settings.Audience, Authorities = settings.Authorities }, issuerKeys, policy);
        var puller = new ModelPuller(blobs, ReleaseAsync, verifier, registry);
        var record = await puller.PullAsync(new PullRequest
        {
            RunId = request.RunId,
            Consumer = settings.Consumer,
            Outputs = [.. request.Outputs],
            ExpectedMeasurement = string.IsNullOrEmpty(request.ExpectedCodeMeasurement) ? null : request.ExpectedCodeMeasurement.ToLowerInvariant(),
        }, progress, cancellationToken).ConfigureAwait(false);
        logger.LogInformation("Registered model {ModelId} of run {RunId} for {Consumer}: code measurement {Measurement}, ε {Epsilon}, δ {Delta}, {Datasets} datasets",
            record.ModelId, record.RunId, settings.Consumer, record.CodeMeasurement, record.Privacy?.Epsilon, record.Privacy?.Delta, record.Datasets.Count);
        return record;

        async Task<DataKey> ReleaseAsync(string keyId, CancellationToken ct)
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(settings.KeyBrokerTimeout);
            return await party.ReleaseOwnOutputKeyAsync(keyId, timeout.Token).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// A fresh 256-bit data key, wrapped to the KeyBroker's public key and imported (purpose OUTPUT) as the consumer with
    /// <paramref name="releasePolicyJson"/>; the consumer is registered first where it is not (trust on first use, or
    /// <see cref="ModelVaultSettings.KeyBrokerAdminToken"/>). The key is zeroed here once imported: only the broker holds it.
    /// </summary>
    public async Task<V1.CreateOutputKeyResponse> CreateOutputKeyAsync(V1.CreateOutputKeyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (string.IsNullOrWhiteSpace(request.ReleasePolicyJson))
        {
            throw GrpcErrors.InvalidArgument("release_policy_json is required (the Azure Key Vault secure-key-release policy naming the clean room that may use the key)");
        }

        using var key = LoadKey();
        var party = new KeyBrokerParty(broker, settings.Consumer, key, settings.Audience);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(settings.KeyBrokerTimeout);
        try
        {
            await party.EnsureRegisteredAsync(PartyRole.DataConsumer, settings.KeyBrokerAdminToken, timeout.Token).ConfigureAwait(false);
            using var dataKey = DataKey.Generate();
            var imported = await party.ImportKeyAsync(dataKey, V1.KeyPurpose.Output, request.ReleasePolicyJson, null, cancellationToken: timeout.Token).ConfigureAwait(false);
            logger.LogInformation("Imported output key {KeyId} (version {Version}) of consumer {Consumer} at the KeyBroker", imported.KeyId, imported.Version, settings.Consumer);
            return new V1.CreateOutputKeyResponse { KeyId = imported.KeyId };
        }
        catch (Grpc.Core.RpcException e)
        {
            throw FromBroker(e, $"importing an output key for consumer '{settings.Consumer}'", cancellationToken);
        }
    }

    /// <summary>
    /// A broker's refusal as this service's status: the caller's mistakes (a policy the broker refuses) keep their code; the
    /// broker not accepting the vault's own credentials is FAILED_PRECONDITION; an unreachable or silent broker UNAVAILABLE.
    /// </summary>
    private static Grpc.Core.RpcException FromBroker(Grpc.Core.RpcException e, string what, CancellationToken cancellationToken)
    {
        var detail = Errors.OneLine(e.Status.Detail);
        return e.StatusCode switch
        {
            Grpc.Core.StatusCode.InvalidArgument or Grpc.Core.StatusCode.AlreadyExists or Grpc.Core.StatusCode.NotFound =>
                new Grpc.Core.RpcException(new Grpc.Core.Status(e.StatusCode, $"{what}: the KeyBroker says: {detail}")),
            Grpc.Core.StatusCode.Unauthenticated or Grpc.Core.StatusCode.PermissionDenied or Grpc.Core.StatusCode.FailedPrecondition =>
                GrpcErrors.FailedPrecondition($"{what}: the KeyBroker does not accept the vault's credentials for the consumer: {detail}"),
            Grpc.Core.StatusCode.Cancelled when cancellationToken.IsCancellationRequested => new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Cancelled, $"{what}: cancelled")),
            Grpc.Core.StatusCode.Unavailable or Grpc.Core.StatusCode.DeadlineExceeded or Grpc.Core.StatusCode.Cancelled =>
                GrpcErrors.Unavailable($"{what}: the KeyBroker cannot be reached or did not answer in time ({e.StatusCode}: {detail})"),
            _ => new Grpc.Core.RpcException(new Grpc.Core.Status(Grpc.Core.StatusCode.Internal, $"{what}: the KeyBroker answered {e.StatusCode}: {detail}")),
        };
    }

    /// <summary>
    /// The measurements a pull accepts: the configured allow-list, narrowed to the request's measurement when it names one
    /// (which must then be in the list); with no list, the request's measurement alone. Neither: INVALID_ARGUMENT.
    /// </summary>
    internal ProvenancePolicy Policy(string? expected)
    {
        if (string.IsNullOrEmpty(expected))
        {
            return settings.AllowedMeasurements.Count > 0
                ? new ProvenancePolicy { AllowedMeasurements = settings.AllowedMeasurements }
                : throw GrpcErrors.InvalidArgument(
                    "no acceptable trainer code measurement: name the one you expect in expected_code_measurement (mriseg model pull --expect-measurement HEX), "
                    + "or configure ModelVault:AllowedMeasurements; the vault accepts no run whose code it was not told to trust");
        }

        if (!ModelVaultSettings.IsMeasurement(expected))
        {
            throw GrpcErrors.InvalidArgument($"expected_code_measurement '{Ids.Printable(expected)}' is not a code measurement (16 to 256 hex digits)");
        }

        var normalised = expected.ToLowerInvariant();
        if (settings.AllowedMeasurements.Count > 0 && !settings.AllowedMeasurements.Contains(normalised, StringComparer.Ordinal))
        {
            throw GrpcErrors.InvalidArgument(
                $"expected_code_measurement {normalised[..16]}… is not in ModelVault:AllowedMeasurements: a request may narrow the vault's allow-list, not widen it");
        }

        return new ProvenancePolicy
        {
            AllowedMeasurements = settings.AllowedMeasurements.Count > 0 ? settings.AllowedMeasurements : [normalised],
        };
    }

    private SigningKey LoadKey()
    {
        var path = settings.PartyKeyPath ?? throw GrpcErrors.FailedPrecondition(
            $"the vault has no signing key for consumer '{settings.Consumer}': set ModelVault:PartyKeyPath (or ModelVault:KeysDirectory holding {settings.Consumer}.key), "
            + "the key the consumer registered with the KeyBroker");
        if (!File.Exists(path))
        {
            logger.LogWarning("No signing key for consumer {Consumer}: expected {Path}", settings.Consumer, path);
            throw GrpcErrors.FailedPrecondition(
                $"the vault has no signing key for consumer '{settings.Consumer}': {Path.GetFileName(path)} is missing from its key folder "
                + "(provision it: `mriseg keygen --out <folder>/" + settings.Consumer + "`; in Development Packaging makes it at the consumer's first HandOffKey)");
        }

        try
        {
            return SigningKey.Load(path);
        }
        catch (Exception e) when (e is SealedPackageException or IOException or UnauthorizedAccessException or FormatException or ArgumentException
            or System.Security.Cryptography.CryptographicException)
        {
            logger.LogError("The signing key of consumer {Consumer} at {Path} cannot be used: {Reason}", settings.Consumer, path, e.Message);
            throw GrpcErrors.FailedPrecondition($"the signing key of consumer '{settings.Consumer}' cannot be used (the service log says why)");
        }
    }
}
