using MriSeg.Learning.Model;
using MriSeg.Learning.Noise;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.PerSample;

/// <summary>DP-SGD gradient settings.</summary>
/// <param name="ClipNorm">C: each group's (patient's) gradient is clipped to this L2 norm over all parameters.</param>
/// <param name="NoiseMultiplier">σ: Gaussian noise of standard deviation σ·C is added to the clipped sum.</param>
/// <param name="ExpectedBatchSize">The sum is divided by this: q·N for Poisson sampling at rate q over N patients (not the realised batch size, which is private).</param>
/// <param name="Reduction">How a patient's slice losses combine.</param>
/// <param name="MaxSlicesPerGroup">Refuse a group with more slices (0: no limit).</param>
public sealed record DpSgdSettings(
    double ClipNorm, double NoiseMultiplier, double ExpectedBatchSize, GroupReduction Reduction = GroupReduction.Sum, int MaxSlicesPerGroup = 0)
{
    /// <summary>Throws when a setting is out of range.</summary>
    public void Validate()
    {
        PerGroupGradients.CheckClipNorm(ClipNorm);
        if (!(NoiseMultiplier >= 0) || !double.IsFinite(NoiseMultiplier))
        {
            throw new ArgumentOutOfRangeException(nameof(NoiseMultiplier), NoiseMultiplier, "the noise multiplier must be finite and not negative.");
        }

        if (!(ExpectedBatchSize > 0) || !double.IsFinite(ExpectedBatchSize))
        {
            throw new ArgumentOutOfRangeException(nameof(ExpectedBatchSize), ExpectedBatchSize, "the expected batch size must be positive.");
        }
    }
}

/// <summary>
/// What one step saw. Computed from the clear per-group values, so NOT differentially private:
/// fine for logs inside the clean room, never for anything that leaves it.
/// </summary>
/// <param name="Groups">Groups (patients) in the batch.</param>
/// <param name="Slices">Slices in the batch.</param>
/// <param name="LossSum">Σ of the groups' losses.</param>
/// <param name="ClippedGroups">Groups whose gradient norm was above the clip norm.</param>
public sealed record DpStepStats(int Groups, int Slices, double LossSum, int ClippedGroups);

/// <summary>
/// A step's <see cref="DpStepStats"/> before the device has been waited for: the loss sum and the clipped count stay
/// device scalars until <see cref="Resolve"/>, so a caller can queue the optimiser step first and wait once.
/// </summary>
public sealed class PendingDpStepStats : IDisposable
{
    private readonly int _groups;
    private readonly int _slices;
    private readonly Tensor? _lossSum;
    private readonly Tensor? _clipped;
    private DpStepStats? _resolved;

    internal PendingDpStepStats(int groups, int slices, Tensor? lossSum, Tensor? clipped)
    {
        (_groups, _slices, _lossSum, _clipped) = (groups, slices, lossSum, clipped);
    }

    /// <summary>Waits for the device (once) and returns the stats.</summary>
    public DpStepStats Resolve()
    {
        if (_resolved is null)
        {
            _resolved = new DpStepStats(_groups, _slices, _lossSum?.item<double>() ?? 0, (int)(_clipped?.item<long>() ?? 0));
            Dispose();
        }

        return _resolved;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _lossSum?.Dispose();
        _clipped?.Dispose();
    }
}

/// <summary>One chunk of a DP batch: whole patients, numbered 0..G-1 within the chunk.</summary>
/// <param name="Inputs">[N, in, H, W].</param>
/// <param name="Targets">[N, out, H, W].</param>
/// <param name="GroupIndex">Patient (0..G-1 within this chunk) of each of the N slices.</param>
/// <param name="PaddingGroups">The last this many groups are padding (any slices, weight 0): they contribute nothing and are not counted.</param>
public sealed record DpBatchChunk(Tensor Inputs, Tensor Targets, IReadOnlyList<int> GroupIndex, int PaddingGroups = 0);

/// <summary>
/// One DP-SGD gradient: folded per-group gradients, clipped to C, summed, Gaussian noise N(0, σ²C²)
/// added, divided by the expected batch size, written to each parameter's .grad for any optimizer.
/// Frozen parameters (no requires_grad, <see cref="UNet2d.SetTrainable"/>) are left out of all of it: no per-patient
/// gradient, no part in the norm that is clipped, no noise, no .grad.
/// </summary>
/// <remarks>
/// Per parameter the clipped sum is one fused GEMV (addmv) of the [G, n] view of the folded gradient
/// with the clip factors, added onto noise already drawn into a kept buffer (on an accelerator the noise is
/// drawn on the host while the device works, and added last); no per-group gradient is copied out. Noise comes
/// from a <see cref="GaussianNoise"/>: an AES-256-CTR keystream under a key from the OS CSPRNG unless the caller passes another generator (tests pass the insecure seeded one).
/// A batch too large for one folded pass is given as chunks of whole patients
/// (<see cref="ComputeGradients(int, Func{int, DpBatchChunk})"/>): each patient's gradient is still
/// clipped as a whole, so the result equals the one-pass result.
/// </remarks>
public sealed class DpGradientEngine : IDisposable
{
    private readonly UNet2d _model;
    private readonly PerSampleLoss _loss;
    private readonly GaussianNoise _noise;
    private readonly bool _ownsNoise;
    private readonly FoldedLeafBuffers _leaves = new();
    private Tensor? _gradients;
    private Tensor? _hostNoise;
    private Tensor[] _gradientViews = [];

    /// <summary>Creates the engine for <paramref name="model"/>; place the model on its device first (the noise generators live there).</summary>
    /// <param name="model">The model whose parameters receive the noisy gradient.</param>
    /// <param name="loss">Per-sample loss on logits.</param>
    /// <param name="settings">C, σ, expected batch size.</param>
    /// <param name="noise">
    /// The noise generator, which stays the caller's to dispose; null (the default, and the only choice for
    /// training) makes a <see cref="GaussianNoise.CreateSecure"/> generator that the engine owns. Tests pass
    /// <see cref="GaussianNoise.CreateInsecureSeeded"/> for reproducible noise.
    /// </param>
    public DpGradientEngine(UNet2d model, PerSampleLoss loss, DpSgdSettings settings, GaussianNoise? noise = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loss);
        ArgumentNullException.ThrowIfNull(settings);
        settings.Validate();
        _model = model;
        _loss = loss;
        Settings = settings;
        _ownsNoise = noise is null;
        _noise = noise ?? GaussianNoise.CreateSecure();
    }

    /// <summary>The settings.</summary>
    public DpSgdSettings Settings { get; }

    /// <summary>Draw the noise on the host while the device computes (null: on accelerators only); tests force it on the CPU.</summary>
    internal bool? OverlapHostNoise { get; set; }

    /// <summary>Where the noise comes from.</summary>
    public GaussianNoise Noise => _noise;

    /// <summary>
    /// Computes the noisy DP gradient for one batch and stores it in every parameter's .grad
    /// (replacing what was there; the engine owns that memory and reuses it next step). A batch may
    /// be empty (Poisson sampling): the gradient is then noise only.
    /// </summary>
    /// <param name="inputs">[N, in, H, W].</param>
    /// <param name="targets">[N, out, H, W].</param>
    /// <param name="groupIndex">Group (patient, 0..G-1) of each sample.</param>
    public DpStepStats ComputeGradients(Tensor inputs, Tensor targets, IReadOnlyList<int> groupIndex)
    {
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(groupIndex);
        return ComputeGradients(1, _ => new DpBatchChunk(inputs, targets, groupIndex));
    }

    /// <summary>
    /// As <see cref="ComputeGradients(Tensor, Tensor, IReadOnlyList{int})"/> for a batch given in
    /// <paramref name="chunkCount"/> chunks of whole patients (so each folded pass stays within memory):
    /// noise is drawn once, each chunk's clipped per-patient gradients are added, and the result is the
    /// same as one pass over the whole batch. <paramref name="chunk"/> is called once per chunk, in order;
    /// the engine disposes nothing it returns. Zero chunks is an empty batch (noise only).
    /// </summary>
    /// <param name="chunkCount">Number of chunks (0 for an empty batch).</param>
    /// <param name="chunk">Builds chunk i: inputs, targets and group numbers 0..G_i-1 local to the chunk.</param>
    public DpStepStats ComputeGradients(int chunkCount, Func<int, DpBatchChunk> chunk)
    {
        using var pending = ComputeGradientsPending(chunkCount, chunk);
        return pending.Resolve();
    }

    /// <summary>
    /// As <see cref="ComputeGradients(int, Func{int, DpBatchChunk})"/>, without waiting for the device: on an accelerator
    /// the whole step (per-patient pass, clipping, sum, noise copy) is only queued when this returns, and the stats come
    /// from <see cref="PendingDpStepStats.Resolve"/>; call it after queueing the optimiser step.
    /// </summary>
    public PendingDpStepStats ComputeGradientsPending(int chunkCount, Func<int, DpBatchChunk> chunk)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(chunkCount);
        ArgumentNullException.ThrowIfNull(chunk);
        // Only the trainable parameters (requires_grad; UNet2d.SetTrainable) are clipped, noised and given a .grad.
        IReadOnlyList<Tensor> parameters = _model.TrainableParameters();
        var views = GradientViews(parameters);
        var std = Settings.NoiseMultiplier * Settings.ClipNorm / Settings.ExpectedBatchSize;
        var hostNoise = StartNoise(std);
        PendingDpStepStats stats;
        try
        {
            stats = AddClippedGradients(chunkCount, chunk, parameters, views);
        }
        catch
        {
            // The noise task writes into a kept buffer: never leave it running.
            try
            {
                hostNoise?.Result.Dispose();
            }
            catch (AggregateException)
            {
                // The first error is the one to report.
            }

            throw;
        }

        if (hostNoise is not null)
        {
            using var noise = hostNoise.GetAwaiter().GetResult();
            using var _ = no_grad();
            if (_gradients!.device_type == DeviceType.CPU)
            {
                _gradients.add_(noise);
            }
            else
            {
                // From pinned memory, so the copy is queued behind the pass instead of waiting for it; libtorch's pinned
                // allocator keeps that block from reuse until the copy has run.
                using var onDevice = noise.to(_gradients.device, non_blocking: true);
                _gradients.add_(onDevice);
            }
        }

        for (var i = 0; i < parameters.Count; i++)
        {
            parameters[i].grad = views[i];
        }

        return stats;
    }

    /// <summary>
    /// Adds Σ_g (f_g / E)·grad_g of every chunk onto the gradient buffer, in place. The loss sum and clipped count are
    /// summed on the device (reading them would wait for the device mid-step).
    /// </summary>
    private PendingDpStepStats AddClippedGradients(int chunkCount, Func<int, DpBatchChunk> chunk, IReadOnlyList<Tensor> parameters, Tensor[] views)
    {
        var c = Settings.ClipNorm;
        int groups = 0, slices = 0;
        Tensor? lossSum = null, clipped = null;
        for (var k = 0; k < chunkCount; k++)
        {
            using var scope = NewDisposeScope();
            var part = chunk(k);
            var grouping = SliceGrouping.Create(part.GroupIndex, Settings.Reduction, Settings.MaxSlicesPerGroup, part.PaddingGroups);
            if (grouping.RealGroupCount == 0)
            {
                continue;
            }

            using var grads = PerSampleGradients.Compute(_model, part.Inputs, part.Targets, grouping, _loss, _leaves);
            using var _ = no_grad();

            // One fused GEMV per parameter, added in place onto what the buffer holds (the noise, or zeros on an accelerator).
            var weights = (grads.ClipFactors(c) / Settings.ExpectedBatchSize).to(parameters[0].dtype);
            for (var i = 0; i < parameters.Count; i++)
            {
                views[i].view(-1).addmv_(grads.FoldedGradient(i).view(grouping.GroupCount, -1).t(), weights);
            }

            var real = grouping.RealGroupCount;
            groups += real;
            slices += grouping.GroupIndex.Count(g => g < real);
            var chunkClipped = (grads.Norms().narrow(0, 0, real) > c).sum();
            var chunkLoss = grads.GroupLosses.narrow(0, 0, real).sum();
            clipped = clipped is null ? chunkClipped.DetachFromDisposeScope() : clipped.add_(chunkClipped);
            lossSum = lossSum is null ? chunkLoss.DetachFromDisposeScope() : lossSum.add_(chunkLoss);
        }

        return new PendingDpStepStats(groups, slices, lossSum, clipped);
    }

    private Tensor[] GradientViews(IReadOnlyList<Tensor> parameters)
    {
        var total = parameters.Sum(p => p.numel());
        if (_gradients is null || _gradients.numel() != total || !FoldedLeafBuffers.SameKind(_gradients, parameters[0]) ||
            _gradientViews.Length != parameters.Count || _gradientViews.Where((v, i) => !v.shape.SequenceEqual(parameters[i].shape)).Any())
        {
            _gradients?.Dispose();
            foreach (var v in _gradientViews)
            {
                v.Dispose();
            }

            _gradients = empty(total, parameters[0].dtype, parameters[0].device).DetachFromDisposeScope();
            long offset = 0;
            _gradientViews = new Tensor[parameters.Count];
            for (var i = 0; i < parameters.Count; i++)
            {
                var n = parameters[i].numel();
                _gradientViews[i] = _gradients.narrow(0, offset, n).view(parameters[i].shape).DetachFromDisposeScope();
                offset += n;
            }
        }

        return _gradientViews;
    }

    /// <summary>
    /// Puts the step's noise where the clipped gradients are added. On the CPU it is drawn straight into the gradient
    /// buffer (null is returned). On an accelerator the buffer is zeroed and the noise is drawn into a host buffer by
    /// a task that runs while the device computes the per-patient gradients (on CUDA it ends with a pinned copy, for a
    /// copy that does not wait for the device); the caller waits for the task, adds its tensor and disposes it.
    /// Drawing it first, as on the CPU, left the GPU idle for the whole draw and copy every step.
    /// </summary>
    private Task<Tensor>? StartNoise(double std)
    {
        var buffer = _gradients!;
        using var _ = no_grad();
        if (std == 0)
        {
            buffer.zero_();
            return null;
        }

        if (!(OverlapHostNoise ?? buffer.device_type != DeviceType.CPU))
        {
            _noise.Fill(buffer, std);
            return null;
        }

        buffer.zero_();
        if (_hostNoise is null || _hostNoise.numel() != buffer.numel() || _hostNoise.dtype != buffer.dtype)
        {
            _hostNoise?.Dispose();
            _hostNoise = empty(buffer.numel(), buffer.dtype, CPU).DetachFromDisposeScope();
        }

        var host = _hostNoise;
        var pin = buffer.device_type == DeviceType.CUDA;
        return Task.Run(() =>
        {
            _noise.Fill(host, std);
            return pin ? host.pin_memory() : host.alias();
        });
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_ownsNoise)
        {
            _noise.Dispose();
        }

        _leaves.Dispose();
        foreach (var v in _gradientViews)
        {
            v.Dispose();
        }

        _gradients?.Dispose();
        _hostNoise?.Dispose();
    }
}
