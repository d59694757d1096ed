using System.Text;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Audit;
using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Policy;
using MriSeg.KeyRelease.Storage;
using MriSeg.Privacy;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease;

/// <summary>What a RegisterParty call presents besides its request.</summary>
/// <param name="Authorization">The "authorization" header: a party token signed by the key being registered.</param>
/// <param name="PreviousKeyToken">A party token signed by the currently registered key (rotation).</param>
/// <param name="AdminToken">The operator's admin token, if given.</param>
public sealed record RegistrationCredentials(string? Authorization, string? PreviousKeyToken, string? AdminToken);

/// <summary>A key's audit chain as read, with its verification.</summary>
/// <param name="Records">The records, oldest first (all of them; the caller filters by sequence).</param>
/// <param name="Verification">Whether the chain is intact and where it breaks.</param>
public sealed record AuditTrail(IReadOnlyList<V1.AuditRecord> Records, AuditVerification Verification);

/// <summary>
/// The KeyBroker: every RPC of keybroker.proto as a method taking the authenticated caller, with the authorisation rules,
/// checks and audit. The gRPC service is a thin host over it (authentication header in, status codes out).
/// <list type="bullet">
/// <item>Dataset keys: imported by data providers (TDP); released only to an attested clean room (CCR) whose token
/// satisfies the key's release policy, within the contract (expiry, consumer, pipeline, ε per run) and the budget.</item>
/// <item>Model keys: imported by the consumer (TDC); released only to an attested clean room.</item>
/// <item>Output keys: imported by the consumer; released to an attested clean room (to seal outputs) or to the owning
/// consumer without attestation.</item>
/// <item>Only a key's owner updates, revokes, reads the status and reads the audit trail of it.</item>
/// </list>
/// </summary>
public sealed class KeyBrokerEngine
{
    private readonly KeyBrokerOptions _options;
    private readonly BrokerKeyMaterial _keys;
    private readonly AttestationVerifier _verifier;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly PartyRegistry _parties;
    private readonly PartyTokenValidator _tokens;
    private readonly NonceStore _nonces;
    private readonly KeyRepository _stored;
    private readonly ContractLedger _ledger;
    private readonly AuditLog _audit;

    /// <summary>Creates the engine over a store (wrapped in an <see cref="IntegrityRecordStore"/>) and the broker's keys.</summary>
    public KeyBrokerEngine(KeyBrokerOptions options, IRecordStore store, BrokerKeyMaterial keys, AttestationVerifier verifier,
        TimeProvider? time = null, ILogger<KeyBrokerEngine>? logger = null)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        ArgumentNullException.ThrowIfNull(store);
        _keys = keys ?? throw new ArgumentNullException(nameof(keys));

        // Every record is authenticated under a key derived from the KEK: storage alone cannot forge state.
        var macKey = keys.DeriveRecordMacKey();
        store = new IntegrityRecordStore(store, macKey);
        System.Security.Cryptography.CryptographicOperations.ZeroMemory(macKey);
        _verifier = verifier ?? throw new ArgumentNullException(nameof(verifier));
        _time = time ?? TimeProvider.System;
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _parties = new PartyRegistry(store);
        _tokens = new PartyTokenValidator(_parties, new PartyTokenOptions
        {
            Audience = options.Audience,
            ClockSkew = options.ClockSkew,
            MaxLifetime = options.MaxPartyTokenLifetime,
        }, _time);
        _nonces = new NonceStore(store, _time, options.NonceLifetime);
        _stored = new KeyRepository(store);
        _ledger = new ContractLedger(store, _time);
        _audit = new AuditLog(store, _time);
    }

    /// <summary>The audit log (read by tests and tools).</summary>
    public AuditLog AuditLog => _audit;

    /// <summary>The contract ledger.</summary>
    public ContractLedger Ledger => _ledger;

    /// <summary>Authenticates a caller from its "authorization" header (<see cref="KeyBrokerError.Unauthenticated"/> otherwise).</summary>
    public Task<PartyPrincipal> AuthenticateAsync(string? authorization, CancellationToken cancellationToken) =>
        _tokens.AuthenticateAsync(authorization, cancellationToken);

    /// <summary>GetBrokerKey: the public key to wrap keys to for import (any registered party).</summary>
    public V1.BrokerKey GetBrokerKey(PartyPrincipal caller)
    {
        ArgumentNullException.ThrowIfNull(caller);
        return new V1.BrokerKey
        {
            KeyId = _keys.WrapKeyId,
            PublicKeyPem = _keys.WrapPublicKey.ExportPem(),
            Algorithms = { WrappedKey.AlgorithmName(_keys.WrapPublicKey.Algorithm) },
        };
    }

    /// <summary>
    /// RegisterParty. The bearer token must be signed by the key being registered (proof of possession) with the party
    /// id as subject. A first registration needs <see cref="RegistrationMode.TrustOnFirstUse"/> or the admin token. The
    /// same key again is a no-op. Another key replaces the registered one only with a token signed by the registered key
    /// (<see cref="PartyTokens.PreviousKeyTokenHeader"/>) or the admin token (recovery). A role never changes.
    /// </summary>
    public async Task<V1.RegisterPartyResponse> RegisterPartyAsync(V1.RegisterPartyRequest request, RegistrationCredentials credentials, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(credentials);
        if (!Ids.IsPartyId(request.PartyId))
        {
            throw KeyBrokerException.InvalidArgument($"party_id '{Ids.Printable(request.PartyId)}' is not valid: {Ids.PartyIdRule}");
        }

        var role = PartyRoles.FromContract(request.Role)
            ?? throw KeyBrokerException.InvalidArgument("role is required: PARTY_DATA_PROVIDER, PARTY_DATA_CONSUMER or PARTY_CLEAN_ROOM");
        SignerPublicKey key;
        try
        {
            key = SignerPublicKey.FromPem(request.PublicKeyPem ?? "");
        }
        catch (SealedPackageException e)
        {
            throw KeyBrokerException.InvalidArgument($"public_key_pem: {e.Message} (an ECDSA P-256 \"PUBLIC KEY\" PEM)");
        }

        using (key)
        {
            var bearer = PartyTokens.FromAuthorization(credentials.Authorization)
                ?? throw KeyBrokerException.Unauthenticated("registration needs \"authorization: Bearer <party token>\" signed by the key being registered");
            if (PartyTokenValidator.ReadSubject(bearer) != request.PartyId)
            {
                throw KeyBrokerException.Unauthenticated("the bearer token's subject is not the party being registered");
            }

            await _tokens.ValidateAsync(bearer, request.PartyId, key.ExportPem(), key.Thumbprint).ConfigureAwait(false);
            var admin = Secrets.Equal(credentials.AdminToken, _options.AdminToken);
            for (var attempt = 0; attempt < 2; attempt++)
            {
                var existing = await _parties.FindAsync(request.PartyId, cancellationToken).ConfigureAwait(false);
                if (existing is null)
                {
                    if (_options.Registration != RegistrationMode.TrustOnFirstUse && !admin)
                    {
                        throw KeyBrokerException.PermissionDenied($"{Client.KeyBrokerParty.FirstRegistrationNeedsAdmin} ({PartyTokens.AdminTokenHeader})");
                    }

                    try
                    {
                        await _parties.AddAsync(PartyRegistry.Create(request.PartyId, role, key, _time.GetUtcNow()), cancellationToken).ConfigureAwait(false);
                        _logger.LogInformation("Registered party {Party} as {Role} with key {Thumbprint} ({How})", request.PartyId, role.ShortName(), key.Thumbprint,
                            admin ? "admin token" : "trust on first use");
                        return new V1.RegisterPartyResponse { PartyId = request.PartyId, KeyThumbprint = key.Thumbprint };
                    }
                    catch (RecordConflictException)
                    {
                        continue; // registered meanwhile: judge against that registration
                    }
                }

                if (existing.Role != role)
                {
                    throw KeyBrokerException.FailedPrecondition($"party '{request.PartyId}' is registered as {existing.Role.ShortName()}: a party's role never changes");
                }

                if (existing.Thumbprint == key.Thumbprint)
                {
                    return new V1.RegisterPartyResponse { PartyId = request.PartyId, KeyThumbprint = key.Thumbprint };
                }

                var previous = credentials.PreviousKeyToken;
                if (!admin)
                {
                    if (string.IsNullOrEmpty(previous))
                    {
                        throw KeyBrokerException.PermissionDenied(
                            $"party '{request.PartyId}' is registered with another key ({existing.Thumbprint[..16]}…): rotating needs a party token signed by the registered key ({PartyTokens.PreviousKeyTokenHeader})");
                    }

                    if (PartyTokenValidator.ReadSubject(previous) != request.PartyId)
                    {
                        throw KeyBrokerException.PermissionDenied("the previous-key token's subject is not the party being registered");
                    }

                    try
                    {
                        await _tokens.ValidateAsync(previous, request.PartyId, existing.PublicKeyPem, existing.Thumbprint).ConfigureAwait(false);
                    }
                    catch (KeyBrokerException e) when (e.Error == KeyBrokerError.Unauthenticated)
                    {
                        throw KeyBrokerException.PermissionDenied("rotation refused: " + e.Message);
                    }
                }

                try
                {
                    await _parties.ReplaceAsync(PartyRegistry.Create(request.PartyId, role, key, _time.GetUtcNow()) with { ETag = existing.ETag }, cancellationToken).ConfigureAwait(false);
                }
                catch (RecordConflictException)
                {
                    throw new KeyBrokerException(KeyBrokerError.Unavailable, $"party '{request.PartyId}' changed while rotating its key; retry");
                }

                _logger.LogWarning("Rotated the key of party {Party} from {Old} to {New} ({How})", request.PartyId, existing.Thumbprint, key.Thumbprint,
                    admin ? "admin token" : "signed by the previous key");
                return new V1.RegisterPartyResponse { PartyId = request.PartyId, KeyThumbprint = key.Thumbprint };
            }

            throw new KeyBrokerException(KeyBrokerError.Unavailable, $"party '{request.PartyId}' changed while registering; retry");
        }
    }

    /// <summary>GetAttestationNonce: a fresh single-use nonce for a clean room's run (CCR only).</summary>
    public async Task<V1.AttestationNonce> GetAttestationNonceAsync(PartyPrincipal caller, V1.GetAttestationNonceRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        if (caller.Role != PartyRole.CleanRoom)
        {
            throw KeyBrokerException.PermissionDenied($"{caller}: only a clean room (CCR) asks for attestation nonces");
        }

        if (!Ids.IsName(request.RunId))
        {
            throw KeyBrokerException.InvalidArgument($"run_id '{Ids.Printable(request.RunId)}' is not valid: {Ids.NameRule}");
        }

        var nonce = await _nonces.IssueAsync(caller.PartyId, request.RunId, cancellationToken).ConfigureAwait(false);
        return new V1.AttestationNonce { Nonce = nonce.Nonce, Expires = Timestamp.FromDateTimeOffset(nonce.Expires) };
    }

    /// <summary>ImportKey: a dataset key by a TDP, a model or output key by the TDC, wrapped to the broker's key.</summary>
    public async Task<V1.ImportKeyResponse> ImportKeyAsync(PartyPrincipal caller, V1.ImportKeyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        if (!Ids.IsKeyId(request.KeyId))
        {
            throw KeyBrokerException.InvalidArgument($"key_id '{Ids.Printable(request.KeyId)}' is not a data key id (32 lower-case hex digits)");
        }

        var purpose = request.Purpose;
        var requiredRole = purpose switch
        {
            V1.KeyPurpose.Dataset => PartyRole.DataProvider,
            V1.KeyPurpose.Model or V1.KeyPurpose.Output => PartyRole.DataConsumer,
            _ => throw KeyBrokerException.InvalidArgument("purpose is required: KEY_PURPOSE_DATASET, KEY_PURPOSE_MODEL or KEY_PURPOSE_OUTPUT"),
        };
        if (caller.Role != requiredRole)
        {
            throw KeyBrokerException.PermissionDenied($"{caller}: {Purpose(purpose)} keys are imported by {(requiredRole == PartyRole.DataProvider ? "data providers (TDP)" : "the consumer (TDC)")}");
        }

        var policy = ParsePolicy(request.ReleasePolicyJson);
        var terms = ParseContract(request.Contract, caller, purpose);
        using var key = UnwrapImport(request.KeyId, request.WrappedKey, request.WrapAlgorithm);

        var now = _time.GetUtcNow();
        if (await _stored.GetAsync(request.KeyId, cancellationToken).ConfigureAwait(false) is not null)
        {
            throw new KeyBrokerException(KeyBrokerError.AlreadyExists, $"key {request.KeyId} is already imported (change its policy with UpdateKeyPolicy)");
        }

        if (terms is not null)
        {
            await _ledger.AttachKeyAsync(terms, request.KeyId, cancellationToken).ConfigureAwait(false);
        }

        var stored = new StoredKey(request.KeyId, purpose, caller.PartyId, 1, false, null, now, now, policy.Json, terms?.ContractId, null, _keys.KekId);
        stored = stored with { Material = _keys.EncryptAtRest(key, stored.Binding) };
        try
        {
            await _stored.InsertAsync(stored, cancellationToken).ConfigureAwait(false);
        }
        catch (RecordConflictException)
        {
            throw new KeyBrokerException(KeyBrokerError.AlreadyExists, $"key {request.KeyId} is already imported (change its policy with UpdateKeyPolicy)");
        }

        await _audit.AppendAsync(request.KeyId, caller, "import", true,
            $"imported {Purpose(purpose)} key, version 1{(terms is null ? "" : $", contract '{terms.ContractId}'")}, policy authorities {string.Join(", ", policy.AuthorityNames)}",
            cancellationToken).ConfigureAwait(false);
        _logger.LogInformation("Imported {Purpose} key {KeyId} for {Owner}", Purpose(purpose), request.KeyId, caller.PartyId);
        return new V1.ImportKeyResponse { KeyId = request.KeyId, Version = 1 };
    }

    /// <summary>UpdateKeyPolicy: the owner replaces the release policy and/or the contract terms (version + 1).</summary>
    public async Task<V1.KeyStatus> UpdateKeyPolicyAsync(PartyPrincipal caller, V1.UpdateKeyPolicyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        var stored = await OwnedKeyAsync(caller, request.KeyId, "update", cancellationToken).ConfigureAwait(false);
        if (stored.Revoked)
        {
            throw await DenyAsync(stored, caller, "update", KeyBrokerException.FailedPrecondition($"key {stored.KeyId} is revoked"), cancellationToken).ConfigureAwait(false);
        }

        if (string.IsNullOrEmpty(request.ReleasePolicyJson) && request.Contract is null)
        {
            throw KeyBrokerException.InvalidArgument("nothing to update: give release_policy_json and/or contract");
        }

        var policy = string.IsNullOrEmpty(request.ReleasePolicyJson) ? null : ParsePolicy(request.ReleasePolicyJson);
        ContractTerms? terms = null;
        if (request.Contract is not null)
        {
            terms = ParseContract(request.Contract, caller, stored.Purpose);
            if (stored.ContractId is not null && terms!.ContractId != stored.ContractId)
            {
                throw KeyBrokerException.FailedPrecondition($"key {stored.KeyId} serves contract '{stored.ContractId}': its contract id never changes (import the key under a new contract instead)");
            }
        }

        using var key = await _keys.DecryptAtRestAsync(stored.Material!, stored.Binding, stored.KekId, cancellationToken).ConfigureAwait(false);
        if (terms is not null)
        {
            await _ledger.ReplaceTermsAsync(terms, stored.KeyId, cancellationToken).ConfigureAwait(false);
        }

        var updated = stored with
        {
            Version = stored.Version + 1,
            Updated = _time.GetUtcNow(),
            PolicyJson = policy?.Json ?? stored.PolicyJson,
            ContractId = terms?.ContractId ?? stored.ContractId,
        };
        updated = updated with { Material = _keys.EncryptAtRest(key, updated.Binding), KekId = _keys.KekId }; // re-wrapped under the current KEK version
        await ReplaceKeyAsync(updated, cancellationToken).ConfigureAwait(false);
        await _audit.AppendAsync(stored.KeyId, caller, "update", true,
            $"version {updated.Version}:{(policy is null ? "" : " release policy replaced")}{(terms is null ? "" : $" contract '{terms.ContractId}' terms replaced")}",
            cancellationToken).ConfigureAwait(false);
        return await StatusAsync(updated, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>RevokeKey: the owner revokes the key; its material is erased and nothing is released again.</summary>
    public async Task<V1.KeyStatus> RevokeKeyAsync(PartyPrincipal caller, V1.RevokeKeyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        var stored = await OwnedKeyAsync(caller, request.KeyId, "revoke", cancellationToken).ConfigureAwait(false);
        if (stored.Revoked)
        {
            return await StatusAsync(stored, cancellationToken).ConfigureAwait(false);
        }

        var reason = string.IsNullOrWhiteSpace(request.Reason) ? "revoked by its owner" : Ids.Printable(request.Reason);
        var revoked = stored with { Revoked = true, RevocationReason = reason, Material = null, Updated = _time.GetUtcNow() };
        await ReplaceKeyAsync(revoked, cancellationToken).ConfigureAwait(false);
        await _audit.AppendAsync(stored.KeyId, caller, "revoke", true, "revoked: " + reason, cancellationToken).ConfigureAwait(false);
        _logger.LogInformation("Key {KeyId} revoked by {Owner}", stored.KeyId, caller.PartyId);
        return await StatusAsync(revoked, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>GetKeyStatus: the owner's view of the key.</summary>
    public async Task<V1.KeyStatus> GetKeyStatusAsync(PartyPrincipal caller, V1.GetKeyStatusRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        var stored = await OwnedKeyAsync(caller, request.KeyId, "status", cancellationToken, audit: false).ConfigureAwait(false);
        return await StatusAsync(stored, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// ReleaseKey. To a clean room (CCR): attestation token (signature, issuer, audience, lifetime, nonce, bound key),
    /// single-use nonce, release policy, contract and budget, then the key wrapped to the requester's public key. To the
    /// owner of an output key (TDC): without attestation. Every decision is audited.
    /// </summary>
    public async Task<V1.ReleaseKeyResponse> ReleaseKeyAsync(PartyPrincipal caller, V1.ReleaseKeyRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        if (!Ids.IsKeyId(request.KeyId))
        {
            throw KeyBrokerException.InvalidArgument($"key_id '{Ids.Printable(request.KeyId)}' is not a data key id (32 lower-case hex digits)");
        }

        var stored = await _stored.GetAsync(request.KeyId, cancellationToken).ConfigureAwait(false)
            ?? throw KeyBrokerException.NotFound($"key {request.KeyId} is not imported");
        try
        {
            return await ReleaseCoreAsync(caller, stored, request, cancellationToken).ConfigureAwait(false);
        }
        catch (KeyBrokerException e) when (e.Error is not (KeyBrokerError.Unavailable or KeyBrokerError.DataLoss))
        {
            await _audit.AppendAsync(stored.KeyId, caller, "deny", false, e.Message, CancellationToken.None).ConfigureAwait(false);
            _logger.LogInformation("Release of key {KeyId} to {Caller} refused: {Reason}", stored.KeyId, caller, e.Message);
            throw;
        }
    }

    /// <summary>SettlePrivacySpend: the clean room that reserved a run reports what it spent (at most what it reserved).</summary>
    public async Task<V1.BudgetStatus> SettlePrivacySpendAsync(PartyPrincipal caller, V1.SettlePrivacySpendRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        if (caller.Role != PartyRole.CleanRoom)
        {
            throw KeyBrokerException.PermissionDenied($"{caller}: only the clean room that ran it settles a run's spend");
        }

        if (!Ids.IsName(request.RunId) || !Ids.IsName(request.ContractId))
        {
            throw KeyBrokerException.InvalidArgument($"run_id and contract_id are required: {Ids.NameRule}");
        }

        var spent = request.Spent ?? throw KeyBrokerException.InvalidArgument("spent (q, sigma, steps) is required");
        // A run that stopped before its first step settles 0 steps; otherwise the same rules as a declaration.
        if (spent.Steps < 0)
        {
            throw KeyBrokerException.InvalidArgument("spent: steps must be ≥ 0");
        }

        if (new DeclaredPrivacy(spent.Epsilon, spent.Delta, spent.Sigma, spent.SampleRate, Math.Max(1, spent.Steps)).Problem() is { } problem)
        {
            throw KeyBrokerException.InvalidArgument("spent: " + problem);
        }

        var view = await _ledger.SettleAsync(request.ContractId, request.RunId, caller.PartyId,
            new PrivacyEvent(spent.SampleRate, spent.Sigma, spent.Steps), cancellationToken).ConfigureAwait(false);
        var record = await _ledger.GetAsync(request.ContractId, cancellationToken).ConfigureAwait(false);
        foreach (var keyId in record?.Record.KeyIds ?? [])
        {
            await _audit.AppendAsync(keyId, caller, "settle", true,
                $"run '{request.RunId}' settled {spent.Steps} steps on contract '{request.ContractId}': spent ε {Ids.Num(view.EpsilonSpent)}, reserved ε {Ids.Num(view.EpsilonReserved)}",
                cancellationToken).ConfigureAwait(false);
        }

        return ToContract(view);
    }

    /// <summary>GetBudget: the contract's caps, spent and reserved ε (its owner, a clean room, or an allowed consumer).</summary>
    public async Task<V1.BudgetStatus> GetBudgetAsync(PartyPrincipal caller, V1.GetBudgetRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        if (!Ids.IsName(request.ContractId))
        {
            throw KeyBrokerException.InvalidArgument($"contract_id '{Ids.Printable(request.ContractId)}' is not valid: {Ids.NameRule}");
        }

        var found = await _ledger.GetAsync(request.ContractId, cancellationToken).ConfigureAwait(false)
            ?? throw KeyBrokerException.NotFound($"contract '{request.ContractId}' does not exist");
        var terms = found.Record.Terms;
        if (caller.PartyId != terms.Owner && caller.Role != PartyRole.CleanRoom && !terms.AllowedConsumers.Contains(caller.PartyId))
        {
            throw KeyBrokerException.PermissionDenied($"{caller}: the budget of contract '{request.ContractId}' is for its owner, the clean room and its allowed consumers");
        }

        return ToContract(PrivacyComposition.View(found.Record));
    }

    /// <summary>ListAudit: the key's audit chain with its verification (owner only).</summary>
    public async Task<AuditTrail> ListAuditAsync(PartyPrincipal caller, V1.ListAuditRequest request, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(caller);
        ArgumentNullException.ThrowIfNull(request);
        var stored = await OwnedKeyAsync(caller, request.KeyId, "audit", cancellationToken, audit: false).ConfigureAwait(false);
        var (entries, verification) = await _audit.ReadAsync(stored.KeyId, cancellationToken).ConfigureAwait(false);
        return new AuditTrail(entries.Select(ToContract).ToList(), verification);
    }

    private async Task<V1.ReleaseKeyResponse> ReleaseCoreAsync(PartyPrincipal caller, StoredKey stored, V1.ReleaseKeyRequest request, CancellationToken cancellationToken)
    {
        var ownerRelease = stored.Purpose == V1.KeyPurpose.Output && caller.PartyId == stored.Owner && caller.Role == PartyRole.DataConsumer;
        if (!ownerRelease && caller.Role != PartyRole.CleanRoom)
        {
            throw KeyBrokerException.PermissionDenied(stored.Purpose == V1.KeyPurpose.Output
                ? $"{caller}: an output key goes to its owner or to an attested clean room"
                : $"{caller}: {Purpose(stored.Purpose)} keys go only to an attested clean room (CCR)");
        }

        if (stored.Revoked)
        {
            throw KeyBrokerException.FailedPrecondition($"key {stored.KeyId} is revoked ({stored.RevocationReason})");
        }

        RecipientPublicKey requester;
        try
        {
            requester = RecipientPublicKey.FromPem(request.RequesterPublicKeyPem ?? "");
        }
        catch (Exception e) when (e is SealedPackageException or FormatException)
        {
            throw KeyBrokerException.InvalidArgument($"requester_public_key_pem: {e.Message} (an RSA or P-256 \"PUBLIC KEY\" PEM)");
        }

        if (ownerRelease)
        {
            if (!string.IsNullOrEmpty(request.AttestationToken))
            {
                throw KeyBrokerException.InvalidArgument("an output key's owner receives it without an attestation token (leave attestation_token empty)");
            }

            return await GrantAsync(caller, stored, requester, $"output key released to its owner {caller.PartyId}", null, cancellationToken).ConfigureAwait(false);
        }

        // The clean room: inputs first, then the attestation, the nonce, the policy, the contract and the budget.
        if (!Ids.IsName(request.RunId))
        {
            throw KeyBrokerException.InvalidArgument($"run_id '{Ids.Printable(request.RunId)}' is not valid: {Ids.NameRule}");
        }

        if (string.IsNullOrEmpty(request.AttestationToken))
        {
            throw KeyBrokerException.PermissionDenied("an attestation token is required: keys go only to an attested clean room");
        }

        if (string.IsNullOrEmpty(request.Nonce))
        {
            throw KeyBrokerException.InvalidArgument("nonce is required (GetAttestationNonce)");
        }

        var policy = ParseStoredPolicy(stored);
        VerifiedAttestation attestation;
        try
        {
            attestation = await _verifier.VerifyAsync(request.AttestationToken, policy.AuthorityNames, request.Nonce, requester, cancellationToken).ConfigureAwait(false);
        }
        catch (AttestationException e)
        {
            throw e.Failure == AttestationFailure.MetadataUnavailable
                ? new KeyBrokerException(KeyBrokerError.Unavailable, e.Message, e)
                : KeyBrokerException.PermissionDenied(e.Message);
        }

        if (await _nonces.ConsumeAsync(request.Nonce, caller.PartyId, request.RunId, cancellationToken).ConfigureAwait(false) is { } nonceProblem)
        {
            throw KeyBrokerException.PermissionDenied("attestation nonce refused: " + nonceProblem);
        }

        var decision = policy.Evaluate(attestation.Issuer, attestation.Claims);
        if (!decision.Allowed)
        {
            throw KeyBrokerException.PermissionDenied(decision.Reason);
        }

        ContractRecord? contract = null;
        if (stored.ContractId is not null)
        {
            if (request.ContractId != stored.ContractId)
            {
                throw KeyBrokerException.FailedPrecondition($"the run names contract '{Ids.Printable(request.ContractId)}', the key serves contract '{stored.ContractId}'");
            }

            contract = (await _ledger.GetAsync(stored.ContractId, cancellationToken).ConfigureAwait(false)
                ?? throw new KeyBrokerException(KeyBrokerError.DataLoss, $"contract '{stored.ContractId}' of key {stored.KeyId} is missing")).Record;
            CheckContract(contract.Terms, request);
        }

        if (stored.Purpose == V1.KeyPurpose.Output && request.Consumer != stored.Owner)
        {
            throw KeyBrokerException.FailedPrecondition($"the run trains for consumer '{Ids.Printable(request.Consumer)}', not for this output key's owner '{stored.Owner}'");
        }

        Reservation? reservation = null;
        if (stored.Purpose == V1.KeyPurpose.Dataset)
        {
            var declared = request.Declared ?? throw KeyBrokerException.InvalidArgument("declared (epsilon, delta, sigma, sample_rate, steps) is required for a dataset key");
            var run = new DeclaredPrivacy(declared.Epsilon, declared.Delta, declared.Sigma, declared.SampleRate, declared.Steps);
            if (run.Problem() is { } problem)
            {
                throw KeyBrokerException.InvalidArgument("declared: " + problem);
            }

            var terms = contract!.Terms;
            if (run.Delta > terms.Delta)
            {
                throw KeyBrokerException.FailedPrecondition($"the run declares δ {Ids.Num(run.Delta)}, above the contract's {Ids.Num(terms.Delta)}");
            }

            if (run.Epsilon > terms.MaxEpsilonPerRun + ContractLedger.Tolerance)
            {
                throw KeyBrokerException.FailedPrecondition($"the run declares ε {Ids.Num(run.Epsilon)}, above the contract's {Ids.Num(terms.MaxEpsilonPerRun)} per run");
            }

            reservation = await _ledger.ReserveAsync(terms.ContractId,
                new RunDeclaration(request.RunId, caller.PartyId, request.Consumer, run, Ids.Sha256Hex(request.PipelineSha256)!), cancellationToken).ConfigureAwait(false);
            if (!reservation.Granted)
            {
                throw KeyBrokerException.FailedPrecondition(reservation.Reason);
            }
        }

        var why = $"released to clean room {caller.PartyId} for run '{request.RunId}' ({decision.Reason}; attestation kid {attestation.SigningKeyId})"
            + (reservation is null ? "" : $"; {reservation.Reason}");
        return await GrantAsync(caller, stored, requester, why, reservation?.Budget, cancellationToken).ConfigureAwait(false);
    }

    private void CheckContract(ContractTerms terms, V1.ReleaseKeyRequest request)
    {
        if (terms.Expires is { } expires && expires <= _time.GetUtcNow())
        {
            throw KeyBrokerException.FailedPrecondition($"contract '{terms.ContractId}' expired at {expires:O}");
        }

        if (terms.AllowedConsumers.Count > 0 && !terms.AllowedConsumers.Contains(request.Consumer))
        {
            throw KeyBrokerException.FailedPrecondition($"contract '{terms.ContractId}' does not allow consumer '{Ids.Printable(request.Consumer)}'");
        }

        var pipeline = Ids.Sha256Hex(request.PipelineSha256);
        if (terms.HasBudget && pipeline is null)
        {
            throw KeyBrokerException.InvalidArgument("pipeline_sha256 (hex SHA-256 of the run's pipeline configuration) is required for a dataset key");
        }

        if (terms.AllowedPipelineSha256.Count > 0 && (pipeline is null || !terms.AllowedPipelineSha256.Contains(pipeline)))
        {
            throw KeyBrokerException.FailedPrecondition($"contract '{terms.ContractId}' does not allow pipeline {Ids.Printable(request.PipelineSha256)}");
        }
    }

    private async Task<V1.ReleaseKeyResponse> GrantAsync(PartyPrincipal caller, StoredKey stored, RecipientPublicKey requester, string why, BudgetView? budget, CancellationToken cancellationToken)
    {
        WrappedKey wrapped;
        using (var key = await _keys.DecryptAtRestAsync(stored.Material ?? throw KeyBrokerException.FailedPrecondition($"key {stored.KeyId} has no key material"), stored.Binding,
            stored.KekId, cancellationToken).ConfigureAwait(false))
        {
            wrapped = KeyWrap.Wrap(key, requester);
        }

        // Audited before it leaves: a release that cannot be recorded does not happen.
        await _audit.AppendAsync(stored.KeyId, caller, "release", true, $"{why}; wrapped to {requester.Thumbprint[..16]}…", cancellationToken).ConfigureAwait(false);
        _logger.LogInformation("Released key {KeyId} to {Caller}, wrapped to {Recipient}", stored.KeyId, caller, requester.Thumbprint);
        var response = new V1.ReleaseKeyResponse
        {
            KeyId = stored.KeyId,
            WrappedKey = ByteString.CopyFromUtf8(wrapped.ToJson()),
            WrapAlgorithm = WrappedKey.AlgorithmName(wrapped.Algorithm),
        };
        if (budget is not null)
        {
            response.Budget = ToContract(budget);
        }

        return response;
    }

    private async Task<StoredKey> OwnedKeyAsync(PartyPrincipal caller, string keyId, string action, CancellationToken cancellationToken, bool audit = true)
    {
        if (!Ids.IsKeyId(keyId))
        {
            throw KeyBrokerException.InvalidArgument($"key_id '{Ids.Printable(keyId)}' is not a data key id (32 lower-case hex digits)");
        }

        var stored = await _stored.GetAsync(keyId, cancellationToken).ConfigureAwait(false)
            ?? throw KeyBrokerException.NotFound($"key {keyId} is not imported");
        if (stored.Owner != caller.PartyId)
        {
            var denial = KeyBrokerException.PermissionDenied($"{caller} is not the owner of key {keyId}");
            throw audit ? await DenyAsync(stored, caller, action, denial, cancellationToken).ConfigureAwait(false) : denial;
        }

        return stored;
    }

    private async Task<KeyBrokerException> DenyAsync(StoredKey stored, PartyPrincipal caller, string action, KeyBrokerException denial, CancellationToken cancellationToken)
    {
        await _audit.AppendAsync(stored.KeyId, caller, "deny", false, $"{action}: {denial.Message}", cancellationToken).ConfigureAwait(false);
        return denial;
    }

    private async Task ReplaceKeyAsync(StoredKey key, CancellationToken cancellationToken)
    {
        try
        {
            await _stored.ReplaceAsync(key, cancellationToken).ConfigureAwait(false);
        }
        catch (RecordConflictException)
        {
            throw new KeyBrokerException(KeyBrokerError.Unavailable, $"key {key.KeyId} changed concurrently; retry");
        }
    }

    private async Task<V1.KeyStatus> StatusAsync(StoredKey stored, CancellationToken cancellationToken)
    {
        var status = new V1.KeyStatus
        {
            KeyId = stored.KeyId,
            Purpose = stored.Purpose,
            Owner = stored.Owner,
            Version = stored.Version,
            Revoked = stored.Revoked,
            Imported = Timestamp.FromDateTimeOffset(stored.Imported),
        };
        if (stored.ContractId is not null && await _ledger.GetAsync(stored.ContractId, cancellationToken).ConfigureAwait(false) is { } contract)
        {
            status.Contract = contract.Record.Terms.ToContract();
        }

        return status;
    }

    private ReleasePolicy ParsePolicy(string json)
    {
        ReleasePolicy policy;
        try
        {
            policy = ReleasePolicy.Parse(json);
        }
        catch (ReleasePolicyException e)
        {
            throw KeyBrokerException.InvalidArgument("release_policy_json: " + e.Message);
        }

        foreach (var authority in policy.AuthorityNames)
        {
            if (_verifier.FindTrusted(authority) is null)
            {
                throw KeyBrokerException.InvalidArgument($"release_policy_json: authority {authority} is not an attestation authority this broker trusts");
            }
        }

        return policy;
    }

    private static ReleasePolicy ParseStoredPolicy(StoredKey stored)
    {
        try
        {
            return ReleasePolicy.Parse(stored.PolicyJson);
        }
        catch (ReleasePolicyException e)
        {
            throw new KeyBrokerException(KeyBrokerError.DataLoss, $"the stored policy of key {stored.KeyId} does not parse: {e.Message}");
        }
    }

    private ContractTerms? ParseContract(V1.ContractTerms? contract, PartyPrincipal caller, V1.KeyPurpose purpose)
    {
        if (contract is null)
        {
            return purpose == V1.KeyPurpose.Dataset
                ? throw KeyBrokerException.InvalidArgument("contract is required for a dataset key")
                : null;
        }

        return ContractTerms.FromRequest(contract, caller.PartyId, purpose == V1.KeyPurpose.Dataset, _time.GetUtcNow());
    }

    private DataKey UnwrapImport(string keyId, ByteString wrappedKey, string algorithm)
    {
        var expected = WrappedKey.AlgorithmName(_keys.WrapPublicKey.Algorithm);
        if (!string.IsNullOrEmpty(algorithm) && algorithm != expected)
        {
            throw KeyBrokerException.InvalidArgument($"wrap_algorithm '{Ids.Printable(algorithm)}': the broker's key takes {expected} (GetBrokerKey)");
        }

        if (wrappedKey is null || wrappedKey.IsEmpty)
        {
            throw KeyBrokerException.InvalidArgument("wrapped_key is required (the key wrapped to the broker's public key, a mriseg-wrapped-key document)");
        }

        WrappedKey wrapped;
        try
        {
            wrapped = WrappedKey.FromJson(Encoding.UTF8.GetString(wrappedKey.Span));
        }
        catch (SealedPackageException e)
        {
            throw KeyBrokerException.InvalidArgument("wrapped_key: " + e.Message);
        }

        if (wrapped.KeyId != keyId)
        {
            throw KeyBrokerException.InvalidArgument($"wrapped_key holds key {wrapped.KeyId}, not key_id {keyId}");
        }

        if (wrapped.RecipientThumbprint != _keys.WrapKeyId)
        {
            throw KeyBrokerException.InvalidArgument($"wrapped_key is wrapped to {wrapped.RecipientThumbprint[..16]}…, not to the broker's key {_keys.WrapKeyId[..16]}… (GetBrokerKey)");
        }

        try
        {
            return _keys.UnwrapImported(wrapped);
        }
        catch (SealedPackageException e)
        {
            throw KeyBrokerException.InvalidArgument("wrapped_key does not unwrap with the broker's key: " + e.Message);
        }
    }

    private static string Purpose(V1.KeyPurpose purpose) => purpose switch
    {
        V1.KeyPurpose.Dataset => "dataset",
        V1.KeyPurpose.Model => "model",
        V1.KeyPurpose.Output => "output",
        _ => "unspecified",
    };

    private static V1.BudgetStatus ToContract(BudgetView view) => new()
    {
        ContractId = view.ContractId,
        DatasetId = view.DatasetId,
        EpsilonTotalCap = view.EpsilonTotalCap,
        EpsilonPerRunCap = view.EpsilonPerRunCap,
        EpsilonSpent = view.EpsilonSpent,
        EpsilonReserved = view.EpsilonReserved,
        Delta = view.Delta,
    };

    private static V1.AuditRecord ToContract(AuditEntry e) => new()
    {
        Sequence = e.Sequence,
        At = Timestamp.FromDateTimeOffset(e.At),
        Actor = e.Actor,
        ActorRole = e.ActorRole?.ToContract() ?? V1.Party.Unspecified,
        Action = e.Action,
        KeyId = e.KeyId,
        Allowed = e.Allowed,
        Reason = e.Reason,
        PreviousHash = e.PreviousHash,
        Hash = e.Hash,
    };
}
