using Azure;
using Grpc.Core;
using MriSeg.KeyRelease;
using MriSeg.ServiceDefaults;

namespace MriSeg.KeyBroker;

/// <summary>
/// The status each failure becomes. Refusals carry the engine's one-line reason (never key material); storage errors
/// are reduced to their status; anything unexpected is logged and answered INTERNAL without details.
/// </summary>
internal static class Errors
{
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        KeyBrokerException k => GrpcErrors.Of(Code(k.Error), k.Message),
        OperationCanceledException when cancellationToken.IsCancellationRequested => GrpcErrors.Cancelled(operation),
        RequestFailedException storage => Storage(storage, operation, logger),
        _ => GrpcErrors.Unexpected(e, operation, logger),
    };

    public static StatusCode Code(KeyBrokerError error) => error switch
    {
        KeyBrokerError.InvalidArgument => StatusCode.InvalidArgument,
        KeyBrokerError.Unauthenticated => StatusCode.Unauthenticated,
        KeyBrokerError.PermissionDenied => StatusCode.PermissionDenied,
        KeyBrokerError.FailedPrecondition => StatusCode.FailedPrecondition,
        KeyBrokerError.NotFound => StatusCode.NotFound,
        KeyBrokerError.AlreadyExists => StatusCode.AlreadyExists,
        KeyBrokerError.Unavailable => StatusCode.Unavailable,
        KeyBrokerError.DataLoss => StatusCode.DataLoss,
        _ => StatusCode.Internal,
    };

    // Unlike the other services, every storage failure is UNAVAILABLE here (a denial too), and it is logged.
    private static RpcException Storage(RequestFailedException e, string operation, ILogger logger)
    {
        logger.LogError(e, "{Operation}: storage error {Status} {Code}", operation, e.Status, e.ErrorCode);
        return GrpcErrors.StorageUnavailable(e, operation);
    }
}
