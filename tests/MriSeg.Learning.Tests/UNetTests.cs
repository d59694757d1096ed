using MriSeg.Learning.Model;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class UNetTests(TorchRuntimeFixture fixture)
{
    internal static readonly UNetConfig Tiny = new() { InChannels = 2, OutChannels = 2, Depth = 2, BaseWidth = 4, GroupNormGroups = 2 };

    [Fact]
    public void Reference_model_has_2164145_parameters_in_the_pytorch_layout()
    {
        Assert.NotNull(fixture.Info);
        var config = UNetConfig.Reference;
        Assert.Equal([8, 16, 32, 64, 128, 256], config.Widths);
        Assert.Equal(2_164_145, config.ParameterCount);

        using var model = new UNet2d(config);
        var named = model.named_parameters().ToList();
        Assert.Equal(2_164_145, named.Sum(p => p.parameter.numel()));
        Assert.Equal(2_164_145, model.ParameterCount);
        Assert.Equal(model.Layout.ParameterNames, named.Select(p => p.name));
        Assert.Equal(94, named.Count);

        var shapes = named.ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.Equal([8L, 1, 3, 3], shapes["in_conv.weight"]);
        Assert.Equal([16L, 8, 3, 3], shapes["down_convs.0.conv.0.weight"]);
        Assert.Equal([16L], shapes["down_convs.0.conv.1.weight"]);
        Assert.Equal([16L, 16, 3, 3], shapes["down_convs.0.conv.3.weight"]);
        Assert.Equal([128L, 64, 3, 3], shapes["down_convs.3.conv.0.weight"]);
        Assert.Equal([256L, 128, 3, 3], shapes["bottleneck_conv.conv.0.weight"]);
        Assert.Equal([256L, 256, 3, 3], shapes["bottleneck_conv.conv.3.weight"]);
        Assert.Equal([128L, 256, 3, 3], shapes["up_samples.3.conv.0.weight"]);
        Assert.Equal([128L, 256, 3, 3], shapes["up_convs.3.conv.0.weight"]);
        Assert.Equal([16L, 32, 3, 3], shapes["up_samples.0.conv.0.weight"]);
        Assert.Equal([16L, 32, 3, 3], shapes["up_convs.0.conv.0.weight"]);
        Assert.Equal([8L, 16, 3, 3], shapes["out_conv.0.weight"]);
        Assert.Equal([1L, 8, 3, 3], shapes["out_conv.2.weight"]);
        Assert.Equal("out_conv.2.bias", named[^1].name);
    }

    [Fact]
    public void Group_norms_start_at_one_and_zero_and_convolutions_at_pytorch_bounds()
    {
        using var model = new UNet2d(Tiny, generator: new Generator(7));
        var parameters = model.OrderedParameters();
        foreach (var (layer, i) in model.Layout.Layers.Select((l, i) => (l, i)))
        {
            var weight = parameters[2 * i];
            var bias = parameters[(2 * i) + 1];
            if (layer.Kind == UNetLayerKind.GroupNorm)
            {
                Assert.True(weight.eq(1).all().item<bool>(), layer.Name);
                Assert.True(bias.eq(0).all().item<bool>(), layer.Name);
            }
            else
            {
                var bound = 1 / Math.Sqrt(layer.InChannels * 9.0);
                Assert.True(weight.abs().max().item<float>() <= bound, layer.Name);
                Assert.True(bias.abs().max().item<float>() <= bound, layer.Name);
                Assert.True(weight.std().item<float>() > bound / 4, layer.Name);
            }
        }
    }

    [Fact]
    public void Same_generator_seed_gives_the_same_model()
    {
        using var a = new UNet2d(Tiny, generator: new Generator(11));
        using var b = new UNet2d(Tiny, generator: new Generator(11));
        Assert.All(a.OrderedParameters().Zip(b.OrderedParameters()), p => Assert.True(p.First.equal(p.Second).all().item<bool>()));
    }

    [Theory]
    [InlineData(UNetOutput.Sigmoid)]
    [InlineData(UNetOutput.Softmax)]
    [InlineData(UNetOutput.Logits)]
    public void Forward_keeps_the_resolution_and_applies_the_final_activation(UNetOutput output)
    {
        using var scope = NewDisposeScope();
        using var model = new UNet2d(Tiny with { OutChannels = 3, FinalActivation = output });
        var x = randn(2, 2, 16, 24);
        var logits = model.ForwardLogits(x);
        var y = model.forward(x);
        Assert.Equal([2L, 3, 16, 24], y.shape);
        switch (output)
        {
            case UNetOutput.Sigmoid:
                Assert.True(y.allclose(logits.sigmoid()));
                break;
            case UNetOutput.Softmax:
                Assert.True(y.sum(1).allclose(ones(2, 16, 24), 1e-5, 1e-5));
                break;
            default:
                Assert.True(y.equal(logits).all().item<bool>());
                break;
        }
    }

    [Theory]
    [InlineData(UNetActivation.Relu, UNetUpsampling.Nearest)]
    [InlineData(UNetActivation.Silu, UNetUpsampling.Bilinear)]
    public void Other_activations_and_upsampling_run(UNetActivation activation, UNetUpsampling upsampling)
    {
        using var scope = NewDisposeScope();
        using var model = new UNet2d(Tiny with { Activation = activation, Upsampling = upsampling, Depth = 3 });
        var y = model.forward(randn(1, 2, 32, 32));
        Assert.Equal([1L, 2, 32, 32], y.shape);
        Assert.False(y.isnan().any().item<bool>());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Weight_standardisation_makes_a_normalised_convolution_blind_to_its_weights_offset_and_scale(bool standardised)
    {
        using var scope = NewDisposeScope();
        var config = Tiny with { WeightStandardisation = standardised };
        using var a = new UNet2d(config, ScalarType.Float64, generator: new Generator(5));
        using var b = new UNet2d(config, ScalarType.Float64, generator: new Generator(5));
        var layer = UNetLayout.For(config).Layers.ToList().FindIndex(l => l.Name == "down_convs.0.conv.0");
        using (no_grad())
        {
            // Per output channel: w -> 3·w + offset. A GroupNorm follows this convolution.
            var weight = b.OrderedParameters()[2 * layer];
            weight.mul_(3).add_(randn([weight.shape[0], 1, 1, 1], ScalarType.Float64, generator: new Generator(6)));
        }

        var x = randn([2, 2, 16, 16], ScalarType.Float64, generator: new Generator(7));
        var difference = (a.ForwardLogits(x) - b.ForwardLogits(x)).abs().max().item<double>();
        if (standardised)
        {
            // Only the 1e-5 under the variance is not scale-free.
            Assert.True(difference < 1e-3, $"outputs differ by {difference}");
        }
        else
        {
            Assert.True(difference > 1e-2, $"outputs differ by only {difference}");
        }
    }

    [Fact]
    public void Bad_inputs_are_refused_with_the_reason()
    {
        using var scope = NewDisposeScope();
        using var model = new UNet2d(Tiny);
        Assert.Contains("multiples of 4", Assert.Throws<ArgumentException>(() => model.forward(randn(1, 2, 18, 16))).Message, StringComparison.Ordinal);
        Assert.Contains("expects 2", Assert.Throws<ArgumentException>(() => model.forward(randn(1, 3, 16, 16))).Message, StringComparison.Ordinal);
        Assert.Contains("[N, C, H, W]", Assert.Throws<ArgumentException>(() => model.forward(randn(2, 16, 16))).Message, StringComparison.Ordinal);
        Assert.Contains("Float64", Assert.Throws<ArgumentException>(() => model.forward(randn(1, 2, 16, 16, ScalarType.Float64))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Config_round_trips_through_json_with_snake_case_names()
    {
        var config = Tiny with { Activation = UNetActivation.Silu, FinalActivation = UNetOutput.Logits, NegativeSlope = 0.2 };
        var json = config.ToJson();
        Assert.Contains("\"architecture\": \"unet2d\"", json, StringComparison.Ordinal);
        Assert.Contains("\"in_channels\": 2", json, StringComparison.Ordinal);
        Assert.Contains("\"group_norm_groups\": 2", json, StringComparison.Ordinal);
        Assert.Contains("\"activation\": \"silu\"", json, StringComparison.Ordinal);
        Assert.Contains("\"final_activation\": \"none\"", json, StringComparison.Ordinal);
        Assert.Contains("\"upsampling\": \"bilinear\"", json, StringComparison.Ordinal);
        Assert.Equal(config, UNetConfig.FromJson(json));

        var reference = UNetConfig.Reference.ToJson();
        Assert.Contains("\"widths\": [\n    8,\n    16,\n    32,\n    64,\n    128,\n    256\n  ]", reference.ReplaceLineEndings("\n"), StringComparison.Ordinal);
        Assert.Contains("\"negative_slope\": 0.1", reference, StringComparison.Ordinal);
        Assert.Equal(UNetConfig.Reference, UNetConfig.FromJson(reference));
    }

    [Theory]
    [InlineData("""{"architecture":"resnet"}""", "architecture")]
    [InlineData("""{"group_norm_groups":3}""", "group_norm_groups")]
    [InlineData("""{"depth":0}""", "depth")]
    [InlineData("""{"base_width":8,"depth":2,"widths":[8,16,32,48]}""", "widths")]
    [InlineData("""{"in_channel":2}""", "in_channel")]
    [InlineData("""{"activation":"tanh"}""", "activation")]
    [InlineData("""[1]""", "")]
    public void Invalid_configs_are_refused(string json, string mentioned)
    {
        var ex = Assert.ThrowsAny<Exception>(() => UNetConfig.FromJson(json));
        Assert.True(ex is FormatException or ArgumentException, ex.GetType().Name);
        Assert.Contains(mentioned, ex.Message, StringComparison.Ordinal);
    }
}
