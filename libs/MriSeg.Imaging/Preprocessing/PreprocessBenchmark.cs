using System.Diagnostics;
using System.IO.Compression;
using MriSeg.Imaging.Datasets;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>The outcome of <see cref="PreprocessBenchmark.Run"/>; times are the best of the iterations.</summary>
/// <param name="Cases">Cases processed.</param>
/// <param name="Volumes">NIfTI files the pre-processor read (and the floor decompressed).</param>
/// <param name="CompressedBytes">Their total size on disk.</param>
/// <param name="DecompressedBytes">Their total size decompressed.</param>
/// <param name="Iterations">Timed runs of each measurement.</param>
/// <param name="Parallelism">Cases (and, for the floor, files) processed at once.</param>
/// <param name="GunzipSeconds">Only decompressing the files (GZipStream to Stream.Null).</param>
/// <param name="PreprocessSeconds">The whole pre-processing into an in-memory dataset (discovery included, shard writing not).</param>
/// <param name="ShardSeconds">Serialising that dataset as a shard, in memory.</param>
/// <param name="Slices">Slices extracted.</param>
/// <param name="GunzipCpuSeconds">Processor time of the process while only decompressing (best run).</param>
/// <param name="PreprocessCpuSeconds">Processor time of the process while pre-processing (best run).</param>
/// <param name="WarmupRuns">Untimed runs of each measurement before the timed ones (until the JIT had settled).</param>
public sealed record PreprocessBenchmarkResult(
    int Cases, int Volumes, long CompressedBytes, long DecompressedBytes, int Iterations, int Parallelism,
    double GunzipSeconds, double PreprocessSeconds, double ShardSeconds, int Slices, double GunzipCpuSeconds, double PreprocessCpuSeconds,
    int WarmupRuns)
{
    /// <summary>The goal: pre-processing a volume takes at most this many times as long as decompressing it.</summary>
    public const double TargetRatio = 2.0;

    /// <summary>Milliseconds per volume, only decompressing.</summary>
    public double GunzipMsPerVolume => 1000 * GunzipSeconds / Volumes;

    /// <summary>Milliseconds per volume, pre-processing.</summary>
    public double PreprocessMsPerVolume => 1000 * PreprocessSeconds / Volumes;

    /// <summary>Pre-processing time over decompression time (the same files, the same run).</summary>
    public double Ratio => PreprocessSeconds / GunzipSeconds;

    /// <summary>
    /// The ratio of processor times (less sensitive than wall time to other work on a shared machine, though not to
    /// its memory bandwidth).
    /// </summary>
    public double CpuRatio => PreprocessCpuSeconds / GunzipCpuSeconds;

    /// <summary>As <see cref="Ratio"/>, with writing the shard added.</summary>
    public double RatioWithShard => (PreprocessSeconds + ShardSeconds) / GunzipSeconds;

    /// <summary>Whether <see cref="Ratio"/> is at most <see cref="TargetRatio"/>.</summary>
    public bool MeetsTarget => Ratio <= TargetRatio;
}

/// <summary>
/// Measures pre-processing against its floor: decompressing the same .nii.gz files and nothing else, in the same
/// run, interleaved, with the same parallelism. One pre-processor serves every iteration (its per-worker buffers
/// are reused, as in a long-running service), and the timed runs start only once the JIT has settled: untimed runs
/// of each repeat until two in a row compile no method (tiered compilation first runs a method unoptimised and recompiles it
/// after about 30 calls, and the per-volume methods are called only a few times a run), so that the bench measures
/// the steady state a service processing many cases is in, not the first few cases of a process.
/// </summary>
public static class PreprocessBenchmark
{
    /// <summary>The most untimed runs before timing starts even if the JIT is still compiling.</summary>
    public const int MaxWarmupRuns = 40;

    /// <summary>Warm-up stops after this long even if the JIT is still compiling (a large input settles it in a run or two).</summary>
    public static readonly TimeSpan MaxWarmup = TimeSpan.FromSeconds(20);

    /// <summary>Runs the benchmark over the cases under <paramref name="input"/>.</summary>
    /// <exception cref="PreprocessException">No usable case, or the cases are not gzipped NIfTI volumes.</exception>
    public static PreprocessBenchmarkResult Run(string input, PreprocessOptions options, int iterations, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        var files = VolumeFiles(input, options);
        var preprocessor = new Preprocessor(options);
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = options.MaxDegreeOfParallelism, CancellationToken = cancellationToken };
        long decompressed = 0;
        double Gunzip(bool count)
        {
            var watch = Stopwatch.StartNew();
            long total = 0;
            Parallel.ForEach(files, parallel, file =>
            {
                using var gzip = new GZipStream(File.OpenRead(file), CompressionMode.Decompress);
                if (count)
                {
                    using var counter = new CountingStream();
                    gzip.CopyTo(counter);
                    Interlocked.Add(ref total, counter.Length);
                }
                else
                {
                    gzip.CopyTo(Stream.Null);
                }
            });
            decompressed = count ? total : decompressed;
            return watch.Elapsed.TotalSeconds;
        }

        PreprocessResult? last = null;
        double Preprocess()
        {
            var watch = Stopwatch.StartNew();
            last = preprocessor.RunAsync(input, null, cancellationToken).GetAwaiter().GetResult();
            return watch.Elapsed.TotalSeconds;
        }

        // Warm-up (file cache, JIT) until a run compiles nothing new, then the timed runs, interleaved so that both
        // see the same machine.
        Gunzip(count: true);
        var (warmup, quiet) = (0, 0);
        var warming = Stopwatch.StartNew();
        while (quiet < 2 && warmup < MaxWarmupRuns && warming.Elapsed < MaxWarmup)
        {
            // Two runs in a row that compile nothing: a method promoted at the end of one run is recompiled in the
            // background after a short delay, during the next.
            var compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
            Gunzip(count: false);
            Preprocess();
            warmup++;
            quiet = System.Runtime.JitInfo.GetCompiledMethodCount() == compiled ? quiet + 1 : 0;
        }

        double gunzip = double.MaxValue, preprocess = double.MaxValue, shard = double.MaxValue;
        double gunzipCpu = double.MaxValue, preprocessCpu = double.MaxValue;
        var process = System.Diagnostics.Process.GetCurrentProcess();
        double Cpu()
        {
            process.Refresh();
            return process.TotalProcessorTime.TotalSeconds;
        }

        for (var i = 0; i < iterations; i++)
        {
            var cpu = Cpu();
            gunzip = Math.Min(gunzip, Gunzip(count: false));
            gunzipCpu = Math.Min(gunzipCpu, Cpu() - cpu);
            cpu = Cpu();
            preprocess = Math.Min(preprocess, Preprocess());
            preprocessCpu = Math.Min(preprocessCpu, Cpu() - cpu);
            var watch = Stopwatch.StartNew();
            _ = DatasetShard.ToBytes(last!.Dataset);
            shard = Math.Min(shard, watch.Elapsed.TotalSeconds);
        }

        return new PreprocessBenchmarkResult(
            last!.Summary.CasesFound - last.Summary.Skipped.Count, files.Count, files.Sum(f => new FileInfo(f).Length), decompressed, iterations,
            options.MaxDegreeOfParallelism, gunzip, preprocess, shard, last.Summary.Slices, gunzipCpu, preprocessCpu, warmup);
    }

    /// <summary>The .nii.gz files the pre-processor reads for the usable cases under <paramref name="input"/>.</summary>
    /// <exception cref="PreprocessException">The input is missing, holds no case, or its cases are not gzipped NIfTI volumes.</exception>
    public static IReadOnlyList<string> VolumeFiles(string input, PreprocessOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var files = new List<string>();
        foreach (var c in CaseDiscovery.Discover(input).Where(c => c.Problem is null))
        {
            foreach (var m in options.Modalities)
            {
                if (c.Files.TryGetValue(SourceLayouts.Role(m), out var path))
                {
                    files.Add(path);
                }
            }

            if (c.LabelFile is { } label)
            {
                files.Add(label.Path);
            }
        }

        if (files.Count == 0 || files.Exists(f => !f.EndsWith(".nii.gz", StringComparison.OrdinalIgnoreCase)))
        {
            throw new PreprocessException($"{input}: bench preprocess needs cases of gzipped NIfTI volumes (.nii.gz)");
        }

        return files;
    }

    /// <summary>Stream.Null that counts what it is given.</summary>
    private sealed class CountingStream : Stream
    {
        private long _length;

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => _length;

        public override long Position
        {
            get => _length;
            set => throw new NotSupportedException();
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => _length += count;

        public override void Write(ReadOnlySpan<byte> buffer) => _length += buffer.Length;
    }
}
