using System.Text.Json;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;

namespace MriSeg.Testing.Models;

/// <summary>
/// A model folder as `mriseg train` and a pulled run leave it (model.safetensors, config.json, model.json) with an
/// untrained tiny U-Net: segmentation runs on it end to end in well under a second. Its masks mean nothing; tests check
/// geometry, formats and volumes, not quality. (Shared by the service and CLI tests.)
/// </summary>
internal static class TinyModelFolder
{
    /// <summary>
    /// Writes the folder <paramref name="directory"/> (created) for a model of <paramref name="modalities"/> on
    /// <paramref name="size"/>² slices; <paramref name="headBias"/> (e.g. +100) sets the last layer's bias so that the model
    /// predicts every pixel, and <paramref name="evaluation"/> goes into the recipe the manifest records.
    /// </summary>
    public static void Write(string directory, IReadOnlyList<string> modalities, int size = 32, float? headBias = null, EvaluationConfig? evaluation = null)
    {
        TorchRuntime.Initialize();
        Directory.CreateDirectory(directory);
        var config = new UNetConfig { InChannels = modalities.Count, OutChannels = 1, Depth = 2, BaseWidth = 4, GroupNormGroups = 1 };
        using (var model = new UNet2d(config))
        {
            if (headBias is { } bias)
            {
                using var _ = TorchSharp.torch.no_grad();
                model.OrderedParameters()[^1].fill_(bias);
            }

            UNetModelFile.Save(model, directory);
        }

        var manifest = new ModelManifest(TrainingOutputs.ManifestFormat, TrainingOutputs.ManifestVersion, config,
            new DatasetSchema([.. modalities], LabelScheme.WholeTumour.Name(), LabelScheme.WholeTumour.Channels(), size, size, "brats_volumes", "unknown", "all"),
            new TrainingSummary("non_private", null, null, null, 0, 0, 1, 0, null, null, null, 1, 0, 0, null, null, "untrained (test)", 0, new TrainingConfig { Model = config, Evaluation = evaluation ?? new() }));
        File.WriteAllText(Path.Combine(directory, TrainingOutputs.ManifestFileName), JsonSerializer.Serialize(manifest, TrainingOutputs.JsonOptions));
    }
}
