using Grpc.Core;
using MriSeg.Contracts.V1;

namespace MriSeg.Trainer;

/// <summary>The clean-room run over gRPC: a thin host over <see cref="RunManager"/> and <c>MriSeg.CleanRoom</c>.</summary>
public sealed class TrainerService(RunManager runs) : Contracts.V1.Trainer.TrainerBase
{
    public override async Task<RunInfo> StartRun(StartRunRequest request, ServerCallContext context)
    {
        if (string.IsNullOrEmpty(request.Consumer) || request.Datasets.Count == 0 || request.Pipeline is null || string.IsNullOrEmpty(request.OutputKeyId))
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, "consumer, datasets, pipeline and output_key_id are required"));
        }

        return await runs.StartAsync(request, context.CancellationToken);
    }

    public override async Task WatchRun(WatchRunRequest request, IServerStreamWriter<RunProgress> responseStream, ServerCallContext context)
    {
        _ = await runs.GetAsync(request.RunId, context.CancellationToken) ?? throw NotFound(request.RunId);
        await foreach (var p in runs.WatchAsync(request.RunId, context.CancellationToken))
        {
            await responseStream.WriteAsync(p, context.CancellationToken);
        }
    }

    public override async Task<RunInfo> GetRun(GetRunRequest request, ServerCallContext context) =>
        await runs.GetAsync(request.RunId, context.CancellationToken) ?? throw NotFound(request.RunId);

    public override async Task<ListRunsResponse> ListRuns(ListRunsRequest request, ServerCallContext context)
    {
        var response = new ListRunsResponse();
        response.Runs.AddRange(await runs.ListAsync(request.Consumer, context.CancellationToken));
        return response;
    }

    public override async Task<RunInfo> CancelRun(CancelRunRequest request, ServerCallContext context) =>
        await runs.CancelAsync(request.RunId, request.Reason, context.CancellationToken) ?? throw NotFound(request.RunId);

    private static RpcException NotFound(string runId) => new(new Status(StatusCode.NotFound, $"run '{runId}' does not exist"));
}
