using Azure;
using Grpc.Core;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;

namespace MriSeg.Preprocess;

/// <summary>The status each failure becomes: one line naming what failed; unexpected failures are logged and answered INTERNAL.</summary>
internal static class Errors
{
    public static RpcException InvalidArgument(string message) => new(new Status(StatusCode.InvalidArgument, message));

    public static RpcException NotFound(string message) => new(new Status(StatusCode.NotFound, message));

    public static RpcException FailedPrecondition(string message) => new(new Status(StatusCode.FailedPrecondition, message));

    public static RpcException PermissionDenied(string message) => new(new Status(StatusCode.PermissionDenied, message));

    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => new RpcException(new Status(StatusCode.Cancelled, $"{operation}: cancelled")),
        PreprocessException or NiftiFormatException or DatasetSchemaException => InvalidArgument($"{operation}: {e.Message}"),
        RequestFailedException { Status: 404 } s => NotFound($"{operation}: storage: not found ({s.ErrorCode})"),
        RequestFailedException { Status: 409 or 412 } s => new RpcException(new Status(StatusCode.AlreadyExists, $"{operation}: the output blob exists already ({s.ErrorCode}); a shard is never replaced")),
        RequestFailedException { Status: 401 or 403 } s => PermissionDenied($"{operation}: storage denied access ({s.ErrorCode})"),
        RequestFailedException s => new RpcException(new Status(StatusCode.Unavailable, $"{operation}: storage error {s.Status} ({s.ErrorCode})")),
        DirectoryNotFoundException or FileNotFoundException => NotFound($"{operation}: {e.Message}"),
        UnauthorizedAccessException => PermissionDenied($"{operation}: {e.Message}"),
        _ => Unexpected(e, operation, logger),
    };

    private static RpcException Unexpected(Exception e, string operation, ILogger logger)
    {
        logger.LogError(e, "{Operation} failed", operation);
        return new RpcException(new Status(StatusCode.Internal, $"{operation}: failed ({e.GetType().Name}; the service log has the details)"));
    }
}
