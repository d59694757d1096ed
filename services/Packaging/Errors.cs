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
    /// <summary>A storage failure while doing <paramref name="what"/> ("reading the source blob hospital-a/x").</summary>
    public static RpcException FromStorage(RequestFailedException e, string what) => e.Status switch
    {
        404 => GrpcErrors.NotFound($"{what}: not found ({e.ErrorCode ?? "404"})"),
        409 => GrpcErrors.AlreadyExists($"{what}: already exists ({e.ErrorCode ?? "409"})"),
        412 => GrpcErrors.FailedPrecondition($"{what}: the blob is not the one expected (its ETag changed)"),
        400 => GrpcErrors.InvalidArgument($"{what}: storage refused the request ({e.ErrorCode ?? "400"})"),
        _ => GrpcErrors.FromStorage(e, what),
    };

    /// <summary>Any failure of <paramref name="operation"/> as a status; unexpected ones are logged and answered INTERNAL.</summary>
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => GrpcErrors.Cancelled(operation),
        OwnerKeyException k => GrpcErrors.FailedPrecondition(k.Message),
        PartyRegistrationException p => GrpcErrors.FailedPrecondition(p.Message),
        SealedPackageException { Error: SealingError.InvalidArgument or SealingError.InputTooLarge } s => GrpcErrors.InvalidArgument(s.Message),
        RequestFailedException storage => FromStorage(storage, operation),
        IOException io => GrpcErrors.Unexpected(io, operation, logger, StatusCode.Unavailable),
        _ => GrpcErrors.Unexpected(e, operation, logger),
    };
}
