using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace MriSeg.CleanRoom;

/// <summary>One data provider's contribution to a run, as the model card reports it (counts only, no patient data).</summary>
/// <param name="Provider">The provider's party id.</param>
/// <param name="Patients">Patients in its shard(s).</param>
/// <param name="Slices">Slices in its shard(s).</param>
/// <param name="TumourSlices">Slices with tumour.</param>
/// <param name="DatasetSha256">SHA-256 of the opened shard plaintext(s), comma-separated when several.</param>
public sealed record ProviderContribution(string Provider, int Patients, int Slices, int TumourSlices, string DatasetSha256);

/// <summary>Held-out metrics of a model: means over patients.</summary>
/// <param name="Dice">Mean Dice.</param>
/// <param name="Iou">Mean IoU.</param>
/// <param name="Hd95">Mean 95th-percentile Hausdorff distance, pixels.</param>
/// <param name="Patients">Number of held-out patients.</param>
public sealed record HeldOutMetrics(double Dice, double Iou, double Hd95, int Patients);

/// <summary>The privacy a run spent (patient-level).</summary>
/// <param name="Epsilon">ε spent.</param>
/// <param name="Delta">δ.</param>
/// <param name="Sigma">Noise multiplier.</param>
/// <param name="SampleRate">Poisson sampling rate of patients.</param>
/// <param name="Steps">Noisy steps taken and composed into <paramref name="Epsilon"/>, <paramref name="LostSteps"/> included.</param>
/// <param name="Accountant">"prv" or "rdp".</param>
/// <param name="LostSteps">
/// Of <paramref name="Steps"/>, the steps an interrupted attempt may have taken after its last checkpoint: their
/// updates were discarded when the run resumed, but they were spent and count.
/// </param>
public sealed record SpentPrivacy(double Epsilon, double Delta, double Sigma, double SampleRate, long Steps, string Accountant, long LostSteps = 0);

/// <summary>
/// The model card written beside every model a clean-room run releases: who contributed how much, the privacy
/// spent, the held-out quality, the cost, and the measurement of the code that trained it.
/// </summary>
public sealed record ModelCard
{
    /// <summary>The run id.</summary>
    public required string RunId { get; init; }

    /// <summary>The consumer the model was trained for.</summary>
    public required string Consumer { get; init; }

    /// <summary>When training finished (UTC).</summary>
    public required DateTimeOffset Created { get; init; }

    /// <summary>The architecture and its size, e.g. "unet2d, 2,164,145 parameters".</summary>
    public required string Model { get; init; }

    /// <summary>Providers and their contributions.</summary>
    public required IReadOnlyList<ProviderContribution> Providers { get; init; }

    /// <summary>Privacy spent; null for a non-private run.</summary>
    public required SpentPrivacy? Privacy { get; init; }

    /// <summary>Held-out metrics.</summary>
    public required HeldOutMetrics Metrics { get; init; }

    /// <summary>Training wall time, seconds.</summary>
    public required double TrainSeconds { get; init; }

    /// <summary>Training throughput, samples per second.</summary>
    public required double SamplesPerSecond { get; init; }

    /// <summary>The device that trained, e.g. "cpu" or "cuda:0 (NVIDIA H100)".</summary>
    public required string Device { get; init; }

    /// <summary>The software measurement of the trainer that the attestation vouched for.</summary>
    public required string CodeMeasurement { get; init; }

    /// <summary>The attestation type the key release relied on, e.g. "development (not hardware-backed)".</summary>
    public required string Attestation { get; init; }

    /// <summary>SHA-256 of the pipeline configuration the run executed.</summary>
    public required string PipelineSha256 { get; init; }

    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>The card as JSON (snake_case keys).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Reads a card written by <see cref="ToJson"/>.</summary>
    public static ModelCard FromJson(string json) =>
        JsonSerializer.Deserialize<ModelCard>(json, JsonOptions) ?? throw new JsonException("model card: null document");

    /// <summary>The card as Markdown for people.</summary>
    public string ToMarkdown()
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.Append(inv, $"# Model card: run {RunId}\n\n");
        md.Append(inv, $"Trained for **{Consumer}** on {Created:yyyy-MM-dd HH:mm} UTC in the MriSeg clean room. Model: {Model}.\n\n");
        md.Append("## Data\n\n| provider | patients | slices | tumour slices | dataset SHA-256 |\n|---|---:|---:|---:|---|\n");
        foreach (var p in Providers)
        {
            md.Append(inv, $"| {p.Provider} | {p.Patients:N0} | {p.Slices:N0} | {p.TumourSlices:N0} | `{p.DatasetSha256}` |\n");
        }

        md.Append(inv, $"| **total** | {Providers.Sum(p => p.Patients):N0} | {Providers.Sum(p => p.Slices):N0} | {Providers.Sum(p => p.TumourSlices):N0} | |\n\n");
        md.Append("## Privacy\n\n");
        if (Privacy is { } dp)
        {
            md.Append(inv, $"Patient-level (ε, δ)-differential privacy: **ε = {dp.Epsilon:0.###}**, δ = {dp.Delta:0.###e+0} ({dp.Accountant.ToUpperInvariant()} accountant), ");
            md.Append(inv, $"noise multiplier σ = {dp.Sigma:0.####}, Poisson sampling rate q = {dp.SampleRate:0.####}, {dp.Steps:N0} steps");
            md.Append(dp.LostSteps > 0
                ? string.Create(inv, $" ({dp.LostSteps:N0} of them taken by an interrupted attempt after its last checkpoint: discarded, but counted).\n\n")
                : ".\n\n");
        }
        else
        {
            md.Append("**None: this model was trained without differential privacy.**\n\n");
        }

        md.Append(inv, $"## Quality on {Metrics.Patients} held-out patients\n\n| Dice | IoU | HD95 (px) |\n|---:|---:|---:|\n| {Metrics.Dice:0.0000} | {Metrics.Iou:0.0000} | {Metrics.Hd95:0.00} |\n\n");
        md.Append(inv, $"## Cost\n\n{TrainSeconds:0.0} s of training on {Device}, {SamplesPerSecond:0.0} samples/s.\n\n");
        md.Append(inv, $"## Provenance\n\n- code measurement: `{CodeMeasurement}`\n- attestation: {Attestation}\n- pipeline SHA-256: `{PipelineSha256}`\n");
        return md.ToString();
    }
}
