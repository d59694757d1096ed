using MriSeg.ServiceDefaults;
using System.Threading.Channels;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using MriSeg.CleanRoom.Consumer;
using MriSeg.KeyRelease;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.ModelVault;

/// <summary>
/// The model consumer's (TDC's) side. Before a run (phase 4) it makes the consumer's output key and imports it at the
/// KeyBroker. Phase 6: it pulls a run's sealed outputs, verifies their provenance, decrypts them
/// with the consumer's own output key, registers the model (table <c>modelvault</c> and the models folder), lists the
/// registered models, and segments NIfTI volumes and PNG slices with them. The README's ModelVault section has the details.
/// </summary>
public sealed class ModelVaultService(ConsumerParty consumer, ModelRegistry registry, Segmentations segmentations, ILogger<ModelVaultService> logger)
    : V1.ModelVault.ModelVaultBase
{
    public override async Task PullModel(V1.PullModelRequest request, IServerStreamWriter<V1.PullModelProgress> responseStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        var jobId = Guid.NewGuid().ToString("n");
        var step = 0;
        V1.PullModelProgress Message(V1.JobState state, string stepName, string message, string? error = null) => new()
        {
            Progress = new V1.JobProgress
            {
                JobId = jobId, State = state, Step = stepName, Message = message, Done = step, Unit = "steps",
                At = Timestamp.FromDateTimeOffset(DateTimeOffset.UtcNow), Error = error ?? "",
            },
        };

        // The library reports synchronously; its messages are queued and written here, one write at a time.
        var messages = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
        Task<V1.ModelRecord>? pull = null;
        try
        {
            await responseStream.WriteAsync(Message(V1.JobState.Running, "starting", $"pulling run {Ids.Printable(request.RunId)}"), ct);
            pull = RunPullAsync();
            await foreach (var text in messages.Reader.ReadAllAsync(ct))
            {
                step++;
                await responseStream.WriteAsync(Message(V1.JobState.Running, StepOf(text), text), ct);
            }

            var record = await pull;
            step++;
            var done = Message(V1.JobState.Succeeded, "registered", $"registered model {record.ModelId}");
            done.Model = record;
            await responseStream.WriteAsync(done, ct);
        }
        catch (Exception e)
        {
            if (pull is not null && !pull.IsCompleted)
            {
                // The stream failed first (the client left): let the pull end before answering.
                try
                {
                    await pull;
                }
                catch (Exception)
                {
                    // Its own outcome is not the stream's failure.
                }
            }

            var status = Errors.Map(e, "PullModel", logger, ct);
            if (e is ModelPullException refused)
            {
                logger.LogWarning("Pull of run {RunId} refused ({Failure}): {Reason}", Ids.Printable(request.RunId), refused.Failure, refused.Message);
            }

            if (!ct.IsCancellationRequested)
            {
                try
                {
                    await responseStream.WriteAsync(Message(V1.JobState.Failed, "failed", status.Status.Detail, status.Status.Detail), ct);
                }
                catch (Exception write) when (write is InvalidOperationException or IOException or OperationCanceledException)
                {
                    // The stream is gone or a write was pending: the status carries the reason.
                }
            }

            throw status;
        }

        async Task<V1.ModelRecord> RunPullAsync()
        {
            try
            {
                return await consumer.PullAsync(request, text => messages.Writer.TryWrite(text), ct);
            }
            finally
            {
                messages.Writer.TryComplete();
            }
        }
    }

    public override async Task<V1.CreateOutputKeyResponse> CreateOutputKey(V1.CreateOutputKeyRequest request, ServerCallContext context)
    {
        try
        {
            return await consumer.CreateOutputKeyAsync(request, context.CancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "CreateOutputKey", logger, context.CancellationToken);
        }
    }

    public override async Task<V1.ListModelsResponse> ListModels(V1.ListModelsRequest request, ServerCallContext context)
    {
        try
        {
            var response = new V1.ListModelsResponse();
            response.Models.AddRange(await registry.ListAsync(context.CancellationToken));
            return response;
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "ListModels", logger, context.CancellationToken);
        }
    }

    public override async Task<V1.ModelRecord> GetModel(V1.GetModelRequest request, ServerCallContext context)
    {
        try
        {
            if (!Ids.IsName(request.ModelId))
            {
                throw GrpcErrors.InvalidArgument($"model_id '{Ids.Printable(request.ModelId)}' is not a model id ({Ids.NameRule})");
            }

            return await registry.GetAsync(request.ModelId, context.CancellationToken)
                ?? throw GrpcErrors.NotFound($"no model '{request.ModelId}' is registered (ListModels lists them; PullModel registers a run's model)");
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "GetModel", logger, context.CancellationToken);
        }
    }

    public override async Task<V1.SegmentResponse> Segment(V1.SegmentRequest request, ServerCallContext context)
    {
        try
        {
            return await segmentations.SegmentAsync(request, context.CancellationToken);
        }
        catch (Exception e)
        {
            throw Errors.Map(e, "Segment", logger, context.CancellationToken);
        }
    }

    /// <summary>The step of a library message: its first word ("downloading", "verifying", "obtaining", "registering").</summary>
    private static string StepOf(string message)
    {
        var space = message.IndexOf(' ', StringComparison.Ordinal);
        return space > 0 ? message[..space] : message;
    }
}
