using Azure;
using Grpc.Core;
using MriSeg.Sealing;

namespace MriSeg.Packaging;

/// <summary>
/// The status each failure becomes. Messages are one line, name what failed, and never hold key material or
/// plaintext (the library's messages do not; storage errors are reduced to their status and error code).
/// </summary>
internal static class Errors
{
    public static RpcException InvalidArgument(string message) => new(new Status(StatusCode.InvalidArgument, message));

    public static RpcException NotFound(string message) => new(new Status(StatusCode.NotFound, message));

    public static RpcException AlreadyExists(string message) => new(new Status(StatusCode.AlreadyExists, message));

    public static RpcException FailedPrecondition(string message) => new(new Status(StatusCode.FailedPrecondition, message));

    public static RpcException PermissionDenied(string message) => new(new Status(StatusCode.PermissionDenied, message));

    /// <summary>A storage failure while doing <paramref name="what"/> ("reading the source blob hospital-a/x").</summary>
    public static RpcException FromStorage(RequestFailedException e, string what) => e.Status switch
    {
        404 => NotFound($"{what}: not found ({e.ErrorCode ?? "404"})"),
        409 => AlreadyExists($"{what}: already exists ({e.ErrorCode ?? "409"})"),
        412 => FailedPrecondition($"{what}: the blob is not the one expected (its ETag changed)"),
        400 => InvalidArgument($"{what}: storage refused the request ({e.ErrorCode ?? "400"})"),
        401 or 403 => PermissionDenied($"{what}: storage denied access ({e.ErrorCode ?? e.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)})"),
        _ => new RpcException(new Status(StatusCode.Unavailable,
            $"{what}: storage error {e.Status.ToString(System.Globalization.CultureInfo.InvariantCulture)} ({e.ErrorCode ?? "no error code"})")),
    };

    /// <summary>Any failure of <paramref name="operation"/> as a status; unexpected ones are logged and answered INTERNAL.</summary>
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => new RpcException(new Status(StatusCode.Cancelled, $"{operation}: cancelled")),
        OwnerKeyException k => FailedPrecondition(k.Message),
        PartyRegistrationException p => FailedPrecondition(p.Message),
        SealedPackageException { Error: SealingError.InvalidArgument or SealingError.InputTooLarge } s => InvalidArgument(s.Message),
        RequestFailedException storage => FromStorage(storage, operation),
        IOException io => Unexpected(io, operation, logger, StatusCode.Unavailable),
        _ => Unexpected(e, operation, logger, StatusCode.Internal),
    };

    private static RpcException Unexpected(Exception e, string operation, ILogger logger, StatusCode code)
    {
        logger.LogError(e, "{Operation} failed", operation);
        return new RpcException(new Status(code, $"{operation}: failed ({e.GetType().Name}; the service log has the details)"));
    }
}
