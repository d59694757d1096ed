using System.Diagnostics;
using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>Throughputs measured by <see cref="SealingBenchmark.Run"/>, in bytes of plaintext per second.</summary>
public sealed class SealingBenchmarkResult
{
    /// <summary>The target: sealing and opening at least this fraction of raw AES-256-GCM throughput.</summary>
    public const double TargetRatio = 0.8;

    /// <summary>Bytes of plaintext per measured operation.</summary>
    public required long SizeBytes { get; init; }

    /// <summary>Chunk size of the sealed packages.</summary>
    public required int ChunkSize { get; init; }

    /// <summary>Timed repetitions of each measurement (the best of them is reported).</summary>
    public required int Iterations { get; init; }

    /// <summary>Processors the runtime sees.</summary>
    public required int ProcessorCount { get; init; }

    /// <summary>Whether the plaintext SHA-256 ran pipelined with the encryption.</summary>
    public required bool PipelinedHashing { get; init; }

    /// <summary>One <see cref="AesGcm.Encrypt(ReadOnlySpan{byte}, ReadOnlySpan{byte}, Span{byte}, Span{byte}, ReadOnlySpan{byte})"/> call over all the bytes.</summary>
    public required double RawAesGcmBytesPerSecond { get; init; }

    /// <summary>One SHA-256 over all the bytes (the plaintext digest every package carries).</summary>
    public required double RawSha256BytesPerSecond { get; init; }

    /// <summary><see cref="SealedPackage.SealAsync"/> from one memory stream into another.</summary>
    public required double SealBytesPerSecond { get; init; }

    /// <summary><see cref="SealedPackage.OpenToMemoryAsync"/> from a memory stream, signature checked.</summary>
    public required double OpenBytesPerSecond { get; init; }

    /// <summary>Seal throughput over raw AES-256-GCM throughput.</summary>
    public double SealRatio => SealBytesPerSecond / RawAesGcmBytesPerSecond;

    /// <summary>Open throughput over raw AES-256-GCM throughput.</summary>
    public double OpenRatio => OpenBytesPerSecond / RawAesGcmBytesPerSecond;

    /// <summary>
    /// The ceiling any sealer that hashes every plaintext byte with one sequential SHA-256 can reach on this
    /// machine: SHA-256 throughput over AES-256-GCM throughput (capped at 1).
    /// </summary>
    public double Sha256CeilingRatio => Math.Min(1.0, RawSha256BytesPerSecond / RawAesGcmBytesPerSecond);

    /// <summary>Whether both ratios reach <see cref="TargetRatio"/>.</summary>
    public bool MeetsTarget => SealRatio >= TargetRatio && OpenRatio >= TargetRatio;
}

/// <summary>
/// Measures sealing and opening against raw single-shot AES-256-GCM over the same bytes, in one run, on
/// in-memory streams, after a warm-up pass; each figure is the best of <c>iterations</c> timed runs
/// (robust against other work on a shared machine). For <c>mriseg bench seal</c>.
/// </summary>
public static class SealingBenchmark
{
    /// <summary>The largest size accepted (1 GiB): raw AES-GCM runs over one array.</summary>
    public const long MaxSizeBytes = 1L << 30;

    /// <summary>Runs the benchmark. Needs about four times <paramref name="sizeBytes"/> of memory.</summary>
    public static SealingBenchmarkResult Run(long sizeBytes = 256L << 20, int chunkSize = PackageFormat.DefaultChunkSize,
        int iterations = 5, HashingMode hashing = HashingMode.Auto)
    {
        if (sizeBytes < 1 || sizeBytes > MaxSizeBytes)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, $"benchmark size {sizeBytes} is outside [1, {MaxSizeBytes}]");
        }

        PackageFormat.ValidateChunkSize(chunkSize);
        if (iterations < 1)
        {
            throw new SealedPackageException(SealingError.InvalidArgument, "benchmark iterations must be at least 1");
        }

        // Off any synchronisation context: the async API is driven to completion here.
        return Task.Run(() => RunAsync((int)sizeBytes, chunkSize, iterations, hashing)).GetAwaiter().GetResult();
    }

    private static async Task<SealingBenchmarkResult> RunAsync(int size, int chunkSize, int iterations, HashingMode hashing)
    {
        var plaintext = GC.AllocateUninitializedArray<byte>(size);
        RandomNumberGenerator.Fill(plaintext);
        var ciphertext = new byte[size];
        var tag = new byte[PackageFormat.TagLength];
        var nonce = RandomNumberGenerator.GetBytes(PackageFormat.NonceLength);
        var digest = new byte[32];
        using var key = DataKey.Generate();
        using var signer = SigningKey.Generate();
        var check = SignerCheck.Expect(signer.PublicKey);
        var options = new SealOptions
        {
            ContentType = ContentType.Dataset,
            Owner = "benchmark",
            ChunkSize = chunkSize,
            Hashing = hashing,
            Metadata = new Dictionary<string, string> { ["purpose"] = "benchmark" },
        };
        var sealedStream = new MemoryStream(checked(size + (int)(PackageFormat.ChunkCount(size, chunkSize) * PackageFormat.RecordOverhead) + 4096));
        var openOptions = new OpenOptions { Hashing = hashing };
        using var aes = new AesGcm(key.Key, PackageFormat.TagLength);

        void Raw() => aes.Encrypt(nonce, plaintext, ciphertext, tag);
        void Sha() => SHA256.HashData(plaintext, digest);
        async Task Seal()
        {
            sealedStream.SetLength(0);
            using var input = new MemoryStream(plaintext, writable: false);
            await SealedPackage.SealAsync(input, sealedStream, key, signer, options).ConfigureAwait(false);
        }

        async Task Open()
        {
            using var input = new MemoryStream(sealedStream.GetBuffer(), 0, (int)sealedStream.Length, writable: false);
            using var opened = await SealedPackage.OpenToMemoryAsync(input, key, check, openOptions).ConfigureAwait(false);
            if (opened.Plaintext.Length != size)
            {
                throw new InvalidOperationException("benchmark: opened plaintext has the wrong length");
            }
        }

        // Warm-up: JIT, OpenSSL initialisation, first touch of every buffer.
        Raw();
        Sha();
        await Seal().ConfigureAwait(false);
        await Open().ConfigureAwait(false);
        var pipelined = PlaintextHasher.WouldPipeline(hashing, chunkSize);

        var best = new double[4];
        Array.Fill(best, double.MaxValue);
        for (var i = 0; i < iterations; i++)
        {
            best[0] = Math.Min(best[0], Time(Raw));
            best[1] = Math.Min(best[1], Time(Sha));
            best[2] = Math.Min(best[2], await TimeAsync(Seal).ConfigureAwait(false));
            best[3] = Math.Min(best[3], await TimeAsync(Open).ConfigureAwait(false));
        }

        return new SealingBenchmarkResult
        {
            SizeBytes = size,
            ChunkSize = chunkSize,
            Iterations = iterations,
            ProcessorCount = Environment.ProcessorCount,
            PipelinedHashing = pipelined,
            RawAesGcmBytesPerSecond = size / best[0],
            RawSha256BytesPerSecond = size / best[1],
            SealBytesPerSecond = size / best[2],
            OpenBytesPerSecond = size / best[3],
        };
    }

    private static double Time(Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var watch = Stopwatch.StartNew();
        action();
        return watch.Elapsed.TotalSeconds;
    }

    private static async Task<double> TimeAsync(Func<Task> action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var watch = Stopwatch.StartNew();
        await action().ConfigureAwait(false);
        return watch.Elapsed.TotalSeconds;
    }
}
