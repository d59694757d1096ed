using Grpc.Core;
using Grpc.Core.Interceptors;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Parties;

namespace MriSeg.KeyBroker;

/// <summary>
/// Authenticates every KeyBroker call from its "authorization: Bearer &lt;party token&gt;" (the engine verifies it under
/// the party's registered key) and hands the caller to the service. No or bad credentials: UNAUTHENTICATED, before the
/// method runs. RegisterParty authenticates itself (the token is signed by the key being registered).
/// </summary>
public sealed class PartyAuthInterceptor(KeyBrokerEngine engine, ILogger<PartyAuthInterceptor> logger) : Interceptor
{
    private const string CallerKey = "mriseg.caller";
    private const string RegisterMethod = "/mriseg.v1.KeyBroker/RegisterParty";

    /// <summary>The caller authenticated for this call.</summary>
    public static PartyPrincipal Caller(ServerCallContext context) =>
        context.UserState.TryGetValue(CallerKey, out var caller) && caller is PartyPrincipal principal
            ? principal
            : throw new RpcException(new Status(StatusCode.Unauthenticated, "no authenticated caller"));

    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        if (context.Method != RegisterMethod)
        {
            await AuthenticateAsync(context);
        }

        return await continuation(request, context);
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await AuthenticateAsync(context);
        await continuation(request, responseStream, context);
    }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context,
        ClientStreamingServerMethod<TRequest, TResponse> continuation) =>
        throw new RpcException(new Status(StatusCode.Unimplemented, "the KeyBroker has no client-streaming methods"));

    public override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation) =>
        throw new RpcException(new Status(StatusCode.Unimplemented, "the KeyBroker has no duplex-streaming methods"));

    private async Task AuthenticateAsync(ServerCallContext context)
    {
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
