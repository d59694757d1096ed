using System.Diagnostics;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Metrics;

namespace MriSeg.Learning.Training;

/// <summary>One fold's outcome: the held-out patients' scores and the run that produced them.</summary>
/// <param name="Fold">0-based fold index.</param>
/// <param name="TrainingPatients">Patients trained on (the other folds, less the validation share).</param>
/// <param name="ValidationPatients">Patients of the other folds used for model selection.</param>
/// <param name="Test">Scores of the fold's own patients.</param>
/// <param name="Epsilon">ε spent (DP), else null.</param>
/// <param name="Delta">δ (DP), else null.</param>
/// <param name="Sigma">Noise multiplier (0 non-private).</param>
/// <param name="Steps">Steps taken.</param>
/// <param name="TrainSeconds">Training wall time.</param>
/// <param name="Seconds">Training and scoring wall time.</param>
public sealed record FoldResult(
    int Fold, int TrainingPatients, int ValidationPatients, MetricSummary Test, double? Epsilon, double? Delta, double Sigma, long Steps,
    double TrainSeconds, double Seconds);

/// <summary>
/// Patient-level K-fold cross-validation: every patient is held out exactly once, never trained on in the fold that
/// scores it, and never in two folds (<see cref="Folds"/>); each fold trains the recipe on the other folds and scores
/// the held-out patients with <see cref="SegmentationEvaluator"/>.
/// </summary>
public static class CrossValidation
{
    /// <summary>The file, in a model folder of `bench quality --keep-models` or `train`, listing the held-out (test) patient IDs it was scored on, one a line.</summary>
    public const string HeldOutFileName = "held-out-patients.txt";

    /// <summary>Writes the IDs of the patients a model was scored on, one a line, as <see cref="HeldOutFileName"/> in its folder; returns the path.</summary>
    public static string WriteHeldOutPatients(string modelDirectory, IEnumerable<string> patientIds)
    {
        var path = Path.Combine(modelDirectory, HeldOutFileName);
        File.WriteAllLines(path, patientIds);
        return path;
    }

    /// <summary>
    /// Splits the patients of <paramref name="data"/> (those with at least one slice) into <paramref name="k"/> folds:
    /// stratified by whether a patient has tumour anywhere (each stratum shuffled with <paramref name="seed"/> and dealt
    /// round-robin, the tumour-free stratum continuing where the tumour stratum stopped, so fold sizes differ by at most
    /// one). Each fold lists patient indices (into <see cref="SliceDataset.PatientIds"/>) in ascending order.
    /// </summary>
    public static IReadOnlyList<int[]> Folds(SliceDataset data, int k, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(data);
        var byPatient = data.SlicesByPatient();
        var present = Enumerable.Range(0, byPatient.Length).Where(p => byPatient[p].Length > 0).ToArray();
        if (k < 2 || k > present.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(k), k, $"the number of folds must be 2..{present.Length} (the patients).");
        }

        var random = new Random(unchecked((int)(seed ^ (seed >> 32) ^ 0x0CF01D5)));
        var folds = Enumerable.Range(0, k).Select(_ => new List<int>()).ToArray();
        var next = 0;
        foreach (var stratum in new[] { present.Where(p => byPatient[p].Any(data.HasTumour)), present.Where(p => !byPatient[p].Any(data.HasTumour)) })
        {
            var shuffled = stratum.ToArray();
            random.Shuffle(shuffled);
            foreach (var p in shuffled)
            {
                folds[next].Add(p);
                next = (next + 1) % k;
            }
        }

        return [.. folds.Select(f => f.Order().ToArray())];
    }

    /// <summary>
    /// Trains <paramref name="config"/> on every patient outside <paramref name="heldOut"/> (its
    /// <see cref="SplitConfig.ValidationFraction"/> of them for model selection, no test share) and scores the
    /// held-out patients with the recipe's <see cref="TrainingConfig.Evaluation"/> settings. With
    /// <paramref name="modelDirectory"/>, the fold's model is kept there as <c>mriseg train</c> writes one, with the
    /// held-out patients' IDs in <see cref="HeldOutFileName"/>, so it can be re-scored (<c>mriseg evaluate --patients</c>).
    /// The held-out patients are scored on <paramref name="scoring"/> when given (<see cref="TrainingData.ScoringPart"/>).
    /// </summary>
    public static FoldResult RunFold(
        SliceDataset data, TrainingConfig config, int fold, IReadOnlyList<int> heldOut, TrainingOptions? options = null, string? modelDirectory = null,
        SliceDataset? scoring = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(heldOut);
        var clock = Stopwatch.StartNew();
        var held = heldOut.ToHashSet();
        var rest = Enumerable.Range(0, data.PatientIds.Count).Where(p => !held.Contains(p)).ToArray();
        var restData = data.SelectPatients(rest);
        var split = PatientSplit.Create(restData, config.Split.ValidationFraction, 0, config.Seed, config.Split.Stratify);
        var train = restData.SelectPatients(split.Train);
        var validation = split.Validation.Count > 0 ? restData.SelectPatients(split.Validation) : null;
        using var baseModel = options?.InitialModel is null ? TrainingData.LoadBaseModel(config) : null;
        using var training = SegmentationTrainer.Train(train, validation, config, baseModel is null ? options : (options ?? new TrainingOptions()) with { InitialModel = baseModel });
        var heldOutData = TrainingData.ScoringPart(data, heldOut, scoring);
        var evaluation = SegmentationEvaluator.Evaluate(training.Model, heldOutData, config.Evaluation.ToOptions());
        if (modelDirectory is not null)
        {
            TrainingOutputs.Write(modelDirectory, new LocalTrainingResult(training, split with { Test = heldOut }, evaluation, DatasetSchema.Of(data)));
            WriteHeldOutPatients(modelDirectory, heldOutData.PatientIds);
        }

        var test = evaluation.Summary;
        return new FoldResult(fold, training.Plan.TrainingPatients, split.Validation.Count, test, training.Privacy?.Epsilon, training.Privacy?.Delta,
            training.Plan.NoiseMultiplier, training.Steps, training.TrainSeconds, clock.Elapsed.TotalSeconds);
    }
}
