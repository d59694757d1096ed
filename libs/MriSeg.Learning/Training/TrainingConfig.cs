using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using MriSeg.Learning.Model;
using MriSeg.Learning.PerSample;
using MriSeg.Privacy;

namespace MriSeg.Learning.Training;

/// <summary>Private (patient-level DP-SGD) or ordinary training.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<PrivacyMode>))]
public enum PrivacyMode
{
    /// <summary>Patient-level DP-SGD: Poisson sampling, per-patient clipping, Gaussian noise, accountant.</summary>
    [JsonStringEnumMemberName("dp")]
    Dp,

    /// <summary>No clipping and no noise; shuffled minibatches of patients (baselines only).</summary>
    [JsonStringEnumMemberName("non_private")]
    NonPrivate,
}

/// <summary>The optimiser applied to the (privatised) gradient.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<OptimizerKind>))]
public enum OptimizerKind
{
    /// <summary>Adam (DP-Adam under DP: Adam on the noisy gradient; the moments are post-processing).</summary>
    [JsonStringEnumMemberName("adam")]
    Adam,

    /// <summary>AdamW: Adam with decoupled weight decay.</summary>
    [JsonStringEnumMemberName("adamw")]
    AdamW,

    /// <summary>SGD with (optionally Nesterov) momentum.</summary>
    [JsonStringEnumMemberName("sgd")]
    Sgd,
}

/// <summary>Learning-rate schedule over the planned steps.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ScheduleKind>))]
public enum ScheduleKind
{
    /// <summary>The base learning rate throughout (after any warm-up).</summary>
    [JsonStringEnumMemberName("constant")]
    Constant,

    /// <summary>Cosine decay from the base rate to <see cref="ScheduleConfig.FinalFraction"/> of it.</summary>
    [JsonStringEnumMemberName("cosine")]
    Cosine,
}

/// <summary>The training loss (per slice; a patient's slices combine by <see cref="TrainingConfig.SliceReduction"/>).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<LossKind>))]
public enum LossKind
{
    /// <summary>Binary cross-entropy + soft Dice.</summary>
    [JsonStringEnumMemberName("bce_dice")]
    BceDice,

    /// <summary>Soft Dice alone.</summary>
    [JsonStringEnumMemberName("dice")]
    Dice,

    /// <summary>Soft Dice + L1 between probabilities and masks (the reference system's loss).</summary>
    [JsonStringEnumMemberName("dice_l1")]
    DiceL1,

    /// <summary>Binary cross-entropy alone.</summary>
    [JsonStringEnumMemberName("bce")]
    Bce,

    /// <summary>
    /// Binary cross-entropy + soft Tversky (Salehi et al. 2017): missed tumour pixels weigh
    /// <see cref="TrainingConfig.TverskyBeta"/>, false alarms 1 − that (½ each is soft Dice).
    /// </summary>
    [JsonStringEnumMemberName("bce_tversky")]
    BceTversky,

    /// <summary>Binary cross-entropy + the Lovász hinge (a convex surrogate of each sample's 1 − IoU; Berman et al. 2018).</summary>
    [JsonStringEnumMemberName("bce_lovasz")]
    BceLovasz,
}

/// <summary>How each step sees a patient and what privacy it buys.</summary>
public sealed record PrivacyConfig
{
    /// <summary>DP-SGD (default) or non-private.</summary>
    public PrivacyMode Mode { get; init; } = PrivacyMode.Dp;

    /// <summary>Target ε for the whole run (DP only).</summary>
    public double Epsilon { get; init; } = 8;

    /// <summary>δ; must be below 1 / (training patients).</summary>
    public double Delta { get; init; } = 1e-5;

    /// <summary>"prv" (tight, default) or "rdp".</summary>
    public string Accountant { get; init; } = "prv";

    /// <summary>C: each patient's gradient (over its slices and augmentations) is clipped to this L2 norm.</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>σ; null (default) calibrates the smallest σ that keeps the planned steps within (ε, δ).</summary>
    public double? NoiseMultiplier { get; init; }
}

/// <summary>Optimiser settings.</summary>
public sealed record OptimizerConfig
{
    /// <summary>adam, adamw or sgd.</summary>
    public OptimizerKind Kind { get; init; } = OptimizerKind.Adam;

    /// <summary>Base learning rate.</summary>
    public double LearningRate { get; init; } = 2e-3;

    /// <summary>SGD momentum.</summary>
    public double Momentum { get; init; } = 0.9;

    /// <summary>Nesterov momentum for SGD.</summary>
    public bool Nesterov { get; init; }

    /// <summary>Adam β1.</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>Adam β2.</summary>
    public double Beta2 { get; init; } = 0.999;

    /// <summary>Adam ε.</summary>
    public double Epsilon { get; init; } = 1e-8;

    /// <summary>Weight decay (L2 for adam and sgd, decoupled for adamw).</summary>
    public double WeightDecay { get; init; }
}

/// <summary>Learning-rate schedule.</summary>
public sealed record ScheduleConfig
{
    /// <summary>constant or cosine.</summary>
    public ScheduleKind Kind { get; init; } = ScheduleKind.Cosine;

    /// <summary>Steps of linear warm-up from 0.</summary>
    public int WarmupSteps { get; init; }

    /// <summary>Cosine: the last step's rate as a fraction of the base rate.</summary>
    public double FinalFraction { get; init; } = 0.05;
}

/// <summary>
/// Random per-slice augmentation, applied inside the per-patient pipeline (before clipping), so a patient's
/// clipped gradient already averages over its augmented copies.
/// </summary>
public sealed record AugmentationConfig
{
    /// <summary>Mirror left-right with probability ½.</summary>
    public bool HorizontalFlip { get; init; } = true;

    /// <summary>Mirror anterior-posterior with probability ½.</summary>
    public bool VerticalFlip { get; init; }

    /// <summary>Rotation uniform in ±this many degrees.</summary>
    public double RotationDegrees { get; init; } = 10;

    /// <summary>Isotropic scaling uniform in 1 ± this.</summary>
    public double Scale { get; init; } = 0.1;

    /// <summary>
    /// Elastic deformation: the displacement, in pixels, of a smooth random field added to the affine resampling
    /// (0: off). Each of <see cref="ElasticControlPoints"/>² control points moves uniformly in ± this along each axis;
    /// the field between them is bicubic (so it may overshoot a control point's displacement a little).
    /// </summary>
    public double ElasticPixels { get; init; }

    /// <summary>Control points per side of the elastic displacement field: fewer give smoother, larger-scale warps.</summary>
    public int ElasticControlPoints { get; init; } = 4;

    /// <summary>Per-channel intensity gain uniform in 1 ± this (brain pixels only).</summary>
    public double IntensityScale { get; init; } = 0.1;

    /// <summary>Per-channel intensity offset uniform in ± this (brain pixels only; intensities are z-scores).</summary>
    public double IntensityShift { get; init; } = 0.1;

    /// <summary>
    /// K: augmented copies of every chosen slice per step; the patient's gradient averages over them before
    /// clipping (augmentation multiplicity, De et al. 2022). Costs K times the compute; no privacy cost.
    /// </summary>
    public int Multiplicity { get; init; } = 1;

    /// <summary>
    /// Tumour copy-paste: the probability that a slice with tumour receives another slice's tumour, shrunk to a random
    /// <see cref="TumourPasteMinScale"/>..1 of its size, moved to a random place and kept only inside the receiving
    /// brain (images and labels both; 0: off). Aimed at the small tumours a model misses. It mixes two patients'
    /// slices, so it is for non-private training only: a DP recipe that sets it is refused.
    /// </summary>
    public double TumourPaste { get; init; }

    /// <summary>The smallest linear scale of a pasted tumour (uniform between this and 1).</summary>
    public double TumourPasteMinScale { get; init; } = 0.25;

    /// <summary>No augmentation at all.</summary>
    public static AugmentationConfig None { get; } = new()
    {
        HorizontalFlip = false, VerticalFlip = false, RotationDegrees = 0, Scale = 0, IntensityScale = 0, IntensityShift = 0,
    };

    /// <summary>True when any random transform is on.</summary>
    [JsonIgnore]
    public bool IsEnabled => IsGeometric || IntensityScale > 0 || IntensityShift > 0 || TumourPaste > 0;

    /// <summary>True when a transform moves pixels (flips, rotation, scale or elastic deformation).</summary>
    [JsonIgnore]
    public bool IsGeometric => HorizontalFlip || VerticalFlip || RotationDegrees > 0 || Scale > 0 || ElasticPixels > 0;
}

/// <summary>Validation during training.</summary>
public sealed record ValidationConfig
{
    /// <summary>Validate every this many epochs (and after the last).</summary>
    public int EveryEpochs { get; init; } = 1;

    /// <summary>Stop after this many validations without a better Dice (0: never stop early).</summary>
    public int Patience { get; init; }

    /// <summary>Return the weights of the best validation Dice rather than the last ones.</summary>
    public bool KeepBest { get; init; } = true;

    /// <summary>Also compute HD95 on the validation patients (slower; Dice and IoU are always computed).</summary>
    public bool ComputeHd95 { get; init; }
}

/// <summary>The train/validation/test split by patient.</summary>
public sealed record SplitConfig
{
    /// <summary>Share of patients for validation (model selection).</summary>
    public double ValidationFraction { get; init; } = 0.1;

    /// <summary>Share of patients held out for the final test.</summary>
    public double TestFraction { get; init; } = 0.15;

    /// <summary>Keep the share of tumour-free patients equal across the parts.</summary>
    public bool Stratify { get; init; } = true;
}

/// <summary>How held-out patients are scored (test split, <c>mriseg evaluate</c>, cross-validation).</summary>
public sealed record EvaluationConfig
{
    /// <summary>A pixel is tumour when the model's probability exceeds this.</summary>
    public double Threshold { get; init; } = 0.5;

    /// <summary>Test-time augmentation: average the probabilities of each slice and of its left-right mirror.</summary>
    public bool MirrorAveraging { get; init; }

    /// <summary>
    /// Post-processing: predicted regions (8-connected in a slice) of fewer pixels of the recipe's grid than this are
    /// removed before scoring and in segmentations (<see cref="Metrics.SmallRegions"/>); 0 (default) keeps them all.
    /// </summary>
    public int MinRegionPixels { get; init; }

    /// <summary>The evaluator's options.</summary>
    public Metrics.EvaluationOptions ToOptions(bool computeHd95 = true) =>
        new() { Threshold = Threshold, MirrorAveraging = MirrorAveraging, MinRegionPixels = MinRegionPixels, ComputeHd95 = computeHd95 };
}

/// <summary>
/// Everything a training run needs besides the data: the model, the privacy mode and budget, the sampling,
/// the optimiser and schedule, augmentation, EMA, validation and the split. The JSON form (snake_case) is the
/// file <c>mriseg train --config</c> reads; unknown keys are errors, missing keys take the defaults below.
/// </summary>
public sealed record TrainingConfig
{
    /// <summary>The architecture; null takes the reference U-Net with in/out channels from the data.</summary>
    public UNetConfig? Model { get; init; }

    /// <summary>How raw case folders become slices for this recipe; null: the pre-processor's defaults (and no check of shards).</summary>
    public PreprocessingConfig? Preprocessing { get; init; }

    /// <summary>
    /// A model folder (model.safetensors and config.json) whose weights start the run, e.g. a base model pre-trained on
    /// generated phantoms (<c>configs/phantoms-base.json</c>); its architecture must equal <see cref="Model"/>. Read by local
    /// training (<c>mriseg train</c>, <c>mriseg bench quality</c>); a relative path is resolved from the current folder,
    /// else from the config file's folder and the one above it. The clean room takes its base model from the run
    /// request (sealed by the consumer), not from this path. Null: random initial weights.
    /// </summary>
    public string? BaseModel { get; init; }

    /// <summary>
    /// The parameters to train, as name patterns (<see cref="UNetLayout.SelectTrainable"/>: a parameter is trained when its
    /// name starts with one of them, * matching any characters, e.g. <c>["up_samples.", "up_convs.", "out_conv."]</c> for
    /// the decoder and head, <c>["*.bias", "*.conv.1.", "*.conv.4.", "out_conv."]</c> for biases, GroupNorm affines and head);
    /// the others stay at their initial (base-model) values: no gradient, no part in the per-patient clipping norm, no DP
    /// noise, no optimiser or EMA update. Null (default): every parameter. A pattern that matches nothing is an error.
    /// </summary>
    public IReadOnlyList<string>? Trainable { get; init; }

    /// <summary>How held-out patients are scored (threshold, test-time augmentation).</summary>
    public EvaluationConfig Evaluation { get; init; } = new();

    /// <summary>Privacy mode, budget, accountant, clip norm.</summary>
    public PrivacyConfig Privacy { get; init; } = new();

    /// <summary>Planned epochs: DP plans ⌈epochs / q⌉ steps; non-private makes this many passes.</summary>
    public double Epochs { get; init; } = 20;

    /// <summary>Expected patients per step: q = batch_size / training patients (DP); patients per minibatch (non-private).</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>At most this many slices of a patient per step (a random subset when it has more).</summary>
    public int MaxSlicesPerPatient { get; init; } = 2;

    /// <summary>How a patient's slice losses combine before clipping: mean (default) or sum.</summary>
    public string SliceReduction { get; init; } = "mean";

    /// <summary>
    /// Patients per folded forward/backward pass (memory bound); a step takes ⌈batch / this⌉ nearly equal passes, each
    /// padded with weight-0 patients to a multiple of 8 so that libtorch sees a few fixed shapes.
    /// </summary>
    public int MaxPatientsPerPass { get; init; } = 64;

    /// <summary>The loss.</summary>
    public LossKind Loss { get; init; } = LossKind.BceDice;

    /// <summary>The weight of missed tumour pixels in the Tversky loss (<c>bce_tversky</c>); false alarms weigh 1 − this.</summary>
    public double TverskyBeta { get; init; } = 0.7;

    /// <summary>The optimiser.</summary>
    public OptimizerConfig Optimizer { get; init; } = new();

    /// <summary>The learning-rate schedule.</summary>
    public ScheduleConfig Schedule { get; init; } = new();

    /// <summary>Augmentation and its multiplicity.</summary>
    public AugmentationConfig Augmentation { get; init; } = new();

    /// <summary>Decay of the exponential moving average of the weights (e.g. 0.99); 0 turns EMA off. Validation, test and the saved model use the averaged weights.</summary>
    public double EmaDecay { get; init; }

    /// <summary>Validation and model selection.</summary>
    public ValidationConfig Validation { get; init; } = new();

    /// <summary>The patient split.</summary>
    public SplitConfig Split { get; init; } = new();

    /// <summary>Seeds the split, the initial weights, slice choice, augmentation and (non-private) shuffling.</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>Torch intra-op threads; null leaves libtorch's choice.</summary>
    public int? Threads { get; init; }

    /// <summary>The accountant as an enum.</summary>
    [JsonIgnore]
    public AccountantKind AccountantKind => AccountantKinds.Parse(Privacy.Accountant);

    /// <summary>The slice reduction as an enum.</summary>
    [JsonIgnore]
    public GroupReduction Reduction => SliceReduction.Trim().ToLowerInvariant() switch
    {
        "mean" => GroupReduction.Mean,
        "sum" => GroupReduction.Sum,
        _ => throw new ArgumentException($"invalid training configuration: slice_reduction must be mean or sum, got \"{SliceReduction}\"."),
    };

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        static void Require(bool ok, string message)
        {
            if (!ok)
            {
                throw new ArgumentException("invalid training configuration: " + message);
            }
        }

        static string F(double v) => v.ToString(CultureInfo.InvariantCulture);
        Model?.Validate();
        Preprocessing?.Validate();
        if (Trainable is not null)
        {
            Require(Trainable.Count > 0, "trainable must name at least one parameter pattern (or be null for all).");
            Require(Trainable.All(t => !string.IsNullOrWhiteSpace(t)), "trainable holds an empty pattern.");
            if (Model is not null)
            {
                try
                {
                    _ = UNetLayout.For(Model).SelectTrainable(Trainable);
                }
                catch (ArgumentException error)
                {
                    throw new ArgumentException("invalid training configuration: " + error.Message, error);
                }
            }
        }

        var e = Evaluation ?? throw new ArgumentException("invalid training configuration: evaluation is null.");
        Require(e.Threshold > 0 && e.Threshold < 1, $"evaluation.threshold must be in (0, 1), got {F(e.Threshold)}.");
        Require(e.MinRegionPixels >= 0, $"evaluation.min_region_pixels must not be negative, got {e.MinRegionPixels}.");
        var p = Privacy ?? throw new ArgumentException("invalid training configuration: privacy is null.");
        Require(Enum.IsDefined(p.Mode), "privacy.mode must be dp or non_private.");
        if (p.Mode == PrivacyMode.Dp)
        {
            Require(p.Epsilon > 0 && double.IsFinite(p.Epsilon), $"privacy.epsilon must be positive and finite, got {F(p.Epsilon)}.");
            Require(p.Delta > 0 && p.Delta < 1, $"privacy.delta must be in (0, 1), got {F(p.Delta)}.");
            Require(AccountantKinds.TryParse(p.Accountant, out _), $"privacy.accountant must be prv or rdp, got \"{p.Accountant}\".");
            Require(p.ClipNorm > 0 && double.IsFinite(p.ClipNorm), $"privacy.clip_norm must be positive, got {F(p.ClipNorm)}.");
            Require(p.NoiseMultiplier is null || (p.NoiseMultiplier > 0 && double.IsFinite(p.NoiseMultiplier.Value)),
                "privacy.noise_multiplier must be positive (or null to calibrate it).");
        }

        Require(Epochs > 0 && Epochs <= 100_000, $"epochs must be in (0, 100000], got {F(Epochs)}.");
        Require(BatchSize >= 1, $"batch_size must be at least 1, got {BatchSize}.");
        Require(MaxSlicesPerPatient >= 1, $"max_slices_per_patient must be at least 1, got {MaxSlicesPerPatient}.");
        _ = Reduction;
        Require(MaxPatientsPerPass >= 1, $"max_patients_per_pass must be at least 1, got {MaxPatientsPerPass}.");
        Require(Enum.IsDefined(Loss), "loss must be bce_dice, dice, dice_l1 or bce.");
        var o = Optimizer ?? throw new ArgumentException("invalid training configuration: optimizer is null.");
        Require(Enum.IsDefined(o.Kind), "optimizer.kind must be adam, adamw or sgd.");
        Require(o.LearningRate > 0 && double.IsFinite(o.LearningRate), $"optimizer.learning_rate must be positive, got {F(o.LearningRate)}.");
        Require(o.Momentum >= 0 && o.Momentum < 1, $"optimizer.momentum must be in [0, 1), got {F(o.Momentum)}.");
        Require(o.Beta1 >= 0 && o.Beta1 < 1 && o.Beta2 >= 0 && o.Beta2 < 1, "optimizer.beta1 and beta2 must be in [0, 1).");
        Require(o.Epsilon > 0, "optimizer.epsilon must be positive.");
        Require(o.WeightDecay >= 0 && double.IsFinite(o.WeightDecay), "optimizer.weight_decay must not be negative.");
        var s = Schedule ?? throw new ArgumentException("invalid training configuration: schedule is null.");
        Require(Enum.IsDefined(s.Kind), "schedule.kind must be constant or cosine.");
        Require(s.WarmupSteps >= 0, "schedule.warmup_steps must not be negative.");
        Require(s.FinalFraction >= 0 && s.FinalFraction <= 1, "schedule.final_fraction must be in [0, 1].");
        var a = Augmentation ?? throw new ArgumentException("invalid training configuration: augmentation is null.");
        Require(a.RotationDegrees >= 0 && a.RotationDegrees <= 180, "augmentation.rotation_degrees must be in [0, 180].");
        Require(a.Scale >= 0 && a.Scale < 1, "augmentation.scale must be in [0, 1).");
        Require(a.ElasticPixels >= 0 && a.ElasticPixels <= 64, "augmentation.elastic_pixels must be in [0, 64].");
        Require(a.ElasticControlPoints is >= 2 and <= 64, $"augmentation.elastic_control_points must be 2..64, got {a.ElasticControlPoints}.");
        Require(a.IntensityScale >= 0 && a.IntensityScale < 1, "augmentation.intensity_scale must be in [0, 1).");
        Require(a.IntensityShift >= 0 && double.IsFinite(a.IntensityShift), "augmentation.intensity_shift must not be negative.");
        Require(a.Multiplicity is >= 1 and <= 64, $"augmentation.multiplicity must be 1..64, got {a.Multiplicity}.");
        Require(a.TumourPaste >= 0 && a.TumourPaste <= 1, $"augmentation.tumour_paste must be in [0, 1], got {F(a.TumourPaste)}.");
        Require(a.TumourPasteMinScale > 0 && a.TumourPasteMinScale <= 1, $"augmentation.tumour_paste_min_scale must be in (0, 1], got {F(a.TumourPasteMinScale)}.");
        Require(a.TumourPaste == 0 || p.Mode != PrivacyMode.Dp,
            "augmentation.tumour_paste mixes two patients' slices, which breaks the per-patient privacy bound: use it only with privacy.mode non_private.");
        Require(Model is null || Model.DeepSupervision == 0 || p.Mode != PrivacyMode.Dp,
            "model.deep_supervision trains extra heads that the per-patient gradient engine does not compute: use it only with privacy.mode non_private.");
        Require(TverskyBeta > 0 && TverskyBeta < 1, $"tversky_beta must be in (0, 1), got {F(TverskyBeta)}.");
        Require(EmaDecay >= 0 && EmaDecay < 1, $"ema_decay must be in [0, 1), got {F(EmaDecay)}.");
        var v = Validation ?? throw new ArgumentException("invalid training configuration: validation is null.");
        Require(v.EveryEpochs >= 1, "validation.every_epochs must be at least 1.");
        Require(v.Patience >= 0, "validation.patience must not be negative.");
        var sp = Split ?? throw new ArgumentException("invalid training configuration: split is null.");
        Require(sp.ValidationFraction >= 0 && sp.TestFraction >= 0 && sp.ValidationFraction + sp.TestFraction < 0.9,
            "split.validation_fraction and test_fraction must not be negative and must leave at least 10% for training.");
        Require(Threads is null or >= 1, "threads must be at least 1.");
    }

    /// <summary>The config as JSON (snake_case, indented).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Parses and validates a config; unknown keys are errors.</summary>
    /// <exception cref="FormatException">Not JSON of this shape.</exception>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public static TrainingConfig FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        TrainingConfig? config;
        try
        {
            using var document = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new FormatException("training config: the JSON root must be an object.");
            }

            config = document.RootElement.Deserialize<TrainingConfig>(ReadOptions);
            if (config is not null && document.RootElement.TryGetProperty("model", out var model) && model.ValueKind == JsonValueKind.Object)
            {
                // The U-Net config has its own reader (derived widths checked).
                config = config with { Model = UNetConfig.FromJson(model.GetRawText()) };
            }
        }
        catch (JsonException e)
        {
            throw new FormatException("training config: " + e.Message, e);
        }

        if (config is null)
        {
            throw new FormatException("training config: the JSON is null.");
        }

        config.Validate();
        return config;
    }

    /// <summary>Reads and validates a config file.</summary>
    public static TrainingConfig Load(string path) => FromJson(File.ReadAllText(path));

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    private static readonly JsonSerializerOptions ReadOptions = new(JsonOptions)
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };
}
