using Grpc.Core;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Parties;
using MriSeg.ServiceDefaults;

namespace MriSeg.KeyBroker;

/// <summary>
/// Authenticates every KeyBroker call from its "authorization: Bearer &lt;party token&gt;" (the engine verifies it under
/// the party's registered key) and hands the caller to the service. No or bad credentials: UNAUTHENTICATED, before the
/// method runs. RegisterParty authenticates itself (the token is signed by the key being registered).
/// </summary>
public sealed class PartyAuthInterceptor(KeyBrokerEngine engine, ILogger<PartyAuthInterceptor> logger) : CallAuthenticationInterceptor("KeyBroker")
{
    private const string CallerKey = "mriseg.caller";
    private const string RegisterMethod = "/mriseg.v1.KeyBroker/RegisterParty";

    /// <summary>The caller authenticated for this call.</summary>
    public static PartyPrincipal Caller(ServerCallContext context) =>
        context.UserState.TryGetValue(CallerKey, out var caller) && caller is PartyPrincipal principal
            ? principal
            : throw new RpcException(new Status(StatusCode.Unauthenticated, "no authenticated caller"));

    protected override async Task AuthenticateAsync(ServerCallContext context)
    {
        if (context.Method == RegisterMethod)
        {
            return; // RegisterParty authenticates itself: its token is signed by the key being registered
        }

        try
        {
            var caller = await engine.AuthenticateAsync(context.RequestHeaders.GetValue(PartyTokens.AuthorizationHeader), context.CancellationToken);
            context.UserState[CallerKey] = caller;
        }
        catch (KeyBrokerException e)
        {
            logger.LogInformation("{Method}: unauthenticated: {Reason}", context.Method, e.Message);
            throw new RpcException(new Status(Errors.Code(e.Error), e.Message));
        }
        catch (Exception e) when (e is not RpcException)
        {
            throw Errors.Map(e, "authentication", logger, context.CancellationToken);
        }
    }
}
