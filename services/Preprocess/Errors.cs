using Azure;
using Grpc.Core;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.ServiceDefaults;

namespace MriSeg.Preprocess;

/// <summary>The status each failure becomes: one line naming what failed; unexpected failures are logged and answered INTERNAL.</summary>
internal static class Errors
{
    // The storage cases stay here: a 409/412 means a shard that exists already, and the messages show the error code
    // as it is (empty when there is none) where the shared mapper writes a fallback.
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => GrpcErrors.Cancelled(operation),
        PreprocessException or NiftiFormatException or DatasetSchemaException => GrpcErrors.InvalidArgument($"{operation}: {e.Message}"),
        RequestFailedException { Status: 404 } s => GrpcErrors.NotFound($"{operation}: storage: not found ({s.ErrorCode})"),
        RequestFailedException { Status: 409 or 412 } s => GrpcErrors.AlreadyExists($"{operation}: the output blob exists already ({s.ErrorCode}); a shard is never replaced"),
        RequestFailedException { Status: 401 or 403 } s => GrpcErrors.PermissionDenied($"{operation}: storage denied access ({s.ErrorCode})"),
        RequestFailedException s => GrpcErrors.Unavailable($"{operation}: storage error {s.Status} ({s.ErrorCode})"),
        DirectoryNotFoundException or FileNotFoundException => GrpcErrors.NotFound($"{operation}: {e.Message}"),
        UnauthorizedAccessException => GrpcErrors.PermissionDenied($"{operation}: {e.Message}"),
        _ => GrpcErrors.Unexpected(e, operation, logger),
    };
}
