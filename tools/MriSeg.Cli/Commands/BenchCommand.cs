using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using MriSeg.Cli.Infrastructure;
using MriSeg.Imaging.Phantoms;
using MriSeg.Imaging.Preprocessing;
using MriSeg.Learning.Benchmark;
using MriSeg.Learning.Torch;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg bench</c>: micro-benchmarks, one subcommand each (<c>seal</c>, <c>dp</c>, <c>preprocess</c>, <c>quality</c>, <c>precision</c>).
/// Under --json each prints one line of snake_case JSON, so a script can read the last line of the output.
/// </summary>
internal static class BenchCommand
{
    /// <summary>Benchmarks print one compact line with snake_case keys.</summary>
    internal static readonly JsonSerializerOptions JsonLine = new()
    {
        WriteIndented = false,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
    };

    public static Command Create(CliApp app)
    {
        var command = new Command("bench", "Measure throughput of the building blocks on this machine.");
        command.Subcommands.Add(CreateSeal(app));
        command.Subcommands.Add(CreateDp(app));
        command.Subcommands.Add(CreatePreprocess(app));
        command.Subcommands.Add(BenchQualityCommand.Create(app));
        command.Subcommands.Add(BenchPrecisionCommand.Create(app));
        return command;
    }

    private static Command CreatePreprocess(CliApp app)
    {
        var input = new Option<string>("--input")
        {
            Description = "Cases of .nii.gz volumes (default: phantoms generated into a temporary folder and deleted afterwards).",
            HelpName = "DIR",
        };
        var size = new Option<string>("--size") { Description = "Output side in pixels, or 'native'.", HelpName = "N|native", DefaultValueFactory = _ => "128" };
        var iterations = new Option<int>("--iterations") { Description = "Timed runs of each measurement (the best is reported).", HelpName = "N", DefaultValueFactory = _ => 3 };
        var parallelism = new Option<int>("--parallelism")
        {
            Description = "Cases (and, for the decompression floor, files) processed at once.",
            HelpName = "N",
            DefaultValueFactory = _ => 1,
        };
        var sites = new Option<int>("--sites") { Description = "Phantom sites when no --input is given.", HelpName = "N", DefaultValueFactory = _ => 2 };
        var patients = new Option<int>("--patients") { Description = "Phantom patients per site when no --input is given.", HelpName = "N", DefaultValueFactory = _ => 3 };
        // The size of a BraTS volume, what hospitals hold: the bench measures the workload the service is for.
        var shape = new Option<string>("--shape")
        {
            Description = "Phantom volume size when no --input is given.",
            HelpName = "XxYxZ",
            DefaultValueFactory = _ => "240x240x155",
        };

        var command = new Command("preprocess", "Pre-processing time per volume against only decompressing the same .nii.gz files, in one run.")
        {
            input, size, iterations, parallelism, sites, patients, shape,
        };
        app.SetAction(command, async (context, ct) =>
        {
            var (n, p) = (context.GetValue(iterations), context.GetValue(parallelism));
            if (n < 1 || p < 1)
            {
                throw new CliException("--iterations and --parallelism must be at least 1");
            }

            var sizeValue = PreprocessCommand.ParseSize(context.GetValue(size)!);
            var given = context.GetValue(input);
            if (given is not null && !Directory.Exists(given))
            {
                throw new CliException($"--input {given}: no such folder");
            }

            var temp = given is null ? Directory.CreateTempSubdirectory("mriseg-bench-preprocess-").FullName : null;
            try
            {
                var folder = given ?? temp!;
                if (temp is not null)
                {
                    var (siteCount, perSite) = (context.GetValue(sites), context.GetValue(patients));
                    if (siteCount is < 1 or > 64 || perSite is < 1 or > 1000)
                    {
                        throw new CliException("--sites must be 1..64 and --patients 1..1000");
                    }

                    var generator = new PhantomGenerator(PhantomOptions.Default with { Size = PhantomsCommand.ParseShape(context.GetValue(shape)!) });
                    await context.Output.StatusAsync($"generating {siteCount * perSite} phantoms in {temp}",
                        _ => Task.Run(() => generator.WriteDataset(temp, siteCount, perSite, ct), ct));
                }

                // A fixed key: the same slices are drawn in every run, so runs compare.
                var options = new PreprocessOptions { Size = sizeValue, PseudonymKey = PseudonymKey.FromText("mriseg bench preprocess"), MaxDegreeOfParallelism = p };
                PreprocessBenchmarkResult result;
                try
                {
                    _ = PreprocessBenchmark.VolumeFiles(folder, options);
                    result = await context.Output.StatusAsync($"benchmarking pre-processing of {folder}, best of {n}",
                        _ => Task.Run(() => PreprocessBenchmark.Run(folder, options, n, ct), ct));
                }
                catch (PreprocessException e)
                {
                    throw new CliException(e.Message, e);
                }

                context.Output.WriteResult(PreprocessBenchResult.From(result, given is null ? "phantoms" : folder), (console, r) =>
                {
                    console.MarkupLine(Markup.Escape(
                        $"{r.Cases} cases, {r.Volumes} volumes ({Output.Bytes(r.CompressedBytes)} gzipped, {Output.Bytes(r.DecompressedBytes)} decompressed), {r.Slices} slices, parallelism {r.Parallelism}, best of {r.Iterations} after {r.WarmupRuns} untimed run(s):"));
                    console.MarkupLine(Markup.Escape(
                        $"gunzip only {r.GunzipMsPerVolume} ms/volume, pre-process {r.PreprocessMsPerVolume} ms/volume: ratio {r.Ratio} ({r.RatioWithShard} with the shard written; processor-time ratio {r.CpuRatio})"));
                    console.MarkupLine(r.MeetsTarget
                        ? $"[green]target {r.TargetRatio.ToString(CultureInfo.InvariantCulture)}x met[/]"
                        : $"[yellow]target {r.TargetRatio.ToString(CultureInfo.InvariantCulture)}x not met[/]");
                }, JsonLine);
                return ExitCodes.Success;
            }
            finally
            {
                if (temp is not null)
                {
                    Directory.Delete(temp, recursive: true);
                }
            }
        });
        return command;
    }

    /// <summary>The <c>bench preprocess</c> result; the last JSON line holds <c>ratio</c>.</summary>
    internal sealed record PreprocessBenchResult(
        string Input, int Cases, int Volumes, long CompressedBytes, long DecompressedBytes, int Slices, int Iterations, int WarmupRuns, int Parallelism,
        double GunzipMsPerVolume, double PreprocessMsPerVolume, double ShardMs, double CpuRatio, double Ratio, double RatioWithShard, double TargetRatio, bool MeetsTarget)
    {
        public static PreprocessBenchResult From(PreprocessBenchmarkResult r, string input) => new(
            input, r.Cases, r.Volumes, r.CompressedBytes, r.DecompressedBytes, r.Slices, r.Iterations, r.WarmupRuns, r.Parallelism,
            Math.Round(r.GunzipMsPerVolume, 3), Math.Round(r.PreprocessMsPerVolume, 3), Math.Round(1000 * r.ShardSeconds, 1),
            Math.Round(r.CpuRatio, 3), Math.Round(r.Ratio, 3), Math.Round(r.RatioWithShard, 3), PreprocessBenchmarkResult.TargetRatio, r.MeetsTarget);
    }

    private static Command CreateDp(CliApp app)
    {
        var size = new Option<int>("--size") { Description = "Image side in pixels (a multiple of 16).", HelpName = "N", DefaultValueFactory = _ => 128 };
        var batch = new Option<int>("--batch") { Description = "Patients per step (one slice each).", HelpName = "B", DefaultValueFactory = _ => 8 };
        var iterations = new Option<int>("--iterations") { Description = "Timed steps of each kind (medians are reported).", HelpName = "N", DefaultValueFactory = _ => 10 };
        var device = TrainCommand.DeviceOption();
        var autotune = new Option<bool>("--cudnn-benchmark") { Description = "Let cuDNN time its convolution algorithms first (PyTorch's torch.backends.cudnn.benchmark); for both steps." };
        var command = new Command("dp", "DP-SGD step (folded per-patient gradients, clipping, noise) against a non-private step of the reference U-Net, in one run.")
        {
            size, batch, iterations, device, autotune,
        };
        app.SetAction(command, async (context, _) =>
        {
            var (n, b, it) = (context.GetValue(size), context.GetValue(batch), context.GetValue(iterations));
            if (n < 16 || n % 16 != 0 || n > 1024 || b < 1 || b > 512 || it < 1)
            {
                throw new CliException("--size must be a multiple of 16 up to 1024, --batch 1..512, --iterations at least 1");
            }

            var chosen = TrainCommand.InitializeDevice(context, context.GetValue(device));
            var backend = TorchRuntime.Current!;
            if (context.GetValue(autotune))
            {
                CudnnBenchmark.Enabled = true;
            }
            var result = await context.Output.StatusAsync(
                $"benchmarking DP-SGD at {n}x{n}, batch {b}, {it} steps of each kind on {chosen}",
                _ => Task.Run(() => DpBenchmark.Run(n, b, chosen, it)));
            context.Output.WriteResult(
                new DpBenchResult(result.Size, result.Batch, result.Device, backend.Backend, CudnnBenchmark.Enabled, result.Iterations, result.Threads,
                    Math.Round(result.NonPrivateSamplesPerSecond, 3), Math.Round(result.DpSamplesPerSecond, 3), Math.Round(result.Ratio, 4), Math.Round(result.CpuRatio, 4)),
                (console, r) => console.MarkupLine(Markup.Escape(
                    $"{r.Size}x{r.Size}, batch {r.Batch}, {r.Device} ({r.Threads} threads): non-private {r.NonPrivateSamplesPerSecond} samples/s, DP {r.DpSamplesPerSecond} samples/s, ratio {r.Ratio} (CPU-time ratio {r.CpuRatio})")),
                JsonLine);
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The <c>bench dp</c> result; the last JSON line holds <c>ratio</c>.</summary>
    internal sealed record DpBenchResult(
        int Size, int Batch, string Device, string Backend, bool CudnnBenchmark, int Iterations, int Threads,
        double NonPrivateSamplesPerSecond, double DpSamplesPerSecond, double Ratio, double CpuRatio);

    private static Command CreateSeal(CliApp app)
    {
        var size = new Option<double>("--size")
        {
            Description = "Plaintext size in MiB (in memory; about four times this much memory is used).",
            HelpName = "MiB",
            DefaultValueFactory = _ => 256,
        };
        var chunkSize = new Option<int>("--chunk-size")
        {
            Description = "Chunk size of the sealed packages, in bytes.",
            HelpName = "BYTES",
            DefaultValueFactory = _ => PackageFormat.DefaultChunkSize,
        };
        var iterations = new Option<int>("--iterations")
        {
            Description = "Timed runs of each measurement; the best is reported.",
            HelpName = "N",
            DefaultValueFactory = _ => 5,
        };

        var command = new Command("seal", "Sealing and opening throughput against raw AES-256-GCM (and the SHA-256 ceiling).");
        command.Options.Add(size);
        command.Options.Add(chunkSize);
        command.Options.Add(iterations);
        app.SetAction(command, async (context, _) =>
        {
            var mib = context.GetValue(size);
            var bytes = (long)Math.Round(mib * 1024 * 1024);
            if (!double.IsFinite(mib) || bytes < 1 || bytes > SealingBenchmark.MaxSizeBytes)
            {
                throw new CliException($"--size {mib.ToString(CultureInfo.InvariantCulture)}: must be more than 0 and at most {SealingBenchmark.MaxSizeBytes >> 20} MiB");
            }

            var chunk = context.GetValue(chunkSize);
            if (chunk < PackageFormat.MinChunkSize || chunk > PackageFormat.MaxChunkSize)
            {
                throw new CliException($"--chunk-size {chunk}: must be between {PackageFormat.MinChunkSize} and {PackageFormat.MaxChunkSize} bytes");
            }

            var n = context.GetValue(iterations);
            if (n < 1)
            {
                throw new CliException($"--iterations {n}: must be at least 1");
            }

            SealingBenchmarkResult result;
            try
            {
                result = await context.Output.StatusAsync(
                    $"benchmarking seal/open: {Output.Bytes(bytes)}, chunks of {Output.Bytes(chunk)}, best of {n}",
                    _ => Task.Run(() => SealingBenchmark.Run(bytes, chunk, n)));
            }
            catch (SealedPackageException e)
            {
                throw new CliException(e.Message, e);
            }

            context.Output.WriteResult(SealBenchResult.From(result), Render, JsonLine);
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The <c>bench seal</c> result; throughputs in bytes of plaintext per second.</summary>
    internal sealed record SealBenchResult(
        long SizeBytes,
        int ChunkSize,
        int Iterations,
        int Processors,
        bool PipelinedHashing,
        double RawAesGcmBytesPerSecond,
        double RawSha256BytesPerSecond,
        double SealBytesPerSecond,
        double OpenBytesPerSecond,
        double SealRatio,
        double OpenRatio,
        double Sha256CeilingRatio,
        double TargetRatio,
        bool MeetsTarget)
    {
        public static SealBenchResult From(SealingBenchmarkResult r) => new(
            r.SizeBytes, r.ChunkSize, r.Iterations, r.ProcessorCount, r.PipelinedHashing,
            r.RawAesGcmBytesPerSecond, r.RawSha256BytesPerSecond, r.SealBytesPerSecond, r.OpenBytesPerSecond,
            Math.Round(r.SealRatio, 4), Math.Round(r.OpenRatio, 4), Math.Round(r.Sha256CeilingRatio, 4),
            SealingBenchmarkResult.TargetRatio, r.MeetsTarget);
    }

    private static void Render(IAnsiConsole console, SealBenchResult r)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("measure").AddColumn(new TableColumn("throughput").RightAligned()).AddColumn(new TableColumn("× raw AES-GCM").RightAligned());
        table.AddRow("raw AES-256-GCM (one call)", Rate(r.RawAesGcmBytesPerSecond), "1.00");
        table.AddRow("raw SHA-256 (the ceiling)", Rate(r.RawSha256BytesPerSecond), Ratio(r.Sha256CeilingRatio));
        table.AddRow("seal", Rate(r.SealBytesPerSecond), Ratio(r.SealRatio));
        table.AddRow("open (signature checked)", Rate(r.OpenBytesPerSecond), Ratio(r.OpenRatio));
        console.Write(table);
        console.MarkupLine(Markup.Escape(
            $"{Output.Bytes(r.SizeBytes)} in memory, chunks of {Output.Bytes(r.ChunkSize)}, best of {r.Iterations}, {r.Processors} processor(s), hashing {(r.PipelinedHashing ? "pipelined" : "inline")}."));
        console.MarkupLine(r.MeetsTarget
            ? $"[green]target {Ratio(r.TargetRatio)}× met[/]"
            : $"[yellow]target {Ratio(r.TargetRatio)}× not met[/]" + Markup.Escape(
                r.Sha256CeilingRatio < r.TargetRatio
                    ? $": the plaintext SHA-256 the format requires caps sealing and opening at {Ratio(r.Sha256CeilingRatio)}× on this machine."
                    : "."));
    }

    private static string Ratio(double value) => value.ToString("0.00", CultureInfo.InvariantCulture);

    private static string Rate(double bytesPerSecond) =>
        bytesPerSecond >= 1e9
            ? (bytesPerSecond / 1e9).ToString("0.00", CultureInfo.InvariantCulture) + " GB/s"
            : (bytesPerSecond / 1e6).ToString("0", CultureInfo.InvariantCulture) + " MB/s";
}
