using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using MriSeg.Cli.Infrastructure;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Training;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg bench quality</c>: patient-level K-fold cross-validation of training recipes on shards or raw folders.
/// Every recipe is trained K times, each time on all patients outside one fold, and scored on that fold's patients;
/// the table gives the mean ± standard deviation over folds of the whole-tumour Dice (BraTS convention), IoU and HD95.
/// With --training-seeds each recipe runs once per training seed (initial weights, batches, augmentation), and a second
/// table gives the mean ± std over seeds: one run of a recipe is a draw, and its spread is as large as most levers.
/// </summary>
internal static class BenchQualityCommand
{
    /// <summary>The recipes benchmarked when --recipes is not given.</summary>
    internal static readonly string[] DefaultRecipes = ["brats-nonprivate", "brats-eps8", "brats-eps1.5"];

    public static Command Create(CliApp app)
    {
        var data = new Option<string>("--data")
        {
            Description = "Dataset shards or raw case folders, comma-separated (pre-processed by each recipe's preprocessing).",
            Required = true,
            HelpName = "SHARD|DIR[,...]",
        };
        var folds = new Option<int>("--folds") { Description = "K: folds of patients (each held out once).", HelpName = "K", DefaultValueFactory = _ => 3 };
        var recipes = new Option<string>("--recipes")
        {
            Description = "Recipes, comma-separated: config files, or names of configs/<name>.json (searched from here upwards).",
            HelpName = "a,b,c",
            DefaultValueFactory = _ => string.Join(',', DefaultRecipes),
        };
        var output = new Option<string>("--out")
        {
            Description = "The Markdown table to write; the JSON goes beside it (.json).",
            HelpName = "FILE.md",
            DefaultValueFactory = _ => "bench-quality.md",
        };
        var seed = new Option<ulong>("--seed") { Description = "Seed of the fold assignment.", HelpName = "S", DefaultValueFactory = _ => 1 };
        var onlyFolds = new Option<string?>("--only-folds") { Description = "Run only these folds (0-based, comma-separated), e.g. to spread a long benchmark over sessions.", HelpName = "i,j" };
        var keepModels = new Option<string?>("--keep-models")
        {
            Description = "Keep each fold's model in DIR/<recipe>/fold-<i> (with its held-out patients' IDs) to re-score it with mriseg evaluate --patients.",
            HelpName = "DIR",
        };
        var trainingSeeds = new Option<string?>("--training-seeds")
        {
            Description = "Run each recipe once per training seed (comma-separated; default: the recipe's own seed) and add the mean ± std over seeds.",
            HelpName = "S,S,...",
        };
        var device = TrainCommand.DeviceOption();
        var command = new Command("quality", "Patient-level K-fold cross-validation of training recipes: Dice, IoU, HD95 (mean ± std over folds) per recipe.")
        {
            data, folds, recipes, output, seed, onlyFolds, keepModels, trainingSeeds, device,
        };
        app.SetAction(command, async (context, cancellationToken) =>
        {
            var k = context.GetValue(folds);
            if (k < 2)
            {
                throw new CliException("--folds must be at least 2");
            }

            var selected = ParseFolds(context.GetValue(onlyFolds), k);
            var seeds = ParseTrainingSeeds(context.GetValue(trainingSeeds));
            var recipeList = context.GetValue(recipes)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(r => (Name: RecipeName(r), Path: ResolveRecipe(r), Config: (TrainingConfig?)null)).ToList();
            if (recipeList.Count == 0)
            {
                throw new CliException("--recipes names no recipe");
            }

            for (var i = 0; i < recipeList.Count; i++)
            {
                recipeList[i] = recipeList[i] with { Config = TrainCommand.BuildConfig(recipeList[i].Path, null, null, false, null, null, null) };
            }

            // The report is written as --out and beside it as .json: refuse before hours of training to overwrite a recipe with it.
            var outPath = context.GetValue(output)!;
            var jsonPath = Path.ChangeExtension(outPath, ".json");
            foreach (var r in recipeList)
            {
                if (new[] { outPath, jsonPath }.Any(o => string.Equals(Path.GetFullPath(o), Path.GetFullPath(r.Path), StringComparison.Ordinal)))
                {
                    throw new CliException($"--out {outPath} would overwrite the recipe {r.Path} with the report (written as {Path.GetFileName(outPath)} and {Path.GetFileName(jsonPath)}): choose another --out");
                }
            }

            var recipeNames = recipeList.Select(r => r.Name).ToList();
            if (seeds is not null)
            {
                recipeList = [.. recipeList.SelectMany(r => seeds.Select(s => (Name: $"{r.Name}-seed{s}", r.Path, Config: (TrainingConfig?)(r.Config! with { Seed = s }))))];
            }

            var modelsRoot = context.GetValue(keepModels);
            var chosen = TrainCommand.InitializeDevice(context, context.GetValue(device));
            var results = new List<RecipeResult>();
            var loaded = new Dictionary<string, (SliceDataset Data, SliceDataset? Scoring)>(StringComparer.Ordinal);
            foreach (var (name, path, config) in recipeList)
            {
                var key = JsonSerializer.Serialize(config!.Preprocessing ?? PreprocessingConfig.Default, TrainingOutputs.JsonOptions);
                if (!loaded.TryGetValue(key, out var sets))
                {
                    sets.Data = await TrainCommand.LoadDataAsync(context, context.GetValue(data)!, config.Preprocessing, config.Threads, cancellationToken);
                    sets.Scoring = await TrainCommand.LoadScoringDataAsync(context, context.GetValue(data)!, config.Preprocessing, config.Threads, cancellationToken);
                    loaded[key] = sets;
                }

                var (dataset, scoring) = sets;

                IReadOnlyList<int[]> split;
                try
                {
                    split = CrossValidation.Folds(dataset, k, context.GetValue(seed));
                }
                catch (ArgumentOutOfRangeException e)
                {
                    throw new CliException(e.Message.Split('\n')[0]);
                }

                var foldResults = new List<FoldResult>();
                foreach (var f in selected)
                {
                    context.Output.Progress(string.Create(CultureInfo.InvariantCulture,
                        $"{name}: fold {f + 1}/{k}: training on {dataset.PatientIds.Count - split[f].Length} patients, scoring {split[f].Length}"));
                    FoldResult r;
                    try
                    {
                        var modelDirectory = modelsRoot is null ? null : Path.Combine(modelsRoot, name, $"fold-{f}");
                        r = await Task.Run(
                            () => CrossValidation.RunFold(dataset, config, f, split[f], new TrainingOptions { Device = chosen, CancellationToken = cancellationToken }, modelDirectory, scoring),
                            cancellationToken);
                    }
                    catch (ArgumentException e)
                    {
                        throw new CliException($"{name}: {e.Message}");
                    }

                    var privacy = r.Epsilon is { } spent ? string.Create(CultureInfo.InvariantCulture, $"epsilon {spent:0.000} at delta {r.Delta:G3}") : "non-private";
                    context.Output.Progress(string.Create(CultureInfo.InvariantCulture,
                        $"{name}: fold {f + 1}/{k}: Dice {r.Test.Dice:0.0000}, IoU {r.Test.IoU:0.0000}, HD95 {r.Test.Hd95:0.00} px on {r.Test.Patients} patients, {privacy}, {r.Steps} steps, {r.TrainSeconds:0} s training"));
                    foldResults.Add(r);
                }

                results.Add(RecipeResult.From(name, path, config, foldResults));
            }

            var report = new QualityReport(k, context.GetValue(seed), context.GetValue(data)!, results, SeedSummary.Of(results, recipeNames, seeds));
            var markdown = report.ToMarkdown();
            var directory = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (directory is not null)
            {
                Directory.CreateDirectory(directory);
            }

            await File.WriteAllTextAsync(outPath, markdown, cancellationToken);
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(report, TrainingOutputs.JsonOptions), cancellationToken);
            context.Output.Progress($"wrote {outPath} and {jsonPath}");
            context.Output.WriteResult(report, (console, r) => console.Write(new Text(r.ToMarkdown())), TrainingOutputs.JsonOptions);
            return ExitCodes.Success;
        });
        return command;
    }

    internal static IReadOnlyList<int> ParseFolds(string? text, int k)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return [.. Enumerable.Range(0, k)];
        }

        var list = new List<int>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out var f) || f >= k)
            {
                throw new CliException($"--only-folds: \"{part}\" is not a fold 0..{k - 1}");
            }

            if (!list.Contains(f))
            {
                list.Add(f);
            }
        }

        return list;
    }

    /// <summary>The --training-seeds list, or null when it is not given.</summary>
    internal static IReadOnlyList<ulong>? ParseTrainingSeeds(string? text)
    {
        if (text is null)
        {
            return null;
        }

        var seeds = new List<ulong>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!ulong.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out var s))
            {
                throw new CliException($"--training-seeds: \"{part}\" is not a seed (a whole number)");
            }

            if (seeds.Contains(s))
            {
                throw new CliException($"--training-seeds: seed {s} is given twice");
            }

            seeds.Add(s);
        }

        return seeds.Count > 0 ? seeds : throw new CliException("--training-seeds names no seed");
    }

    private static string RecipeName(string recipe) => recipe.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? Path.GetFileNameWithoutExtension(recipe) : recipe;

    /// <summary>A config file as given, else configs/&lt;name&gt;.json in the current folder or one above it.</summary>
    internal static string ResolveRecipe(string recipe)
    {
        if (File.Exists(recipe))
        {
            return recipe;
        }

        var name = recipe.EndsWith(".json", StringComparison.OrdinalIgnoreCase) ? recipe : recipe + ".json";
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "configs", Path.GetFileName(name));
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }

        throw new CliException($"recipe {recipe}: no such file, and no configs/{Path.GetFileName(name)} here or above");
    }

    /// <summary>Mean and (sample) standard deviation of a fold statistic.</summary>
    internal sealed record Stat(double Mean, double Std)
    {
        public static Stat Of(IEnumerable<double> values)
        {
            var v = values.ToArray();
            if (v.Length == 0)
            {
                return new Stat(double.NaN, double.NaN);
            }

            var mean = v.Average();
            var std = v.Length > 1 ? Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Length - 1)) : 0;
            return new Stat(mean, std);
        }

        public string Format(string format) =>
            string.Create(CultureInfo.InvariantCulture, $"{Mean.ToString(format, CultureInfo.InvariantCulture)} ± {Std.ToString(format, CultureInfo.InvariantCulture)}");
    }

    /// <summary>One fold in the report.</summary>
    internal sealed record FoldView(
        int Fold, int TrainingPatients, int ValidationPatients, int TestPatients, int TestSlices, double Dice, double Iou, double Hd95, double DiceStdOverPatients,
        double? Epsilon, double? Delta, double Sigma, long Steps, double TrainSeconds);

    /// <summary>One recipe in the report: means ± std over folds, and the folds.</summary>
    internal sealed record RecipeResult(
        string Recipe, string Path, string Mode, double? TargetEpsilon, double? Delta, ulong TrainingSeed, Stat Dice, Stat Iou, Stat Hd95,
        Stat TrainSeconds, double PooledDice, int Patients, IReadOnlyList<FoldView> Folds)
    {
        public static RecipeResult From(string name, string path, TrainingConfig config, IReadOnlyList<FoldResult> folds)
        {
            var dp = config.Privacy.Mode == PrivacyMode.Dp;
            var views = folds.Select(f => new FoldView(
                f.Fold, f.TrainingPatients, f.ValidationPatients, f.Test.Patients, f.Test.Slices, f.Test.Dice, f.Test.IoU, f.Test.Hd95, f.Test.DiceStd,
                f.Epsilon, f.Delta, f.Sigma, f.Steps, f.TrainSeconds)).ToList();
            var patients = folds.Sum(f => f.Test.Patients);
            var pooled = patients == 0 ? double.NaN : folds.Sum(f => f.Test.Dice * f.Test.Patients) / patients;
            return new RecipeResult(name, path, dp ? "dp" : "non_private", dp ? config.Privacy.Epsilon : null, dp ? config.Privacy.Delta : null, config.Seed,
                Stat.Of(folds.Select(f => f.Test.Dice)), Stat.Of(folds.Select(f => f.Test.IoU)), Stat.Of(folds.Select(f => f.Test.Hd95)),
                Stat.Of(folds.Select(f => f.TrainSeconds)), pooled, patients, views);
        }
    }

    /// <summary>One recipe over its training seeds: mean ± std over seeds of the fold-mean Dice and IoU.</summary>
    internal sealed record SeedSummary(string Recipe, IReadOnlyList<ulong> Seeds, Stat Dice, Stat Iou, double MinDice, double MaxDice)
    {
        /// <summary>Each recipe's runs, one per seed, in the order the command made them (recipe by recipe); empty without seeds.</summary>
        public static IReadOnlyList<SeedSummary> Of(IReadOnlyList<RecipeResult> results, IReadOnlyList<string> recipes, IReadOnlyList<ulong>? seeds)
        {
            if (seeds is null)
            {
                return [];
            }

            return [.. results.Chunk(seeds.Count).Zip(recipes, (runs, recipe) => new SeedSummary(recipe, seeds,
                Stat.Of(runs.Select(r => r.Dice.Mean)), Stat.Of(runs.Select(r => r.Iou.Mean)), runs.Min(r => r.Dice.Mean), runs.Max(r => r.Dice.Mean)))];
        }
    }

    /// <summary>The whole report (the JSON file and <c>--json</c>).</summary>
    internal sealed record QualityReport(int Folds, ulong Seed, string Dataset, IReadOnlyList<RecipeResult> Recipes, IReadOnlyList<SeedSummary> OverTrainingSeeds)
    {
        public string ToMarkdown()
        {
            var inv = CultureInfo.InvariantCulture;
            var md = new StringBuilder();
            md.Append(inv, $"Patient-level {Folds}-fold cross-validation (fold seed {Seed}) on {Dataset}; mean ± std over folds of the held-out patients' means.\n");
            md.Append("Dice: whole tumour, per patient, BraTS convention (a tumour-free patient scores 1 only if nothing is predicted).\n\n");
            md.Append("| recipe | privacy | Dice | IoU | HD95 (px) | pooled Dice | patients scored | training per fold (s) |\n");
            md.Append("|---|---|---|---|---|---|---|---|\n");
            foreach (var r in Recipes)
            {
                var privacy = r.Mode == "dp" ? string.Create(inv, $"ε = {r.TargetEpsilon:0.###}, δ = {r.Delta:G2}") : "non-private";
                md.Append(inv, $"| {r.Recipe} | {privacy} | {r.Dice.Format("0.000")} | {r.Iou.Format("0.000")} | {r.Hd95.Format("0.0")} | {r.PooledDice:0.000} | {r.Patients} | {r.TrainSeconds.Format("0")} |\n");
            }

            md.Append("\nPer fold (Dice):\n\n");
            foreach (var r in Recipes)
            {
                md.Append(inv, $"- {r.Recipe}: {string.Join(", ", r.Folds.Select(f => string.Create(inv, $"fold {f.Fold}: {f.Dice:0.000} ({f.TestPatients} patients{(f.Epsilon is { } e ? string.Create(inv, $", ε {e:0.00}") : "")})")))}\n");
            }

            if (OverTrainingSeeds.Count > 0)
            {
                md.Append("\nOver training seeds (mean ± std over seeds of each run's mean over folds):\n\n");
                md.Append("| recipe | training seeds | Dice | IoU | lowest / highest run |\n|---|---|---|---|---|\n");
                foreach (var s in OverTrainingSeeds)
                {
                    md.Append(inv, $"| {s.Recipe} | {string.Join(", ", s.Seeds)} | {s.Dice.Format("0.000")} | {s.Iou.Format("0.000")} | {s.MinDice:0.000} / {s.MaxDice:0.000} |\n");
                }
            }

            return md.ToString();
        }
    }
}
