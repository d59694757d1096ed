using MriSeg.Learning.Model;
using MriSeg.Learning.PerSample;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Benchmark;

/// <summary>Optional settings of <see cref="DpBenchmark.Run"/>.</summary>
public sealed record DpBenchmarkOptions
{
    /// <summary>The model; the reference U-Net by default.</summary>
    public UNetConfig Model { get; init; } = UNetConfig.Reference;

    /// <summary>Untimed steps of each kind before measuring.</summary>
    public int Warmup { get; init; } = 1;

    /// <summary>Slices per group (patient) in the DP step; the batch is groups x slices.</summary>
    public int SlicesPerGroup { get; init; } = 1;

    /// <summary>Parameter and data dtype.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;

    /// <summary>torch intra-op threads; null leaves libtorch's choice.</summary>
    public int? Threads { get; init; }

    /// <summary>Seed for the model and data, so runs are comparable (the noise is always the secure generator's).</summary>
    public ulong Seed { get; init; } = 20240611;

    /// <summary>Clip norm of the DP step.</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>Noise multiplier of the DP step.</summary>
    public double NoiseMultiplier { get; init; } = 1.0;

    /// <summary>Apply <see cref="Performance.CpuAllocator.KeepFreedMemory"/> first (process-wide, as a trainer would).</summary>
    public bool TuneCpuAllocator { get; init; } = true;
}

/// <summary>Throughput of a non-private and a DP training step measured in the same run.</summary>
/// <param name="Size">Image height and width.</param>
/// <param name="Groups">Groups (patients) per batch.</param>
/// <param name="SlicesPerGroup">Slices per group.</param>
/// <param name="Device">Device the steps ran on.</param>
/// <param name="Iterations">Timed steps of each kind.</param>
/// <param name="Threads">torch intra-op threads during the run.</param>
/// <param name="Parameters">Model parameters.</param>
/// <param name="NonPrivateSamplesPerSecond">Slices/s of the non-private step (from the median step time).</param>
/// <param name="DpSamplesPerSecond">Slices/s of the DP step (from the median step time).</param>
/// <param name="NonPrivateStepMs">Each timed non-private step, in milliseconds.</param>
/// <param name="DpStepMs">Each timed DP step, in milliseconds.</param>
/// <param name="NonPrivateCpuMs">Process CPU time of each timed non-private step, in milliseconds.</param>
/// <param name="DpCpuMs">Process CPU time of each timed DP step, in milliseconds.</param>
/// <param name="CpuAllocatorTuned">Whether glibc malloc was tuned for the run.</param>
public sealed record DpBenchmarkResult(
    int Size, int Groups, int SlicesPerGroup, string Device, int Iterations, int Threads, long Parameters,
    double NonPrivateSamplesPerSecond, double DpSamplesPerSecond, IReadOnlyList<double> NonPrivateStepMs, IReadOnlyList<double> DpStepMs,
    IReadOnlyList<double> NonPrivateCpuMs, IReadOnlyList<double> DpCpuMs, bool CpuAllocatorTuned)
{
    /// <summary>DP throughput over non-private throughput (1 = no cost), from median wall times.</summary>
    public double Ratio => DpSamplesPerSecond / NonPrivateSamplesPerSecond;

    /// <summary>
    /// The same ratio from median CPU times: less sensitive to other processes on a shared machine
    /// (time spent descheduled does not count), but it includes spinning of idle worker threads.
    /// </summary>
    public double CpuRatio => DpBenchmark.Median(NonPrivateCpuMs) / DpBenchmark.Median(DpCpuMs);

    /// <summary>Slices per step.</summary>
    public int Batch => Groups * SlicesPerGroup;

    /// <summary>One line for logs.</summary>
    public override string ToString() =>
        $"{Size}x{Size}, batch {Batch} ({Groups} groups x {SlicesPerGroup}), {Device}, {Threads} threads, {Iterations} steps: " +
        $"non-private {NonPrivateSamplesPerSecond:F2} samples/s, DP {DpSamplesPerSecond:F2} samples/s, ratio {Ratio:F3} (CPU-time ratio {CpuRatio:F3})" +
        (CpuAllocatorTuned ? "" : ", malloc not tuned");
}

/// <summary>
/// Measures a non-private training step (forward, loss, backward, optimizer step on the model as is)
/// against a DP-SGD step (folded per-group gradients, clip, sum, Gaussian noise, optimizer step).
/// Steps alternate, so drift in a shared machine's load hits both alike; medians resist outliers.
/// </summary>
public static class DpBenchmark
{
    /// <summary>Runs the benchmark. Call <see cref="Torch.TorchRuntime.Initialize"/> first.</summary>
    /// <param name="size">Image height and width (a multiple of 2^depth).</param>
    /// <param name="batch">Groups per step (each with <see cref="DpBenchmarkOptions.SlicesPerGroup"/> slices).</param>
    /// <param name="device">Device; CPU when null.</param>
    /// <param name="iterations">Timed steps of each kind.</param>
    /// <param name="options">Model, warm-up, threads, seeds.</param>
    public static DpBenchmarkResult Run(int size, int batch, Device? device = null, int iterations = 5, DpBenchmarkOptions? options = null)
    {
        options ??= new DpBenchmarkOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.SlicesPerGroup, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(options.Warmup);
        if (size <= 0 || size % options.Model.SizeMultiple != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, $"the size must be a positive multiple of {options.Model.SizeMultiple}.");
        }

        device ??= CPU;
        var tuned = options.TuneCpuAllocator ? Performance.CpuAllocator.KeepFreedMemory() : Performance.CpuAllocator.IsTuned;
        var previousThreads = get_num_threads();
        if (options.Threads is { } threads)
        {
            set_num_threads(threads);
        }

        try
        {
            return Measure(size, batch, device, iterations, options, tuned);
        }
        finally
        {
            set_num_threads(previousThreads);
        }
    }

    private static DpBenchmarkResult Measure(int size, int groups, Device device, int iterations, DpBenchmarkOptions options, bool tuned)
    {
        var slices = groups * options.SlicesPerGroup;
        var loss = SegmentationLosses.BceDice();
        // A CPU generator: libtorch refuses it for CUDA tensors, so data is drawn on the CPU and moved.
        using var generator = new Generator(options.Seed);
        using var plainModel = new UNet2d(options.Model, options.DType, device, generator);
        using var dpModel = plainModel.Clone(options.DType, device);

        using var inputs = randn([slices, options.Model.InChannels, size, size], options.DType, generator: generator).to(device);
        using var targets = rand([slices, options.Model.OutChannels, size, size], options.DType, generator: generator).gt(0.5).to(options.DType, device);
        var groupIndex = Enumerable.Range(0, slices).Select(i => i / options.SlicesPerGroup).ToArray();

        using var plainOptimizer = optim.SGD(plainModel.parameters(), 1e-3, momentum: 0.9);
        using var dpOptimizer = optim.SGD(dpModel.parameters(), 1e-3, momentum: 0.9);
        using var engine = new DpGradientEngine(dpModel, loss, new DpSgdSettings(options.ClipNorm, options.NoiseMultiplier, groups));

        void PlainStep()
        {
            using var scope = NewDisposeScope();
            plainOptimizer.zero_grad();
            loss(plainModel.ForwardLogits(inputs), targets).mean().backward();
            plainOptimizer.step();
        }

        void DpStep()
        {
            using var scope = NewDisposeScope();
            // As the trainer does: queue the update, then read the step's stats.
            using var stats = engine.ComputeGradientsPending(1, _ => new DpBatchChunk(inputs, targets, groupIndex));
            dpOptimizer.step();
            stats.Resolve();
        }

        (double Wall, double Cpu) Time(Action step) => DeviceTiming.Measure(device, step);

        for (var i = 0; i < options.Warmup; i++)
        {
            PlainStep();
            DpStep();
        }

        var plain = new List<(double Wall, double Cpu)>();
        var dp = new List<(double Wall, double Cpu)>();
        for (var i = 0; i < iterations; i++)
        {
            // Alternate the order too, so neither kind always runs right after the other's allocations.
            if (i % 2 == 0)
            {
                plain.Add(Time(PlainStep));
                dp.Add(Time(DpStep));
            }
            else
            {
                dp.Add(Time(DpStep));
                plain.Add(Time(PlainStep));
            }
        }

        List<double> plainMs = [.. plain.Select(t => t.Wall)], dpMs = [.. dp.Select(t => t.Wall)];
        return new DpBenchmarkResult(size, groups, options.SlicesPerGroup, device.ToString(), iterations, get_num_threads(), plainModel.ParameterCount,
            slices / (Median(plainMs) / 1000), slices / (Median(dpMs) / 1000), plainMs, dpMs,
            [.. plain.Select(t => t.Cpu)], [.. dp.Select(t => t.Cpu)], tuned);
    }

    internal static double Median(IReadOnlyList<double> values)
    {
        var sorted = values.Order().ToList();
        var mid = sorted.Count / 2;
        return sorted.Count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }
}
