using Azure;
using Grpc.Core;
using MriSeg.KeyRelease;

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
        KeyBrokerException k => new RpcException(new Status(Code(k.Error), k.Message)),
        OperationCanceledException when cancellationToken.IsCancellationRequested => new RpcException(new Status(StatusCode.Cancelled, $"{operation}: cancelled")),
        RequestFailedException storage => Storage(storage, operation, logger),
        _ => Unexpected(e, operation, logger),
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

    private static RpcException Storage(RequestFailedException e, string operation, ILogger logger)
    {
        logger.LogError(e, "{Operation}: storage error {Status} {Code}", operation, e.Status, e.ErrorCode);
        return new RpcException(new Status(StatusCode.Unavailable,
            $"{operation}: storage error {e.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)} ({e.ErrorCode ?? "no error code"})"));
    }

    private static RpcException Unexpected(Exception e, string operation, ILogger logger)
    {
        logger.LogError(e, "{Operation} failed", operation);
        return new RpcException(new Status(StatusCode.Internal, $"{operation}: failed ({e.GetType().Name}; the service log has the details)"));
    }
}
