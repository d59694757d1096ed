using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using MriSeg.Testing;

namespace MriSeg.Learning.Tests;

/// <summary>
/// The headline: patient-level DP-SGD on generated phantoms reaches Dice ≥ 0.85 on held-out phantom patients at
/// ε = 8, δ = 1e-5, with the shipped recipe configs/phantoms-eps8.json, the CSPRNG noise and sampling, on a 2-core CPU.
/// </summary>
[Collection(TorchCollection.Name)]
[Trait("Category", "Slow")]
public sealed class PhantomDpTrainingTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    [Fact]
    public void Dp_training_on_phantoms_reaches_dice_085_on_held_out_patients_at_epsilon_8()
    {
        Assert.NotNull(fixture.Info);
        MriSeg.Learning.Performance.CpuAllocator.KeepFreedMemory();

        // 900 phantom patients of 3 sites at 64x64, 16 axial slices each; ~9 slices per patient kept (tumour + a share of tumour-free).
        var data = TestSlices.Phantoms(sites: 3, patientsPerSite: 300, size: 64, depth: 16, seed: 2021);
        var config = TrainingConfig.Load(Path.Combine(RepositoryLayout.Root, "configs", "phantoms-eps8.json"));
        using var run = LocalTraining.Run(data, config, new TrainingOptions
        {
            Progress = p =>
            {
                if (p.Kind == TrainingEventKind.Epoch)
                {
                    output.WriteLine($"epoch {p.Epoch}: step {p.Step}/{p.TotalSteps}, loss {p.Loss:F4}, validation Dice {p.ValidationDice:F4}, epsilon {p.Epsilon:F3}, {p.SamplesPerSecond:F0} slices/s, {p.ElapsedSeconds:F0} s");
                }
            },
        });

        var t = run.Training;
        var test = run.Test!.Summary;
        output.WriteLine($"test: Dice {test.Dice:F4}, IoU {test.IoU:F4}, HD95 {test.Hd95:F2} px on {test.Patients} patients; " +
            $"epsilon {t.Privacy!.Epsilon:F3} (delta {t.Privacy.Delta:G2}), sigma {t.Plan.NoiseMultiplier:F3}, q {t.Plan.SampleRate:F4}, {t.Steps} steps, " +
            $"{t.TrainSeconds:F0} s, {t.SamplesPerSecond:F0} slices/s");
        Assert.Equal(900, run.Split.Train.Count + run.Split.Validation.Count + run.Split.Test.Count);
        Assert.True(run.Split.Test.Count >= 130);
        Assert.True(t.Privacy.Epsilon <= 8.0, $"epsilon {t.Privacy.Epsilon}");
        Assert.Equal(1e-5, t.Privacy.Delta);
        Assert.True(t.Privacy.SecureRandomness);
        Assert.Equal("completed", t.StopReason);
        Assert.True(test.Dice >= 0.85, $"held-out Dice {test.Dice:F4} < 0.85 at epsilon 8");
    }
}
