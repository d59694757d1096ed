using System.Text.Json;
using System.Text.Json.Serialization;

namespace MriSeg.Learning.Model;

/// <summary>The element-wise non-linearity used after every normalisation and in the head.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<UNetActivation>))]
public enum UNetActivation
{
    /// <summary>max(x, slope·x) with <see cref="UNetConfig.NegativeSlope"/> (0.1 in the reference).</summary>
    [JsonStringEnumMemberName("leaky_relu")]
    LeakyRelu,

    /// <summary>max(x, 0).</summary>
    [JsonStringEnumMemberName("relu")]
    Relu,

    /// <summary>x·sigmoid(x).</summary>
    [JsonStringEnumMemberName("silu")]
    Silu,
}

/// <summary>How the decoder doubles the resolution before its 3x3 convolution.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<UNetUpsampling>))]
public enum UNetUpsampling
{
    /// <summary>Bilinear, align_corners=false (PyTorch's F.interpolate default for bilinear).</summary>
    [JsonStringEnumMemberName("bilinear")]
    Bilinear,

    /// <summary>Nearest neighbour.</summary>
    [JsonStringEnumMemberName("nearest")]
    Nearest,
}

/// <summary>What <see cref="UNet2d.forward"/> applies to the logits.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<UNetOutput>))]
public enum UNetOutput
{
    /// <summary>Independent per-channel probabilities (label regions may overlap, as BraTS WT/TC/ET do).</summary>
    [JsonStringEnumMemberName("sigmoid")]
    Sigmoid,

    /// <summary>Softmax over the output channels (mutually exclusive classes).</summary>
    [JsonStringEnumMemberName("softmax")]
    Softmax,

    /// <summary>Raw logits.</summary>
    [JsonStringEnumMemberName("none")]
    Logits,
}

/// <summary>
/// The architecture of a 2-D U-Net of the reference family, as written to the model's config.json.
/// The defaults are the reference model: 1 input channel, widths 8-16-32-64-128-256, GroupNorm(1, C),
/// leaky ReLU 0.1, bilinear up-sampling, sigmoid; 2,164,145 parameters with one output channel.
/// </summary>
/// <remarks>
/// Layout (PyTorch module names; <c>w = BaseWidth</c>, level <c>l = 0..Depth-1</c> has <c>c = w·2^l</c>):
/// <code>
/// in_conv                      Conv2d(in, w, 3, padding 1)
/// down_convs.l.conv.{0,1,3,4}  Conv2d(c, 2c, 3) GN(2c) act Conv2d(2c, 2c, 3) GN(2c) act ; then max-pool 2
/// bottleneck_conv.conv.*       the same block, w·2^Depth → w·2^(Depth+1)
/// up_samples.l.conv.{0,1}      bilinear x2, Conv2d(4c, 2c, 3) GN(2c) act ; then cat([skip_l, up], dim 1)
/// up_convs.l.conv.*            the block 4c → 2c → 2c   (applied from l = Depth-1 down to 0)
/// out_conv.{0,2}               Conv2d(2w, w, 3) act Conv2d(w, out, 3) ; then the final activation
/// </code>
/// Every convolution has a bias; index 2 and 5 of a block's Sequential are the (parameter-free)
/// activations, as in a PyTorch <c>nn.Sequential</c>.
/// </remarks>
public sealed record UNetConfig
{
    /// <summary>The <see cref="Architecture"/> value of this family.</summary>
    public const string ArchitectureName = "unet2d";

    /// <summary>The config file version this code writes and reads.</summary>
    public const int CurrentFormatVersion = 1;

    /// <summary>The reference model (all defaults).</summary>
    public static UNetConfig Reference { get; } = new();

    /// <summary>Always <see cref="ArchitectureName"/>; present so a loader can refuse other families.</summary>
    public string Architecture { get; init; } = ArchitectureName;

    /// <summary>Config file version.</summary>
    public int FormatVersion { get; init; } = CurrentFormatVersion;

    /// <summary>Input channels: one per MRI modality (FLAIR only in the reference).</summary>
    public int InChannels { get; init; } = 1;

    /// <summary>Output channels: one per label region.</summary>
    public int OutChannels { get; init; } = 1;

    /// <summary>Number of max-pool levels; inputs must be divisible by 2^Depth.</summary>
    public int Depth { get; init; } = 4;

    /// <summary>Width of the input convolution; every level doubles it.</summary>
    public int BaseWidth { get; init; } = 8;

    /// <summary>Groups of every GroupNorm; must divide 2·BaseWidth (hence every normalised width).</summary>
    public int GroupNormGroups { get; init; } = 1;

    /// <summary>GroupNorm epsilon.</summary>
    public double GroupNormEps { get; init; } = 1e-5;

    /// <summary>
    /// Weight standardisation (Qiao et al. 2019): every convolution that a GroupNorm follows uses its weight
    /// standardised per output channel, (w − mean) / √(var + 1e-5) over its inputs and 3x3 taps. The stored weights
    /// stay raw, so a model trained with it must be run with it; off in the reference.
    /// </summary>
    public bool WeightStandardisation { get; init; }

    /// <summary>
    /// Deep supervision (Lee et al. 2015; as in nnU-Net): k extra 3x3 heads (<c>ds_heads.0..k-1</c>) on the outputs of
    /// decoder levels 1..k, at 1/2 … 1/2^k of the input resolution, trained against the target pooled to their grid
    /// (<see cref="SegmentationLosses.DeepSupervised"/>) so that the coarse decoder levels get a direct training signal.
    /// Prediction uses the full-resolution head only, and training returns the model without the heads. Non-private
    /// training only; 0 (off) in the reference, and then not written to config.json.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int DeepSupervision { get; init; }

    /// <summary>This architecture without the training-only deep-supervision heads: the model that predicts.</summary>
    public UNetConfig WithoutDeepSupervision() => this with { DeepSupervision = 0 };

    /// <summary>Whether <paramref name="other"/> has these layers, heads aside: weights carry over between the two.</summary>
    public bool SameExceptDeepSupervision(UNetConfig other) =>
        other is not null && WithoutDeepSupervision() == other.WithoutDeepSupervision();

    /// <summary>Non-linearity.</summary>
    public UNetActivation Activation { get; init; } = UNetActivation.LeakyRelu;

    /// <summary>Slope for <see cref="UNetActivation.LeakyRelu"/>; ignored otherwise.</summary>
    public double NegativeSlope { get; init; } = 0.1;

    /// <summary>Decoder up-sampling.</summary>
    public UNetUpsampling Upsampling { get; init; } = UNetUpsampling.Bilinear;

    /// <summary>What the model's forward applies to its logits.</summary>
    public UNetOutput FinalActivation { get; init; } = UNetOutput.Sigmoid;

    /// <summary>The feature widths from the input convolution to the bottleneck (8-16-32-64-128-256 by default).</summary>
    public IReadOnlyList<int> Widths => [.. Enumerable.Range(0, Depth + 2).Select(i => BaseWidth << i)];

    /// <summary>Input height and width must be multiples of this.</summary>
    [JsonIgnore]
    public int SizeMultiple => 1 << Depth;

    /// <summary>Trainable parameter count, from the layout (2,164,145 for the reference).</summary>
    [JsonIgnore]
    public long ParameterCount => UNetLayout.For(this).ParameterCount;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        static void Require(bool ok, string message)
        {
            if (!ok)
            {
                throw new ArgumentException("invalid U-Net configuration: " + message);
            }
        }

        Require(Architecture == ArchitectureName, $"architecture is \"{Architecture}\", expected \"{ArchitectureName}\".");
        Require(FormatVersion == CurrentFormatVersion, $"format_version {FormatVersion} is not supported (this build reads {CurrentFormatVersion}).");
        Require(InChannels is >= 1 and <= 64, $"in_channels must be 1..64, got {InChannels}.");
        Require(OutChannels is >= 1 and <= 64, $"out_channels must be 1..64, got {OutChannels}.");
        Require(Depth is >= 1 and <= 8, $"depth must be 1..8, got {Depth}.");
        Require(BaseWidth is >= 1 and <= 1024, $"base_width must be 1..1024, got {BaseWidth}.");
        Require((long)BaseWidth << (Depth + 1) <= 16384, $"base_width·2^(depth+1) = {(long)BaseWidth << (Depth + 1)} is above 16384.");
        Require(GroupNormGroups >= 1 && (2 * BaseWidth) % GroupNormGroups == 0,
            $"group_norm_groups ({GroupNormGroups}) must divide 2·base_width ({2 * BaseWidth}), the narrowest normalised width.");
        Require(DeepSupervision >= 0 && DeepSupervision < Depth,
            $"deep_supervision must be 0..depth-1 = {Depth - 1} (the decoder levels below full resolution), got {DeepSupervision}.");
        Require(GroupNormEps > 0 && double.IsFinite(GroupNormEps), $"group_norm_eps must be positive, got {GroupNormEps}.");
        Require(double.IsFinite(NegativeSlope) && NegativeSlope >= 0 && NegativeSlope < 1, $"negative_slope must be in [0, 1), got {NegativeSlope}.");
        Require(Enum.IsDefined(Activation), $"unknown activation {Activation}.");
        Require(Enum.IsDefined(Upsampling), $"unknown upsampling {Upsampling}.");
        Require(Enum.IsDefined(FinalActivation), $"unknown final_activation {FinalActivation}.");
    }

    /// <summary>The config as JSON (snake_case, indented).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Parses and validates a config written by <see cref="ToJson"/> (or by hand).</summary>
    /// <exception cref="FormatException">Not JSON of this shape, unknown properties, or inconsistent widths.</exception>
    /// <exception cref="ArgumentException">A setting is out of range.</exception>
    public static UNetConfig FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        UNetConfig? config;
        int[]? widths;
        try
        {
            using var document = JsonDocument.Parse(json);
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new FormatException("U-Net config: the JSON root must be an object.");
            }

            // Widths are derived; a file whose widths disagree was written for another layout.
            widths = document.RootElement.TryGetProperty("widths", out var w) ? w.Deserialize<int[]>() : null;
            config = document.RootElement.Deserialize<UNetConfig>(ReadOptions);
        }
        catch (JsonException ex)
        {
            throw new FormatException("U-Net config: " + ex.Message, ex);
        }

        if (config is null)
        {
            throw new FormatException("U-Net config: the JSON is null.");
        }

        config.Validate();
        if (widths is not null && !widths.SequenceEqual(config.Widths))
        {
            throw new FormatException(
                $"U-Net config: widths [{string.Join(", ", widths)}] do not follow from base_width {config.BaseWidth} and depth {config.Depth} " +
                $"([{string.Join(", ", config.Widths)}]); this family doubles the width at every level.");
        }

        return config;
    }

    internal static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
    };

    private static readonly JsonSerializerOptions ReadOptions = new(JsonOptions)
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    };
}
