using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using MriSeg.Scenario;
using TorchSharp;
using Xunit;

namespace MriSeg.AppHost.Tests;

/// <summary>The base model the scenario's consumer seals: its own pre-trained weights when it has them, and only of the pipeline's architecture.</summary>
public sealed class ScenarioBaseModelTests : IDisposable
{
    private readonly string folder = Directory.CreateTempSubdirectory("mriseg-scenario-base-").FullName;

    public void Dispose() => Directory.Delete(folder, recursive: true);

    private static UNetConfig Architecture(int width) => new() { InChannels = 2, OutChannels = 1, Depth = 2, BaseWidth = width, GroupNormGroups = 1 };

    [Fact]
    public void A_pre_trained_base_model_is_sealed_as_it_is_and_one_of_another_architecture_is_refused()
    {
        TorchRuntime.Initialize();
        var pipeline = new TrainingConfig { Model = Architecture(4), Seed = 3 };
        using (var generator = new torch.Generator(99))
        using (var trained = new UNet2d(Architecture(4), torch.ScalarType.Float32, torch.CPU, generator))
        {
            UNetModelFile.Save(trained, folder);
        }

        var initial = ScenarioRunner.BaseModelWeights(pipeline, null);
        var sealedWeights = ScenarioRunner.BaseModelWeights(pipeline, folder);
        using var fromFolder = UNetModelFile.Load(folder);
        Assert.Equal(UNetModelFile.SerializeWeights(fromFolder), sealedWeights);
        Assert.NotEqual(initial, sealedWeights); // not the pipeline's seeded initial weights

        var wider = new TrainingConfig { Model = Architecture(8), Seed = 3 };
        var refused = Assert.Throws<ScenarioException>(() => ScenarioRunner.BaseModelWeights(wider, folder));
        Assert.Equal(3, refused.Phase);
        Assert.Contains("not the pipeline's architecture", refused.Message, StringComparison.Ordinal);

        var missing = Assert.Throws<ScenarioException>(() => ScenarioRunner.BaseModelWeights(pipeline, Path.Combine(folder, "absent")));
        Assert.Contains("model.safetensors", missing.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_sealed_pipeline_carries_no_local_base_model_path()
    {
        var options = new ScenarioOptions { PipelineJson = """{ "base_model": "output/phantom-base", "privacy": { "mode": "dp", "epsilon": 8, "delta": 1e-4 } }""" };
        Assert.DoesNotContain("base_model", options.ResolvePipeline(), StringComparison.Ordinal);
        Assert.Null(TrainingConfig.FromJson(options.ResolvePipeline()).BaseModel);
    }
}
