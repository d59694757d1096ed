using System.Globalization;
using System.Text.Json;

namespace MriSeg.Cli.Tests;

/// <summary>
/// `mriseg train` and `mriseg evaluate` on raw case folders (generated phantoms, pre-processed by the recipe), and
/// `mriseg bench quality` (patient-level cross-validation) on a tiny recipe.
/// </summary>
public sealed class QualityCommandTests : IDisposable
{
    private const string TinyRecipe = """
        {
          "preprocessing": { "size": 16, "modalities": ["flair", "t2"], "labels": "wt", "tumour_free_share": 1 },
          "model": { "in_channels": 2, "out_channels": 1, "depth": 2, "base_width": 2, "group_norm_groups": 1 },
          "privacy": { "mode": "dp", "epsilon": 8, "delta": 0.001, "clip_norm": 0.1 },
          "epochs": 2,
          "batch_size": 8,
          "max_slices_per_patient": 2,
          "optimizer": { "kind": "adam", "learning_rate": 0.01 },
          "evaluation": { "mirror_averaging": true },
          "validation": { "keep_best": false },
          "split": { "validation_fraction": 0, "test_fraction": 0.25 },
          "threads": 1
        }
        """;

    private readonly TempFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    /// <summary>Two sites of small phantom volumes (raw BraTS-layout folders) and the tiny recipe.</summary>
    private async Task<(string SiteA, string SiteB, string Recipe)> InputsAsync()
    {
        var root = Path.Combine(_folder.Path, "phantoms");
        var made = await CliRun.RunAsync("phantoms", "--out", root, "--sites", "2", "--patients", "6", "--shape", "32x32x16", "--json");
        Assert.True(made.ExitCode == 0, made.ToString());
        var sites = Directory.GetDirectories(root).Order().ToArray();
        Assert.Equal(2, sites.Length);
        var recipe = Path.Combine(_folder.Path, "tiny.json");
        await File.WriteAllTextAsync(recipe, TinyRecipe, TestContext.Current.CancellationToken);
        return (sites[0], sites[1], recipe);
    }

    [Fact]
    public async Task Train_and_evaluate_take_raw_folders_and_the_model_records_its_preprocessing()
    {
        var (a, b, recipe) = await InputsAsync();
        var model = Path.Combine(_folder.Path, "model");
        var train = await CliRun.RunAsync("train", "--config", recipe, "--data", $"{a},{b}", "--out", model, "--device", "cpu", "--json");
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Contains(train.StderrLines, l => l.Contains("pre-processed in memory", StringComparison.Ordinal) && l.Contains("all-brain@crop-16", StringComparison.Ordinal));
        var metrics = train.Json();
        Assert.Equal(12, metrics.GetProperty("training_patients").GetInt32() + metrics.GetProperty("test_patients").GetInt32());

        using var manifest = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(model, "model.json"), TestContext.Current.CancellationToken));
        var pre = manifest.RootElement.GetProperty("preprocessing");
        Assert.Equal(16, pre.GetProperty("size").GetInt32());
        Assert.Equal(["flair", "t2"], pre.GetProperty("modalities").EnumerateArray().Select(m => m.GetString()));
        Assert.Equal(1, pre.GetProperty("tumour_free_share").GetDouble());
        Assert.Equal(16, manifest.RootElement.GetProperty("input").GetProperty("height").GetInt32());

        // evaluate pre-processes the raw folder the same way (16x16, two modalities) and uses the recipe's mirror averaging.
        var perPatient = Path.Combine(_folder.Path, "scores", "patients.csv");
        var evaluate = await CliRun.RunAsync("evaluate", "--model", model, "--data", a, "--per-patient", perPatient, "--json");
        Assert.True(evaluate.ExitCode == 0, evaluate.ToString());
        var scores = evaluate.Json();
        Assert.Equal(6, scores.GetProperty("patients").GetInt32());

        // --per-patient: one row per patient; the rows' Dice averages to the reported mean, and a patient has tumour
        // pixels exactly when it is counted as having a tumour.
        var rows = (await File.ReadAllLinesAsync(perPatient, TestContext.Current.CancellationToken)).ToList();
        Assert.Equal("patient,slices,has_tumour,tumour_pixels,predicted_pixels,dice,iou,hd95", rows[0]);
        var cells = rows.Skip(1).Select(r => r.Split(',')).ToList();
        Assert.Equal(6, cells.Count);
        Assert.Equal(scores.GetProperty("dice").GetDouble(), cells.Average(c => double.Parse(c[5], CultureInfo.InvariantCulture)), 5);
        Assert.All(cells, c => Assert.Equal(c[2] == "1", long.Parse(c[3], CultureInfo.InvariantCulture) > 0));
        Assert.Equal(scores.GetProperty("tumour_free_patients").GetInt32(), cells.Count(c => c[2] == "0"));
        Assert.True(scores.GetProperty("mirror_averaging").GetBoolean());
        Assert.InRange(scores.GetProperty("dice").GetDouble(), 0, 1);
        Assert.Equal(scores.GetProperty("dice").GetDouble(), scores.GetProperty("mean_channel_dice").GetDouble(), 12);
        Assert.InRange(scores.GetProperty("tumour_free_patients").GetInt32(), 0, 6);

        // A shard pre-processed differently is refused with the difference named.
        var shard = Path.Combine(_folder.Path, "a32.safetensors");
        var pre32 = await CliRun.RunAsync("preprocess", "--input", a, "--out", shard, "--size", "32", "--modalities", "flair,t2", "--tumour-free-share", "all", "--json");
        Assert.True(pre32.ExitCode == 0, pre32.ToString());
        var refused = await CliRun.RunAsync("evaluate", "--model", model, "--data", shard, "--json");
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("32x32 slices, the recipe 16x16", refused.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_model_trained_on_tumour_slices_only_is_scored_on_every_brain_slice_by_evaluate_train_and_bench_quality()
    {
        var (a, b, recipe) = await InputsAsync();
        var tumourOnly = Path.Combine(_folder.Path, "tumour-only.json");
        await File.WriteAllTextAsync(tumourOnly, TinyRecipe.Replace("\"tumour_free_share\": 1", "\"tumour_free_share\": 0", StringComparison.Ordinal),
            TestContext.Current.CancellationToken);
        var model = Path.Combine(_folder.Path, "model");
        var train = await CliRun.RunAsync("train", "--config", tumourOnly, "--data", $"{a},{b}", "--out", model, "--device", "cpu", "--json");
        Assert.True(train.ExitCode == 0, train.ToString());

        var every = Path.Combine(_folder.Path, "every.safetensors");
        var all = await CliRun.RunAsync("preprocess", "--input", a, "--out", every, "--size", "16", "--modalities", "flair,t2", "--tumour-free-share", "all", "--json");
        Assert.True(all.ExitCode == 0, all.ToString());
        var selected = Path.Combine(_folder.Path, "selected.safetensors");
        var tumourSlices = await CliRun.RunAsync("preprocess", "--input", a, "--out", selected, "--size", "16", "--modalities", "flair,t2", "--tumour-free-share", "0", "--json");
        Assert.True(tumourSlices.ExitCode == 0, tumourSlices.ToString());
        var brainSlices = all.Json().GetProperty("slices").GetInt32();
        Assert.True(brainSlices > tumourSlices.Json().GetProperty("slices").GetInt32(), "the phantoms must have tumour-free brain slices for this test");

        // The raw folder is pre-processed with every brain slice kept, not with the training selection.
        var raw = await CliRun.RunAsync("evaluate", "--model", model, "--data", a, "--json");
        Assert.True(raw.ExitCode == 0, raw.ToString());
        Assert.Equal(brainSlices, raw.Json().GetProperty("slices").GetInt32());

        // train scored its test patients the same way: every brain slice of them, as evaluate does with its held-out list.
        var heldOut = Path.Combine(model, "held-out-patients.txt");
        var again = await CliRun.RunAsync("evaluate", "--model", model, "--data", $"{a},{b}", "--patients", heldOut, "--json");
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Equal(train.Json().GetProperty("test_patients").GetInt32(), again.Json().GetProperty("patients").GetInt32());
        Assert.Equal(again.Json().GetProperty("slices").GetInt32(), train.Json().GetProperty("test_slices").GetInt32());
        Assert.Equal(again.Json().GetProperty("dice").GetDouble(), train.Json().GetProperty("dice").GetDouble(), 12);

        // And so does bench quality with each fold's held-out patients.
        var kept = Path.Combine(_folder.Path, "cv");
        var cv = await CliRun.RunAsync("bench", "quality", "--data", $"{a},{b}", "--folds", "2", "--recipes", tumourOnly, "--out", Path.Combine(kept, "q.md"),
            "--keep-models", kept, "--device", "cpu", "--json");
        Assert.True(cv.ExitCode == 0, cv.ToString());
        var fold = Path.Combine(kept, "tumour-only", "fold-0");
        var rescored = await CliRun.RunAsync("evaluate", "--model", fold, "--data", $"{a},{b}", "--patients", Path.Combine(fold, "held-out-patients.txt"), "--json");
        Assert.True(rescored.ExitCode == 0, rescored.ToString());
        var fold0 = cv.Json().GetProperty("recipes")[0].GetProperty("folds")[0];
        Assert.Equal(rescored.Json().GetProperty("slices").GetInt32(), fold0.GetProperty("test_slices").GetInt32());
        Assert.Equal(rescored.Json().GetProperty("dice").GetDouble(), fold0.GetProperty("dice").GetDouble(), 12);

        // Shards of either selection are scored as they are.
        foreach (var (shard, slices) in new[] { (every, brainSlices), (selected, tumourSlices.Json().GetProperty("slices").GetInt32()) })
        {
            var scored = await CliRun.RunAsync("evaluate", "--model", model, "--data", shard, "--json");
            Assert.True(scored.ExitCode == 0, scored.ToString());
            Assert.Equal(slices, scored.Json().GetProperty("slices").GetInt32());
        }
    }

    [Fact]
    public async Task Bench_quality_cross_validates_a_recipe_by_patient_and_writes_the_table()
    {
        var (a, b, recipe) = await InputsAsync();
        var report = Path.Combine(_folder.Path, "out", "quality.md");
        var kept = Path.Combine(_folder.Path, "folds");
        var run = await CliRun.RunAsync(
            "bench", "quality", "--data", $"{a},{b}", "--folds", "3", "--recipes", recipe, "--out", report, "--keep-models", kept, "--device", "cpu", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.Json();
        Assert.Equal(3, json.GetProperty("folds").GetInt32());
        var r = Assert.Single(json.GetProperty("recipes").EnumerateArray());
        Assert.Equal("tiny", r.GetProperty("recipe").GetString());
        Assert.Equal("dp", r.GetProperty("mode").GetString());
        Assert.Equal(12, r.GetProperty("patients").GetInt32()); // every patient scored once, by the fold that held it out
        var folds = r.GetProperty("folds").EnumerateArray().ToList();
        Assert.Equal(3, folds.Count);
        Assert.All(folds, f => Assert.Equal(12, f.GetProperty("training_patients").GetInt32() + f.GetProperty("test_patients").GetInt32()));
        Assert.All(folds, f => Assert.InRange(f.GetProperty("epsilon").GetDouble(), 0.1, 8));
        var dice = folds.Select(f => f.GetProperty("dice").GetDouble()).ToList();
        Assert.Equal(dice.Average(), r.GetProperty("dice").GetProperty("mean").GetDouble(), 12);

        var markdown = await File.ReadAllTextAsync(report, TestContext.Current.CancellationToken);
        Assert.Contains("| tiny | ε = 8, δ = 0.001 |", markdown, StringComparison.Ordinal);
        Assert.Contains("3-fold cross-validation", markdown, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.ChangeExtension(report, ".json")));

        // A kept fold model, scored on its own held-out patients, gives that fold's numbers again.
        var heldOut = Path.Combine(kept, "tiny", "fold-1", "held-out-patients.txt");
        var heldOutIds = await File.ReadAllLinesAsync(heldOut, TestContext.Current.CancellationToken);
        Assert.Equal(folds[1].GetProperty("test_patients").GetInt32(), heldOutIds.Length);
        var rescored = await CliRun.RunAsync("evaluate", "--model", Path.Combine(kept, "tiny", "fold-1"), "--data", $"{a},{b}", "--patients", heldOut, "--json");
        Assert.True(rescored.ExitCode == 0, rescored.ToString());
        Assert.Equal(heldOutIds.Length, rescored.Json().GetProperty("patients").GetInt32());
        Assert.Equal(dice[1], rescored.Json().GetProperty("dice").GetDouble(), 12);
        var allIds = new[] { 0, 1, 2 }.SelectMany(f => File.ReadAllLines(Path.Combine(kept, "tiny", $"fold-{f}", "held-out-patients.txt"))).ToList();
        Assert.Equal(12, allIds.Distinct().Count());

        var unknown = Path.Combine(_folder.Path, "unknown.txt");
        await File.WriteAllLinesAsync(unknown, [heldOutIds[0], "no-such-patient"], TestContext.Current.CancellationToken);
        var refused = await CliRun.RunAsync("evaluate", "--model", Path.Combine(kept, "tiny", "fold-1"), "--data", $"{a},{b}", "--patients", unknown);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("no-such-patient", refused.Stderr, StringComparison.Ordinal);
        var noFile = await CliRun.RunAsync("evaluate", "--model", Path.Combine(kept, "tiny", "fold-1"), "--data", $"{a},{b}", "--patients", Path.Combine(_folder.Path, "absent.txt"));
        Assert.Equal(1, noFile.ExitCode);
        Assert.Contains("absent.txt", noFile.Stderr, StringComparison.Ordinal);

        var bad = await CliRun.RunAsync("bench", "quality", "--data", a, "--folds", "3", "--recipes", "no-such-recipe", "--out", report);
        Assert.Equal(1, bad.ExitCode);
        Assert.Contains("no-such-recipe", bad.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bench_quality_runs_each_recipe_once_per_training_seed_and_summarises_over_seeds()
    {
        var (a, b, dpRecipe) = await InputsAsync();
        // Non-private and seed 3: on the CPU with one thread a seed gives the same weights bit for bit.
        var recipe = Path.Combine(_folder.Path, "tiny-np.json");
        var config = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(await File.ReadAllTextAsync(dpRecipe, TestContext.Current.CancellationToken))!;
        config["privacy"] = JsonSerializer.SerializeToElement(new { mode = "non_private" });
        config["seed"] = JsonSerializer.SerializeToElement(3);
        await File.WriteAllTextAsync(recipe, JsonSerializer.Serialize(config), TestContext.Current.CancellationToken);
        var report = Path.Combine(_folder.Path, "seeds", "quality.md");
        var kept = Path.Combine(_folder.Path, "seeds", "models");

        var run = await CliRun.RunAsync(
            "bench", "quality", "--data", $"{a},{b}", "--folds", "2", "--recipes", recipe, "--training-seeds", "3,5", "--out", report,
            "--keep-models", kept, "--device", "cpu", "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var rows = run.Json().GetProperty("recipes").EnumerateArray().ToList();
        Assert.Equal(["tiny-np-seed3", "tiny-np-seed5"], rows.Select(r => r.GetProperty("recipe").GetString()));
        Assert.Equal([3UL, 5UL], rows.Select(r => r.GetProperty("training_seed").GetUInt64()));
        var summary = Assert.Single(run.Json().GetProperty("over_training_seeds").EnumerateArray());
        Assert.Equal("tiny-np", summary.GetProperty("recipe").GetString());
        var means = rows.Select(r => r.GetProperty("dice").GetProperty("mean").GetDouble()).ToList();
        Assert.Equal(means.Average(), summary.GetProperty("dice").GetProperty("mean").GetDouble(), 12);
        Assert.Equal(means.Min(), summary.GetProperty("min_dice").GetDouble(), 12);
        var markdown = await File.ReadAllTextAsync(report, TestContext.Current.CancellationToken);
        Assert.Contains("Over training seeds", markdown, StringComparison.Ordinal);
        Assert.Contains("| tiny-np | 3, 5 |", markdown, StringComparison.Ordinal);

        // The recipe's own seed (3) without --training-seeds trains the very same fold model as seed 3 above; seed 5 another.
        var single = await CliRun.RunAsync(
            "bench", "quality", "--data", $"{a},{b}", "--folds", "2", "--recipes", recipe, "--out", Path.Combine(_folder.Path, "single", "q.md"),
            "--keep-models", Path.Combine(_folder.Path, "single", "models"), "--device", "cpu", "--json");
        Assert.True(single.ExitCode == 0, single.ToString());
        Assert.Empty(single.Json().GetProperty("over_training_seeds").EnumerateArray());
        var weights = (string dir) => File.ReadAllBytes(Path.Combine(dir, "fold-0", "model.safetensors"));
        var own = weights(Path.Combine(_folder.Path, "single", "models", "tiny-np"));
        Assert.Equal(own, weights(Path.Combine(kept, "tiny-np-seed3")));
        Assert.NotEqual(own, weights(Path.Combine(kept, "tiny-np-seed5")));

        foreach (var (seeds, message) in new[] { ("1,x", "\"x\" is not a seed"), ("2,2", "seed 2 is given twice"), (",", "names no seed") })
        {
            var refused = await CliRun.RunAsync("bench", "quality", "--data", a, "--recipes", recipe, "--training-seeds", seeds, "--out", report);
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains(message, refused.Stderr, StringComparison.Ordinal);
        }

        // A report named like the recipe (x.md writes x.json too) would overwrite it: refused before training, recipe intact.
        var before = await File.ReadAllBytesAsync(recipe, TestContext.Current.CancellationToken);
        var clash = await CliRun.RunAsync("bench", "quality", "--data", a, "--recipes", recipe, "--out", Path.ChangeExtension(recipe, ".md"));
        Assert.Equal(1, clash.ExitCode);
        Assert.Contains("would overwrite the recipe", clash.Stderr, StringComparison.Ordinal);
        Assert.Equal(before, await File.ReadAllBytesAsync(recipe, TestContext.Current.CancellationToken));
    }
}
