using MriSeg.Imaging.Formats;
using MriSeg.Learning.Formats;
using static TorchSharp.torch;

namespace MriSeg.Learning.Model;

/// <summary>
/// A model on disk: <c>config.json</c> (<see cref="UNetConfig"/>) and <c>model.safetensors</c>, whose
/// tensor names are the PyTorch parameter names of <see cref="UNetLayout"/>. A PyTorch module of the
/// same layout loads it with <c>model.load_state_dict(safetensors.torch.load_file(path))</c>.
/// The config is also embedded in the safetensors metadata, so the weights file alone is enough.
/// </summary>
public static class UNetModelFile
{
    /// <summary>Weights file name inside a model folder.</summary>
    public const string WeightsFileName = "model.safetensors";

    /// <summary>Config file name inside a model folder.</summary>
    public const string ConfigFileName = "config.json";

    /// <summary>Metadata key holding the config JSON.</summary>
    public const string ConfigMetadataKey = "mriseg.unet_config";

    /// <summary>Writes config.json and model.safetensors into <paramref name="directory"/> (created if needed).</summary>
    /// <param name="model">The model.</param>
    /// <param name="directory">Target folder.</param>
    /// <param name="metadata">Extra string metadata for the safetensors header (e.g. provenance).</param>
    public static void Save(UNet2d model, string directory, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(directory);
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, ConfigFileName), model.Config.ToJson());
        SafeTensors.Save(Path.Combine(directory, WeightsFileName), ToSafeTensors(model), Metadata(model, metadata));
    }

    /// <summary>The weights as a safetensors byte array (config embedded in the metadata).</summary>
    public static byte[] SerializeWeights(UNet2d model, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        return SafeTensors.Serialize(ToSafeTensors(model), Metadata(model, metadata));
    }

    /// <summary>Loads a model folder written by <see cref="Save"/>.</summary>
    /// <param name="directory">Folder with config.json and model.safetensors.</param>
    /// <param name="dtype">Parameter dtype of the new model (the file's values are converted).</param>
    /// <param name="device">Device of the new model; CPU when null.</param>
    /// <exception cref="FormatException">Bad config, bad safetensors, or weights that do not fit the config.</exception>
    public static UNet2d Load(string directory, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(directory);
        var configPath = Path.Combine(directory, ConfigFileName);
        var weightsPath = Path.Combine(directory, WeightsFileName);
        var file = SafeTensors.Load(weightsPath);
        UNetConfig config;
        if (File.Exists(configPath))
        {
            config = UNetConfig.FromJson(File.ReadAllText(configPath));
            if (file.Metadata.TryGetValue(ConfigMetadataKey, out var embedded) && UNetConfig.FromJson(embedded) != config)
            {
                throw new FormatException($"{configPath} and the config embedded in {weightsPath} differ; the folder mixes two models.");
            }
        }
        else
        {
            config = file.Metadata.TryGetValue(ConfigMetadataKey, out var embedded)
                ? UNetConfig.FromJson(embedded)
                : throw new FormatException($"{directory} has no {ConfigFileName} and {WeightsFileName} carries no embedded config.");
        }

        return FromSafeTensors(file, config, dtype, device);
    }

    /// <summary>Builds a model of <paramref name="config"/> and loads weights from a parsed file.</summary>
    public static UNet2d FromSafeTensors(SafeTensorsFile file, UNetConfig config, ScalarType dtype = ScalarType.Float32, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(config);
        var model = new UNet2d(config, dtype, device);
        try
        {
            LoadWeights(model, file);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Copies weights into <paramref name="model"/>. Strict: every parameter must be present with its
    /// exact shape, and no other tensor may be in the file. Floating dtypes are converted.
    /// </summary>
    /// <exception cref="FormatException">A missing, extra, mis-shaped or non-floating tensor.</exception>
    public static void LoadWeights(UNet2d model, SafeTensorsFile file)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(file);
        var names = model.Layout.ParameterNames;
        var missing = names.Where(n => !file.TryGet(n, out _)).ToList();
        var extra = file.Tensors.Select(t => t.Name).Except(names, StringComparer.Ordinal).ToList();
        if (missing.Count > 0 || extra.Count > 0)
        {
            throw new FormatException(
                "the weights do not match the U-Net layout" +
                (missing.Count > 0 ? $"; missing: {Describe(missing)}" : "") +
                (extra.Count > 0 ? $"; unexpected: {Describe(extra)}" : "") + ".");
        }

        var parameters = model.OrderedParameters();
        for (var i = 0; i < names.Count; i++)
        {
            var stored = file[names[i]];
            var p = parameters[i];
            if (!stored.Shape.SequenceEqual(p.shape))
            {
                throw new FormatException($"{names[i]} is [{string.Join(", ", stored.Shape)}] in the file; the model needs [{string.Join(", ", p.shape)}].");
            }

            if (stored.DType is not (SafeTensorDType.Float32 or SafeTensorDType.Float64 or SafeTensorDType.Float16 or SafeTensorDType.BFloat16))
            {
                throw new FormatException($"{names[i]} is {stored.DType.Code()}; weights must be floating point.");
            }

            using var value = TorchSafeTensors.ToTensor(stored);
            using (no_grad())
            {
                p.copy_(value);
            }
        }
    }

    private static IEnumerable<SafeTensor> ToSafeTensors(UNet2d model) =>
        model.Layout.ParameterNames.Zip(model.OrderedParameters(), (name, p) => TorchSafeTensors.FromTensor(name, p));

    private static Dictionary<string, string> Metadata(UNet2d model, IReadOnlyDictionary<string, string>? extra)
    {
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["format"] = "pt",
            [ConfigMetadataKey] = model.Config.ToJson(),
        };
        foreach (var (key, value) in extra ?? new Dictionary<string, string>())
        {
            if (!metadata.TryAdd(key, value))
            {
                throw new ArgumentException($"metadata key \"{key}\" is reserved.", nameof(extra));
            }
        }

        return metadata;
    }

    private static string Describe(List<string> names) => string.Join(", ", names.Take(5)) + (names.Count > 5 ? $" and {names.Count - 5} more" : "");
}
