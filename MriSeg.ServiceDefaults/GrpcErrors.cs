using System.Globalization;
using Azure;
using Grpc.Core;
using Microsoft.Extensions.Logging;

namespace MriSeg.ServiceDefaults;

/// <summary>
/// The pieces of failure-to-status mapping every service shares. Each service's <c>Errors</c> keeps its own cases (its
/// exceptions, and the storage statuses whose meaning is its own) and calls these for the rest, so that the same failure
/// reads the same from every service. Messages are one line and never hold key material or plaintext.
/// </summary>
public static class GrpcErrors
{
    public static RpcException Of(StatusCode code, string message) => new(new Status(code, message));

    public static RpcException InvalidArgument(string message) => Of(StatusCode.InvalidArgument, message);

    public static RpcException NotFound(string message) => Of(StatusCode.NotFound, message);

    public static RpcException AlreadyExists(string message) => Of(StatusCode.AlreadyExists, message);

    public static RpcException FailedPrecondition(string message) => Of(StatusCode.FailedPrecondition, message);

    public static RpcException PermissionDenied(string message) => Of(StatusCode.PermissionDenied, message);

    public static RpcException Unavailable(string message) => Of(StatusCode.Unavailable, message);

    public static RpcException ResourceExhausted(string message) => Of(StatusCode.ResourceExhausted, message);

    public static RpcException DataLoss(string message) => Of(StatusCode.DataLoss, message);

    public static RpcException Internal(string message) => Of(StatusCode.Internal, message);

    /// <summary>The caller gave up on <paramref name="operation"/> (map only when the call's own token is cancelled).</summary>
    public static RpcException Cancelled(string operation) => Of(StatusCode.Cancelled, $"{operation}: cancelled");

    /// <summary>
    /// A storage failure while doing <paramref name="what"/> that no service reads a meaning into: a denial is
    /// PERMISSION_DENIED, anything else UNAVAILABLE. Services map 404, 409, 412 and the like first where those mean
    /// something to them.
    /// </summary>
    public static RpcException FromStorage(RequestFailedException e, string what)
    {
        ArgumentNullException.ThrowIfNull(e);
        return e.Status is 401 or 403
            ? PermissionDenied($"{what}: storage denied access ({e.ErrorCode ?? e.Status.ToString(CultureInfo.InvariantCulture)})")
            : StorageUnavailable(e, what);
    }

    /// <summary>A storage failure reduced to its status and error code, as UNAVAILABLE.</summary>
    public static RpcException StorageUnavailable(RequestFailedException e, string what)
    {
        ArgumentNullException.ThrowIfNull(e);
        return Unavailable($"{what}: storage error {e.Status.ToString(CultureInfo.InvariantCulture)} ({e.ErrorCode ?? "no error code"})");
    }

    /// <summary>
    /// A failure nothing else maps: logged with its stack, answered with <paramref name="code"/> (INTERNAL unless the
    /// service knows better) and only the exception's type, since its message may hold what a caller must not see.
    /// </summary>
    public static RpcException Unexpected(Exception e, string operation, ILogger logger, StatusCode code = StatusCode.Internal)
    {
        ArgumentNullException.ThrowIfNull(e);
        ArgumentNullException.ThrowIfNull(logger);
        logger.LogError(e, "{Operation} failed", operation);
        return Of(code, $"{operation}: failed ({e.GetType().Name}; the service log has the details)");
    }
}
