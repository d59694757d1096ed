using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MriSeg.Learning.Model;

/// <summary>
/// The 2-D U-Net family of <see cref="UNetConfig"/>. Parameters carry PyTorch module names
/// (<see cref="UNetLayout"/>), so a PyTorch module of the same layout loads its safetensors file.
/// </summary>
/// <remarks>
/// The forward pass is written functionally over a parameter list so the same code runs the
/// "folded" per-sample pass of <see cref="PerSample.PerSampleGradients"/>: G groups folded into the
/// channel dimension, every convolution with groups = G and G stacked weight copies, every GroupNorm
/// with G·groups groups. Call <see cref="Torch.TorchRuntime.Initialize"/> before constructing one.
/// </remarks>
public sealed class UNet2d : nn.Module<Tensor, Tensor>
{
    private readonly UNetLayout _layout;

    /// <summary>Builds the model with PyTorch's default initialisation (GroupNorm: ones and zeros).</summary>
    /// <param name="config">Architecture; validated.</param>
    /// <param name="dtype">Parameter dtype (Float32 for training; Float64 for exactness tests).</param>
    /// <param name="device">Parameter device; CPU when null.</param>
    /// <param name="generator">Optional generator for a reproducible initialisation.</param>
    public UNet2d(UNetConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null, Generator? generator = null)
        : base(nameof(UNet2d))
    {
        ArgumentNullException.ThrowIfNull(config);
        _layout = UNetLayout.For(config);
        Config = config;
        if (!is_floating_point(dtype))
        {
            throw new ArgumentException($"U-Net parameters must be floating point, not {dtype}.", nameof(dtype));
        }

        var containers = new Dictionary<string, nn.Module>(StringComparer.Ordinal) { [""] = this };
        using (no_grad())
        {
            foreach (var layer in _layout.Layers)
            {
                var cut = layer.Name.LastIndexOf('.');
                var parent = Container(containers, cut < 0 ? "" : layer.Name[..cut]);
                Register(parent, cut < 0 ? layer.Name : layer.Name[(cut + 1)..], new LayerParameters(layer, dtype, device ?? CPU, generator));
            }
        }

        var names = named_parameters().Select(p => p.name).ToList();
        if (!names.SequenceEqual(_layout.ParameterNames))
        {
            // Guards the assumption that registration order is parameter order.
            throw new InvalidOperationException("U-Net parameter registration order differs from its layout: " + string.Join(", ", names));
        }
    }

    /// <summary>The architecture.</summary>
    public UNetConfig Config { get; }

    /// <summary>The ordered layers and parameter names.</summary>
    public UNetLayout Layout => _layout;

    /// <summary>Trainable parameter count.</summary>
    public long ParameterCount => _layout.ParameterCount;

    /// <summary>The parameters in layout order (layer i: 2i weight, 2i+1 bias).</summary>
    public IReadOnlyList<Parameter> OrderedParameters() => [.. parameters()];

    /// <summary>
    /// Copies <paramref name="source"/>'s weights (any dtype or device) into this model. The architectures may differ
    /// only in their deep-supervision heads, which come last in the layout: the heads both have are copied, a head
    /// only this model has keeps its value (so a recipe with deep supervision can start from a model without it).
    /// </summary>
    /// <exception cref="ArgumentException">The architectures differ otherwise.</exception>
    public void LoadWeightsFrom(UNet2d source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (!Config.SameExceptDeepSupervision(source.Config))
        {
            throw new ArgumentException("the source model's architecture differs from this one's.", nameof(source));
        }

        using var _ = no_grad();
        foreach (var (to, from) in OrderedParameters().Zip(source.OrderedParameters()))
        {
            to.copy_(from);
        }
    }

    /// <summary>
    /// A new model of <see cref="UNetConfig.WithoutDeepSupervision"/> with this one's weights (same dtype and device):
    /// the same predictions, in the reference layout, without the training-only heads.
    /// </summary>
    public UNet2d WithoutDeepSupervision()
    {
        var first = OrderedParameters()[0];
        var copy = new UNet2d(Config.WithoutDeepSupervision(), first.dtype, first.device);
        copy.LoadWeightsFrom(this);
        return copy;
    }

    /// <summary>A new model of the same architecture with this one's weights, in <paramref name="dtype"/> on <paramref name="device"/>.</summary>
    public UNet2d Clone(ScalarType dtype, Device device)
    {
        var copy = new UNet2d(Config, dtype, device);
        copy.LoadWeightsFrom(this);
        return copy;
    }

    /// <summary>
    /// Freezes every parameter that <paramref name="trainable"/> does not select (<see cref="UNetLayout.SelectTrainable"/>:
    /// name prefixes, * as a wildcard; null: all trainable) by clearing its <c>requires_grad</c>: a frozen parameter gets
    /// no gradient from backward, none from <see cref="PerSample.PerSampleGradients"/> (so it takes no part in the
    /// per-patient norm and clipping), no DP noise, and no optimiser update.
    /// </summary>
    /// <returns>The number of trainable parameter elements.</returns>
    /// <exception cref="ArgumentException">A pattern matches no parameter.</exception>
    public long SetTrainable(IReadOnlyList<string>? trainable)
    {
        var mask = _layout.SelectTrainable(trainable);
        var parameters = OrderedParameters();
        long count = 0;
        for (var i = 0; i < parameters.Count; i++)
        {
            parameters[i].requires_grad = mask[i];
            count += mask[i] ? parameters[i].numel() : 0;
        }

        return count;
    }

    /// <summary>The parameters that require a gradient, in layout order.</summary>
    public IReadOnlyList<Parameter> TrainableParameters() => NamedTrainableParameters().Parameters;

    /// <summary>The parameters that require a gradient with their layout names, in layout order; at least one.</summary>
    /// <exception cref="InvalidOperationException">Every parameter is frozen.</exception>
    public (string[] Names, Parameter[] Parameters) NamedTrainableParameters()
    {
        var parameters = OrderedParameters();
        var chosen = Enumerable.Range(0, parameters.Count).Where(i => parameters[i].requires_grad).ToArray();
        if (chosen.Length == 0)
        {
            throw new InvalidOperationException("the model has no trainable parameter (every parameter is frozen).");
        }

        return ([.. chosen.Select(i => _layout.ParameterNames[i])], [.. chosen.Select(i => parameters[i])]);
    }

    /// <summary>The ε under the variance of <see cref="UNetConfig.WeightStandardisation"/>.</summary>
    internal const double WeightStandardisationEps = 1e-5;

    /// <summary>Dtype of the parameters.</summary>
    public ScalarType ParameterDType => parameters().First().dtype;

    /// <summary>Device of the parameters.</summary>
    public Device ParameterDevice => parameters().First().device;

    /// <summary>[N, in, H, W] → [N, out, H, W] after <see cref="UNetConfig.FinalActivation"/>.</summary>
    public override Tensor forward(Tensor input) => ApplyFinalActivation(ForwardLogits(input));

    /// <summary>[N, in, H, W] → logits [N, out, H, W]; H and W must be multiples of 2^depth.</summary>
    public Tensor ForwardLogits(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var ps = OrderedParameters();
        CheckInput(input, Config.InChannels, ps[0]);
        return Run(input, ps, folds: 1);
    }

    /// <summary>
    /// [N, in, H, W] → the logits of the full-resolution head, then of each deep-supervision head
    /// (<see cref="UNetConfig.DeepSupervision"/>: [N, out, H/2, W/2], [N, out, H/4, W/4], …); for training.
    /// </summary>
    public Tensor[] ForwardLogitsWithDeepSupervision(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var ps = OrderedParameters();
        CheckInput(input, Config.InChannels, ps[0]);
        var auxiliary = new Tensor[Config.DeepSupervision];
        var main = Run(input, ps, folds: 1, auxiliary);
        return [main, .. auxiliary];
    }

    /// <summary>Applies the configured final activation to logits of shape [N, out, H, W].</summary>
    public Tensor ApplyFinalActivation(Tensor logits) => Config.FinalActivation switch
    {
        UNetOutput.Sigmoid => logits.sigmoid(),
        UNetOutput.Softmax => logits.softmax(1),
        _ => logits.alias(),
    };

    internal void CheckInput(Tensor input, long channels, Tensor reference)
    {
        if (input.dim() != 4)
        {
            throw new ArgumentException($"U-Net input must be [N, C, H, W]; got shape [{string.Join(", ", input.shape)}].");
        }

        if (input.shape[1] != channels)
        {
            throw new ArgumentException($"U-Net input has {input.shape[1]} channels; this model expects {channels}.");
        }

        var multiple = Config.SizeMultiple;
        if (input.shape[2] % multiple != 0 || input.shape[3] % multiple != 0 || input.shape[2] == 0 || input.shape[3] == 0)
        {
            throw new ArgumentException(
                $"U-Net input is {input.shape[2]}x{input.shape[3]}; with depth {Config.Depth} height and width must be positive multiples of {multiple}.");
        }

        if (input.dtype != reference.dtype || input.device_type != reference.device_type || input.device_index != reference.device_index)
        {
            throw new ArgumentException($"U-Net input is {input.dtype} on {input.device}; the parameters are {reference.dtype} on {reference.device}.");
        }
    }

    /// <summary>
    /// The forward pass over explicit parameters. With <paramref name="folds"/> = G the input is
    /// [n, G·in, H, W] (group-major channels) and every parameter is G copies stacked on dim 0, except that a
    /// layer may be given its single, unfolded weight and bias (a frozen layer, which needs no per-group
    /// gradient): it then runs on the unfolded batch [n·G, in, H, W] with that one copy.
    /// </summary>
    /// <param name="x">The input, [n, G·in, H, W].</param>
    /// <param name="p">The parameters in layout order.</param>
    /// <param name="folds">G.</param>
    /// <param name="deepSupervision">When given (one slot per deep-supervision head, unfolded runs only), receives the
    /// heads' logits, coarsest last.</param>
    internal Tensor Run(Tensor x, IReadOnlyList<Tensor> p, int folds, Tensor[]? deepSupervision = null)
    {
        var c = Config;
        var layout = _layout;
        long[] one = [1, 1];

        // A frozen tensor may be given unfolded (its one copy) while the other tensor of its layer is folded.
        bool Shared(int layer, int which) => folds > 1 && p[(2 * layer) + which].shape[0] == layout.Layers[layer].OutChannels;

        // [n, G·C, H, W] ⇄ [n·G, C, H, W]
        Tensor Unfold(Tensor t) => t.view(t.shape[0] * folds, -1, t.shape[2], t.shape[3]);
        Tensor Refold(Tensor t) => t.view(t.shape[0] / folds, -1, t.shape[2], t.shape[3]);

        // An unfolded [C] tensor as G copies (it is frozen: no gradient flows to it).
        Tensor Folded(int layer, int which) => Shared(layer, which) ? p[(2 * layer) + which].repeat(folds) : p[(2 * layer) + which];

        Tensor Conv(Tensor t, int layer)
        {
            var (weight, bias) = (p[2 * layer], p[(2 * layer) + 1]);
            if (c.WeightStandardisation && layer + 1 < layout.Layers.Count && layout.Layers[layer + 1].Kind == UNetLayerKind.GroupNorm)
            {
                // Per output channel, so G folded copies standardise exactly as the one unfolded weight does.
                var (variance, mean) = weight.var_mean([1, 2, 3], unbiased: false, keepdim: true);
                weight = (weight - mean) / (variance + WeightStandardisationEps).sqrt();
            }

            if (Shared(layer, 0))
            {
                var y = Refold(F.conv2d(Unfold(t), weight, Shared(layer, 1) ? bias : null, strides: one, padding: one, dilation: one, groups: 1));
                return Shared(layer, 1) ? y : y + bias.view(1, -1, 1, 1);
            }

            bias = Folded(layer, 1);
            return folds > 1 && SharedWeightConv.Pays(t, layout.Layers[layer].OutChannels)
                ? SharedWeightConv.apply(t, weight, bias, folds)
                : F.conv2d(t, weight, bias, strides: one, padding: one, dilation: one, groups: folds);
        }

        Tensor Norm(Tensor t, int layer) =>
            Shared(layer, 0) && Shared(layer, 1)
                ? Refold(F.group_norm(Unfold(t), c.GroupNormGroups, p[2 * layer], p[(2 * layer) + 1], c.GroupNormEps))
                : F.group_norm(t, (long)folds * c.GroupNormGroups, Folded(layer, 0), Folded(layer, 1), c.GroupNormEps);

        Tensor Act(Tensor t) => c.Activation switch
        {
            UNetActivation.Relu => F.relu(t),
            UNetActivation.Silu => F.silu(t),
            _ => F.leaky_relu(t, c.NegativeSlope),
        };

        Tensor Block(Tensor t, int first) => Act(Norm(Conv(Act(Norm(Conv(t, first), first + 1)), first + 2), first + 3));

        // Skip first, then the up-sampled path, per group.
        Tensor Cat(Tensor skip, Tensor up)
        {
            if (folds == 1)
            {
                return cat([skip, up], 1);
            }

            var (n, h, w) = (skip.shape[0], skip.shape[2], skip.shape[3]);
            return cat([skip.view(n, folds, -1, h, w), up.view(n, folds, -1, h, w)], 2).view(n, -1, h, w);
        }

        Tensor Up(Tensor t)
        {
            long[] size = [t.shape[2] * 2, t.shape[3] * 2];
            return c.Upsampling == UNetUpsampling.Nearest
                ? F.interpolate(t, size, mode: InterpolationMode.Nearest)
                : F.interpolate(t, size, mode: InterpolationMode.Bilinear, align_corners: false);
        }

        var skips = new Tensor[c.Depth];
        x = Conv(x, layout.InConv);
        for (var l = 0; l < c.Depth; l++)
        {
            skips[l] = Block(x, layout.Down[l]);
            x = F.max_pool2d(skips[l], 2, 2);
        }

        x = Block(x, layout.Bottleneck);
        for (var l = c.Depth - 1; l >= 0; l--)
        {
            var up = Act(Norm(Conv(Up(x), layout.UpSample[l]), layout.UpSample[l] + 1));
            x = Block(Cat(skips[l], up), layout.UpConv[l]);
            if (deepSupervision is not null && l >= 1 && l <= deepSupervision.Length)
            {
                deepSupervision[l - 1] = Conv(x, layout.DeepSupervisionHeads[l - 1]);
            }
        }

        return Conv(Act(Conv(x, layout.OutConv1)), layout.OutConv2);
    }

    private static nn.Module Container(Dictionary<string, nn.Module> containers, string path)
    {
        if (containers.TryGetValue(path, out var existing))
        {
            return existing;
        }

        var cut = path.LastIndexOf('.');
        var parent = Container(containers, cut < 0 ? "" : path[..cut]);
        var created = new ModuleContainer(path);
        Register(parent, cut < 0 ? path : path[(cut + 1)..], created);
        containers[path] = created;
        return created;
    }

    private static void Register(nn.Module parent, string name, nn.Module child) => parent.register_module(name, child);

    /// <summary>A parameter-free node of the module tree (a PyTorch ModuleList or Sequential).</summary>
    private sealed class ModuleContainer(string name) : nn.Module(name);

    /// <summary>A layer's weight and bias, initialised as PyTorch initialises Conv2d and GroupNorm.</summary>
    private sealed class LayerParameters : nn.Module
    {
        public LayerParameters(UNetLayer layer, ScalarType dtype, Device device, Generator? generator)
            : base(layer.Name)
        {
            // A seeded generator draws on the CPU (libtorch refuses a CPU generator for CUDA tensors), so the
            // same seed gives the same weights on every device.
            var onCpuFirst = generator is not null && device.type != DeviceType.CPU;
            var initDevice = onCpuFirst ? CPU : device;
            var weight = empty(layer.WeightShape, dtype, initDevice);
            var bias = empty(layer.BiasShape, dtype, initDevice);
            if (layer.Kind == UNetLayerKind.Conv3x3)
            {
                // PyTorch's Conv2d default: kaiming_uniform(a=√5) = U(±1/√fan_in), and the same bound for the bias.
                var bound = 1.0 / Math.Sqrt(layer.InChannels * 9.0);
                weight.uniform_(-bound, bound, generator);
                bias.uniform_(-bound, bound, generator);
            }
            else
            {
                // TorchSharp's GroupNorm leaves these uninitialised; PyTorch uses ones and zeros.
                weight.fill_(1.0);
                bias.fill_(0.0);
            }

            if (onCpuFirst)
            {
                using var cpuWeight = weight;
                using var cpuBias = bias;
                (weight, bias) = (cpuWeight.to(device), cpuBias.to(device));
            }

            register_parameter("weight", new Parameter(weight.DetachFromDisposeScope(), requires_grad: true));
            register_parameter("bias", new Parameter(bias.DetachFromDisposeScope(), requires_grad: true));
        }
    }
}
