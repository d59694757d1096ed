using MriSeg.Learning.Model;
using static TorchSharp.torch;

namespace MriSeg.Learning.PerSample;

/// <summary>
/// Per-group (per-patient) gradients of a <see cref="UNet2d"/> by the folded method: the G groups
/// are folded into channels ([k·G, C, H, W] → [k, G·C, H, W], a group's k slices staying in the
/// batch dimension), every parameter becomes G stacked copies (one leaf per parameter), every
/// convolution runs with groups = G and every GroupNorm with G·groups groups. One backward pass then
/// leaves group g's summed gradient in rows g of each leaf's gradient.
/// </summary>
/// <remarks>
/// Only the parameters that require a gradient are differentiated (<see cref="UNet2d.SetTrainable"/>): a frozen
/// parameter is not folded (its layer runs on the unfolded batch with its one copy), gets no per-group gradient,
/// and is not part of <see cref="PerGroupGradients"/>, so norms and clipping cover the trainable parameters only.
/// </remarks>
public static class PerSampleGradients
{
    /// <summary>
    /// Computes each group's gradient of Σ_{slices s in group} w_s·loss(s), where w_s is 1
    /// (<see cref="GroupReduction.Sum"/>) or 1/|group| (<see cref="GroupReduction.Mean"/>).
    /// </summary>
    /// <param name="model">The model; its parameters are read, not changed, and get no .grad. Only those with requires_grad are differentiated.</param>
    /// <param name="inputs">[N, in, H, W] on the model's device and dtype.</param>
    /// <param name="targets">[N, out, H, W].</param>
    /// <param name="groupIndex">Group (0..G-1) of each of the N samples.</param>
    /// <param name="loss">Per-sample loss on logits.</param>
    /// <param name="reduction">How a group's slices combine.</param>
    public static PerGroupGradients Compute(
        UNet2d model, Tensor inputs, Tensor targets, IReadOnlyList<int> groupIndex, PerSampleLoss loss, GroupReduction reduction = GroupReduction.Sum) =>
        Compute(model, inputs, targets, SliceGrouping.Create(groupIndex, reduction), loss);

    /// <summary>As the other overload, with a prepared grouping.</summary>
    public static PerGroupGradients Compute(UNet2d model, Tensor inputs, Tensor targets, SliceGrouping grouping, PerSampleLoss loss) =>
        Compute(model, inputs, targets, grouping, loss, null);

    internal static PerGroupGradients Compute(UNet2d model, Tensor inputs, Tensor targets, SliceGrouping grouping, PerSampleLoss loss, FoldedLeafBuffers? buffers)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(grouping);
        ArgumentNullException.ThrowIfNull(loss);
        var parameters = model.OrderedParameters();
        var (names, trainable) = model.NamedTrainableParameters();
        var shapes = trainable.Select(p => p.shape).ToArray();
        CheckBatch(model, inputs, targets, grouping, parameters[0]);
        if (grouping.GroupCount == 0)
        {
            var none = trainable.Select(p => zeros([0, .. p.shape.Skip(1)], p.dtype, p.device).DetachFromDisposeScope()).ToArray();
            return new PerGroupGradients(names, shapes, none, zeros(0, ScalarType.Float64).DetachFromDisposeScope(), grouping);
        }

        using var scope = NewDisposeScope();
        var (grads, groupLosses) = FoldedBackward(model, parameters, inputs, targets, grouping, loss, buffers);
        return new PerGroupGradients(
            names, shapes, [.. grads.Select(g => g.DetachFromDisposeScope())], groupLosses.DetachFromDisposeScope(), grouping);
    }

    /// <summary>
    /// The same result by micro-batching: one forward and backward pass per group on the unfolded
    /// model. G times slower; the reference the folded method is tested against.
    /// </summary>
    public static PerGroupGradients ComputeByMicroBatching(UNet2d model, Tensor inputs, Tensor targets, SliceGrouping grouping, PerSampleLoss loss)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(inputs);
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(grouping);
        ArgumentNullException.ThrowIfNull(loss);
        var parameters = model.OrderedParameters();
        var (names, trainable) = model.NamedTrainableParameters();
        CheckBatch(model, inputs, targets, grouping, parameters[0]);
        using var scope = NewDisposeScope();
        var perGroup = new List<Tensor[]>();
        var losses = new List<Tensor>();
        for (var g = 0; g < grouping.GroupCount; g++)
        {
            var members = Enumerable.Range(0, grouping.SampleCount).Where(i => grouping.GroupIndex[i] == g).Select(i => (long)i).ToArray();
            var index = tensor(members, device: inputs.device);
            var weight = grouping.Reduction == GroupReduction.Mean ? 1.0 / members.Length : 1.0;
            var groupLoss = (loss(model.ForwardLogits(inputs.index_select(0, index)), targets.index_select(0, index)) * weight).sum();
            perGroup.Add([.. autograd.grad([groupLoss], trainable)]);
            losses.Add(groupLoss.detach().to(ScalarType.Float64));
        }

        var folded = Enumerable.Range(0, trainable.Length)
            .Select(i => perGroup.Count == 0
                ? zeros([0, .. trainable[i].shape.Skip(1)], trainable[i].dtype, trainable[i].device)
                : cat([.. perGroup.Select(grads => grads[i])], 0))
            .Select(t => t.DetachFromDisposeScope())
            .ToArray();
        var lossTensor = (losses.Count == 0 ? zeros(0, ScalarType.Float64) : stack(losses)).DetachFromDisposeScope();
        return new PerGroupGradients(names, [.. trainable.Select(p => p.shape)], folded, lossTensor, grouping);
    }

    /// <summary>
    /// The folded forward and backward pass. Returns the gradient of each trainable parameter's folded leaf ([G·d0, ...],
    /// group-major; frozen parameters are skipped) and each group's loss ([G], float64), all in the caller's dispose scope.
    /// </summary>
    internal static (IList<Tensor> Gradients, Tensor GroupLosses) FoldedBackward(
        UNet2d model, IReadOnlyList<Tensor> parameters, Tensor inputs, Tensor targets, SliceGrouping grouping, PerSampleLoss loss,
        FoldedLeafBuffers? buffers = null)
    {
        var g = grouping.GroupCount;
        var k = grouping.SlotsPerGroup;
        var leaves = buffers is null ? FoldedLeafBuffers.Fresh(parameters, g) : buffers.Prepare(parameters, g);
        var (h, w) = (inputs.shape[2], inputs.shape[3]);
        Tensor x, y;
        if (grouping.IsIdentity)
        {
            (x, y) = (inputs, targets);
        }
        else
        {
            var slots = tensor(grouping.SlotSample, device: inputs.device);
            (x, y) = (inputs.index_select(0, slots), targets.index_select(0, slots));
        }

        var logits = model.Run(x.reshape(k, -1, h, w), leaves, g).view(k * g, -1, h, w);
        var perSlice = loss(logits, y);
        if (perSlice.dim() != 1 || perSlice.shape[0] != k * g)
        {
            throw new ArgumentException(
                $"the loss must return one value per sample ([{k * g}]); it returned shape [{string.Join(", ", perSlice.shape)}].");
        }

        if (!grouping.IsIdentity)
        {
            perSlice = perSlice * tensor(grouping.SlotWeight, perSlice.dtype, perSlice.device);
        }

        var grads = autograd.grad([perSlice.sum()], [.. leaves.Where((_, i) => parameters[i].requires_grad)]);
        var groupLosses = perSlice.detach().view(k, g).sum(0, false, ScalarType.Float64);
        return (grads, groupLosses);
    }

    private static void CheckBatch(UNet2d model, Tensor inputs, Tensor targets, SliceGrouping grouping, Tensor reference)
    {
        model.CheckInput(inputs, model.Config.InChannels, reference);
        if (targets.dim() != 4 || targets.shape[0] != inputs.shape[0] || targets.shape[1] != model.Config.OutChannels ||
            targets.shape[2] != inputs.shape[2] || targets.shape[3] != inputs.shape[3])
        {
            throw new ArgumentException(
                $"targets must be [{inputs.shape[0]}, {model.Config.OutChannels}, {inputs.shape[2]}, {inputs.shape[3]}]; got [{string.Join(", ", targets.shape)}].");
        }

        if (grouping.SampleCount != inputs.shape[0])
        {
            throw new ArgumentException($"the grouping covers {grouping.SampleCount} samples but the batch has {inputs.shape[0]}.");
        }
    }
}

/// <summary>
/// The G stacked copies of every parameter that the folded pass differentiates. Kept between steps
/// so a training loop copies into the same memory instead of allocating ~G·P values each step.
/// </summary>
internal sealed class FoldedLeafBuffers : IDisposable
{
    private Tensor[] _buffers = [];
    private bool[] _frozen = [];
    private int _capacity;

    /// <summary>New leaves for a single call (a frozen parameter: itself, detached and not folded).</summary>
    public static Tensor[] Fresh(IReadOnlyList<Tensor> parameters, int groups)
    {
        using var _ = no_grad();
        return [.. parameters.Select(p =>
        {
            if (!p.requires_grad)
            {
                return p.detach();
            }

            var reps = Enumerable.Repeat(1L, (int)p.dim()).ToArray();
            reps[0] = groups;
            return p.detach().repeat(reps).requires_grad_(true);
        })];
    }

    /// <summary>
    /// Leaves for <paramref name="groups"/> groups holding the parameters' current values; views of the kept buffers.
    /// A frozen parameter (no requires_grad) is given as itself, detached and not folded.
    /// </summary>
    public Tensor[] Prepare(IReadOnlyList<Tensor> parameters, int groups)
    {
        var frozen = parameters.Select(p => !p.requires_grad).ToArray();
        if (groups > _capacity || _buffers.Length != parameters.Count || !SameKind(_buffers[0], parameters[0]) || !frozen.SequenceEqual(_frozen))
        {
            Dispose();
            _buffers = [.. parameters.Select(p => (p.requires_grad
                ? empty([groups * p.shape[0], .. p.shape.Skip(1)], p.dtype, p.device)
                : empty(1, p.dtype, p.device)).DetachFromDisposeScope())];
            _capacity = groups;
            _frozen = frozen;
        }

        var leaves = new Tensor[parameters.Count];
        using (no_grad())
        {
            for (var i = 0; i < leaves.Length; i++)
            {
                var p = parameters[i];
                if (frozen[i])
                {
                    leaves[i] = p.detach();
                    continue;
                }

                using var rows = _buffers[i].narrow(0, 0, groups * p.shape[0]);
                using var flat = rows.view(groups, -1);
                using var source = p.detach().reshape(1, -1);
                flat.copy_(source.expand(groups, -1));

                // A detached view is a fresh leaf over the kept memory.
                leaves[i] = rows.detach().requires_grad_(true);
            }
        }

        return leaves;
    }

    internal static bool SameKind(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.device_type == b.device_type && a.device_index == b.device_index;

    public void Dispose()
    {
        foreach (var b in _buffers)
        {
            b.Dispose();
        }

        _buffers = [];
        _frozen = [];
        _capacity = 0;
    }
}
