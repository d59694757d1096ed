using Grpc.Core;
using MriSeg.Contracts.V1;
using MriSeg.KeyRelease.Attestation;

namespace MriSeg.Trainer;

/// <summary>The clean-room run over gRPC: a thin host over <see cref="RunManager"/> and <c>MriSeg.CleanRoom</c>.</summary>
public sealed class TrainerService(RunManager runs, CleanRoomIdentity identity, IConfiguration configuration) : Contracts.V1.Trainer.TrainerBase
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

    public override Task<CleanRoomDescription> DescribeCleanRoom(DescribeCleanRoomRequest request, ServerCallContext context)
    {
        var attestation = AttestationSettings.From(configuration);
        var description = new CleanRoomDescription { PartyId = identity.PartyId, Device = identity.Settings.Device };
        if (string.Equals(attestation.Provider.Trim(), AttestationSettings.MaaProvider, StringComparison.OrdinalIgnoreCase))
        {
            // Hardware attestation: the measurement is the deployed image's digest; hospitals write their policy for the
            // VM's claims themselves (docs/examples/keybroker/release-policy.maa-cvm.json), so none is offered here.
            description.HardwareBacked = true;
            description.AttestationIssuer = attestation.MaaEndpoint ?? "";
            description.CodeMeasurement = AttestationSettings.NormalizeMeasurement(attestation.ExpectedMeasurement) ?? "";
        }
        else
        {
            var issuer = identity.Settings.AttestationIssuer;
            description.AttestationIssuer = issuer;
            description.CodeMeasurement = identity.Measurement;
            description.ReleasePolicyJson = DevelopmentAttestationAuthority.PolicyFor(issuer, identity.Measurement);
        }

        return Task.FromResult(description);
    }

    private static RpcException NotFound(string runId) => new(new Status(StatusCode.NotFound, $"run '{runId}' does not exist"));
}
