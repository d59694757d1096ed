using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Training;

namespace MriSeg.CleanRoom.Tests;

public sealed class PrivacyDeclarationTests
{
    [Theory]
    [InlineData(3)]
    [InlineData(7)]
    [InlineData(26)]
    [InlineData(61)]
    public void The_lower_bound_never_exceeds_the_training_patients_of_any_split(int patients)
    {
        var split = new SplitConfig { ValidationFraction = 0.15, TestFraction = 0.15, Stratify = true };
        var bound = PrivacyDeclaration.TrainingPatientsLowerBound(patients, split);
        var reached = false;
        for (var withTumour = 0; withTumour <= patients; withTumour++)
        {
            var data = Data(patients, withTumour);
            var train = PatientSplit.Create(data, split.ValidationFraction, split.TestFraction, 1, split.Stratify).Train.Count;
            Assert.True(train >= bound, $"{withTumour} of {patients} with tumour: {train} training patients, bound {bound}");
            reached |= train == bound;
        }

        Assert.True(reached, "the bound is attained by some tumour mix (it is tight)");
    }

    [Fact]
    public void Binding_keeps_sigma_and_never_exceeds_the_declared_q_or_steps()
    {
        var config = new TrainingConfig { Epochs = 3, BatchSize = 5, Privacy = new PrivacyConfig { Epsilon = 4, Delta = 1e-3, Accountant = "rdp" } };
        var declared = SegmentationTrainer.Plan(config, 20);
        var (_, same) = PrivacyDeclaration.Bind(config, declared, 20);
        Assert.Equal((declared.SampleRate, declared.NoiseMultiplier, declared.PlannedSteps), (same.SampleRate, same.NoiseMultiplier, same.PlannedSteps));
        var (bound, more) = PrivacyDeclaration.Bind(config, declared, 23);
        Assert.Equal(declared.NoiseMultiplier, more.NoiseMultiplier);
        Assert.True(more.SampleRate < declared.SampleRate);
        Assert.True(more.PlannedSteps <= declared.PlannedSteps);
        Assert.Equal(declared.NoiseMultiplier, bound.Privacy.NoiseMultiplier);
        var fewer = Assert.Throws<CleanRoomRunException>(() => PrivacyDeclaration.Bind(config, declared, 19));
        Assert.Equal(RunFailure.SchemaMismatch, fewer.Failure);
    }

    private static SliceDataset Data(int patients, int withTumour)
    {
        const int size = 4;
        var masks = new byte[patients * size * size];
        for (var p = 0; p < withTumour; p++)
        {
            masks[p * size * size] = 1;
        }

        return new SliceDataset(new float[patients * size * size], masks, [.. Enumerable.Range(0, patients)], size, size, ["flair"], LabelScheme.WholeTumour,
            [.. Enumerable.Range(0, patients).Select(p => $"p{p}")]);
    }
}
