using Grpc.Core;
using Grpc.Core.Interceptors;

namespace MriSeg.ServiceDefaults;

/// <summary>
/// Authenticates every call of a service before its method runs (the services have unary and server-streaming methods
/// only; client-streaming and duplex calls are refused). A subclass says how: it throws an <see cref="RpcException"/>
/// (UNAUTHENTICATED, with the reason) for a caller it does not accept.
/// </summary>
public abstract class CallAuthenticationInterceptor(string service) : Interceptor
{
    /// <summary>Accepts the caller of <paramref name="context"/>, or throws the status that refuses it.</summary>
    protected abstract Task AuthenticateAsync(ServerCallContext context);

    public sealed override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        await AuthenticateAsync(context).ConfigureAwait(false);
        return await continuation(request, context).ConfigureAwait(false);
    }

    public sealed override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        await AuthenticateAsync(context).ConfigureAwait(false);
        await continuation(request, responseStream, context).ConfigureAwait(false);
    }

    public sealed override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context,
        ClientStreamingServerMethod<TRequest, TResponse> continuation) =>
        throw new RpcException(new Status(StatusCode.Unimplemented, $"the {service} has no client-streaming methods"));

    public sealed override Task DuplexStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation) =>
        throw new RpcException(new Status(StatusCode.Unimplemented, $"the {service} has no duplex-streaming methods"));
}
