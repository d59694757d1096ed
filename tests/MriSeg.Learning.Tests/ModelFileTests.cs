using MriSeg.Imaging.Formats;
using System.Text.Json;
using MriSeg.Learning.Formats;
using MriSeg.Learning.Model;
using static TorchSharp.torch;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class ModelFileTests(TorchRuntimeFixture fixture)
{
    [Fact]
    public void Saved_model_loads_into_a_fresh_model_with_identical_outputs()
    {
        Assert.NotNull(fixture.Info);
        using var scope = NewDisposeScope();
        using var folder = new TempFolder();
        var config = UNetTests.Tiny with { OutChannels = 3, Depth = 3 };
        using var original = new UNet2d(config, generator: new Generator(3));
        using (no_grad())
        {
            foreach (var p in original.OrderedParameters())
            {
                p.add_(randn(p.shape) * 0.01);
            }
        }

        UNetModelFile.Save(original, folder.Path, new Dictionary<string, string> { ["run"] = "test" });
        using var loaded = UNetModelFile.Load(folder.Path);
        Assert.Equal(config, loaded.Config);

        var x = randn(2, 2, 32, 32);
        Assert.True(original.forward(x).equal(loaded.forward(x)).all().item<bool>());
        Assert.All(original.OrderedParameters().Zip(loaded.OrderedParameters()), p => Assert.True(p.First.equal(p.Second).all().item<bool>()));

        var file = SafeTensors.Load(Path.Combine(folder.Path, UNetModelFile.WeightsFileName));
        Assert.Equal(original.Layout.ParameterNames.Order(StringComparer.Ordinal), file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        Assert.All(file.Tensors, t => Assert.Equal(SafeTensorDType.Float32, t.DType));
        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal("test", file.Metadata["run"]);
        Assert.Equal(config, UNetConfig.FromJson(file.Metadata[UNetModelFile.ConfigMetadataKey]));
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder.Path, UNetModelFile.ConfigFileName)));
        Assert.Equal(3, json.RootElement.GetProperty("out_channels").GetInt32());
        Assert.Equal("leaky_relu", json.RootElement.GetProperty("activation").GetString());
    }

    [Fact]
    public void Reference_weights_file_lists_every_parameter_under_its_pytorch_name()
    {
        using var model = new UNet2d(UNetConfig.Reference);
        var file = SafeTensors.Parse(UNetModelFile.SerializeWeights(model));
        Assert.Equal(94, file.Tensors.Count);
        Assert.Equal(2_164_145, file.Tensors.Sum(t => t.ElementCount));
        Assert.Equal([256L, 256, 3, 3], file["bottleneck_conv.conv.3.weight"].Shape);
        Assert.Equal([16L], file["up_convs.0.conv.4.bias"].Shape);
        Assert.Equal(Enumerable.Repeat(1f, 16), file["down_convs.0.conv.1.weight"].ToArray<float>());
    }

    [Fact]
    public void Weights_file_alone_is_enough_and_float64_loading_converts()
    {
        using var scope = NewDisposeScope();
        using var folder = new TempFolder();
        using var original = new UNet2d(UNetTests.Tiny);
        UNetModelFile.Save(original, folder.Path);
        File.Delete(Path.Combine(folder.Path, UNetModelFile.ConfigFileName));

        using var loaded = UNetModelFile.Load(folder.Path, ScalarType.Float64);
        Assert.Equal(ScalarType.Float64, loaded.ParameterDType);
        var x = randn(1, 2, 16, 16);
        Assert.True(original.forward(x).to(ScalarType.Float64).allclose(loaded.forward(x.to(ScalarType.Float64)), 1e-5, 1e-6));
    }

    [Fact]
    public void Weights_that_do_not_fit_the_layout_are_refused()
    {
        using var model = new UNet2d(UNetTests.Tiny);
        var good = SafeTensors.Parse(UNetModelFile.SerializeWeights(model)).Tensors;

        SafeTensorsFile Without(string name, params SafeTensor[] extra) =>
            SafeTensors.Parse(SafeTensors.Serialize([.. good.Where(t => t.Name != name), .. extra]));

        var missing = Assert.Throws<FormatException>(() => UNetModelFile.LoadWeights(model, Without("in_conv.bias")));
        Assert.Contains("missing: in_conv.bias", missing.Message, StringComparison.Ordinal);

        var extra = Assert.Throws<FormatException>(() => UNetModelFile.LoadWeights(model, Without("", SafeTensor.Create("head.weight", new[] { 1f }, 1))));
        Assert.Contains("unexpected: head.weight", extra.Message, StringComparison.Ordinal);

        var shape = Assert.Throws<FormatException>(() => UNetModelFile.LoadWeights(model, Without("in_conv.bias", SafeTensor.Create("in_conv.bias", new float[5], 5))));
        Assert.Contains("in_conv.bias is [5]", shape.Message, StringComparison.Ordinal);

        var dtype = Assert.Throws<FormatException>(() => UNetModelFile.LoadWeights(model, Without("in_conv.bias", SafeTensor.Create("in_conv.bias", new int[4], 4))));
        Assert.Contains("floating point", dtype.Message, StringComparison.Ordinal);

        var otherConfig = UNetTests.Tiny with { BaseWidth = 8 };
        Assert.Throws<FormatException>(() => UNetModelFile.FromSafeTensors(SafeTensors.Parse(UNetModelFile.SerializeWeights(model)), otherConfig));
    }

    [Fact]
    public void Torch_adapter_round_trips_dtypes()
    {
        using var scope = NewDisposeScope();
        Tensor[] tensors =
        [
            randn(2, 3), randn(4, ScalarType.Float64), randn(3).to(ScalarType.Float16), randn(3).to(ScalarType.BFloat16),
            tensor(new byte[] { 0, 255 }), tensor(new[] { -5, 6 }), tensor(new[] { long.MaxValue }), tensor(new[] { true, false }),
            randn(3, 4).t(),
        ];
        foreach (var t in tensors)
        {
            var stored = TorchSafeTensors.FromTensor("t", t);
            var back = TorchSafeTensors.ToTensor(stored);
            Assert.Equal(t.dtype, back.dtype);
            Assert.Equal(t.shape, back.shape);
            Assert.True(t.equal(back).all().item<bool>(), t.dtype.ToString());
        }

        Assert.Throws<NotSupportedException>(() => TorchSafeTensors.ToTensor(SafeTensor.Create<uint>("u", [1], 1)));
    }
}
