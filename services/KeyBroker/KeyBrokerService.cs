using Grpc.Core;
using MriSeg.KeyRelease;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyBroker;

/// <summary>
/// Every RPC of keybroker.proto over <see cref="KeyBrokerEngine"/>: the caller comes from
/// <see cref="PartyAuthInterceptor"/>, refusals become statuses (<see cref="Errors"/>), and nothing escapes as a crash.
/// </summary>
public sealed class KeyBrokerService(KeyBrokerEngine engine, ILogger<KeyBrokerService> logger) : V1.KeyBroker.KeyBrokerBase
{
    public override Task<V1.BrokerKey> GetBrokerKey(V1.GetBrokerKeyRequest request, ServerCallContext context) =>
        Run("get broker key", context, () => Task.FromResult(engine.GetBrokerKey(PartyAuthInterceptor.Caller(context))));

    public override Task<V1.RegisterPartyResponse> RegisterParty(V1.RegisterPartyRequest request, ServerCallContext context) =>
        Run("register party", context, () => engine.RegisterPartyAsync(request, new RegistrationCredentials(
            context.RequestHeaders.GetValue(MriSeg.KeyRelease.Parties.PartyTokens.AuthorizationHeader),
            context.RequestHeaders.GetValue(MriSeg.KeyRelease.Parties.PartyTokens.PreviousKeyTokenHeader),
            context.RequestHeaders.GetValue(MriSeg.KeyRelease.Parties.PartyTokens.AdminTokenHeader)), context.CancellationToken));

    public override Task<V1.AttestationNonce> GetAttestationNonce(V1.GetAttestationNonceRequest request, ServerCallContext context) =>
        Run("get attestation nonce", context, () => engine.GetAttestationNonceAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.ImportKeyResponse> ImportKey(V1.ImportKeyRequest request, ServerCallContext context) =>
        Run("import key", context, () => engine.ImportKeyAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.KeyStatus> UpdateKeyPolicy(V1.UpdateKeyPolicyRequest request, ServerCallContext context) =>
        Run("update key policy", context, () => engine.UpdateKeyPolicyAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.KeyStatus> RevokeKey(V1.RevokeKeyRequest request, ServerCallContext context) =>
        Run("revoke key", context, () => engine.RevokeKeyAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.KeyStatus> GetKeyStatus(V1.GetKeyStatusRequest request, ServerCallContext context) =>
        Run("get key status", context, () => engine.GetKeyStatusAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.ReleaseKeyResponse> ReleaseKey(V1.ReleaseKeyRequest request, ServerCallContext context) =>
        Run("release key", context, () => engine.ReleaseKeyAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.BudgetStatus> SettlePrivacySpend(V1.SettlePrivacySpendRequest request, ServerCallContext context) =>
        Run("settle privacy spend", context, () => engine.SettlePrivacySpendAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    public override Task<V1.BudgetStatus> GetBudget(V1.GetBudgetRequest request, ServerCallContext context) =>
        Run("get budget", context, () => engine.GetBudgetAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken));

    /// <summary>Streams the verified part of the chain after <c>after_sequence</c>; a broken chain then ends the call with DATA_LOSS.</summary>
    public override async Task ListAudit(V1.ListAuditRequest request, IServerStreamWriter<V1.AuditRecord> responseStream, ServerCallContext context)
    {
        AuditTrail trail;
        try
        {
            trail = await engine.ListAuditAsync(PartyAuthInterceptor.Caller(context), request, context.CancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "list audit", logger, context.CancellationToken);
        }

        foreach (var record in trail.Records.Take(trail.Verification.VerifiedCount).Where(r => r.Sequence > request.AfterSequence))
        {
            await responseStream.WriteAsync(record, context.CancellationToken);
        }

        if (!trail.Verification.Intact)
        {
            logger.LogError("The audit chain of key {KeyId} is broken at record {Sequence}: {Problem}", request.KeyId, trail.Verification.BrokenAt, trail.Verification.Problem);
            throw new RpcException(new Status(StatusCode.DataLoss,
                $"the audit chain of key {request.KeyId} is broken at record {trail.Verification.BrokenAt}: {trail.Verification.Problem}"));
        }
    }

    private async Task<T> Run<T>(string operation, ServerCallContext context, Func<Task<T>> action)
    {
        try
        {
            return await action();
        }
        catch (Exception e)
        {
            throw Errors.Map(e, operation, logger, context.CancellationToken);
        }
    }
}
