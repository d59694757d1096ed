using Azure;
using Grpc.Core;
using MriSeg.CleanRoom.Consumer;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Imaging.Slices;
using MriSeg.Learning.Torch;
using MriSeg.ServiceDefaults;

namespace MriSeg.ModelVault;

/// <summary>
/// The status each failure becomes: one line naming what failed; never key material or image content. A refused pull
/// maps by its <see cref="PullFailure"/>: an invalid request INVALID_ARGUMENT, missing outputs NOT_FOUND, a package that
/// fails a check (sealed SHA-256, signature, manifest, authentication) DATA_LOSS (the bytes are not the ones the clean
/// room sealed: retrying cannot help, and it is told apart from a policy refusal), an attestation the vault's policy does
/// not accept FAILED_PRECONDITION, and an output key the KeyBroker does not release PERMISSION_DENIED (UNAVAILABLE when
/// the broker cannot be reached, FAILED_PRECONDITION when it does not accept the vault's own credentials).
/// </summary>
internal static class Errors
{
    /// <summary>A refused pull as a status.</summary>
    public static RpcException FromPull(ModelPullException e, CancellationToken cancellationToken)
    {
        var message = OneLine(e.Message);
        return e.Failure switch
        {
            PullFailure.InvalidRequest => GrpcErrors.InvalidArgument(message),
            PullFailure.NotFound => GrpcErrors.NotFound(message),
            PullFailure.TamperedPackage => GrpcErrors.DataLoss($"refused: {message}"),
            PullFailure.AttestationRefused => GrpcErrors.FailedPrecondition($"refused: {message}"),
            PullFailure.KeyRefused => e.InnerException switch
            {
                RpcException { StatusCode: StatusCode.Unavailable or StatusCode.DeadlineExceeded } => GrpcErrors.Unavailable(message),
                RpcException { StatusCode: StatusCode.Cancelled } when !cancellationToken.IsCancellationRequested =>
                    GrpcErrors.Unavailable($"{message} (no answer in time: ModelVault:KeyBrokerTimeoutSeconds)"),
                RpcException { StatusCode: StatusCode.Unauthenticated } =>
                    GrpcErrors.FailedPrecondition($"{message} (is ModelVault:PartyKeyPath the key registered for the consumer?)"),
                _ => GrpcErrors.PermissionDenied(message),
            },
            _ => GrpcErrors.Internal(message),
        };
    }

    /// <summary>Any failure of <paramref name="operation"/> as a status; unexpected ones are logged and answered INTERNAL.</summary>
    public static RpcException Map(Exception e, string operation, ILogger logger, CancellationToken cancellationToken) => e switch
    {
        RpcException rpc => rpc,
        OperationCanceledException when cancellationToken.IsCancellationRequested => GrpcErrors.Cancelled(operation),
        ModelPullException pull => FromPull(pull, cancellationToken),
        NiftiFormatException or SliceFormatException or PreprocessException or ArgumentException => GrpcErrors.InvalidArgument($"{operation}: {OneLine(e.Message)}"),
        TorchUnavailableException torch => GrpcErrors.FailedPrecondition($"{operation}: libtorch is unavailable on the ModelVault's machine: {OneLine(torch.Message)}"),
        RequestFailedException { Status: 404 } s => GrpcErrors.NotFound($"{operation}: storage: not found ({s.ErrorCode ?? "404"})"),
        RequestFailedException s => GrpcErrors.FromStorage(s, operation),
        IOException or UnauthorizedAccessException => GrpcErrors.Unexpected(e, operation, logger, StatusCode.Unavailable),
        _ => GrpcErrors.Unexpected(e, operation, logger),
    };

    public static string OneLine(string text) => text.ReplaceLineEndings(" ");
}
