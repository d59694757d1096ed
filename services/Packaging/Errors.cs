using Azure;
using Grpc.Core;
using MriSeg.Sealing;
using MriSeg.ServiceDefaults;

namespace MriSeg.Packaging;

/// <summary>
/// The status each failure becomes. Messages are one line, name what failed, and never hold key material or
/// plaintext (the library's messages do not; storage errors are reduced to their status and error code).
/// </summary>
internal static class Errors
{
    // The factories the service's code calls; they are the shared ones.
    public static RpcException InvalidArgument(string message) => GrpcErrors.InvalidArgument(message);

    public static RpcException NotFound(string message) => GrpcErrors.NotFound(message);

    public static RpcException AlreadyExists(string message) => GrpcErrors.AlreadyExists(message);

    public static RpcException FailedPrecondition(string message) => GrpcErrors.FailedPrecondition(message);

    public static RpcException PermissionDenied(string message) => GrpcErrors.PermissionDenied(message);

    /// <summary>A storage failure while doing <paramref name="what"/> ("reading the source blob hospital-a/x").</summary>
    public static RpcException FromStorage(RequestFailedException e, string what) => e.Status switch
    {
        404 => NotFound($"{what}: not found ({e.ErrorCode ?? "404"})"),
        409 => AlreadyExists($"{what}: already exists ({e.ErrorCode ?? "409"})"),
        412 => FailedPrecondition($"{what}: the blob is not the one expected (its ETag changed)"),
        400 => InvalidArgument($"{what}: storage refused the request ({e.ErrorCode ?? "400"})"),
        _ => GrpcErrors.FromStorage(e, what),
    };

    /// <summary>Any failure of <paramref name="operation"/> as a status; unexpected ones are logged and answered INTERNAL.</summary>
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => GrpcErrors.Cancelled(operation),
        OwnerKeyException k => FailedPrecondition(k.Message),
        PartyRegistrationException p => FailedPrecondition(p.Message),
        SealedPackageException { Error: SealingError.InvalidArgument or SealingError.InputTooLarge } s => InvalidArgument(s.Message),
        RequestFailedException storage => FromStorage(storage, operation),
        IOException io => GrpcErrors.Unexpected(io, operation, logger, StatusCode.Unavailable),
        _ => GrpcErrors.Unexpected(e, operation, logger),
    };
}
