using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Metrics;

namespace MriSeg.Learning.Training;

/// <summary>A local run: the split, the trained model, and its scores on the held-out test patients.</summary>
/// <param name="Training">The trained model and its history (owned: dispose this result).</param>
/// <param name="Split">Which patients went where (indices into the joined dataset).</param>
/// <param name="Test">Scores on the test patients; null when the split holds none.</param>
/// <param name="Data">Schema and provenance of the data the model was trained on.</param>
public sealed record LocalTrainingResult(TrainingResult Training, PatientSplit Split, EvaluationResult? Test, DatasetSchema Data) : IDisposable
{
    /// <inheritdoc/>
    public void Dispose() => Training.Dispose();
}

/// <summary>What a model expects of its input: modalities, label channels, size, and how the data was prepared.</summary>
/// <param name="Modalities">Image channels in order.</param>
/// <param name="Labels">Label scheme name ("wt" or "brats").</param>
/// <param name="LabelChannels">Label channel names.</param>
/// <param name="Height">Slice height.</param>
/// <param name="Width">Slice width.</param>
/// <param name="SourceLayout">Ingestion layout.</param>
/// <param name="Normalisation">Intensity normalisation.</param>
/// <param name="SliceSelection">Slice selection.</param>
public sealed record DatasetSchema(
    IReadOnlyList<string> Modalities, string Labels, IReadOnlyList<string> LabelChannels, int Height, int Width,
    string SourceLayout, string Normalisation, string SliceSelection)
{
    /// <summary>The schema of a dataset.</summary>
    public static DatasetSchema Of(SliceDataset data)
    {
        ArgumentNullException.ThrowIfNull(data);
        return new DatasetSchema([.. data.Modalities], data.Labels.Name(), data.Labels.Channels(), data.Height, data.Width,
            data.Provenance.SourceLayout, data.Provenance.Normalisation, data.Provenance.SliceSelection);
    }
}

/// <summary>Local (cleartext) training: split by patient, train, evaluate on the held-out test patients.</summary>
public static class LocalTraining
{
    /// <summary>
    /// Splits <paramref name="data"/> by patient (<see cref="TrainingConfig.Split"/>, seeded by
    /// <see cref="TrainingConfig.Seed"/>), trains on the training part with the validation part for model selection,
    /// and scores the chosen model on the test part (taken from <paramref name="scoring"/> when given: see
    /// <see cref="TrainingData.ScoringPart"/>).
    /// </summary>
    public static LocalTrainingResult Run(SliceDataset data, TrainingConfig config, TrainingOptions? options = null, SliceDataset? scoring = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        var split = PatientSplit.Create(data, config.Split.ValidationFraction, config.Split.TestFraction, config.Seed, config.Split.Stratify);
        if (split.Train.Count == 0)
        {
            throw new ArgumentException("the split leaves no training patients.");
        }

        var train = data.SelectPatients(split.Train);
        var validation = split.Validation.Count > 0 ? data.SelectPatients(split.Validation) : null;
        using var baseModel = options?.InitialModel is null ? TrainingData.LoadBaseModel(config) : null;
        var training = SegmentationTrainer.Train(train, validation, config, baseModel is null ? options : (options ?? new TrainingOptions()) with { InitialModel = baseModel });
        try
        {
            var test = split.Test.Count > 0 ? SegmentationEvaluator.Evaluate(training.Model, TrainingData.ScoringPart(data, split.Test, scoring), config.Evaluation.ToOptions()) : null;
            return new LocalTrainingResult(training, split, test, DatasetSchema.Of(data));
        }
        catch
        {
            training.Dispose();
            throw;
        }
    }
}
