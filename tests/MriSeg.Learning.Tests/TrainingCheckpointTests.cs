using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using MriSeg.Privacy;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

/// <summary>Checkpoints at epoch ends and resuming from them: complete state, and lost steps that still count.</summary>
[Collection(TorchCollection.Name)]
public sealed class TrainingCheckpointTests(TorchRuntimeFixture fixture)
{
    private static readonly UNetConfig Small = new() { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 };

    [Theory]
    [InlineData(OptimizerKind.Adam)]
    [InlineData(OptimizerKind.Sgd)]
    public void A_run_resumed_from_an_epoch_checkpoint_ends_exactly_as_the_uninterrupted_run(OptimizerKind optimizer)
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 24, slicesPerPatient: 2, seed: 21);
        var validation = TestSlices.Disks(patients: 6, slicesPerPatient: 2, seed: 22);

        // Non-private: every random stream is seeded, so the runs must agree to the bit (weights, EMA, Adam moments or SGD momentum, best weights).
        var config = new TrainingConfig
        {
            Model = Small,
            Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate },
            Epochs = 4,
            BatchSize = 6,
            MaxSlicesPerPatient = 1,
            Optimizer = new OptimizerConfig { Kind = optimizer, LearningRate = 0.02, Momentum = 0.9 },
            Augmentation = new AugmentationConfig { HorizontalFlip = true, RotationDegrees = 10 },
            EmaDecay = 0.9,
            Validation = new ValidationConfig { EveryEpochs = 1 },
            Threads = 1,
        };
        var checkpoints = new List<TrainingCheckpoint>();
        using var whole = SegmentationTrainer.Train(data, validation, config, new TrainingOptions { Checkpoint = checkpoints.Add });
        Assert.Equal(4, checkpoints.Count);
        Assert.Equal([1, 2, 3, 4], checkpoints.Select(c => c.Epoch));
        Assert.Equal(checkpoints.Select(c => c.Epoch * whole.Plan.StepsPerEpoch), checkpoints.Select(c => c.Steps));

        // Resume from epoch 2's checkpoint, through its bytes, with nothing lost.
        var bytes = checkpoints[1].ToBytes();
        var restored = TrainingCheckpoint.FromBytes(bytes);
        var steps = new List<TrainingProgress>();
        using var resumed = SegmentationTrainer.Train(data, validation, config, new TrainingOptions
        {
            Resume = new TrainingResume { From = restored, StepsSpent = restored.Steps },
            Progress = steps.Add,
        });

        Assert.Equal(whole.Steps, resumed.Steps);
        Assert.Equal(0, resumed.LostSteps);
        Assert.Equal(whole.Steps - restored.Steps, steps.Count(s => s.Kind == TrainingEventKind.Step));
        Assert.Equal(restored.Steps + 1, steps.First(s => s.Kind == TrainingEventKind.Step).Step);
        Assert.Equal(whole.Epochs.Select(e => (e.Epoch, e.Steps, e.MeanLoss, e.ValidationDice)), resumed.Epochs.Select(e => (e.Epoch, e.Steps, e.MeanLoss, e.ValidationDice)));
        Assert.Equal(whole.BestEpoch, resumed.BestEpoch);
        foreach (var (a, b) in whole.Model.OrderedParameters().Zip(resumed.Model.OrderedParameters()))
        {
            Assert.True(a.equal(b).all().item<bool>(), "the resumed run's weights differ from the uninterrupted run's");
        }
    }

    [Fact]
    public void A_dp_run_resumed_after_lost_steps_counts_them_and_trains_only_the_rest_of_the_plan()
    {
        var data = TestSlices.Disks(patients: 40, slicesPerPatient: 1, seed: 23);
        var config = new TrainingConfig
        {
            Model = Small,
            Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = 6, Delta = 1e-3, ClipNorm = 0.5, Accountant = "rdp" },
            Epochs = 4,
            BatchSize = 8,
            MaxSlicesPerPatient = 1,
            Optimizer = new OptimizerConfig { LearningRate = 0.01 },
            EmaDecay = 0.9,
            Threads = 1,
        };
        var plan = SegmentationTrainer.Plan(config, 40);
        Assert.Equal((20, 5), (plan.PlannedSteps, plan.StepsPerEpoch));

        // First attempt: announces each epoch's reach before its first step, checkpoints epoch 1, is killed at step 7.
        var announced = new List<long>();
        var checkpoints = new List<TrainingCheckpoint>();
        using var kill = new CancellationTokenSource();
        var options = new TrainingOptions
        {
            CancellationToken = kill.Token,
            BeforeSteps = announced.Add,
            Checkpoint = checkpoints.Add,
            Progress = p =>
            {
                Assert.True(p.Step <= announced[^1], $"step {p.Step} ran beyond the announced {announced[^1]}");
                if (p.Kind == TrainingEventKind.Step && p.Step == 7)
                {
                    kill.Cancel();
                }
            },
        };
        Assert.Throws<OperationCanceledException>(() => SegmentationTrainer.Train(data, null, config, options));
        Assert.Equal([5L, 10L], announced);
        var checkpoint = Assert.Single(checkpoints);
        Assert.Equal((1, 5L, 0L), (checkpoint.Epoch, checkpoint.Steps, checkpoint.LostSteps));

        // Resume: the 5 steps after the checkpoint (two of them never ran, but the record says they may have) count.
        var resumedAnnounced = new List<long>();
        var steps = new List<TrainingProgress>();
        var more = new List<TrainingCheckpoint>();
        using var resumed = SegmentationTrainer.Train(data, null, config, new TrainingOptions
        {
            Resume = new TrainingResume { From = TrainingCheckpoint.FromBytes(checkpoint.ToBytes()), StepsSpent = announced[^1] },
            BeforeSteps = resumedAnnounced.Add,
            Checkpoint = more.Add,
            Progress = steps.Add,
        });
        Assert.Equal(plan.PlannedSteps, resumed.Steps);
        Assert.Equal(5, resumed.LostSteps);
        Assert.Equal(plan.PlannedSteps, resumed.Privacy!.Steps);
        Assert.Equal(PrivacyAccounting.ComputeEpsilon(plan.SampleRate, plan.NoiseMultiplier, plan.PlannedSteps, 1e-3, AccountantKind.Rdp).Epsilon, resumed.Privacy.Epsilon, 9);
        Assert.True(resumed.Privacy.Epsilon <= 6);
        Assert.Equal([15L, 20L], resumedAnnounced);
        var stepEvents = steps.Where(s => s.Kind == TrainingEventKind.Step).ToList();
        Assert.Equal(10, stepEvents.Count);
        Assert.Equal(11, stepEvents[0].Step);
        Assert.Equal([1, 2, 3], resumed.Epochs.Select(e => e.Epoch));
        Assert.Equal([5L, 15L, 20L], resumed.Epochs.Select(e => e.Steps));
        Assert.Equal([15L, 20L], more.Select(c => c.Steps));
        Assert.All(more, c => Assert.Equal(5, c.LostSteps));

        // Everything already spent: nothing more runs, and the count stays the plan's.
        var none = new List<TrainingProgress>();
        using var spent = SegmentationTrainer.Train(data, null, config, new TrainingOptions
        {
            Resume = new TrainingResume { From = more[^1], StepsSpent = plan.PlannedSteps },
            Progress = none.Add,
        });
        Assert.Empty(none);
        Assert.Equal(plan.PlannedSteps, spent.Privacy!.Steps);

        // A resume beyond the plan, below its checkpoint, or from another plan's checkpoint is refused.
        Assert.Contains("more than the 20 planned", Assert.Throws<ArgumentException>(() =>
            SegmentationTrainer.Train(data, null, config, new TrainingOptions { Resume = new TrainingResume { StepsSpent = 21 } })).Message, StringComparison.Ordinal);
        Assert.Contains("fewer than", Assert.Throws<ArgumentException>(() =>
            SegmentationTrainer.Train(data, null, config, new TrainingOptions { Resume = new TrainingResume { From = checkpoint, StepsSpent = 4 } })).Message, StringComparison.Ordinal);
        Assert.Contains("another plan", Assert.Throws<ArgumentException>(() =>
            SegmentationTrainer.Train(data, null, config with { BatchSize = 10 }, new TrainingOptions { Resume = new TrainingResume { From = checkpoint, StepsSpent = 10 } })).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bytes_that_are_not_a_checkpoint_are_refused()
    {
        Assert.Throws<Imaging.Formats.SafeTensorsFormatException>(() => TrainingCheckpoint.FromBytes(new byte[64]));
        var other = Imaging.Formats.SafeTensors.Serialize([Imaging.Formats.SafeTensor.Create<float>("x", [1f, 2f], 2)]);
        Assert.Contains("not a training checkpoint", Assert.Throws<FormatException>(() => TrainingCheckpoint.FromBytes(other)).Message, StringComparison.Ordinal);
    }
}
