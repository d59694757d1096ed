using System.Text;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using MriSeg.Testing;

namespace MriSeg.Learning.Tests;

/// <summary>
/// Issue 9's measuring stick: the BraTS-convention whole-tumour Dice, patient-level cross-validation folds, and
/// recipes that pre-process raw case folders themselves.
/// </summary>
[Collection(TorchCollection.Name)]
public sealed class QualityEvaluationTests(TorchRuntimeFixture fixture)
{
    /// <summary>Four one-slice patients of 2x2 pixels, masks in [N, K, H, W] with K label channels.</summary>
    private static SliceDataset Patients(byte[] masks, LabelScheme labels) =>
        new(new float[4 * 4], masks, [0, 1, 2, 3], 2, 2, ["flair"], labels, ["A", "B", "C", "D"]);

    [Fact]
    public void Dice_is_the_brats_whole_tumour_dice_tumour_free_patients_score_one_or_zero()
    {
        var truth = new byte[]
        {
            1, 1, 0, 0, // A: tumour, half found
            0, 0, 0, 0, // B: no tumour, nothing predicted -> 1
            0, 0, 0, 0, // C: no tumour, one false-positive pixel -> 0
            0, 1, 1, 1, // D: tumour, missed entirely -> 0
        };
        var predicted = new byte[]
        {
            1, 0, 0, 0,
            0, 0, 0, 0,
            0, 0, 0, 1,
            0, 0, 0, 0,
        };
        var result = SegmentationEvaluator.Score(predicted, Patients(truth, LabelScheme.WholeTumour));
        var dice = result.Patients.ToDictionary(p => p.PatientId, p => p.Dice[0]);
        Assert.Equal(2.0 / 3, dice["A"], 12);
        Assert.Equal(1.0, dice["B"]);
        Assert.Equal(0.0, dice["C"]);
        Assert.Equal(0.0, dice["D"]);
        Assert.Equal(((2.0 / 3) + 1 + 0 + 0) / 4, result.Summary.Dice, 12);
        Assert.Equal(result.Summary.Dice, result.Summary.MeanChannelDice, 12);
        var mean = result.Summary.Dice;
        var sd = Math.Sqrt(new[] { 2.0 / 3, 1, 0, 0 }.Sum(d => (d - mean) * (d - mean)) / 4);
        Assert.Equal(sd, result.Summary.DiceStd, 12);

        // Predicting nothing at all scores exactly the tumour-free share (B and C: 2 of 4).
        var nothing = SegmentationEvaluator.Score(new byte[16], Patients(truth, LabelScheme.WholeTumour));
        Assert.Equal(2.0 / 4, nothing.Summary.Dice, 12);
    }

    [Fact]
    public void With_brats_regions_dice_is_the_whole_tumour_channel_and_the_channel_mean_is_kept_apart()
    {
        // Channels WT, TC, ET per patient (3 x 4 values each). A: WT perfect, TC and ET missed. B, C, D: tumour-free, nothing predicted.
        var truth = new byte[4 * 3 * 4];
        var predicted = new byte[truth.Length];
        truth[0] = truth[1] = 1;        // A WT
        truth[4] = 1;                   // A TC
        truth[8] = 1;                   // A ET
        predicted[0] = predicted[1] = 1; // A WT found, TC/ET not
        var result = SegmentationEvaluator.Score(predicted, Patients(truth, LabelScheme.BratsRegions));
        Assert.Equal(["WT", "TC", "ET"], result.Summary.Channels);
        Assert.Equal(1.0, result.Summary.Dice, 12);                        // WT: every patient right
        Assert.Equal([1.0, 0.75, 0.75], result.Summary.DicePerChannel);    // A scores 0 on TC and ET
        Assert.Equal((1.0 + 0.75 + 0.75) / 3, result.Summary.MeanChannelDice, 12);
        Assert.Equal(0, MetricSummary.WholeTumourChannel(["WT", "TC", "ET"]));
        Assert.Equal(2, MetricSummary.WholeTumourChannel(["ET", "TC", "wt"]));
    }

    [Fact]
    public void Folds_hold_every_patient_exactly_once_and_keep_the_tumour_free_share()
    {
        var data = TestSlices.Disks(patients: 47, slicesPerPatient: 3, seed: 5, tumourFreeShare: 0.3);
        var byPatient = data.SlicesByPatient();
        var tumourFree = Enumerable.Range(0, 47).Where(p => !byPatient[p].Any(data.HasTumour)).ToHashSet();
        Assert.InRange(tumourFree.Count, 5, 25);
        foreach (var k in new[] { 2, 3, 5 })
        {
            var folds = CrossValidation.Folds(data, k, seed: 9);
            Assert.Equal(k, folds.Count);
            var all = folds.SelectMany(f => f).ToList();
            Assert.Equal(47, all.Count);
            Assert.Equal(Enumerable.Range(0, 47), all.Order());                  // no patient twice, none left out
            Assert.InRange(folds.Max(f => f.Length) - folds.Min(f => f.Length), 0, 1);
            var perFold = folds.Select(f => f.Count(tumourFree.Contains)).ToList();
            Assert.InRange(perFold.Max() - perFold.Min(), 0, 1);                   // stratified
            Assert.All(folds, f => Assert.Equal(f.Order(), f));
        }

        Assert.Equal(CrossValidation.Folds(data, 3, 9), CrossValidation.Folds(data, 3, 9));
        Assert.NotEqual(CrossValidation.Folds(data, 3, 9)[0], CrossValidation.Folds(data, 3, 10)[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => CrossValidation.Folds(data, 1, 9));
        Assert.Throws<ArgumentOutOfRangeException>(() => CrossValidation.Folds(data, 48, 9));
    }

    [Fact]
    public void A_fold_trains_on_the_other_patients_only_and_scores_its_own()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 30, slicesPerPatient: 2, seed: 11);
        var folds = CrossValidation.Folds(data, 3, seed: 1);
        var config = new TrainingConfig
        {
            Model = new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 },
            Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = 4, Delta = 1e-3 },
            Epochs = 2,
            BatchSize = 8,
            Split = new SplitConfig { ValidationFraction = 0.1, TestFraction = 0 },
            Threads = 1,
        };
        var r = CrossValidation.RunFold(data, config, 1, folds[1], new TrainingOptions { InsecureDeterministicPrivacySeed = 3 });
        Assert.Equal(folds[1].Length, r.Test.Patients);
        Assert.Equal(30 - folds[1].Length, r.TrainingPatients + r.ValidationPatients);
        Assert.Equal(2, r.ValidationPatients);
        Assert.True(r.Epsilon is > 0 and <= 4, $"epsilon {r.Epsilon}");
        Assert.InRange(r.Test.Dice, 0, 1);
    }

    [Fact]
    public async Task A_recipe_preprocesses_raw_case_folders_and_checks_shards_against_its_settings()
    {
        var root = Directory.CreateTempSubdirectory("mriseg-recipe-data-").FullName;
        try
        {
            new PhantomGenerator(PhantomOptions.Default with { Size = new(32, 32, 16), MaxDegreeOfParallelism = 1 })
                .WriteDataset(root, sites: 2, patientsPerSite: 3, TestContext.Current.CancellationToken);
            var sites = Directory.GetDirectories(root).Order().ToArray();
            Assert.Equal(2, sites.Length);
            var recipe = new PreprocessingConfig { Size = 16, Modalities = ["flair", "t2"], TumourFreeShare = 1 };
            var notes = new List<string>();
            var ct = TestContext.Current.CancellationToken;
            var data = await TrainingData.LoadAsync(sites, recipe, note: notes.Add, cancellationToken: ct);
            Assert.Equal(6, data.PatientIds.Count);
            Assert.Equal((16, 16), (data.Height, data.Width));
            Assert.Equal(["flair", "t2"], data.Modalities);
            Assert.Equal("all-brain@crop-16", data.Provenance.SliceSelection);
            Assert.Equal(2, notes.Count(n => n.Contains("pre-processed in memory", StringComparison.Ordinal)));
            Assert.Null(recipe.Mismatch(data));

            // The same folder under the same (local) key gives the same pseudonyms: splits repeat.
            var again = await TrainingData.LoadAsync(sites, recipe, cancellationToken: ct);
            Assert.Equal(data.PatientIds, again.PatientIds);

            // A shard made another way is refused, naming the difference.
            var shard = Path.Combine(root, "other.safetensors");
            DatasetShard.Save(shard, await TrainingData.PreprocessAsync(sites[0], recipe with { Size = 32 }, TrainingData.LocalKey, cancellationToken: ct));
            var refused = await Assert.ThrowsAsync<ArgumentException>(() => TrainingData.LoadAsync([shard], recipe, cancellationToken: ct));
            Assert.Contains("32x32 slices, the recipe 16x16", refused.Message, StringComparison.Ordinal);
            var missing = await Assert.ThrowsAsync<ArgumentException>(() => TrainingData.LoadAsync([Path.Combine(root, "nope")], recipe, cancellationToken: ct));
            Assert.Contains("no such file or folder", missing.Message, StringComparison.Ordinal);

            // What a model records reads back to the same settings.
            var derived = PreprocessingConfig.FromSchema(DatasetSchema.Of(data));
            Assert.Equal(recipe.Size, derived.Size);
            Assert.Equal(recipe.Modalities, derived.Modalities);
            Assert.Equal(recipe.TumourFreeShare, derived.TumourFreeShare);
            Assert.Equal((0.5, 99.5), (derived.LowerPercentile, derived.UpperPercentile));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void The_scoring_part_takes_the_same_patients_with_all_their_slices_by_id()
    {
        // The same patient IDs (P0000…): three slices each for scoring, one each (other images) as trained on, in another order.
        var every = TestSlices.Disks(patients: 6, slicesPerPatient: 3, seed: 3);
        var selected = TestSlices.Disks(patients: 6, slicesPerPatient: 1, seed: 4).SelectPatients([4, 0, 2]);

        var part = TrainingData.ScoringPart(selected, [0, 2], every);
        Assert.Equal([every.PatientIds[4], every.PatientIds[2]], part.PatientIds);
        Assert.Equal(6, part.Count);
        Assert.Equal(every.SelectPatients([4, 2]).Images, part.Images);
        Assert.Equal(selected.SelectPatients([1]).Images, TrainingData.ScoringPart(selected, [1], null).Images);

        var lacking = every.SelectPatients([0, 2]);
        var e = Assert.Throws<ArgumentException>(() => TrainingData.ScoringPart(selected, [0], lacking));
        Assert.Contains(every.PatientIds[4], e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_recipe_base_model_starts_the_fold_and_a_wrong_one_is_refused()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 24, slicesPerPatient: 1, seed: 13, tumourFreeShare: 0.25);
        var folds = CrossValidation.Folds(data, 2, seed: 1);
        var architecture = new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 };
        var root = Directory.CreateTempSubdirectory("mriseg-base-model-").FullName;
        try
        {
            // A base model that predicts nothing anywhere (last bias -100); trained with a vanishing learning rate it stays so,
            // and a held-out fold then scores exactly its tumour-free share.
            var folder = Path.Combine(root, "models", "silent");
            using (var silent = new UNet2d(architecture, generator: new TorchSharp.torch.Generator(5)))
            {
                using (TorchSharp.torch.no_grad())
                {
                    silent.OrderedParameters()[^1].fill_(-100);
                }

                UNetModelFile.Save(silent, folder);
            }

            var configPath = Path.Combine(root, "configs", "r.json");
            Directory.CreateDirectory(Path.GetDirectoryName(configPath)!);
            var config = TrainingData.ResolveBaseModel(new TrainingConfig
            {
                Model = architecture,
                BaseModel = Path.Combine("models", "silent"),
                Privacy = new PrivacyConfig { Mode = PrivacyMode.NonPrivate },
                Optimizer = new OptimizerConfig { LearningRate = 1e-12 },
                Epochs = 1,
                BatchSize = 4,
                EmaDecay = 0,
                Split = new SplitConfig { ValidationFraction = 0, TestFraction = 0 },
                Threads = 1,
            }, configPath);
            Assert.Equal(folder, config.BaseModel);   // found beside the configs/ folder
            var r = CrossValidation.RunFold(data, config, 0, folds[0]);
            var tumourFree = folds[0].Count(p => !data.HasTumour(p));
            Assert.True(tumourFree > 0);
            Assert.Equal((double)tumourFree / folds[0].Length, r.Test.Dice, 9);

            var missing = config with { BaseModel = Path.Combine(root, "nope") };
            Assert.Contains("no model.safetensors", Assert.Throws<ArgumentException>(() => CrossValidation.RunFold(data, missing, 0, folds[0])).Message, StringComparison.Ordinal);
            var wider = config with { Model = architecture with { BaseWidth = 4 } };
            Assert.Contains("architecture", Assert.Throws<ArgumentException>(() => CrossValidation.RunFold(data, wider, 0, folds[0])).Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Theory]
    [InlineData("""{ "preprocessing": { "size": 4 } }""", "size 4")]
    [InlineData("""{ "preprocessing": { "modalities": ["flair", "pd"] } }""", "unknown modality")]
    [InlineData("""{ "preprocessing": { "labels": "et" } }""", "preprocessing")]
    [InlineData("""{ "preprocessing": { "tumour_free_share": 2 } }""", "tumour-free share")]
    [InlineData("""{ "evaluation": { "threshold": 1 } }""", "evaluation.threshold")]
    [InlineData("""{ "evaluation": { "min_region_pixels": -1 } }""", "evaluation.min_region_pixels")]
    public void Bad_preprocessing_or_evaluation_settings_are_refused(string json, string expected)
    {
        var e = Assert.ThrowsAny<Exception>(() => TrainingConfig.FromJson(json));
        Assert.Contains(expected, e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void The_shipped_brats_recipes_keep_every_patient_and_match_their_base_model()
    {
        var configs = Path.Combine(RepositoryLayout.FindRoot() ?? throw new InvalidOperationException("no repository root"), "configs");
        var recipes = new[] { "brats-nonprivate", "brats-eps8", "brats-eps1.5" }.Select(n => TrainingConfig.Load(Path.Combine(configs, n + ".json"))).ToList();
        // One slice per patient: every recipe keeps tumour-free patients, and all read the four modalities the same way.
        foreach (var p in recipes.Select(r => r.Preprocessing!))
        {
            Assert.Equal(1, p.TumourFreeShare);
            Assert.Equal(["flair", "t1", "t1ce", "t2"], p.Modalities);
            Assert.Equal(("wt", 0.5, 99.5), (p.Labels, p.LowerPercentile, p.UpperPercentile));
        }

        // A recipe that starts from the phantom base has its architecture and its input (size, modalities, labels, normalisation).
        var basis = TrainingConfig.Load(Path.Combine(configs, "phantoms-base.json"));
        Assert.Equal(PrivacyMode.NonPrivate, basis.Privacy.Mode);
        Assert.Null(basis.BaseModel);
        var based = recipes.Where(r => r.BaseModel is not null).ToList();
        Assert.Equal(2, based.Count(r => r.Privacy.Mode == PrivacyMode.Dp)); // both DP recipes
        foreach (var r in based)
        {
            Assert.Equal("output/phantom-base", r.BaseModel);
            Assert.Equal(basis.Model, r.Model);
            Assert.Equal((basis.Preprocessing!.Size, basis.Preprocessing.Labels, basis.Preprocessing.LowerPercentile, basis.Preprocessing.UpperPercentile),
                (r.Preprocessing!.Size, r.Preprocessing.Labels, r.Preprocessing.LowerPercentile, r.Preprocessing.UpperPercentile));
            Assert.Equal(basis.Preprocessing.Modalities, r.Preprocessing.Modalities);
        }

        Assert.Equal(PrivacyMode.NonPrivate, recipes[0].Privacy.Mode);
        Assert.Equal((8.0, 1e-4), (recipes[1].Privacy.Epsilon, recipes[1].Privacy.Delta));
        Assert.Equal((1.5, 1e-4), (recipes[2].Privacy.Epsilon, recipes[2].Privacy.Delta));
    }
}

/// <summary>The shipped BraTS recipes' pre-processing on the real BraTS 2020 slices (skipped where the data is absent).</summary>
[Trait("Category", "RealData")]
public sealed class QualityRealDataTests
{
    [Fact]
    public async Task The_recipes_preprocessing_keeps_every_patient_of_the_brats20_slices()
    {
        var a = RealData.Require("brats20-slices/brats_A");
        var b = RealData.Require("brats20-slices/brats_B");
        var root = RepositoryLayout.FindRoot() ?? throw new InvalidOperationException("no repository root");
        var recipe = TrainingConfig.Load(Path.Combine(root, "configs", "brats-eps8.json"));
        var key = new PseudonymKey(Encoding.ASCII.GetBytes("quality real-data test key"));
        var data = await TrainingData.LoadAsync([a, b], recipe.Preprocessing, key, 2, cancellationToken: TestContext.Current.CancellationToken);

        // 199 patients, one slice each, 21 of them without tumour (a tumour-free share below 1 would drop most of those).
        Assert.Equal(199, data.PatientIds.Count);
        Assert.Equal(199, data.Count);
        Assert.Equal(178, data.TumourSlices);
        Assert.Equal((recipe.Preprocessing!.Size, recipe.Preprocessing.Size), (data.Height, data.Width));
        var folds = CrossValidation.Folds(data, 3, 1);
        Assert.Equal(199, folds.Sum(f => f.Length));
        Assert.All(folds, f => Assert.InRange(f.Count(p => !data.HasTumour(p)), 7, 7));
    }
}
