using static TorchSharp.torch;

namespace MriSeg.Learning.PerSample;

/// <summary>
/// Every group's gradient of every parameter, as G stacked copies per parameter (the gradients of
/// the folded weights), plus norms, clip factors and the clipped sum. Owns its tensors.
/// </summary>
public sealed class PerGroupGradients : IDisposable
{
    private readonly Tensor[] _folded;
    private Tensor? _norms;

    internal PerGroupGradients(IReadOnlyList<string> names, IReadOnlyList<long[]> shapes, Tensor[] folded, Tensor groupLosses, SliceGrouping grouping)
    {
        ParameterNames = names;
        ParameterShapes = shapes;
        _folded = folded;
        GroupLosses = groupLosses;
        Grouping = grouping;
    }

    /// <summary>Below this norm a gradient is left as it is by any clip norm (avoids 0/0).</summary>
    public const double NormFloor = 1e-6;

    /// <summary>Number of groups G.</summary>
    public int GroupCount => Grouping.GroupCount;

    /// <summary>The grouping the gradients were computed for.</summary>
    public SliceGrouping Grouping { get; }

    /// <summary>Parameter names, in the model's order.</summary>
    public IReadOnlyList<string> ParameterNames { get; }

    /// <summary>Parameter shapes, in the model's order.</summary>
    public IReadOnlyList<long[]> ParameterShapes { get; }

    /// <summary>Each group's (weighted) loss, [G], detached.</summary>
    public Tensor GroupLosses { get; }

    /// <summary>Group gradients of parameter <paramref name="index"/>: a [G, ...shape] view.</summary>
    public Tensor Gradient(int index) => _folded[index].view([GroupCount, .. ParameterShapes[index]]);

    /// <summary>The folded gradient of parameter <paramref name="index"/>: [G·d0, ...], group-major.</summary>
    internal Tensor FoldedGradient(int index) => _folded[index];

    /// <summary>Group gradients of the named parameter: a [G, ...shape] view.</summary>
    public Tensor Gradient(string name)
    {
        var index = ParameterNames.ToList().IndexOf(name);
        return index >= 0 ? Gradient(index) : throw new KeyNotFoundException($"no parameter named {name}.");
    }

    /// <summary>Each group's gradient norm over all parameters, [G] in float64.</summary>
    public Tensor Norms()
    {
        if (_norms is not null)
        {
            return _norms;
        }

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var g = GroupCount;
        var squares = zeros(g, ScalarType.Float64, _folded.Length > 0 ? _folded[0].device : CPU);
        foreach (var folded in _folded)
        {
            // One reduction per parameter over the [G, n] view; no per-group copies.
            squares.add_(linalg.vector_norm(folded.view(g, -1), 2, [1], false).to(ScalarType.Float64).square());
        }

        _norms = squares.sqrt().DetachFromDisposeScope();
        return _norms;
    }

    /// <summary>
    /// Factors that scale each group's gradient to norm at most <paramref name="clipNorm"/>:
    /// min(1, C / (norm + 1e-6)), [G] in float64 (the Opacus convention, so a clipped norm is strictly below C).
    /// </summary>
    public Tensor ClipFactors(double clipNorm)
    {
        CheckClipNorm(clipNorm);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        return (clipNorm / (Norms() + NormFloor)).clamp_max_(1.0).MoveToOuterDisposeScope();
    }

    /// <summary>Σ_g clip(grad_g) per parameter: tensors of the parameters' shapes and dtype.</summary>
    public IReadOnlyList<Tensor> ClippedSum(double clipNorm)
    {
        using var _ = no_grad();
        using var factors = ClipFactors(clipNorm);
        return [.. Enumerable.Range(0, _folded.Length).Select(i => WeightedSum(i, factors))];
    }

    /// <summary>Σ_g factors[g]·grad_g of parameter <paramref name="index"/> (one GEMV over the [G, n] view).</summary>
    internal Tensor WeightedSum(int index, Tensor factors)
    {
        var folded = _folded[index];
        if (GroupCount == 0)
        {
            return zeros(ParameterShapes[index], folded.dtype, folded.device);
        }

        using var f = factors.to(folded.dtype);
        return f.matmul(folded.view(GroupCount, -1)).view(ParameterShapes[index]);
    }

    internal static void CheckClipNorm(double clipNorm)
    {
        if (!(clipNorm > 0) || !double.IsFinite(clipNorm))
        {
            throw new ArgumentOutOfRangeException(nameof(clipNorm), clipNorm, "the clip norm must be positive and finite.");
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        foreach (var t in _folded)
        {
            t.Dispose();
        }

        GroupLosses.Dispose();
        _norms?.Dispose();
    }
}
