using MriSeg.Learning.Model;
using MriSeg.Privacy;
using static TorchSharp.torch;

namespace MriSeg.Learning.Training;

/// <summary>How a run executes (everything that is not part of the recipe).</summary>
public sealed record TrainingOptions
{
    /// <summary>Device to train on; CPU when null.</summary>
    public Device? Device { get; init; }

    /// <summary>Called after every step and every epoch, on the training thread (keep it quick).</summary>
    public Action<TrainingProgress>? Progress { get; init; }

    /// <summary>Stops the run between steps (an <see cref="OperationCanceledException"/> is thrown).</summary>
    public CancellationToken CancellationToken { get; init; }

    /// <summary>Weights to start from (a base model to fine-tune); its config must equal the run's model config. Copied, not changed.</summary>
    public UNet2d? InitialModel { get; init; }

    /// <summary>
    /// INSECURE, tests only: draw the DP noise and the Poisson sampling from generators seeded with this value, so a
    /// run repeats exactly. Anyone who knows the seed can remove the noise and knows every batch: a model trained
    /// this way has no privacy. Null (the default) uses the OS CSPRNG for both.
    /// </summary>
    public ulong? InsecureDeterministicPrivacySeed { get; init; }

    /// <summary>
    /// Continues an interrupted run: from its last checkpoint's state (when there is one), with every step an earlier
    /// attempt may have taken composed by the accountant first, so only the remaining planned steps run. The plan (q, σ,
    /// steps, N) and the model must be the checkpoint's. Null starts a new run.
    /// </summary>
    public TrainingResume? Resume { get; init; }

    /// <summary>
    /// Called at the end of every epoch (after validation, the last epoch included) with the run's state, on the
    /// training thread; the run waits for it. A clean room seals and stores it; null (the default) snapshots nothing.
    /// </summary>
    public Action<TrainingCheckpoint>? Checkpoint { get; init; }

    /// <summary>
    /// Called before each chunk of steps (an epoch) with the step count the chunk may reach, the accountant's count
    /// (earlier attempts' steps included); no step of the chunk starts before it returns. The place to make a durable
    /// record of the steps that may be spent, so that a run killed mid-chunk is charged the whole chunk on resume.
    /// </summary>
    public Action<long>? BeforeSteps { get; init; }
}

/// <summary>What a progress report is about.</summary>
public enum TrainingEventKind
{
    /// <summary>A step finished.</summary>
    Step,

    /// <summary>An epoch finished (validation, when due, included).</summary>
    Epoch,
}

/// <summary>
/// One progress report. Loss is the batch's mean per-patient training loss: computed from the clear data, so it is
/// NOT differentially private (fine for a local run's log; a clean room must not release it per step).
/// </summary>
/// <param name="Kind">Step or epoch.</param>
/// <param name="Epoch">1-based epoch (the one in progress for a step).</param>
/// <param name="Step">Steps done.</param>
/// <param name="TotalSteps">Steps planned (within the budget).</param>
/// <param name="Loss">Step: this step's mean loss; epoch: the epoch's mean step loss.</param>
/// <param name="ValidationDice">Epoch: validation Dice when validated; else null.</param>
/// <param name="Epsilon">
/// ε spent so far (DP; null when non-private). Epoch reports and every step under RDP: the accountant's value. Steps
/// under PRV: ε at the next of 32 step counts computed before training, an upper bound (ε grows with the steps).
/// </param>
/// <param name="SamplesPerSecond">Slices (augmented copies included) per second of step time so far.</param>
/// <param name="LearningRate">The rate used by the last step.</param>
/// <param name="Patients">Step: patients in the batch (Poisson: random). Epoch: patients seen in the epoch.</param>
/// <param name="Slices">Step: slices in the batch (copies included). Epoch: slices in the epoch.</param>
/// <param name="ElapsedSeconds">Wall time since training started.</param>
public sealed record TrainingProgress(
    TrainingEventKind Kind,
    int Epoch,
    long Step,
    long TotalSteps,
    double Loss,
    double? ValidationDice,
    double? Epsilon,
    double SamplesPerSecond,
    double LearningRate,
    int Patients,
    int Slices,
    double ElapsedSeconds);

/// <summary>One epoch of the history (the curves).</summary>
/// <param name="Epoch">1-based epoch.</param>
/// <param name="Steps">Steps done at its end.</param>
/// <param name="MeanLoss">Mean step loss over the epoch (not DP; see <see cref="TrainingProgress"/>).</param>
/// <param name="ValidationDice">Validation Dice, when validated.</param>
/// <param name="ValidationIoU">Validation IoU, when validated.</param>
/// <param name="Epsilon">ε spent at its end (DP).</param>
/// <param name="Seconds">Wall time since the start at its end.</param>
public sealed record EpochSummary(int Epoch, long Steps, double MeanLoss, double? ValidationDice, double? ValidationIoU, double? Epsilon, double Seconds);

/// <summary>The numbers fixed before the first step.</summary>
/// <param name="Mode">DP or non-private.</param>
/// <param name="TrainingPatients">N: patients with at least one slice in the training data.</param>
/// <param name="SampleRate">q = min(1, batch / N) (non-private: the share of patients per step).</param>
/// <param name="PlannedSteps">Steps to run: ⌈epochs / q⌉ (DP) or epochs × ⌈N / batch⌉ (non-private), cut to the budget.</param>
/// <param name="StepsPerEpoch">Steps that make one epoch (1/q rounded for DP).</param>
/// <param name="NoiseMultiplier">σ (0 when non-private).</param>
/// <param name="ClipNorm">C (0 when non-private).</param>
/// <param name="Accountant">Accountant (DP).</param>
/// <param name="TargetEpsilon">The ε budget (DP; null otherwise).</param>
/// <param name="Delta">δ (DP; null otherwise).</param>
/// <param name="PlannedEpsilon">ε after <see cref="PlannedSteps"/> (DP; null otherwise); never above the target.</param>
public sealed record TrainingPlan(
    PrivacyMode Mode,
    int TrainingPatients,
    double SampleRate,
    long PlannedSteps,
    long StepsPerEpoch,
    double NoiseMultiplier,
    double ClipNorm,
    AccountantKind Accountant,
    double? TargetEpsilon,
    double? Delta,
    double? PlannedEpsilon);

/// <summary>The privacy a finished run spent (DP).</summary>
/// <param name="Epsilon">ε spent by the steps taken (the accountant's upper bound).</param>
/// <param name="Delta">δ.</param>
/// <param name="TargetEpsilon">The budget.</param>
/// <param name="NoiseMultiplier">σ.</param>
/// <param name="ClipNorm">C.</param>
/// <param name="SampleRate">q.</param>
/// <param name="Steps">Steps taken (each counted by the accountant).</param>
/// <param name="Accountant">"prv" or "rdp".</param>
/// <param name="TrainingPatients">N.</param>
/// <param name="NoiseGenerator">Where the noise came from.</param>
/// <param name="SecureRandomness">True when both the noise and the Poisson sampling came from the OS CSPRNG.</param>
public sealed record PrivacySpent(
    double Epsilon,
    double Delta,
    double TargetEpsilon,
    double NoiseMultiplier,
    double ClipNorm,
    double SampleRate,
    long Steps,
    string Accountant,
    int TrainingPatients,
    string NoiseGenerator,
    bool SecureRandomness);

/// <summary>A finished run: the chosen weights, the history, the privacy spent and the timings.</summary>
public sealed class TrainingResult : IDisposable
{
    internal TrainingResult(
        UNet2d model, TrainingConfig config, TrainingPlan plan, IReadOnlyList<EpochSummary> epochs, PrivacySpent? privacy, long steps,
        int? bestEpoch, double? bestValidationDice, string stopReason, double trainSeconds, double stepSeconds, long slices, long patients, long lostSteps = 0)
    {
        LostSteps = lostSteps;
        Model = model;
        Config = config;
        Plan = plan;
        Epochs = epochs;
        Privacy = privacy;
        Steps = steps;
        BestEpoch = bestEpoch;
        BestValidationDice = bestValidationDice;
        StopReason = stopReason;
        TrainSeconds = trainSeconds;
        StepSeconds = stepSeconds;
        SlicesProcessed = slices;
        PatientsProcessed = patients;
    }

    /// <summary>The model to keep: best-validation or last weights, EMA-averaged when configured. Owned by this result.</summary>
    public UNet2d Model { get; }

    /// <summary>The configuration the run used (model config resolved).</summary>
    public TrainingConfig Config { get; }

    /// <summary>The plan.</summary>
    public TrainingPlan Plan { get; }

    /// <summary>Per-epoch history.</summary>
    public IReadOnlyList<EpochSummary> Epochs { get; }

    /// <summary>Privacy spent (null when non-private).</summary>
    public PrivacySpent? Privacy { get; }

    /// <summary>Steps taken, counted as the accountant counts them: a resumed run's include its earlier attempts' (<see cref="LostSteps"/> too).</summary>
    public long Steps { get; }

    /// <summary>Of <see cref="Steps"/>, the steps taken by interrupted attempts after their last checkpoint: spent, but their updates were discarded.</summary>
    public long LostSteps { get; }

    /// <summary>The epoch whose weights <see cref="Model"/> holds when chosen on validation; null otherwise.</summary>
    public int? BestEpoch { get; }

    /// <summary>Its validation Dice.</summary>
    public double? BestValidationDice { get; }

    /// <summary>"completed", "privacy budget", or "early stopping".</summary>
    public string StopReason { get; }

    /// <summary>Wall time of the whole run (validation included).</summary>
    public double TrainSeconds { get; }

    /// <summary>Wall time inside training steps.</summary>
    public double StepSeconds { get; }

    /// <summary>Slices through forward and backward passes (augmented copies counted).</summary>
    public long SlicesProcessed { get; }

    /// <summary>Patient gradients computed (sum of batch sizes).</summary>
    public long PatientsProcessed { get; }

    /// <summary>Slices per second of step time.</summary>
    public double SamplesPerSecond => StepSeconds > 0 ? SlicesProcessed / StepSeconds : 0;

    /// <inheritdoc/>
    public void Dispose() => Model.Dispose();
}
