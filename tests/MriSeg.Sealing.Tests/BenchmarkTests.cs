namespace MriSeg.Sealing.Tests;

public sealed class BenchmarkTests
{
    [Fact]
    public void The_benchmark_measures_everything_in_one_run()
    {
        var result = SealingBenchmark.Run(sizeBytes: 1 << 20, chunkSize: 64 * 1024, iterations: 1);
        Assert.Equal(1 << 20, result.SizeBytes);
        Assert.Equal(64 * 1024, result.ChunkSize);
        Assert.True(result.RawAesGcmBytesPerSecond > 0);
        Assert.True(result.RawSha256BytesPerSecond > 0);
        Assert.True(result.SealBytesPerSecond > 0);
        Assert.True(result.OpenBytesPerSecond > 0);
        Assert.Equal(result.SealBytesPerSecond / result.RawAesGcmBytesPerSecond, result.SealRatio, 9);
        Assert.Equal(result.OpenRatio >= 0.8 && result.SealRatio >= 0.8, result.MeetsTarget);
    }

    [Fact]
    public void Bad_benchmark_arguments_are_refused()
    {
        Assert.Throws<SealedPackageException>(() => SealingBenchmark.Run(0));
        Assert.Throws<SealedPackageException>(() => SealingBenchmark.Run(SealingBenchmark.MaxSizeBytes + 1));
        Assert.Throws<SealedPackageException>(() => SealingBenchmark.Run(1024, chunkSize: 8));
    }
}
