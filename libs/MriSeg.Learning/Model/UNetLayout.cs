namespace MriSeg.Learning.Model;

/// <summary>Kind of a parameterised layer.</summary>
public enum UNetLayerKind
{
    /// <summary>3x3 convolution, stride 1, padding 1, with bias.</summary>
    Conv3x3,

    /// <summary>GroupNorm with affine weight and bias.</summary>
    GroupNorm,
}

/// <summary>One parameterised layer: its PyTorch module path and widths.</summary>
/// <param name="Name">Module path, e.g. <c>down_convs.0.conv.0</c>; parameters are <c>Name.weight</c> and <c>Name.bias</c>.</param>
/// <param name="Kind">Convolution or normalisation.</param>
/// <param name="InChannels">Input channels (equal to <paramref name="OutChannels"/> for a GroupNorm).</param>
/// <param name="OutChannels">Output channels.</param>
public sealed record UNetLayer(string Name, UNetLayerKind Kind, int InChannels, int OutChannels)
{
    /// <summary>Shape of <c>weight</c>: [out, in, 3, 3] or [C].</summary>
    public long[] WeightShape => Kind == UNetLayerKind.Conv3x3 ? [OutChannels, InChannels, 3, 3] : [OutChannels];

    /// <summary>Shape of <c>bias</c>: [out] or [C].</summary>
    public long[] BiasShape => [OutChannels];

    /// <summary>Weight plus bias elements.</summary>
    public long ParameterCount => WeightShape.Aggregate(1L, (a, b) => a * b) + OutChannels;
}

/// <summary>
/// The ordered layers of a <see cref="UNetConfig"/>: the order PyTorch's <c>state_dict</c> would list them in,
/// and the order <see cref="UNet2d"/> registers and consumes its parameters (weight, bias per layer).
/// </summary>
public sealed class UNetLayout
{
    private UNetLayout(UNetConfig config)
    {
        var layers = new List<UNetLayer>();
        var w = config.BaseWidth;

        int Add(string name, UNetLayerKind kind, int inChannels, int outChannels)
        {
            layers.Add(new UNetLayer(name, kind, inChannels, outChannels));
            return layers.Count - 1;
        }

        // A block is conv, GN, act, conv, GN, act; returns the index of its first layer.
        int Block(string prefix, int inChannels, int outChannels)
        {
            var first = Add(prefix + ".conv.0", UNetLayerKind.Conv3x3, inChannels, outChannels);
            Add(prefix + ".conv.1", UNetLayerKind.GroupNorm, outChannels, outChannels);
            Add(prefix + ".conv.3", UNetLayerKind.Conv3x3, outChannels, outChannels);
            Add(prefix + ".conv.4", UNetLayerKind.GroupNorm, outChannels, outChannels);
            return first;
        }

        InConv = Add("in_conv", UNetLayerKind.Conv3x3, config.InChannels, w);
        Down = [.. Enumerable.Range(0, config.Depth).Select(l => Block($"down_convs.{l}", w << l, w << (l + 1)))];
        UpSample = [.. Enumerable.Range(0, config.Depth).Select(l =>
        {
            var first = Add($"up_samples.{l}.conv.0", UNetLayerKind.Conv3x3, w << (l + 2), w << (l + 1));
            Add($"up_samples.{l}.conv.1", UNetLayerKind.GroupNorm, w << (l + 1), w << (l + 1));
            return first;
        })];
        UpConv = [.. Enumerable.Range(0, config.Depth).Select(l => Block($"up_convs.{l}", w << (l + 2), w << (l + 1)))];
        Bottleneck = Block("bottleneck_conv", w << config.Depth, w << (config.Depth + 1));
        OutConv1 = Add("out_conv.0", UNetLayerKind.Conv3x3, 2 * w, w);
        OutConv2 = Add("out_conv.2", UNetLayerKind.Conv3x3, w, config.OutChannels);

        // After every reference layer, so a model without deep supervision keeps the reference's parameter order.
        DeepSupervisionHeads = [.. Enumerable.Range(1, config.DeepSupervision)
            .Select(l => Add($"ds_heads.{l - 1}", UNetLayerKind.Conv3x3, w << (l + 1), config.OutChannels))];
        Layers = layers;
        ParameterNames = [.. layers.SelectMany(l => new[] { l.Name + ".weight", l.Name + ".bias" })];
        ParameterCount = layers.Sum(l => l.ParameterCount);
    }

    /// <summary>The layout of <paramref name="config"/> (validated first).</summary>
    public static UNetLayout For(UNetConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        return new UNetLayout(config);
    }

    /// <summary>All parameterised layers in registration order.</summary>
    public IReadOnlyList<UNetLayer> Layers { get; }

    /// <summary>Parameter names in order: layer i owns entries 2i (weight) and 2i+1 (bias).</summary>
    public IReadOnlyList<string> ParameterNames { get; }

    /// <summary>Total trainable parameters.</summary>
    public long ParameterCount { get; }

    /// <summary>
    /// Which parameters a <c>trainable</c> selection covers, in <see cref="ParameterNames"/> order. Each pattern matches
    /// a parameter whose name starts with it (<c>"up_convs."</c>, <c>"out_conv."</c>); a <c>*</c> in a pattern matches
    /// any run of characters (<c>"*.bias"</c>: every bias; <c>"*.conv.1."</c>: the first GroupNorm of every block).
    /// Null selects every parameter.
    /// </summary>
    /// <exception cref="ArgumentException">A pattern is empty or matches no parameter.</exception>
    public bool[] SelectTrainable(IReadOnlyList<string>? patterns)
    {
        var names = ParameterNames;
        var selected = new bool[names.Count];
        if (patterns is null)
        {
            Array.Fill(selected, true);
            return selected;
        }

        foreach (var pattern in patterns)
        {
            if (string.IsNullOrWhiteSpace(pattern))
            {
                throw new ArgumentException("trainable: an empty pattern selects nothing.");
            }

            var any = false;
            for (var i = 0; i < names.Count; i++)
            {
                if (MatchesPrefix(pattern, names[i]))
                {
                    selected[i] = true;
                    any = true;
                }
            }

            if (!any)
            {
                throw new ArgumentException(
                    $"trainable: \"{pattern}\" matches no parameter of this U-Net (names start with in_conv, down_convs.L.conv.N, " +
                    $"bottleneck_conv.conv.N, up_samples.L.conv.N, up_convs.L.conv.N, out_conv.N, ds_heads.L; e.g. {names[0]}, {names[^1]}).");
            }
        }

        return selected;
    }

    /// <summary>Whether <paramref name="name"/> starts with <paramref name="pattern"/>, where * matches any characters.</summary>
    internal static bool MatchesPrefix(string pattern, string name)
    {
        bool Match(int p, int n)
        {
            while (p < pattern.Length)
            {
                if (pattern[p] == '*')
                {
                    for (var k = n; k <= name.Length; k++)
                    {
                        if (Match(p + 1, k))
                        {
                            return true;
                        }
                    }

                    return false;
                }

                if (n >= name.Length || pattern[p] != name[n])
                {
                    return false;
                }

                p++;
                n++;
            }

            return true; // the pattern is used up: a prefix of the name
        }

        return Match(0, 0);
    }

    internal int InConv { get; }

    internal int[] Down { get; }

    internal int[] UpSample { get; }

    internal int[] UpConv { get; }

    internal int Bottleneck { get; }

    internal int OutConv1 { get; }

    internal int OutConv2 { get; }

    /// <summary>The deep-supervision head of decoder level l + 1 at index l.</summary>
    internal int[] DeepSupervisionHeads { get; }
}
