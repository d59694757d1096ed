using MriSeg.Learning.Model;
using MriSeg.Learning.Noise;
using MriSeg.Learning.PerSample;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using MriSeg.Privacy;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class TrainingTests(TorchRuntimeFixture fixture, ITestOutputHelper output)
{
    private static readonly UNetConfig Small = new() { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 };

    /// <summary><paramref name="slices"/> random float64 16×16 images and masks (60 % background), drawn from <paramref name="generator"/>.</summary>
    private static (Tensor X, Tensor Y) SmallBatch(Generator generator, int slices) =>
        (randn([slices, 1, 16, 16], ScalarType.Float64, generator: generator),
         rand([slices, 1, 16, 16], ScalarType.Float64, generator: generator).gt(0.6).to(ScalarType.Float64));

    /// <summary>Every parameter's gradient, flattened into one copy.</summary>
    private static Tensor FlatGradient(UNet2d model) => cat([.. model.OrderedParameters().Select(p => p.grad!.flatten())]).clone();

    private static TrainingConfig Dp(double epsilon = 8, double delta = 1e-3, double epochs = 2, int batch = 10) => new()
    {
        Model = Small,
        Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = epsilon, Delta = delta, ClipNorm = 0.5 },
        Epochs = epochs,
        BatchSize = batch,
        MaxSlicesPerPatient = 2,
        Optimizer = new OptimizerConfig { LearningRate = 0.01 },
        Validation = new ValidationConfig { EveryEpochs = 1 },
        Threads = 1,
    };

    [Fact]
    public void Plan_calibrates_sigma_so_the_planned_steps_end_at_the_target_epsilon()
    {
        var config = Dp(epsilon: 4, delta: 1e-4, epochs: 10, batch: 50);
        var plan = SegmentationTrainer.Plan(config, 1000);
        Assert.Equal(0.05, plan.SampleRate, 12);
        Assert.Equal(200, plan.PlannedSteps);
        Assert.Equal(20, plan.StepsPerEpoch);
        Assert.InRange(plan.PlannedEpsilon!.Value, 4 * 0.98, 4);
        var reference = PrivacyAccounting.CalibrateNoise(4, 0.05, 200, 1e-4, AccountantKind.Prv);
        Assert.Equal(reference.Sigma, plan.NoiseMultiplier, 12);

        var rdp = SegmentationTrainer.Plan(config with { Privacy = config.Privacy with { Accountant = "rdp" } }, 1000);
        Assert.True(rdp.NoiseMultiplier > plan.NoiseMultiplier, "RDP is looser than PRV, so it needs more noise");

        var plain = SegmentationTrainer.Plan(config with { Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate } }, 1000);
        Assert.Equal(10 * 20, plain.PlannedSteps);
        Assert.Equal(0, plain.NoiseMultiplier);
        Assert.Null(plain.PlannedEpsilon);
    }

    [Fact]
    public void Plan_cuts_the_steps_at_the_budget_when_sigma_is_fixed_too_low()
    {
        var config = Dp(epsilon: 2, delta: 1e-4, epochs: 50, batch: 100) with
        {
            Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = 2, Delta = 1e-4, NoiseMultiplier = 1.0 },
        };
        var plan = SegmentationTrainer.Plan(config, 1000);
        Assert.True(plan.PlannedSteps < 500, $"{plan.PlannedSteps} steps");
        Assert.True(PrivacyAccounting.ComputeEpsilon(0.1, 1.0, plan.PlannedSteps, 1e-4, AccountantKind.Prv).Epsilon <= 2);
        Assert.True(PrivacyAccounting.ComputeEpsilon(0.1, 1.0, plan.PlannedSteps + 1, 1e-4, AccountantKind.Prv).Epsilon > 2);
    }

    [Fact]
    public void Plan_refuses_a_delta_not_below_one_over_n_and_a_budget_no_step_fits()
    {
        Assert.Contains("1/N", Assert.Throws<ArgumentException>(() => SegmentationTrainer.Plan(Dp(delta: 0.01), 100)).Message, StringComparison.Ordinal);
        var tiny = Dp(epsilon: 0.05) with { Privacy = new PrivacyConfig { Epsilon = 0.05, Delta = 1e-5, NoiseMultiplier = 0.3 } };
        Assert.Contains("not one step", Assert.Throws<ArgumentException>(() => SegmentationTrainer.Plan(tiny, 1000)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Dp_training_stops_at_the_budget_and_never_exceeds_it()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 60, slicesPerPatient: 2, seed: 5);

        // σ fixed low: the 60 planned steps do not fit ε = 3, so training must stop early.
        var config = Dp(epsilon: 3, delta: 1e-3, epochs: 10, batch: 10) with
        {
            Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = 3, Delta = 1e-3, ClipNorm = 0.5, NoiseMultiplier = 0.8, Accountant = "rdp" },
        };
        var steps = new List<TrainingProgress>();
        using var result = SegmentationTrainer.Train(data, null, config, new TrainingOptions { Progress = steps.Add });
        var budget = PrivacyBudget.MaxSteps(AccountantKind.Rdp, 10.0 / 60, 0.8, 1e-3, 3);
        output.WriteLine($"{result.Steps} steps of {Math.Ceiling(10 / (10.0 / 60))} planned; epsilon {result.Privacy!.Epsilon:F4}");
        Assert.Equal(budget, result.Steps);
        Assert.True(result.Steps < 60);
        Assert.Equal("privacy budget", result.StopReason);
        Assert.True(result.Privacy.Epsilon <= 3);
        Assert.True(PrivacyAccounting.ComputeEpsilon(10.0 / 60, 0.8, result.Steps + 1, 1e-3, AccountantKind.Rdp).Epsilon > 3);
        Assert.Equal(result.Steps, result.Privacy.Steps);

        // ε is reported every step (RDP), never decreases and never passes the budget.
        var stepEvents = steps.Where(s => s.Kind == TrainingEventKind.Step).ToList();
        Assert.Equal(result.Steps, stepEvents.Count);
        Assert.All(stepEvents, s => Assert.InRange(s.Epsilon!.Value, 0, 3));
        Assert.Equal(stepEvents.Select(s => s.Epsilon!.Value).Order(), stepEvents.Select(s => s.Epsilon!.Value));
        Assert.True(result.Privacy.SecureRandomness);
        Assert.DoesNotContain("INSECURE", result.Privacy.NoiseGenerator, StringComparison.Ordinal);
    }

    [Fact]
    public void Prv_step_reports_bound_the_spent_epsilon_from_above_and_epoch_reports_are_exact()
    {
        var data = TestSlices.Disks(patients: 40, slicesPerPatient: 1, seed: 14);
        var events = new List<TrainingProgress>();
        using var result = SegmentationTrainer.Train(data, null, Dp(epsilon: 5, delta: 1e-3, epochs: 3, batch: 8), new TrainingOptions { Progress = events.Add });
        var q = 8.0 / 40;
        foreach (var e in events)
        {
            var exact = PrivacyAccounting.ComputeEpsilon(q, result.Plan.NoiseMultiplier, e.Step, 1e-3, AccountantKind.Prv).Epsilon;
            if (e.Kind == TrainingEventKind.Epoch)
            {
                Assert.Equal(exact, e.Epsilon!.Value, 9);
            }
            else
            {
                Assert.InRange(e.Epsilon!.Value, exact, 5.0);
            }
        }

        Assert.Equal(15, result.Steps);
        Assert.Equal(result.Privacy!.Epsilon, events[^1].Epsilon!.Value, 9);
    }

    [Fact]
    public void Runs_repeat_with_seeded_privacy_randomness_and_differ_with_the_csprng()
    {
        var data = TestSlices.Disks(patients: 30, slicesPerPatient: 3, seed: 6);
        var config = Dp(epochs: 2, batch: 10) with { Augmentation = new AugmentationConfig { Multiplicity = 2 }, EmaDecay = 0.9 };
        Tensor Weights(ulong? secret)
        {
            using var result = SegmentationTrainer.Train(data, null, config, new TrainingOptions { InsecureDeterministicPrivacySeed = secret });
            Assert.Equal(secret is null, result.Privacy!.SecureRandomness);
            return cat([.. result.Model.OrderedParameters().Select(p => p.detach().flatten())]).clone();
        }

        using var a = Weights(77);
        using var b = Weights(77);
        using var c = Weights(null);
        using var d = Weights(null);
        Assert.True(a.equal(b).all().item<bool>(), "same seeds, different weights");
        Assert.False(c.equal(d).all().item<bool>(), "CSPRNG noise and sampling repeated");
        Assert.False(a.equal(c).all().item<bool>());
    }

    [Fact]
    public void Non_private_training_learns_the_synthetic_task_and_keeps_the_best_validation_epoch()
    {
        var data = TestSlices.Disks(patients: 80, slicesPerPatient: 2, seed: 8);
        var config = new TrainingConfig
        {
            Model = Small with { BaseWidth = 4 },
            Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate },
            Epochs = 6,
            BatchSize = 8,
            Optimizer = new OptimizerConfig { LearningRate = 0.01 },
            EmaDecay = 0.9,
            Split = new SplitConfig { ValidationFraction = 0.15, TestFraction = 0.2 },
            Threads = 1,
        };
        var events = new List<TrainingProgress>();
        using var run = LocalTraining.Run(data, config, new TrainingOptions { Progress = events.Add });
        var t = run.Training;
        output.WriteLine(string.Join("\n", t.Epochs.Select(e => $"epoch {e.Epoch}: loss {e.MeanLoss:F4}, validation Dice {e.ValidationDice:F4}")));
        output.WriteLine($"test Dice {run.Test!.Summary.Dice:F4}, {t.SamplesPerSecond:F0} slices/s");
        Assert.Null(t.Privacy);
        Assert.Equal(6, t.Epochs.Count);
        Assert.Equal(6 * t.Plan.StepsPerEpoch, t.Steps);
        Assert.True(t.Epochs[^1].MeanLoss < t.Epochs[0].MeanLoss * 0.7);
        Assert.True(run.Test.Summary.Dice > 0.8, $"test Dice {run.Test.Summary.Dice:F4}");
        var best = t.Epochs.MaxBy(e => e.ValidationDice!.Value)!;
        Assert.Equal(best.Epoch, t.BestEpoch);
        Assert.Equal(best.ValidationDice, t.BestValidationDice);
        Assert.Equal(t.Steps, events.Count(e => e.Kind == TrainingEventKind.Step));
        Assert.Equal(6, events.Count(e => e.Kind == TrainingEventKind.Epoch));
        Assert.All(events, e => Assert.Null(e.Epsilon));

        // The kept weights are the best epoch's: re-scoring the validation patients gives its Dice.
        var validation = data.SelectPatients(run.Split.Validation);
        var rescored = Metrics.SegmentationEvaluator.Evaluate(t.Model, validation, new Metrics.EvaluationOptions { ComputeHd95 = false });
        Assert.Equal(t.BestValidationDice!.Value, rescored.Summary.Dice, 6);
        Assert.Empty(run.Split.Train.Intersect(run.Split.Test));
    }

    [Fact]
    public void Early_stopping_ends_the_run_after_patience_validations_without_improvement()
    {
        var data = TestSlices.Disks(patients: 40, slicesPerPatient: 1, seed: 12);

        // A learning rate of 1e-9 cannot improve anything after the first validation.
        var config = new TrainingConfig
        {
            Model = Small,
            Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate },
            Epochs = 20,
            BatchSize = 20,
            Optimizer = new OptimizerConfig { LearningRate = 1e-9 },
            Schedule = new ScheduleConfig { Kind = ScheduleKind.Constant },
            Validation = new ValidationConfig { Patience = 2 },
            Split = new SplitConfig { ValidationFraction = 0.2, TestFraction = 0 },
            Threads = 1,
        };
        using var run = LocalTraining.Run(data, config);
        Assert.Equal("early stopping", run.Training.StopReason);
        Assert.True(run.Training.Epochs.Count < 20);
        Assert.Null(run.Test);
    }

    [Fact]
    public void Cancellation_stops_between_steps()
    {
        var data = TestSlices.Disks(patients: 20, slicesPerPatient: 1, seed: 13);
        using var cancel = new CancellationTokenSource();
        var options = new TrainingOptions
        {
            CancellationToken = cancel.Token,
            Progress = p =>
            {
                if (p.Step == 2)
                {
                    cancel.Cancel();
                }
            },
        };
        Assert.Throws<OperationCanceledException>(() => SegmentationTrainer.Train(data, null, Dp(epochs: 5, batch: 5), options));
    }

    [Fact]
    public void Multiplicity_averages_copies_so_identical_copies_change_nothing()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(21);
        using var model = new UNet2d(Small, ScalarType.Float64, generator: generator);
        var (x, y) = SmallBatch(generator, 3);
        int[] groups = [0, 0, 1];
        var twice = tensor(new long[] { 0, 0, 1, 1, 2, 2 });
        int[] groupsTwice = [0, 0, 0, 0, 1, 1];
        foreach (var reduction in new[] { GroupReduction.Sum, GroupReduction.Mean })
        {
            Tensor Gradient(Tensor inputs, Tensor targets, int[] index, int k)
            {
                var loss = SegmentationTrainer.WithMultiplicity(SegmentationLosses.BceDice(), reduction, k);
                using var engine = new DpGradientEngine(model, loss, new DpSgdSettings(0.05, 0, 2, reduction));
                engine.ComputeGradients(inputs, targets, index);
                return FlatGradient(model);
            }

            var once = Gradient(x, y, groups, 1);
            var copies = Gradient(x.index_select(0, twice), y.index_select(0, twice), groupsTwice, 2);
            Assert.True(once.allclose(copies, 1e-9, 1e-15), reduction.ToString());
        }
    }

    [Fact]
    public void Chunked_dp_step_equals_one_pass()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(22);
        using var model = new UNet2d(Small, ScalarType.Float64, generator: generator);
        var (x, y) = SmallBatch(generator, 5);
        Tensor Run(Func<DpGradientEngine, DpStepStats> step, out DpStepStats stats)
        {
            using var noise = GaussianNoise.CreateInsecureSeeded(3);
            using var engine = new DpGradientEngine(model, SegmentationLosses.BceDice(), new DpSgdSettings(0.02, 1.0, 3), noise);
            stats = step(engine);
            return FlatGradient(model);
        }

        var whole = Run(e => e.ComputeGradients(x, y, [0, 1, 1, 2, 2]), out var wholeStats);
        var first = tensor(new long[] { 0, 1, 2 });
        var second = tensor(new long[] { 3, 4 });
        var chunked = Run(e => e.ComputeGradients(2, c => c == 0
            ? new DpBatchChunk(x.index_select(0, first), y.index_select(0, first), [0, 1, 1])
            : new DpBatchChunk(x.index_select(0, second), y.index_select(0, second), [0, 0])), out var chunkedStats);
        Assert.True(whole.allclose(chunked, 1e-10, 1e-14));
        Assert.Equal(wholeStats.Groups, chunkedStats.Groups);
        Assert.Equal(wholeStats.Slices, chunkedStats.Slices);
        Assert.Equal(wholeStats.ClippedGroups, chunkedStats.ClippedGroups);
        Assert.Equal(wholeStats.LossSum, chunkedStats.LossSum, 10);
    }

    [Fact]
    public void Noise_drawn_on_the_host_during_the_pass_gives_the_same_gradient()
    {
        // The accelerator path (noise drawn by a task while the device works, added last), forced on the CPU.
        using var scope = NewDisposeScope();
        using var generator = new Generator(24);
        using var model = new UNet2d(Small, ScalarType.Float64, generator: generator);
        var (x, y) = SmallBatch(generator, 4);
        Tensor Run(bool? overlap, double sigma)
        {
            using var noise = GaussianNoise.CreateInsecureSeeded(7);
            using var engine = new DpGradientEngine(model, SegmentationLosses.BceDice(), new DpSgdSettings(0.02, sigma, 3), noise)
            {
                OverlapHostNoise = overlap,
            };
            engine.ComputeGradients(x, y, [0, 1, 1, 2]);
            engine.ComputeGradients(x, y, [0, 0, 1, 2]);
            return FlatGradient(model);
        }

        var direct = Run(null, 1.0);
        var overlapped = Run(true, 1.0);
        Assert.True(direct.allclose(overlapped, 1e-12, 1e-15));
        // The noise is really in it: without noise the gradient differs by about σC/E per coordinate.
        var noiseless = Run(true, 0.0);
        var std = (overlapped - noiseless).std().item<double>();
        Assert.InRange(std, 0.9 * 0.02 / 3, 1.1 * 0.02 / 3);
    }

    [Fact]
    public void Padding_groups_change_neither_the_gradient_nor_the_stats()
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(23);
        using var model = new UNet2d(Small, ScalarType.Float64, generator: generator);
        var (x, y) = SmallBatch(generator, 4);
        Tensor Run(DpBatchChunk chunk, out DpStepStats stats)
        {
            using var engine = new DpGradientEngine(model, SegmentationLosses.BceDice(), new DpSgdSettings(0.02, 0, 3, GroupReduction.Mean));
            stats = engine.ComputeGradients(1, _ => chunk);
            return FlatGradient(model);
        }

        // Patients 0 (two slices) and 1; then three padding groups made of copies of real slices.
        var plain = Run(new DpBatchChunk(x[0..3], y[0..3], [0, 0, 1]), out var plainStats);
        var rows = tensor(new long[] { 0, 1, 2, 3, 0, 2 });
        var padded = Run(new DpBatchChunk(x.index_select(0, rows), y.index_select(0, rows), [0, 0, 1, 2, 3, 4], PaddingGroups: 3), out var paddedStats);
        Assert.True(plain.allclose(padded, 1e-12, 1e-16));
        Assert.Equal(plainStats.LossSum, paddedStats.LossSum, 12);
        Assert.Equal(plainStats.ClippedGroups, paddedStats.ClippedGroups);
        Assert.Equal(2, paddedStats.Groups);
        Assert.Equal(3, paddedStats.Slices);

        Assert.Equal([50, 50], SegmentationTrainer.PassSizes(100, 50));
        Assert.Equal([37, 37, 36], SegmentationTrainer.PassSizes(110, 50));
        Assert.Equal([7], SegmentationTrainer.PassSizes(7, 50));
        Assert.Empty(SegmentationTrainer.PassSizes(0, 50));
        Assert.Throws<ArgumentOutOfRangeException>(() => SliceGrouping.Create([0, 1], GroupReduction.Sum, 0, 3));
    }

    [Fact]
    public void Learning_rate_warms_up_then_follows_the_cosine_to_the_final_fraction()
    {
        var config = new TrainingConfig
        {
            Optimizer = new OptimizerConfig { LearningRate = 0.1 },
            Schedule = new ScheduleConfig { Kind = ScheduleKind.Cosine, WarmupSteps = 4, FinalFraction = 0.1 },
        };
        Assert.Equal(0.025, SegmentationTrainer.LearningRate(config, 0, 104), 12);
        Assert.Equal(0.1, SegmentationTrainer.LearningRate(config, 3, 104), 12);
        Assert.Equal(0.1, SegmentationTrainer.LearningRate(config, 4, 104), 12);
        Assert.Equal(0.01, SegmentationTrainer.LearningRate(config, 103, 104), 12);

        // A third of the way through the 99 decay intervals: 0.1·(0.1 + 0.9·(1 + cos(π/3))/2) = 0.0775.
        Assert.Equal(0.0775, SegmentationTrainer.LearningRate(config, 4 + 33, 104), 12);
        var constant = config with { Schedule = new ScheduleConfig { Kind = ScheduleKind.Constant } };
        Assert.Equal(0.1, SegmentationTrainer.LearningRate(constant, 77, 104));
    }

    [Fact]
    public void Config_round_trips_through_json_and_rejects_unknown_keys_and_bad_values()
    {
        var config = Dp() with { Augmentation = new AugmentationConfig { Multiplicity = 4, RotationDegrees = 5 }, EmaDecay = 0.99, Seed = 12345 };
        var json = config.ToJson();
        Assert.Contains("\"max_slices_per_patient\": 2", json, StringComparison.Ordinal);
        Assert.Contains("\"mode\": \"dp\"", json, StringComparison.Ordinal);
        var back = TrainingConfig.FromJson(json);
        Assert.Equal(config.ToJson(), back.ToJson());
        Assert.Equal(Small, back.Model);

        var minimal = TrainingConfig.FromJson("""{ "privacy": { "mode": "non_private" }, "epochs": 3 }""");
        Assert.Equal(PrivacyMode.NonPrivate, minimal.Privacy.Mode);
        Assert.Null(minimal.Model);
        Assert.Equal(64, minimal.BatchSize);

        Assert.Throws<FormatException>(() => TrainingConfig.FromJson("""{ "epoch": 3 }"""));
        Assert.Throws<FormatException>(() => TrainingConfig.FromJson("""{ "privacy": { "epsilon": 8, "sigma": 1 } }"""));
        Assert.Contains("privacy.delta", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "privacy": { "delta": 2 } }""")).Message, StringComparison.Ordinal);
        Assert.Contains("multiplicity", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "augmentation": { "multiplicity": 0 } }""")).Message, StringComparison.Ordinal);
        Assert.Contains("slice_reduction", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "slice_reduction": "max" }""")).Message, StringComparison.Ordinal);
        Assert.Contains("elastic_pixels", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "augmentation": { "elastic_pixels": -1 } }""")).Message, StringComparison.Ordinal);
        Assert.Contains("elastic_control_points", Assert.Throws<ArgumentException>(() => TrainingConfig.FromJson("""{ "augmentation": { "elastic_control_points": 1 } }""")).Message, StringComparison.Ordinal);
        Assert.Throws<FormatException>(() => TrainingConfig.FromJson("""{ "model": { "depth": 4, "widths": [1, 2] } }"""));
    }

    [Fact]
    public void Model_config_must_fit_the_data()
    {
        var data = TestSlices.Disks(patients: 4, slicesPerPatient: 1, size: 16, channels: 2);
        Assert.Equal(UNetConfig.Reference with { InChannels = 2 }, SegmentationTrainer.ResolveModel(new TrainingConfig(), data));
        Assert.Contains("channels", Assert.Throws<ArgumentException>(() => SegmentationTrainer.ResolveModel(new TrainingConfig { Model = Small }, data)).Message, StringComparison.Ordinal);
        Assert.Contains("multiples of 32", Assert.Throws<ArgumentException>(
            () => SegmentationTrainer.ResolveModel(new TrainingConfig { Model = Small with { InChannels = 2, Depth = 5 } }, data)).Message, StringComparison.Ordinal);
    }
}
