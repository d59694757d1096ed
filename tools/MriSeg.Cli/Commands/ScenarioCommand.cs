using System.CommandLine;
using System.Globalization;
using Azure.Storage.Blobs;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;
using MriSeg.Scenario;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg scenario run</c>: the main job against running services — three hospitals and a model consumer through the
/// six phases (<see cref="ScenarioRunner"/>). The AppHost starts it once the services are healthy (unless
/// <c>MRISEG_SCENARIO=off</c>); people run it against an AppHost they started.
/// </summary>
internal static class ScenarioCommand
{
    /// <summary>Where the blob connection string comes from when the AppHost starts the scenario (Aspire's WithReference).</summary>
    public const string BlobConnectionVariable = "ConnectionStrings__" + ServiceCatalog.BlobConnection;

    public static Command Create(CliApp app)
    {
        var defaults = new ScenarioOptions();
        var hospitals = new Option<int>("--hospitals") { Description = "Number of phantom hospitals.", DefaultValueFactory = _ => defaults.Hospitals.Count, HelpName = "N" };
        var patients = new Option<int>("--patients") { Description = "Generated patients per hospital.", DefaultValueFactory = _ => defaults.PatientsPerHospital, HelpName = "N" };
        var size = new Option<int>("--size") { Description = "Phantom volume width (multiple of 16) and slice size.", DefaultValueFactory = _ => defaults.VolumeSize, HelpName = "PX" };
        var depth = new Option<int>("--depth") { Description = "Axial slices per phantom volume.", DefaultValueFactory = _ => defaults.VolumeDepth, HelpName = "N" };
        var epsilon = new Option<double>("--epsilon") { Description = "The run's ε with the shipped recipe (each contract allows this much per run; a --pipeline brings its own ε and δ).", DefaultValueFactory = _ => defaults.Epsilon, HelpName = "EPS" };
        var delta = new Option<double>("--delta") { Description = "δ of the run and the contracts.", DefaultValueFactory = _ => defaults.Delta, HelpName = "DELTA" };
        var epochs = new Option<int?>("--epochs") { Description = "Override the pipeline's epochs (short runs).", HelpName = "N" };
        var pipeline = new Option<string?>("--pipeline") { Description = "A training config JSON to seal as the pipeline (default: configs/phantoms-eps8.json with --epsilon/--delta).", HelpName = "FILE" };
        var data = new Option<string[]>("--data")
        {
            Description = "A real data folder per hospital, ID=PATH (any ingestion layout; a path on the Preprocess service's machine). Replaces the phantom hospitals.",
            HelpName = "ID=PATH", AllowMultipleArgumentsPerToken = false,
        };
        var sliceSize = new Option<int>("--slice-size") { Description = "Slice size of the shards; 0: the phantom size (real data: native).", HelpName = "PX" };
        var segment = new Option<string?>("--segment") { Description = "A case folder to segment at the end (default: a generated phantom of an unseen site).", HelpName = "DIR" };
        var output = new Option<string>("--out") { Description = "Local outputs go to DIR/<run-id>/.", DefaultValueFactory = _ => "output", HelpName = "DIR" };
        var consumer = new Option<string>("--consumer") { Description = "The model consumer's party id (the ModelVault's ModelVault:Consumer).", DefaultValueFactory = _ => defaults.Consumer, HelpName = "ID" };
        var runId = new Option<string?>("--run-id") { Description = "The run id (default: scenario-<time>-<random>).", HelpName = "ID" };
        var keep = new Option<bool>("--keep-plaintext") { Description = "Keep the plaintext staging blobs (generated volumes, shards) after sealing." };
        var baseModel = new Option<string?>("--base-model")
        {
            Description = "A pre-trained model folder the consumer seals as the run's initial weights (default: the --pipeline's base_model, e.g. the BraTS recipes' phantom base; else seeded initial weights).",
            HelpName = "DIR",
        };
        var partyKey = new Option<string?>("--party-key")
        {
            Description = "The consumer's party key that signs the calls to the ModelVault (default: .mriseg/keys/<consumer>.key of this repository, which Packaging makes in development).",
            HelpName = "FILE",
        };
        var storage = new Option<string?>("--storage") { Description = $"Blob storage connection string (default: ${BlobConnectionVariable}, else the AppHost's endpoints file).", HelpName = "CONNECTION" };

        var run = new Command("run", "Play three hospitals and a model consumer through all six phases against the running services.")
        {
            hospitals, patients, size, depth, epsilon, delta, epochs, pipeline, data, sliceSize, segment, output, consumer, runId, keep, storage, partyKey, baseModel,
        };
        app.SetAction(run, async (context, ct) =>
        {
            var realData = (context.GetValue(data) ?? []).Select(ParseData).ToList();
            var pipelinePath = context.GetValue(pipeline);
            var pipelineJson = pipelinePath is null ? null : ReadPipeline(pipelinePath);
            var options = new ScenarioOptions
            {
                Hospitals = realData.Count > 0 ? realData
                    : [.. Enumerable.Range(0, context.GetValue(hospitals)).Select(i => new ScenarioHospital($"hospital-{(char)('a' + i % 26)}{(i >= 26 ? (i / 26).ToString(CultureInfo.InvariantCulture) : "")}"))],
                PatientsPerHospital = context.GetValue(patients),
                VolumeSize = context.GetValue(size),
                VolumeDepth = context.GetValue(depth),
                SliceSize = context.GetValue(sliceSize),
                Epsilon = context.GetValue(epsilon),
                Delta = context.GetValue(delta),
                Epochs = context.GetValue(epochs),
                PipelineJson = pipelineJson,
                SegmentCase = context.GetValue(segment),
                OutputDirectory = context.GetValue(output)!,
                Consumer = context.GetValue(consumer)!,
                RunId = context.GetValue(runId),
                KeepPlaintext = context.GetValue(keep),
                ConsumerKeyPath = context.GetValue(partyKey) is { } keyPath ? Path.GetFullPath(keyPath) : null,
                BaseModelDirectory = BaseModel(context.GetValue(baseModel), pipelinePath, pipelineJson),
            };
            try
            {
                options.Validate();
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message, e);
            }

            var resolution = context.ResolveEndpoints();
            Uri Address(string name) => resolution.Get(name).Address;
            var endpoints = new ScenarioEndpoints(Address(ServiceCatalog.Preprocess), Address(ServiceCatalog.Packaging), Address(ServiceCatalog.Trainer), Address(ServiceCatalog.ModelVault));
            var blobs = new BlobServiceClient(StorageConnection(context.GetValue(storage), app.Environment.GetEnvironmentVariable, resolution.File));

            var lastPhase = 0;
            using var runner = new ScenarioRunner(endpoints, blobs, e =>
            {
                if (e.Phase != lastPhase)
                {
                    lastPhase = e.Phase;
                    context.Output.Progress($"== phase {e.Phase}/6: {e.PhaseName}");
                }

                context.Output.Progress("   " + e.Message);
            });
            ScenarioSummary summary;
            try
            {
                summary = await runner.RunAsync(options, ct);
            }
            catch (ScenarioException e)
            {
                throw new CliException($"phase {e.Phase} ({ScenarioRunner.PhaseNames[e.Phase - 1]}): {e.Message}", e);
            }

            context.Output.WriteResult(summary, Render, ScenarioRunner.SummaryJson);
            return ExitCodes.Success;
        });

        return new Command("scenario", "The end-to-end scenario (the main job).") { run };
    }

    private static void Render(IAnsiConsole console, ScenarioSummary s)
    {
        var table = new Table().AddColumns("phase", "seconds", "result");
        foreach (var p in s.Phases)
        {
            table.AddRow($"{p.Phase}. {p.Name}", p.Seconds.ToString("F1", CultureInfo.InvariantCulture), Markup.Escape(p.Result));
        }

        console.Write(table);
        console.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
            $"run {s.RunId}: held-out Dice {(s.Dice is { } d ? d.ToString("F3", CultureInfo.InvariantCulture) : "n/a")} at ε = {s.Epsilon:F3}, δ = {s.Delta:G2}, in {s.Seconds:F0} s")));
        console.MarkupLine(Markup.Escape($"segmented {s.Segmented.Case}" + (s.Segmented.Dice is { } c ? string.Create(CultureInfo.InvariantCulture, $" (Dice {c:F3})") : "") +
            $": {s.Segmented.Mask}" + (s.Segmented.Overlay is { } o ? $", overlay {o}" : "")));
        console.MarkupLine(Markup.Escape($"outputs: {s.Outputs.Directory}; model '{s.Outputs.ModelId}' in the ModelVault; sealed outputs in {Path.GetDirectoryName(s.Outputs.SealedOutputs.FirstOrDefault() ?? "")}/"));
    }

    private static ScenarioHospital ParseData(string text)
    {
        var at = text.IndexOf('=', StringComparison.Ordinal);
        return at > 0 && at < text.Length - 1
            ? new ScenarioHospital(text[..at], text[(at + 1)..])
            : throw new CliException($"--data '{text}': expected ID=PATH, e.g. hospital-a=/data/brats_A");
    }

    /// <summary>--base-model, else the --pipeline's base_model (resolved as <c>mriseg train</c> resolves it), else none.</summary>
    private static string? BaseModel(string? given, string? pipelinePath, string? pipelineJson)
    {
        if (given is not null)
        {
            return Directory.Exists(given) ? Path.GetFullPath(given) : throw new CliException($"--base-model {given}: no such folder");
        }

        if (pipelineJson is null || MriSeg.Learning.Training.TrainingConfig.FromJson(pipelineJson) is not { BaseModel: not null } config)
        {
            return null;
        }

        var resolved = MriSeg.Learning.Training.TrainingData.ResolveBaseModel(config, pipelinePath).BaseModel!;
        return Directory.Exists(resolved) ? Path.GetFullPath(resolved)
            : throw new CliException($"--pipeline {pipelinePath}: its base_model {config.BaseModel} does not exist (produce it first: README, Quality on real data; or give --base-model DIR)");
    }

    private static string ReadPipeline(string path)
    {
        try
        {
            var text = File.ReadAllText(path);
            _ = MriSeg.Learning.Training.TrainingConfig.FromJson(text);
            return text;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or System.Text.Json.JsonException or InvalidDataException)
        {
            throw new CliException($"--pipeline {path}: {e.Message}", e);
        }
    }

    /// <summary>--storage, else the variable the AppHost sets, else the endpoints file of a running AppHost.</summary>
    internal static string StorageConnection(string? given, Func<string, string?> environment, string? endpointsFile)
    {
        if (!string.IsNullOrWhiteSpace(given))
        {
            return given;
        }

        if (environment(BlobConnectionVariable) is { Length: > 0 } fromAppHost)
        {
            return fromAppHost;
        }

        if (endpointsFile is not null && File.Exists(endpointsFile)
            && EndpointsFile.Read(endpointsFile).Storage.TryGetValue(ServiceCatalog.BlobConnection, out var fromFile) && fromFile.Length > 0)
        {
            return fromFile;
        }

        throw new CliException($"no blob storage to stage the parties' files: start the AppHost (dotnet run --project MriSeg.AppHost), or give --storage or ${BlobConnectionVariable}");
    }
}
