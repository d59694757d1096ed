using System.CommandLine;
using System.Globalization;
using System.Text.Json.Serialization;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Imaging;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Preprocessing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg preprocess</c>: a provider's cases (BraTS volumes, named volumes or PNG slices) to one de-identified,
/// normalised dataset shard (safetensors).
/// </summary>
internal static class PreprocessCommand
{
    /// <summary>The environment variable that may hold the pseudonymisation secret itself.</summary>
    public const string KeyVariable = "MRISEG_PSEUDONYM_KEY";

    /// <summary>The key file used when none is given: beside the output, "&lt;out&gt;.pseudonym-key".</summary>
    public static string DefaultKeyPath(string output) => output + ".pseudonym-key";

    public static Command Create(CliApp app)
    {
        var input = new Option<string>("--input") { Description = "A folder of cases (searched below), or one case folder.", Required = true, HelpName = "DIR" };
        var output = new Option<string>("--out") { Description = "The dataset shard to write (replaced if it exists).", Required = true, HelpName = "FILE" };
        var size = new Option<string>("--size")
        {
            Description = "Output side in pixels (crop to the brain, pad to a square, resize), or 'native' to keep the input grid.",
            HelpName = "N|native",
            DefaultValueFactory = _ => "128",
        };
        var modalities = new Option<string>("--modalities") { Description = "Image channels, in order.", HelpName = "LIST", DefaultValueFactory = _ => "flair,t1,t1ce,t2" };
        var labels = new Option<string>("--labels") { Description = "Mask channels: wt (whole tumour) or brats (WT, TC, ET).", HelpName = "wt|brats", DefaultValueFactory = _ => "wt" };
        var share = new Option<string>("--tumour-free-share")
        {
            Description = "Share of tumour-free brain slices kept besides all tumour slices, 0..1, or 'all'.",
            HelpName = "F|all",
            DefaultValueFactory = _ => "0.25",
        };
        var key = new Option<string>("--pseudonym-key")
        {
            Description = $"File holding the pseudonymisation secret (default: ${KeyVariable}, else <out>.pseudonym-key, generated if missing).",
            HelpName = "FILE",
        };
        var strict = new Option<bool>("--strict") { Description = "A case that lacks a file or has an unreadable one is an error, not skipped." };
        var parallelism = new Option<int>("--parallelism")
        {
            Description = "Cases processed at once.",
            HelpName = "N",
            DefaultValueFactory = _ => Environment.ProcessorCount,
        };

        var command = new Command("preprocess", "Pre-process BraTS cases into a de-identified, normalised 2-D slice dataset shard.")
        {
            input, output, size, modalities, labels, share, key, strict, parallelism,
        };
        app.SetAction(command, async (context, ct) =>
        {
            var outPath = KeyFiles.RequireDestination(context.GetValue(output)!, "--out", force: true);
            var inputPath = context.GetValue(input)!;
            if (!Directory.Exists(inputPath))
            {
                throw new CliException(File.Exists(inputPath)
                    ? $"--input {inputPath}: is a file; give a folder of cases or one case folder"
                    : $"--input {inputPath}: no such folder");
            }

            IReadOnlyList<SourceCase> cases;
            try
            {
                cases = CaseDiscovery.Discover(inputPath);
            }
            catch (Exception e) when (e is PreprocessException or IOException or UnauthorizedAccessException)
            {
                throw new CliException($"--input {inputPath}: {e.Message}", e);
            }

            if (cases.Count == 0)
            {
                throw new CliException(
                    $"--input {inputPath}: no case found (expected case folders with <case>_flair.nii.gz ... <case>_seg.nii.gz, FLAIR.nii.gz ... GT_W.nii.gz, or <case>_flair.png ... <case>_seg.png)");
            }

            int sizeValue;
            IReadOnlyList<Modality> modalityList;
            LabelScheme scheme;
            try
            {
                sizeValue = ParseSize(context.GetValue(size)!);
                modalityList = PreprocessOptions.ParseModalities(context.GetValue(modalities)!);
                scheme = LabelSchemes.Parse(context.GetValue(labels)!);
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message);
            }

            var shareValue = ParseShare(context.GetValue(share)!);
            var workers = context.GetValue(parallelism);
            if (workers < 1)
            {
                throw new CliException($"--parallelism {workers}: must be at least 1");
            }

            // The key last: a generated key file is only written once everything else is known to be fine.
            var (pseudonymKey, keyNote) = ResolveKey(context.GetValue(key), app.Environment.GetEnvironmentVariable(KeyVariable), outPath);
            var options = new PreprocessOptions
            {
                Size = sizeValue,
                Modalities = modalityList,
                Labels = scheme,
                TumourFreeShare = shareValue,
                PseudonymKey = pseudonymKey,
                Strict = context.GetValue(strict),
                MaxDegreeOfParallelism = workers,
            };

            if (keyNote is not null)
            {
                context.Output.Progress(keyNote);
            }

            var preprocessor = new Preprocessor(options);
            PreprocessResult result;
            try
            {
                result = await context.Output.CountProgressAsync($"pre-processing {cases.Count} case(s)", cases.Count, report =>
                    Task.Run(() => preprocessor.RunAsync(cases, new ReportProgress(p => report(p.CasesDone, $"{p.CurrentCase}, {p.Slices} slices")), ct), ct));
            }
            catch (PreprocessException e)
            {
                throw new CliException(e.Message, e);
            }

            WriteShard(outPath, result.Dataset);
            foreach (var skipped in result.Summary.Skipped)
            {
                context.Output.Warn($"skipped case {skipped.CaseId}: {skipped.Reason}");
            }

            var summary = result.Summary;
            var view = new PreprocessView(
                summary.Patients, summary.Slices, summary.TumourSlices, summary.Channels,
                summary.Height == summary.Width ? summary.Height : $"{summary.Height}x{summary.Width}",
                outPath,
                [.. summary.Skipped.Select(s => new SkippedView(s.CaseId, s.Reason))]);
            context.Output.WriteResult(view, (console, r) =>
            {
                console.MarkupLine(Markup.Escape(
                    $"{r.Patients} patients, {r.Slices} slices ({r.TumourSlices} with tumour), {r.Channels} channels ({string.Join(',', result.Dataset.Modalities)}), "
                    + $"{summary.Height}x{summary.Width}, labels {result.Dataset.Labels.Name()} -> {r.Output}"));
                if (r.Skipped.Count > 0)
                {
                    console.MarkupLine(Markup.Escape($"{r.Skipped.Count} of {summary.CasesFound} case(s) skipped (see the warnings above)."));
                }
            }, BenchCommand.JsonLine);
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The <c>--json</c> result: patients, slices, tumour_slices, channels, size (a number, or "HxW" when not square), output, skipped.</summary>
    internal sealed record PreprocessView(int Patients, int Slices, int TumourSlices, int Channels, object Size, string Output, IReadOnlyList<SkippedView> Skipped);

    internal sealed record SkippedView([property: JsonPropertyName("case")] string Case, string Reason);

    /// <summary>
    /// The key: --pseudonym-key FILE, else $MRISEG_PSEUDONYM_KEY (the secret itself), else the key file beside the
    /// output (read if it exists, generated with owner-only permissions if not). Returns a note to show, if any.
    /// </summary>
    internal static (PseudonymKey Key, string? Note) ResolveKey(string? keyPath, string? environmentSecret, string outPath)
    {
        try
        {
            if (keyPath is not null)
            {
                return (PseudonymKey.Load(KeyFiles.RequireFile(keyPath, "--pseudonym-key")), null);
            }

            if (!string.IsNullOrWhiteSpace(environmentSecret))
            {
                return (PseudonymKey.FromText(environmentSecret), null);
            }

            var path = DefaultKeyPath(outPath);
            if (File.Exists(path))
            {
                return (PseudonymKey.Load(path), $"pseudonym key: {path} (beside the output; keep it: the same key gives the same pseudonyms)");
            }

            return (PseudonymKey.CreateFile(path),
                $"pseudonym key: generated {path} (keep it secret and off the shared data: with it, pseudonyms of guessable case ids can be recomputed; pass it with --pseudonym-key next time)");
        }
        catch (ArgumentException e)
        {
            throw new CliException($"pseudonym key: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"pseudonym key: {e.Message}", e);
        }
    }

    internal static int ParseSize(string text)
    {
        if (string.Equals(text.Trim(), "native", StringComparison.OrdinalIgnoreCase))
        {
            return PreprocessOptions.NativeSize;
        }

        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n is >= 8 and <= PreprocessOptions.MaxSize
            ? n
            : throw new CliException($"--size '{text}': expected a side of 8..{PreprocessOptions.MaxSize} pixels, or 'native'");
    }

    internal static double ParseShare(string text)
    {
        if (string.Equals(text.Trim(), "all", StringComparison.OrdinalIgnoreCase))
        {
            return 1;
        }

        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var f) && f is >= 0 and <= 1
            ? f
            : throw new CliException($"--tumour-free-share '{text}': expected a number 0..1, or 'all'");
    }

    /// <summary>Writes the shard through a temporary file beside it, renamed into place when complete.</summary>
    private static void WriteShard(string path, SliceDataset dataset)
    {
        var temp = $"{path}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                DatasetShard.Write(file, dataset);
            }

            File.Move(temp, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--out {path}: cannot write: {e.Message}", e);
        }
        finally
        {
            if (File.Exists(temp))
            {
                File.Delete(temp);
            }
        }
    }

    /// <summary>Progress reported on the worker's thread (the display is thread-safe), not posted elsewhere.</summary>
    private sealed class ReportProgress(Action<PreprocessProgress> report) : IProgress<PreprocessProgress>
    {
        public void Report(PreprocessProgress value) => report(value);
    }
}
