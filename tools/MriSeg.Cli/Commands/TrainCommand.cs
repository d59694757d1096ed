using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json;
using MriSeg.Cli.Infrastructure;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg train</c>: local (cleartext) training on dataset shards or raw case folders (pre-processed in memory by
/// the recipe's <c>preprocessing</c>), patient-level DP-SGD by default (<c>--epsilon/--delta</c>) or
/// <c>--non-private</c>; writes model.safetensors, config.json, model.json, metrics.json and curves.png.
/// <c>mriseg evaluate</c>: scores a model folder on shards or raw folders (pre-processed as the model's model.json says, every brain slice kept).
/// </summary>
internal static class TrainCommand
{
    public static Command Create(CliApp app)
    {
        var data = new Option<string>("--data")
        {
            Description = "Dataset shards (safetensors) or raw case folders (pre-processed by the recipe's preprocessing), comma-separated; joined (one per provider).",
            Required = true,
            HelpName = "SHARD|DIR[,...]",
        };
        var output = new Option<string>("--out") { Description = "Output folder (created; existing outputs are replaced).", Required = true, HelpName = "DIR" };
        var epsilon = new Option<double?>("--epsilon") { Description = "DP-SGD with this epsilon budget for the whole run.", HelpName = "E" };
        var delta = new Option<double?>("--delta") { Description = "DP delta (below 1/training patients).", HelpName = "D" };
        var nonPrivate = new Option<bool>("--non-private") { Description = "Ordinary training without clipping or noise (baselines only)." };
        var epochs = new Option<double?>("--epochs") { Description = "Planned epochs (DP: ceil(epochs/q) steps).", HelpName = "N" };
        var batch = new Option<int?>("--batch") { Description = "Expected patients per step: q = B / training patients.", HelpName = "B" };
        var device = DeviceOption();
        var config = new Option<string?>("--config") { Description = "Training configuration (JSON, see libs/MriSeg.Learning/README.md); the options above override it.", HelpName = "FILE" };
        var seed = new Option<ulong?>("--seed") { Description = "Seed of the split, initial weights, slice choice and augmentation (DP noise and sampling are never seeded).", HelpName = "S" };
        var logEvery = new Option<int>("--log-every") { Description = "Print a step line every N steps (0: about five per epoch).", HelpName = "N", DefaultValueFactory = _ => 0 };

        var command = new Command("train", "Train the U-Net locally on dataset shards with patient-level DP-SGD (or --non-private); writes the model, metrics.json and curves.png.")
        {
            data, output, epsilon, delta, nonPrivate, epochs, batch, device, config, seed, logEvery,
        };
        app.SetAction(command, async (context, cancellationToken) =>
        {
            var recipe = BuildConfig(context.GetValue(config), context.GetValue(epsilon), context.GetValue(delta), context.GetValue(nonPrivate),
                context.GetValue(epochs), context.GetValue(batch), context.GetValue(seed));
            var dataset = await LoadDataAsync(context, context.GetValue(data)!, recipe.Preprocessing, recipe.Threads, cancellationToken);
            var chosen = InitializeDevice(context, context.GetValue(device));
            var outDir = context.GetValue(output)!;
            var split = PatientSplit.Create(dataset, recipe.Split.ValidationFraction, recipe.Split.TestFraction, recipe.Seed, recipe.Split.Stratify);
            var everySlice = split.Test.Count > 0 ? await LoadScoringDataAsync(context, context.GetValue(data)!, recipe.Preprocessing, recipe.Threads, cancellationToken) : null;
            SliceDataset? scoring;
            TrainingPlan plan;
            try
            {
                scoring = everySlice is null ? null : TrainingData.ScoringPart(dataset, split.Test, everySlice); // only the test patients stay in memory
                SegmentationTrainer.ResolveModel(recipe, dataset);
                plan = SegmentationTrainer.Plan(recipe, split.Train.Count);
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message);
            }

            context.Output.Progress(
                $"data: {dataset.PatientIds.Count} patients, {dataset.Count} slices ({dataset.TumourSlices} with tumour), {dataset.Describe()}; " +
                $"split {split.Train.Count} train / {split.Validation.Count} validation / {split.Test.Count} test patients");
            context.Output.Progress(Describe(plan) + $"; device {chosen}");
            var every = context.GetValue(logEvery);
            var stepLines = every > 0 ? every : Math.Max(1, (int)Math.Round(plan.StepsPerEpoch / 5.0));

            LocalTrainingResult run;
            try
            {
                run = await context.Output.StepsAsync("training", plan.PlannedSteps, reporter => Task.Run(
                    () => LocalTraining.Run(dataset, recipe, new TrainingOptions
                    {
                        Device = chosen,
                        CancellationToken = cancellationToken,
                        Progress = p => Report(reporter, p, stepLines),
                    }, scoring),
                    cancellationToken));
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message);
            }

            using (run)
            {
                var paths = TrainingOutputs.Write(outDir, run);
                if (run.Split.Test.Count > 0)
                {
                    // The test patients' IDs, so that `evaluate --patients` can score the same patients again.
                    paths = [.. paths, CrossValidation.WriteHeldOutPatients(outDir, run.Split.Test.Select(p => dataset.PatientIds[p]))];
                }

                var metrics = TrainingOutputs.Metrics(run);
                context.Output.WriteResult(metrics, (console, m) => Render(console, m, outDir, paths), TrainingOutputs.JsonOptions);
            }

            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The patient IDs a <c>--patients</c> file lists, one a line; read before the data so a bad file fails fast.</summary>
    internal static string[] ReadPatientList(string file)
    {
        string[] listed;
        try
        {
            listed = [.. File.ReadAllLines(file).Select(l => l.Trim()).Where(l => l.Length > 0).Distinct(StringComparer.Ordinal)];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--patients {file}: {e.Message}");
        }

        return listed.Length > 0 ? listed : throw new CliException($"--patients {file}: lists no patient");
    }

    /// <summary>The patients of <paramref name="dataset"/> with the <paramref name="listed"/> IDs; every listed ID must be there.</summary>
    internal static SliceDataset SelectListedPatients(SliceDataset dataset, IReadOnlyList<string> listed, string file)
    {
        try
        {
            return TrainingData.SelectById(dataset, listed);
        }
        catch (ArgumentException e)
        {
            throw new CliException($"--patients {file}: {e.Message}");
        }
    }

    public static Command CreateEvaluate(CliApp app)
    {
        var model = new Option<string>("--model") { Description = "Model folder (model.safetensors, and model.json or config.json).", Required = true, HelpName = "DIR" };
        var data = new Option<string>("--data")
        {
            Description = "Dataset shards or raw case folders (pre-processed as the model's model.json says, every brain slice kept), comma-separated; every patient is scored unless --patients says which.",
            Required = true,
            HelpName = "SHARD|DIR[,...]",
        };
        var device = DeviceOption();
        var threshold = new Option<double?>("--threshold") { Description = "Probability above which a pixel is tumour (default: the recipe's, 0.5).", HelpName = "T" };
        var mirror = new Option<bool?>("--mirror-averaging") { Description = "Average each slice's prediction with its left-right mirror's (default: the recipe's).", HelpName = "true|false" };
        var minRegion = new Option<int?>("--min-region-pixels")
        {
            Description = "Remove predicted regions (8-connected in a slice) of fewer pixels than this; 0 keeps all (default: the recipe's).",
            HelpName = "N",
        };
        var patients = new Option<string?>("--patients")
        {
            Description = "Score only the patients whose IDs this file lists, one a line (e.g. a bench quality fold's held-out-patients.txt).",
            HelpName = "FILE",
        };
        var perPatient = new Option<string?>("--per-patient")
        {
            Description = "Also write each patient's whole-tumour scores and pixel counts (truth, prediction) to this CSV file.",
            HelpName = "FILE.csv",
        };
        var command = new Command("evaluate", "Score a model on every patient: whole-tumour Dice (BraTS convention), IoU and HD95, means over patients.")
        {
            model, data, device, threshold, mirror, minRegion, patients, perPatient,
        };
        app.SetAction(command, async (context, cancellationToken) =>
        {
            var folder = context.GetValue(model)!;
            if (context.GetValue(threshold) is { } given && !(given > 0 && given < 1))
            {
                throw new CliException("--threshold must be in (0, 1)");
            }

            if (context.GetValue(minRegion) is < 0)
            {
                throw new CliException("--min-region-pixels must not be negative");
            }

            if (!File.Exists(Path.Combine(folder, MriSeg.Learning.Model.UNetModelFile.WeightsFileName)))
            {
                throw new CliException($"{folder}: no {MriSeg.Learning.Model.UNetModelFile.WeightsFileName} (not a model folder)");
            }

            ModelManifest? manifest;
            try
            {
                manifest = TrainingOutputs.ReadManifest(folder);
            }
            catch (FormatException e)
            {
                throw new CliException(e.Message);
            }

            var patientsFile = context.GetValue(patients);
            var listed = patientsFile is null ? null : ReadPatientList(patientsFile);

            var recipe = manifest?.Training?.Config;
            var evaluation = recipe?.Evaluation ?? new EvaluationConfig();
            var t = context.GetValue(threshold) ?? evaluation.Threshold;
            var mirrorAveraging = context.GetValue(mirror) ?? evaluation.MirrorAveraging;
            var minRegionPixels = context.GetValue(minRegion) ?? evaluation.MinRegionPixels;
            // Raw folders are pre-processed as the model's training data was, but keeping every brain slice whatever the
            // training selection (ForScoring). Shards are checked only against a recipe's explicit preprocessing, any slice
            // selection allowed (older models, and models trained on shards without one, are checked on modalities and
            // size below, as before).
            var dataset = await LoadDataAsync(context, context.GetValue(data)!, (manifest?.EffectivePreprocessing() ?? PreprocessingConfig.Default).ForScoring(), recipe?.Threads, cancellationToken,
                recipe?.Preprocessing is null ? ShardCheck.None : ShardCheck.RecipeAnySliceSelection);
            if (listed is not null)
            {
                dataset = SelectListedPatients(dataset, listed, patientsFile!);
            }

            var chosen = InitializeDevice(context, context.GetValue(device));

            if (manifest is not null && !manifest.Input.Modalities.SequenceEqual(dataset.Modalities, StringComparer.OrdinalIgnoreCase))
            {
                throw new CliException(
                    $"the model was trained on modalities {string.Join(',', manifest.Input.Modalities)}; the data has {string.Join(',', dataset.Modalities)}");
            }

            if (manifest is not null && (manifest.Input.Height != dataset.Height || manifest.Input.Width != dataset.Width))
            {
                context.Output.Warn($"the model was trained on {manifest.Input.Height}x{manifest.Input.Width} slices; the data is {dataset.Height}x{dataset.Width}");
            }

            var result = await context.Output.StatusAsync($"evaluating {folder} on {dataset.PatientIds.Count} patients", _ => Task.Run(() =>
            {
                MriSeg.Learning.Model.UNet2d unet;
                try
                {
                    unet = MriSeg.Learning.Model.UNetModelFile.Load(folder, TorchSharp.torch.ScalarType.Float32, chosen);
                }
                catch (Exception e) when (e is FormatException or IOException or MriSeg.Imaging.Formats.SafeTensorsFormatException)
                {
                    throw new CliException($"{folder}: {e.Message}");
                }

                using (unet)
                {
                    try
                    {
                        return MriSeg.Learning.Metrics.SegmentationEvaluator.Evaluate(
                            unet, dataset, new MriSeg.Learning.Metrics.EvaluationOptions { Threshold = t, MirrorAveraging = mirrorAveraging, MinRegionPixels = minRegionPixels });
                    }
                    catch (ArgumentException e)
                    {
                        throw new CliException(e.Message);
                    }
                }
            }, cancellationToken));
            if (context.GetValue(perPatient) is { } csv)
            {
                WritePerPatient(csv, result.Patients);
            }

            var s = result.Summary;
            var tumourFree = result.Patients.Count(p => !p.HasTumour);
            context.Output.WriteResult(
                new EvaluateResult(s.Dice, s.IoU, s.Hd95, s.Patients, s.Slices, tumourFree, s.DiceStd, s.Channels, s.DicePerChannel, s.MeanChannelDice, t, mirrorAveraging, minRegionPixels),
                (console, r) => console.MarkupLine(Markup.Escape(
                    string.Create(CultureInfo.InvariantCulture,
                        $"{r.Patients} patients ({r.TumourFreePatients} without tumour), {r.Slices} slices: whole-tumour Dice {r.Dice:0.0000} (sd {r.DiceStd:0.000} over patients), IoU {r.Iou:0.0000}, HD95 {r.Hd95:0.00} px (means over patients; a tumour-free patient scores 1 only if nothing is predicted)"))),
                TrainingOutputs.JsonOptions);
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>One CSV row per patient: the whole-tumour channel's scores and pixel counts (HD95 empty where undefined).</summary>
    private static void WritePerPatient(string path, IReadOnlyList<MriSeg.Learning.Metrics.PatientScores> patients)
    {
        var text = new StringBuilder("patient,slices,has_tumour,tumour_pixels,predicted_pixels,dice,iou,hd95\n");
        foreach (var p in patients)
        {
            var hd95 = double.IsFinite(p.Hd95[0]) ? p.Hd95[0].ToString("0.###", CultureInfo.InvariantCulture) : "";
            text.Append(CultureInfo.InvariantCulture,
                $"{p.PatientId},{p.Slices},{(p.HasTumour ? 1 : 0)},{p.TumourPixels},{p.PredictedPixels},{p.Dice[0]:0.######},{p.IoU[0]:0.######},{hd95}\n");
        }

        try
        {
            var folder = Path.GetDirectoryName(Path.GetFullPath(path))!;
            Directory.CreateDirectory(folder);
            File.WriteAllText(path, text.ToString());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--per-patient {path}: {e.Message}");
        }
    }

    /// <summary>
    /// The <c>evaluate</c> result: <c>dice</c>, <c>iou</c>, <c>hd95</c> are the whole-tumour channel's means over patients,
    /// each patient over all of its slices stacked (BraTS convention: a tumour-free patient scores 1 only if nothing is
    /// predicted); <c>mean_channel_dice</c> averages every label channel too (what <c>dice</c> meant for <c>brats</c> labels before).
    /// </summary>
    internal sealed record EvaluateResult(
        double Dice, double Iou, double Hd95, int Patients, int Slices, int TumourFreePatients, double DiceStd, IReadOnlyList<string> Channels,
        IReadOnlyList<double> DicePerChannel, double MeanChannelDice, double Threshold, bool MirrorAveraging, int MinRegionPixels);

    internal static TrainingConfig BuildConfig(string? path, double? epsilon, double? delta, bool nonPrivate, double? epochs, int? batch, ulong? seed)
    {
        TrainingConfig config;
        try
        {
            config = path is null ? new TrainingConfig() : TrainingData.ResolveBaseModel(TrainingConfig.Load(path), path);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or IOException)
        {
            throw new CliException($"{path}: {e.Message}");
        }

        if (nonPrivate && (epsilon is not null || delta is not null))
        {
            throw new CliException("give --epsilon/--delta for DP training or --non-private, not both");
        }

        var privacy = config.Privacy;
        if (nonPrivate)
        {
            privacy = privacy with { Mode = PrivacyMode.NonPrivate };
        }
        else if (epsilon is not null || delta is not null)
        {
            privacy = privacy with { Mode = PrivacyMode.Dp, Epsilon = epsilon ?? privacy.Epsilon, Delta = delta ?? privacy.Delta };
        }

        config = config with
        {
            Privacy = privacy,
            Epochs = epochs ?? config.Epochs,
            BatchSize = batch ?? config.BatchSize,
            Seed = seed ?? config.Seed,
        };
        try
        {
            config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }

        return config;
    }

    /// <summary>
    /// The data of <c>--data</c>: shards and raw case folders, comma-separated; folders are pre-processed in memory with
    /// <paramref name="preprocessing"/> (the pre-processor's defaults when null) and shards are checked against it.
    /// </summary>
    internal static async Task<SliceDataset> LoadDataAsync(
        CommandContext context, string list, PreprocessingConfig? preprocessing, int? threads, CancellationToken cancellationToken, ShardCheck shardCheck = ShardCheck.Recipe)
    {
        var paths = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (paths.Length == 0)
        {
            throw new CliException("--data names no file");
        }

        foreach (var path in paths)
        {
            if (!File.Exists(path) && !Directory.Exists(path))
            {
                throw new CliException($"{path}: no such file or folder");
            }
        }

        try
        {
            var parallelism = threads ?? Environment.ProcessorCount;
            var data = paths.Any(Directory.Exists)
                ? await context.Output.StatusAsync("pre-processing the data folders", _ =>
                    TrainingData.LoadAsync(paths, preprocessing, null, parallelism, Note(context), cancellationToken, shardCheck))
                : await TrainingData.LoadAsync(paths, preprocessing, null, parallelism, null, cancellationToken, shardCheck);
            return data;
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    /// <summary>
    /// The data again with every brain slice, to score held-out patients on as <c>evaluate</c> does, when
    /// <paramref name="list"/> holds raw folders and the recipe's pre-processing keeps only a share of the tumour-free
    /// slices (a model is judged on all of them: that is where false positives cost Dice); else null. Shards are
    /// scored as they are.
    /// </summary>
    internal static async Task<SliceDataset?> LoadScoringDataAsync(
        CommandContext context, string list, PreprocessingConfig? preprocessing, int? threads, CancellationToken cancellationToken)
    {
        var effective = preprocessing ?? PreprocessingConfig.Default;
        if (effective.TumourFreeShare >= 1 || !list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Any(Directory.Exists))
        {
            return null;
        }

        context.Output.Progress(string.Create(CultureInfo.InvariantCulture,
            $"held-out patients are scored on every brain slice: pre-processing the folders again without the training selection (tumour_free_share {effective.TumourFreeShare})"));
        return await LoadDataAsync(context, list, effective.ForScoring(), threads, cancellationToken, ShardCheck.RecipeAnySliceSelection);
    }

    /// <summary>Skipped cases as warnings, the rest as progress lines.</summary>
    internal static Action<string> Note(CommandContext context) => line =>
    {
        if (line.Contains(": skipped case ", StringComparison.Ordinal))
        {
            context.Output.Warn(line);
        }
        else
        {
            context.Output.Progress(line);
        }
    };

    internal static Option<string> DeviceOption()
    {
        var device = new Option<string>("--device") { Description = "cpu or cuda; default: the device MRISEG_DEVICE selects.", HelpName = "cpu|cuda" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        return device;
    }

    /// <summary>Starts TorchSharp, picks the device (--device, else MRISEG_DEVICE) and says on stderr which backend and device run.</summary>
    internal static TorchSharp.torch.Device InitializeDevice(CommandContext context, string? requested)
    {
        TorchBackendInfo backend;
        try
        {
            backend = TorchRuntime.Initialize();
        }
        catch (TorchUnavailableException e)
        {
            throw new CliException(e.Message.Split('\n')[0].Trim());
        }

        MriSeg.Learning.Performance.CpuAllocator.KeepFreedMemory();
        var device = backend.DeviceFor(requested)
            ?? throw new CliException($"--device cuda: CUDA is not available with libtorch from {backend.LibTorchSource}");
        context.Output.Progress($"torch: running on {device} (backend {backend.Backend}; libtorch from {backend.LibTorchSource}; " +
            $"{backend.CudaDeviceCount} CUDA device(s) visible; TorchSharp {backend.TorchSharpVersion})");
        return device;
    }

    private static string Describe(TrainingPlan plan) => plan.Mode == PrivacyMode.Dp
        ? string.Create(CultureInfo.InvariantCulture,
            $"plan: DP-SGD, {plan.TrainingPatients} training patients, q = {plan.SampleRate:G4}, sigma = {plan.NoiseMultiplier:G4}, C = {plan.ClipNorm:G4}, {plan.PlannedSteps} steps ({plan.StepsPerEpoch} per epoch), epsilon {plan.PlannedEpsilon:G4} of {plan.TargetEpsilon:G4} at delta {plan.Delta:G3} ({plan.Accountant.ToString().ToLowerInvariant()})")
        : string.Create(CultureInfo.InvariantCulture,
            $"plan: non-private, {plan.TrainingPatients} training patients, {plan.PlannedSteps} steps ({plan.StepsPerEpoch} per epoch)");

    private static void Report(IStepReporter reporter, TrainingProgress p, int stepLines)
    {
        var eps = p.Epsilon is { } e ? string.Create(CultureInfo.InvariantCulture, $", eps {e:0.000}") : "";
        if (p.Kind == TrainingEventKind.Step)
        {
            reporter.Update(p.Step, string.Create(CultureInfo.InvariantCulture, $"epoch {p.Epoch} loss {p.Loss:0.0000}{eps}"));
            if (p.Step % stepLines == 0)
            {
                reporter.Line(string.Create(CultureInfo.InvariantCulture,
                    $"step {p.Step}/{p.TotalSteps} epoch {p.Epoch}: loss {p.Loss:0.0000}{eps}, {p.Patients} patients, {p.Slices} slices, lr {p.LearningRate:G3}, {p.SamplesPerSecond:0.0} slices/s"));
            }
        }
        else
        {
            var dice = p.ValidationDice is { } d ? string.Create(CultureInfo.InvariantCulture, $", validation Dice {d:0.0000}") : "";
            reporter.Line(string.Create(CultureInfo.InvariantCulture,
                $"epoch {p.Epoch} ({p.Step}/{p.TotalSteps} steps, {p.ElapsedSeconds:0} s): loss {p.Loss:0.0000}{dice}{eps}, {p.SamplesPerSecond:0.0} slices/s"));
        }
    }

    private static void Render(IAnsiConsole console, RunMetrics m, string outDir, IReadOnlyList<string> paths)
    {
        static string F(double? v, string format) => v is { } x ? x.ToString(format, CultureInfo.InvariantCulture) : "-";
        var table = new Table().Border(TableBorder.Rounded).AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        table.AddRow("test Dice (mean over patients)", F(m.Dice, "0.0000"));
        table.AddRow("test IoU", F(m.IoU, "0.0000"));
        table.AddRow("test HD95 (pixels)", F(m.Hd95, "0.00"));
        table.AddRow("patients train / validation / test", $"{m.TrainingPatients} / {m.ValidationPatients} / {m.TestPatients}");
        table.AddRow("privacy", m.Mode == "dp"
            ? string.Create(CultureInfo.InvariantCulture, $"epsilon {m.Epsilon:0.000} at delta {m.Delta:G3} ({m.Accountant}), sigma {m.Sigma:0.###}, q {m.SampleRate:G4}, C {m.ClipNorm:G4}")
            : "none (non-private)");
        table.AddRow("steps", m.Steps.ToString(CultureInfo.InvariantCulture));
        table.AddRow("train time", F(m.TrainSeconds, "0.0") + " s");
        table.AddRow("slices/s", F(m.SamplesPerSecond, "0.0"));
        console.Write(table);
        console.MarkupLine(Markup.Escape($"wrote {string.Join(", ", paths.Select(Path.GetFileName))} to {outDir}"));
    }

    internal static string ToJson(RunMetrics metrics) => JsonSerializer.Serialize(metrics, TrainingOutputs.JsonOptions);
}
