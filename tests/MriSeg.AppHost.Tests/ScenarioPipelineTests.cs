using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using MriSeg.Scenario;
using TorchSharp;
using Xunit;

namespace MriSeg.AppHost.Tests;

/// <summary>
/// What the scenario's parties do for a given pipeline: the consumer seals its own pre-trained base model (only of the
/// pipeline's architecture), and the hospitals pre-process as the pipeline's recipe says.
/// </summary>
public sealed class ScenarioPipelineTests : IDisposable
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
    public void Hospitals_pre_process_as_the_recipe_says_and_without_a_recipe_at_the_phantom_size()
    {
        var recipe = TrainingConfig.FromJson("""
            { "preprocessing": { "size": 64, "modalities": ["flair", "t1", "t1ce", "t2"], "labels": "wt", "lower_percentile": 1, "upper_percentile": 99, "tumour_free_share": 1 } }
            """);
        var real = new ScenarioHospital("hospital-a", "/data/brats_A");
        var options = ScenarioRunner.PreprocessOptionsFor(recipe, new ScenarioOptions(), real);
        Assert.Equal(64, options.SliceSize);
        Assert.Equal(["flair", "t1", "t1ce", "t2"], options.Modalities);
        Assert.Equal("wt", options.Labels);
        Assert.Equal((1.0, 99.0, 1.0), (options.LowerPercentile, options.UpperPercentile, options.EmptySliceFraction));

        var plain = new TrainingConfig();
        Assert.Equal(64, ScenarioRunner.PreprocessOptionsFor(plain, new ScenarioOptions { VolumeSize = 64 }, new ScenarioHospital("hospital-b")).SliceSize);
        Assert.Equal(0, ScenarioRunner.PreprocessOptionsFor(plain, new ScenarioOptions(), real).SliceSize); // real data: native
        Assert.Equal(0.25, ScenarioRunner.PreprocessOptionsFor(plain, new ScenarioOptions(), real).EmptySliceFraction);
    }

    [Fact]
    public void The_sealed_pipeline_carries_no_local_base_model_path()
    {
        var options = new ScenarioOptions { PipelineJson = """{ "base_model": "output/phantom-base", "privacy": { "mode": "dp", "epsilon": 8, "delta": 1e-4 } }""" };
        Assert.DoesNotContain("base_model", options.ResolvePipeline(), StringComparison.Ordinal);
        Assert.Null(TrainingConfig.FromJson(options.ResolvePipeline()).BaseModel);
    }
}
