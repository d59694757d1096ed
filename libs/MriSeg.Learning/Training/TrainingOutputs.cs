using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using MriSeg.Learning.Model;

namespace MriSeg.Learning.Training;

/// <summary>model.json: the architecture, what the model expects of its input, and how it was trained.</summary>
/// <param name="Format">Always <see cref="TrainingOutputs.ManifestFormat"/>.</param>
/// <param name="Version">Manifest version.</param>
/// <param name="Architecture">The U-Net config (as config.json).</param>
/// <param name="Input">Modalities, label channels, size, normalisation of the training data.</param>
/// <param name="Training">The run's summary (privacy spent, split sizes, selection, the full recipe).</param>
public sealed record ModelManifest(string Format, int Version, UNetConfig Architecture, DatasetSchema Input, TrainingSummary Training)
{
    /// <summary>
    /// How raw case folders are pre-processed for this model (<c>mriseg evaluate</c> applies it): the recipe's
    /// <see cref="TrainingConfig.Preprocessing"/>, else what the training data's schema records. Null in manifests
    /// written before it existed (then derive it from <see cref="Input"/>).
    /// </summary>
    public PreprocessingConfig? Preprocessing { get; init; }

    /// <summary>The pre-processing to apply for this model: <see cref="Preprocessing"/>, the recipe's, or one derived from <see cref="Input"/>.</summary>
    public PreprocessingConfig EffectivePreprocessing() =>
        Preprocessing ?? Training?.Config?.Preprocessing ?? PreprocessingConfig.FromSchema(Input);
}

/// <summary>How a model was trained (model.json's <c>training</c>).</summary>
/// <param name="Mode">"dp" or "non_private".</param>
/// <param name="Epsilon">ε spent (DP).</param>
/// <param name="Delta">δ (DP).</param>
/// <param name="TargetEpsilon">The budget (DP).</param>
/// <param name="Sigma">Noise multiplier σ (0 non-private).</param>
/// <param name="ClipNorm">C (0 non-private).</param>
/// <param name="SampleRate">q.</param>
/// <param name="Steps">Steps taken.</param>
/// <param name="Accountant">"prv" or "rdp" (DP).</param>
/// <param name="NoiseGenerator">Where the noise came from (DP).</param>
/// <param name="SecureRandomness">Noise and sampling from the OS CSPRNG (DP).</param>
/// <param name="TrainingPatients">Patients trained on (the privacy unit).</param>
/// <param name="ValidationPatients">Patients used for model selection.</param>
/// <param name="TestPatients">Held-out patients scored in metrics.json.</param>
/// <param name="BestEpoch">The epoch of the kept weights when chosen on validation.</param>
/// <param name="BestValidationDice">Its validation Dice.</param>
/// <param name="StopReason">Why training stopped.</param>
/// <param name="TrainSeconds">Wall time.</param>
/// <param name="Config">The full recipe.</param>
public sealed record TrainingSummary(
    string Mode, double? Epsilon, double? Delta, double? TargetEpsilon, double Sigma, double ClipNorm, double SampleRate, long Steps,
    string? Accountant, string? NoiseGenerator, bool? SecureRandomness, int TrainingPatients, int ValidationPatients, int TestPatients,
    int? BestEpoch, double? BestValidationDice, string StopReason, double TrainSeconds, TrainingConfig Config);

/// <summary>metrics.json: scores on the held-out test patients, the privacy spent, and the cost.</summary>
/// <param name="Dice">Mean Dice over test patients (BraTS convention for empty masks); null without test patients.</param>
/// <param name="IoU">Mean IoU.</param>
/// <param name="Hd95">Mean HD95 in pixels.</param>
/// <param name="Epsilon">ε spent; null when non-private.</param>
/// <param name="Delta">δ; null when non-private.</param>
/// <param name="Sigma">Noise multiplier (0 when non-private).</param>
/// <param name="SampleRate">q.</param>
/// <param name="Steps">Steps taken.</param>
/// <param name="TrainSeconds">Wall time of training (validation included).</param>
/// <param name="SamplesPerSecond">Slices (augmented copies counted) per second of step time.</param>
/// <param name="Mode">"dp" or "non_private".</param>
/// <param name="Accountant">"prv" or "rdp" (DP).</param>
/// <param name="ClipNorm">C.</param>
/// <param name="TrainingPatients">N.</param>
/// <param name="ValidationPatients">Validation patients.</param>
/// <param name="TestPatients">Test patients scored.</param>
/// <param name="TestSlices">Their slices scored (every brain slice when the run was given them, see <see cref="TrainingData.ScoringPart"/>).</param>
/// <param name="BestValidationDice">Validation Dice of the kept weights.</param>
/// <param name="Channels">Label channels.</param>
/// <param name="DicePerChannel">Test Dice per channel.</param>
public sealed record RunMetrics(
    double? Dice,
    [property: JsonPropertyName("iou")] double? IoU,
    double? Hd95,
    double? Epsilon,
    double? Delta,
    double Sigma,
    double SampleRate,
    long Steps,
    double TrainSeconds,
    double SamplesPerSecond,
    string Mode,
    string? Accountant,
    double ClipNorm,
    int TrainingPatients,
    int ValidationPatients,
    int TestPatients,
    int? TestSlices,
    double? BestValidationDice,
    IReadOnlyList<string> Channels,
    IReadOnlyList<double>? DicePerChannel);

/// <summary>Writes a local run's outputs: model.safetensors, config.json, model.json, metrics.json, curves.png.</summary>
public static class TrainingOutputs
{
    /// <summary>model.json's <c>format</c>.</summary>
    public const string ManifestFormat = "mriseg.model";

    /// <summary>The manifest version written.</summary>
    public const int ManifestVersion = 1;

    /// <summary>Manifest file name.</summary>
    public const string ManifestFileName = "model.json";

    /// <summary>Metrics file name.</summary>
    public const string MetricsFileName = "metrics.json";

    /// <summary>Curves file name.</summary>
    public const string CurvesFileName = "curves.png";

    /// <summary>snake_case, indented; non-finite numbers as strings (HD95 may be NaN when not computed).</summary>
    public static JsonSerializerOptions JsonOptions { get; } = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>The summary of a run.</summary>
    public static TrainingSummary Summary(LocalTrainingResult run)
    {
        ArgumentNullException.ThrowIfNull(run);
        var t = run.Training;
        var p = t.Privacy;
        return new TrainingSummary(
            t.Plan.Mode == PrivacyMode.Dp ? "dp" : "non_private", p?.Epsilon, p?.Delta, p?.TargetEpsilon, t.Plan.NoiseMultiplier, t.Plan.ClipNorm,
            t.Plan.SampleRate, t.Steps, p?.Accountant, p?.NoiseGenerator, p?.SecureRandomness, t.Plan.TrainingPatients, run.Split.Validation.Count,
            run.Split.Test.Count, t.BestEpoch, t.BestValidationDice, t.StopReason, t.TrainSeconds, t.Config);
    }

    /// <summary>The metrics of a run.</summary>
    public static RunMetrics Metrics(LocalTrainingResult run)
    {
        ArgumentNullException.ThrowIfNull(run);
        var t = run.Training;
        var s = run.Test?.Summary;
        return new RunMetrics(
            s?.Dice, s?.IoU, s?.Hd95, t.Privacy?.Epsilon, t.Privacy?.Delta, t.Plan.NoiseMultiplier, t.Plan.SampleRate, t.Steps,
            t.TrainSeconds, t.SamplesPerSecond, t.Plan.Mode == PrivacyMode.Dp ? "dp" : "non_private", t.Privacy?.Accountant, t.Plan.ClipNorm,
            t.Plan.TrainingPatients, run.Split.Validation.Count, run.Split.Test.Count, s?.Slices, t.BestValidationDice, run.Data.LabelChannels, s?.DicePerChannel);
    }

    /// <summary>Writes every output into <paramref name="directory"/> (created if needed); returns the paths written.</summary>
    public static IReadOnlyList<string> Write(string directory, LocalTrainingResult run)
    {
        ArgumentNullException.ThrowIfNull(directory);
        ArgumentNullException.ThrowIfNull(run);
        Directory.CreateDirectory(directory);
        var summary = Summary(run);
        var metadata = new Dictionary<string, string>
        {
            ["mriseg.training_mode"] = summary.Mode,
            ["mriseg.epsilon"] = summary.Epsilon?.ToString("R", CultureInfo.InvariantCulture) ?? "none",
            ["mriseg.delta"] = summary.Delta?.ToString("R", CultureInfo.InvariantCulture) ?? "none",
            ["mriseg.modalities"] = string.Join(',', run.Data.Modalities),
        };
        UNetModelFile.Save(run.Training.Model, directory, metadata);
        var manifest = new ModelManifest(ManifestFormat, ManifestVersion, run.Training.Model.Config, run.Data, summary)
        {
            Preprocessing = run.Training.Config.Preprocessing ?? PreprocessingConfig.FromSchema(run.Data),
        };
        var paths = new List<string>
        {
            Path.Combine(directory, UNetModelFile.WeightsFileName),
            Path.Combine(directory, UNetModelFile.ConfigFileName),
            Path.Combine(directory, ManifestFileName),
            Path.Combine(directory, MetricsFileName),
            Path.Combine(directory, CurvesFileName),
        };
        File.WriteAllText(paths[2], JsonSerializer.Serialize(manifest, JsonOptions));
        File.WriteAllText(paths[3], JsonSerializer.Serialize(Metrics(run), JsonOptions));
        var title = summary.Mode == "dp"
            ? string.Create(CultureInfo.InvariantCulture, $"DP-SGD: ε = {summary.Epsilon:0.###} of {summary.TargetEpsilon:0.###}, δ = {summary.Delta:G2}, σ = {summary.Sigma:0.###}")
            : "non-private";
        TrainingCurves.Save(paths[4], run.Training.Epochs, title);
        return paths;
    }

    /// <summary>Reads a model folder's model.json; null when the folder has none.</summary>
    /// <exception cref="FormatException">The file is not a model manifest.</exception>
    public static ModelManifest? ReadManifest(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        var path = Path.Combine(directory, ManifestFileName);
        if (!File.Exists(path))
        {
            return null;
        }

        ModelManifest? manifest;
        try
        {
            manifest = JsonSerializer.Deserialize<ModelManifest>(File.ReadAllText(path), JsonOptions);
        }
        catch (JsonException e)
        {
            throw new FormatException($"{path}: {e.Message}", e);
        }

        if (manifest is null || manifest.Format != ManifestFormat)
        {
            throw new FormatException($"{path} is not a {ManifestFormat} manifest.");
        }

        return manifest;
    }
}
