using MriSeg.Learning.Training;

namespace MriSeg.CleanRoom;

/// <summary>
/// The privacy a run declares to the KeyBroker before it may open the data. The broker needs (q, σ, steps) at the first
/// dataset key release, but q = batch / N_train and N_train is known only after the shards are opened, joined and split.
/// The clean room therefore declares with a <b>lower bound</b> of N_train computed from the patient counts the providers
/// state in their signed package manifests (<c>patient_count</c>) and the pipeline's split rule: q_declared ≥ the q the
/// run will use. The run then trains with σ fixed to the declared σ and at most the declared steps, so the declared
/// (q, σ, steps) upper-bounds what it spends (ε grows with q and steps), and settles with the declared q and σ.
/// </summary>
public static class PrivacyDeclaration
{
    /// <summary>
    /// The fewest training patients <see cref="PatientSplit.Create"/> can leave for <paramref name="patients"/> patients
    /// under <paramref name="split"/>, whatever their tumour status (the split is stratified by it).
    /// </summary>
    public static int TrainingPatientsLowerBound(int patients, SplitConfig split)
    {
        ArgumentNullException.ThrowIfNull(split);
        if (patients < 1)
        {
            return 0;
        }

        if (!split.Stratify)
        {
            return TrainCount(patients, [patients], split);
        }

        var least = int.MaxValue;
        for (var withTumour = 0; withTumour <= patients; withTumour++)
        {
            least = Math.Min(least, TrainCount(patients, [withTumour, patients - withTumour], split));
        }

        return least;
    }

    /// <summary>
    /// The config the run trains with on <paramref name="trainingPatients"/> (≥ the declared lower bound): σ fixed to the
    /// declared σ and, when the data gives a smaller q, the epochs cut so that the steps stay within the declared ones.
    /// Checks the resulting plan against the declaration.
    /// </summary>
    /// <exception cref="CleanRoomRunException">The run could not stay within its declaration.</exception>
    public static (TrainingConfig Config, TrainingPlan Plan) Bind(TrainingConfig config, TrainingPlan declared, int trainingPatients)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(declared);
        if (trainingPatients < declared.TrainingPatients)
        {
            throw new CleanRoomRunException(RunFailure.SchemaMismatch,
                $"the joined data leaves {trainingPatients} training patients, fewer than the {declared.TrainingPatients} the run declared from the providers' manifests (duplicate patients across providers, or a manifest overstating its patients)");
        }

        var bound = config with { Privacy = config.Privacy with { NoiseMultiplier = declared.NoiseMultiplier } };
        if (trainingPatients > declared.TrainingPatients)
        {
            var q = Math.Min(1.0, (double)config.BatchSize / trainingPatients);
            bound = bound with { Epochs = Math.Min(config.Epochs, (declared.PlannedSteps - 0.5) * q) };
        }

        var plan = SegmentationTrainer.Plan(bound, trainingPatients);
        if (plan.SampleRate > declared.SampleRate * (1 + 1e-12) || plan.NoiseMultiplier != declared.NoiseMultiplier || plan.PlannedSteps > declared.PlannedSteps)
        {
            throw new CleanRoomRunException(RunFailure.PipelineRefused,
                $"the run's plan (q {plan.SampleRate:G6}, σ {plan.NoiseMultiplier:G6}, {plan.PlannedSteps} steps) does not stay within its declaration (q {declared.SampleRate:G6}, σ {declared.NoiseMultiplier:G6}, {declared.PlannedSteps} steps)");
        }

        return (bound, plan);
    }

    private static int TrainCount(int patients, int[] strata, SplitConfig split)
    {
        int train = 0, validation = 0, test = 0;
        foreach (var m in strata.Where(m => m > 0))
        {
            var nTest = (int)Math.Round(split.TestFraction * m, MidpointRounding.AwayFromZero);
            var nValidation = Math.Min((int)Math.Round(split.ValidationFraction * m, MidpointRounding.AwayFromZero), m - nTest);
            test += nTest;
            validation += nValidation;
            train += m - nTest - nValidation;
        }

        if (patients >= 3)
        {
            if (split.TestFraction > 0 && test == 0)
            {
                train--;
            }

            if (split.ValidationFraction > 0 && validation == 0)
            {
                train--;
            }
        }

        return train;
    }
}
