using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.AspNetCore.Http;
using System.Reflection;

namespace MriSeg.ServiceDefaults;

/// <summary>
/// Names the capability a service's RPCs wait for. Until a method is implemented, the interceptor
/// below turns gRPC's bare UNIMPLEMENTED into one that says what is missing.
/// </summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class PendingCapabilityAttribute(string capability) : Attribute
{
    public string Capability { get; } = capability;
}

public sealed class PendingCapabilityInterceptor : Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(
        TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(request, context);
        }
        catch (RpcException e) when (IsBareUnimplemented(e))
        {
            throw Explain(context);
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(
        TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context,
        ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(request, responseStream, context);
        }
        catch (RpcException e) when (IsBareUnimplemented(e))
        {
            throw Explain(context);
        }
    }

    public override async Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, ServerCallContext context,
        ClientStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            return await continuation(requestStream, context);
        }
        catch (RpcException e) when (IsBareUnimplemented(e))
        {
            throw Explain(context);
        }
    }

    public override async Task DuplexStreamingServerHandler<TRequest, TResponse>(
        IAsyncStreamReader<TRequest> requestStream, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, DuplexStreamingServerMethod<TRequest, TResponse> continuation)
    {
        try
        {
            await continuation(requestStream, responseStream, context);
        }
        catch (RpcException e) when (IsBareUnimplemented(e))
        {
            throw Explain(context);
        }
    }

    // The generated base class throws UNIMPLEMENTED with an empty detail for every method not overridden.
    private static bool IsBareUnimplemented(RpcException e) =>
        e.StatusCode == StatusCode.Unimplemented && string.IsNullOrEmpty(e.Status.Detail);

    private static RpcException Explain(ServerCallContext context)
    {
        var serviceType = context.GetHttpContext().GetEndpoint()?.Metadata.GetMetadata<GrpcMethodMetadata>()?.ServiceType;
        var capability = serviceType?.GetCustomAttribute<PendingCapabilityAttribute>()?.Capability;
        var detail = capability is null
            ? $"{context.Method} is not implemented."
            : $"{context.Method} is not implemented yet: it arrives with {capability}.";
        return new RpcException(new Status(StatusCode.Unimplemented, detail));
    }
}
