using System.Text.Json;
using System.Text.Json.Serialization;
using MriSeg.Imaging.Formats;
using MriSeg.Learning.Model;

namespace MriSeg.Learning.Training;

/// <summary>
/// The state of a training run at the end of an epoch: everything <see cref="SegmentationTrainer.Train"/> needs to go
/// on from there (<see cref="TrainingOptions.Resume"/>). Weights, the EMA averages, the best-validation weights and the
/// optimiser's state (Adam moments and step counts, or SGD momentum buffers) as tensors; the step count the accountant
/// had composed, the epoch history, model selection and counters as numbers. Not in it, on purpose: the DP noise and
/// the Poisson sampling come from the OS CSPRNG and are drawn fresh after a resume (replaying them would correlate the
/// noise of two steps); the other random streams (slice choice, augmentation, the non-private shuffle) are derived
/// from (seed, epoch) at every epoch start, so the epoch number is their state.
/// </summary>
/// <remarks>
/// The bytes (<see cref="ToBytes"/>) are a safetensors file: tensors <c>model/…</c>, <c>ema/…</c>, <c>best/…</c>,
/// <c>optimizer/&lt;i&gt;/…</c> and the numbers as JSON in the metadata entry <c>mriseg.checkpoint</c>. They hold the
/// training state in the clear (and the per-epoch training loss, which is not differentially private): a clean room
/// seals them before they leave memory.
/// </remarks>
public sealed class TrainingCheckpoint
{
    /// <summary>The <c>format</c> of the metadata document.</summary>
    public const string Format = "mriseg.training_checkpoint";

    /// <summary>The format version this code writes and reads.</summary>
    public const int Version = 1;

    /// <summary>The safetensors metadata key of the numbers.</summary>
    public const string MetadataKey = "mriseg.checkpoint";

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    /// <summary>Epochs finished.</summary>
    public required int Epoch { get; init; }

    /// <summary>
    /// Steps the accountant had composed at this point: this attempt's and every earlier attempt's, including steps an
    /// interruption discarded (<see cref="LostSteps"/>).
    /// </summary>
    public required long Steps { get; init; }

    /// <summary>Of <see cref="Steps"/>, the steps whose updates an interruption discarded (they still count as spent).</summary>
    public long LostSteps { get; init; }

    /// <summary>The plan of the run (a resumed run must have the same one).</summary>
    public required TrainingPlan Plan { get; init; }

    /// <summary>The model architecture.</summary>
    public required UNetConfig Model { get; init; }

    /// <summary>The epoch history so far.</summary>
    public required IReadOnlyList<EpochSummary> Epochs { get; init; }

    /// <summary>The epoch of the best validation so far.</summary>
    public int? BestEpoch { get; init; }

    /// <summary>Its validation Dice.</summary>
    public double? BestValidationDice { get; init; }

    /// <summary>Validations since the best one (early stopping).</summary>
    public int SinceBest { get; init; }

    /// <summary>Set when the run decided to stop at this epoch ("early stopping"); a resume then trains no further.</summary>
    public string? StopReason { get; init; }

    /// <summary>Slices processed so far.</summary>
    public long SlicesProcessed { get; init; }

    /// <summary>Patient gradients computed so far.</summary>
    public long PatientsProcessed { get; init; }

    /// <summary>Seconds inside steps so far.</summary>
    public double StepSeconds { get; init; }

    /// <summary>Wall seconds of training so far.</summary>
    public double TrainSeconds { get; init; }

    /// <summary>Updates of the EMA so far (its warm-up).</summary>
    public long EmaUpdates { get; init; }

    /// <summary>The optimiser ("adam", "adamw", "sgd").</summary>
    public required string OptimizerKind { get; init; }

    /// <summary>The optimiser's per-parameter step counts (Adam, AdamW; empty for SGD).</summary>
    public IReadOnlyList<long> OptimizerSteps { get; init; } = [];

    /// <summary>The weights, named as <see cref="UNetLayout.ParameterNames"/>.</summary>
    public required IReadOnlyList<SafeTensor> Weights { get; init; }

    /// <summary>The EMA averages (same names), or null without EMA.</summary>
    public IReadOnlyList<SafeTensor>? Ema { get; init; }

    /// <summary>The best-validation weights kept so far (same names), or null.</summary>
    public IReadOnlyList<SafeTensor>? Best { get; init; }

    /// <summary>The optimiser's tensors, named <c>&lt;parameter index&gt;/&lt;field&gt;</c>.</summary>
    public required IReadOnlyList<SafeTensor> OptimizerTensors { get; init; }

    /// <summary>The checkpoint as bytes (a safetensors file; see the remarks).</summary>
    public byte[] ToBytes()
    {
        var numbers = new Numbers(Format, Version, Epoch, Steps, LostSteps, Plan, Model.ToJson(), [.. Epochs], BestEpoch, BestValidationDice, SinceBest, StopReason,
            SlicesProcessed, PatientsProcessed, StepSeconds, TrainSeconds, EmaUpdates, OptimizerKind, [.. OptimizerSteps], Ema is not null, Best is not null);
        var tensors = Prefixed("model/", Weights)
            .Concat(Prefixed("ema/", Ema ?? []))
            .Concat(Prefixed("best/", Best ?? []))
            .Concat(Prefixed("optimizer/", OptimizerTensors));
        return SafeTensors.Serialize(tensors, new Dictionary<string, string> { [MetadataKey] = JsonSerializer.Serialize(numbers, JsonOptions) });
    }

    /// <summary>Reads a checkpoint written by <see cref="ToBytes"/>.</summary>
    /// <exception cref="FormatException">Not a checkpoint of this version, or incomplete.</exception>
    public static TrainingCheckpoint FromBytes(ReadOnlyMemory<byte> bytes)
    {
        SafeTensorsFile file;
        Numbers numbers;
        try
        {
            file = SafeTensors.Parse(bytes);
            numbers = file.Metadata.TryGetValue(MetadataKey, out var json)
                ? JsonSerializer.Deserialize<Numbers>(json, JsonOptions) ?? throw new FormatException("the checkpoint's metadata is null.")
                : throw new FormatException($"the file has no '{MetadataKey}' metadata: it is not a training checkpoint.");
        }
        catch (JsonException e)
        {
            throw new FormatException($"the checkpoint's metadata is unreadable: {e.Message}", e);
        }

        if (numbers.Format != Format || numbers.Version != Version)
        {
            throw new FormatException($"the checkpoint is '{numbers.Format}' version {numbers.Version}; this code reads '{Format}' version {Version}.");
        }

        if (numbers.Plan is null || numbers.Epochs is null || numbers.Model is null || numbers.OptimizerKind is null || numbers.Steps < 0 || numbers.LostSteps < 0 || numbers.LostSteps > numbers.Steps)
        {
            throw new FormatException("the checkpoint's numbers are incomplete or inconsistent.");
        }

        List<SafeTensor> Section(string prefix) =>
            [.. file.Tensors.Where(t => t.Name.StartsWith(prefix, StringComparison.Ordinal)).Select(t => new SafeTensor(t.Name[prefix.Length..], t.DType, t.Shape, t.Data))];

        var model = UNetConfig.FromJson(numbers.Model);
        var layout = UNetLayout.For(model).ParameterNames;
        List<SafeTensor> Ordered(string prefix)
        {
            var found = Section(prefix).ToDictionary(t => t.Name, StringComparer.Ordinal);
            return found.Count == layout.Count && layout.All(found.ContainsKey)
                ? [.. layout.Select(n => found[n])]
                : throw new FormatException($"the checkpoint's '{prefix.TrimEnd('/')}' tensors do not match the model layout ({found.Count} of {layout.Count}).");
        }

        return new TrainingCheckpoint
        {
            Epoch = numbers.Epoch,
            Steps = numbers.Steps,
            LostSteps = numbers.LostSteps,
            Plan = numbers.Plan,
            Model = model,
            Epochs = numbers.Epochs,
            BestEpoch = numbers.BestEpoch,
            BestValidationDice = numbers.BestValidationDice,
            SinceBest = numbers.SinceBest,
            StopReason = numbers.StopReason,
            SlicesProcessed = numbers.SlicesProcessed,
            PatientsProcessed = numbers.PatientsProcessed,
            StepSeconds = numbers.StepSeconds,
            TrainSeconds = numbers.TrainSeconds,
            EmaUpdates = numbers.EmaUpdates,
            OptimizerKind = numbers.OptimizerKind,
            OptimizerSteps = numbers.OptimizerSteps ?? [],
            Weights = Ordered("model/"),
            Ema = numbers.HasEma ? Ordered("ema/") : null,
            Best = numbers.HasBest ? Ordered("best/") : null,
            OptimizerTensors = Section("optimizer/"),
        };
    }

    private static IEnumerable<SafeTensor> Prefixed(string prefix, IEnumerable<SafeTensor> tensors) =>
        tensors.Select(t => new SafeTensor(prefix + t.Name, t.DType, t.Shape, t.Data));

    private sealed record Numbers(
        string Format, int Version, int Epoch, long Steps, long LostSteps, TrainingPlan Plan, string Model, EpochSummary[] Epochs, int? BestEpoch,
        double? BestValidationDice, int SinceBest, string? StopReason, long SlicesProcessed, long PatientsProcessed, double StepSeconds, double TrainSeconds,
        long EmaUpdates, string OptimizerKind, long[]? OptimizerSteps, bool HasEma, bool HasBest);
}

/// <summary>
/// Where a run resumes: the state of its last checkpoint (if any) and every step an earlier attempt may have taken.
/// </summary>
/// <remarks>
/// Steps taken after the last checkpoint were lost with the interrupted attempt, but they were spent: their noisy
/// gradients were computed from the training data. <see cref="StepsSpent"/> is composed by the accountant before the
/// first new step, so the run ends at the same planned step count (and ε) as an uninterrupted one; it trains only the
/// remaining steps.
/// </remarks>
public sealed record TrainingResume
{
    /// <summary>The state to start from; null starts from the initial weights (no checkpoint was written).</summary>
    public TrainingCheckpoint? From { get; init; }

    /// <summary>Steps every earlier attempt may have taken (at least <see cref="From"/>'s steps).</summary>
    public required long StepsSpent { get; init; }
}
