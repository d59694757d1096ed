using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Preprocessing;

namespace MriSeg.Learning.Training;

/// <summary>
/// The data of a local run or evaluation: dataset shards (<c>.safetensors</c>) and raw case folders (any layout
/// <see cref="CaseDiscovery"/> reads), one per provider, pre-processed by a recipe's <see cref="PreprocessingConfig"/>
/// and joined.
/// </summary>
public static class TrainingData
{
    /// <summary>
    /// The pseudonymisation secret used when a caller gives none: raw folders pre-processed for a local run stay in
    /// memory (no shard and no patient id is written), so the pseudonyms only have to be stable (the same split in
    /// every run) and distinct. It is public and guessable: never use it for a shard that leaves the provider.
    /// </summary>
    public static PseudonymKey LocalKey { get; } = PseudonymKey.FromText("mriseg local training: in-memory pseudonyms only");

    /// <summary>
    /// Loads every entry of <paramref name="paths"/>: a file is a dataset shard (checked against
    /// <paramref name="preprocessing"/> when given), a folder is pre-processed with <paramref name="preprocessing"/>
    /// (the pre-processor's defaults when null). The parts are joined in order.
    /// </summary>
    /// <param name="paths">Shard files and case folders.</param>
    /// <param name="preprocessing">The recipe's pre-processing; null: defaults for folders, no check for shards.</param>
    /// <param name="key">Pseudonymisation secret for folders; null takes <see cref="LocalKey"/>.</param>
    /// <param name="parallelism">Cases pre-processed at once.</param>
    /// <param name="note">Receives one line per skipped case and per folder read.</param>
    /// <param name="cancellationToken">Stops pre-processing.</param>
    /// <param name="shardCheck">Which shards to refuse: those <paramref name="preprocessing"/> would not have produced (the default), the same but with any slice selection (scoring), or none.</param>
    /// <exception cref="ArgumentException">A path that does not exist, a shard that does not match, no usable case, or parts of different schemas.</exception>
    public static async Task<SliceDataset> LoadAsync(
        IReadOnlyList<string> paths, PreprocessingConfig? preprocessing, PseudonymKey? key = null, int parallelism = 1,
        Action<string>? note = null, CancellationToken cancellationToken = default, ShardCheck shardCheck = ShardCheck.Recipe)
    {
        ArgumentNullException.ThrowIfNull(paths);
        if (paths.Count == 0)
        {
            throw new ArgumentException("no data given");
        }

        preprocessing?.Validate();
        var parts = new List<SliceDataset>();
        foreach (var path in paths)
        {
            if (Directory.Exists(path))
            {
                parts.Add(await PreprocessAsync(path, preprocessing ?? PreprocessingConfig.Default, key ?? LocalKey, parallelism, note, cancellationToken).ConfigureAwait(false));
            }
            else if (File.Exists(path))
            {
                SliceDataset shard;
                try
                {
                    shard = DatasetShard.Load(path);
                }
                catch (DatasetSchemaException e)
                {
                    throw new ArgumentException($"{path}: {e.Message}", e);
                }

                if (shardCheck != ShardCheck.None && preprocessing?.Mismatch(shard, shardCheck == ShardCheck.Recipe) is { } problem)
                {
                    throw new ArgumentException($"{path} was not pre-processed as the recipe says: {problem}");
                }

                parts.Add(shard);
            }
            else
            {
                throw new ArgumentException($"{path}: no such file or folder");
            }
        }

        try
        {
            return SliceDataset.Concat(parts);
        }
        catch (DatasetSchemaException e)
        {
            throw new ArgumentException(e.Message, e);
        }
    }

    /// <summary>
    /// The <paramref name="patients"/> (indices into <paramref name="data"/>'s patients) to score a model on: from
    /// <paramref name="scoring"/> when given (the same patients pre-processed with every brain slice,
    /// <see cref="PreprocessingConfig.ForScoring"/>, so that a model trained on a slice selection is scored as
    /// <c>mriseg evaluate</c> scores it), else from <paramref name="data"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A patient of <paramref name="data"/> that <paramref name="scoring"/> lacks.</exception>
    public static SliceDataset ScoringPart(SliceDataset data, IReadOnlyList<int> patients, SliceDataset? scoring)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(patients);
        if (scoring is null)
        {
            return data.SelectPatients(patients);
        }

        return SelectById(scoring, [.. patients.Select(p => data.PatientIds[p])]);
    }

    /// <summary>The patients of <paramref name="data"/> with these IDs, in this order.</summary>
    /// <exception cref="ArgumentException">An ID that <paramref name="data"/> lacks (the message names how many, and one).</exception>
    public static SliceDataset SelectById(SliceDataset data, IReadOnlyList<string> ids)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(ids);
        var index = data.PatientIds.Select((id, i) => (id, i)).ToDictionary(t => t.id, t => t.i, StringComparer.Ordinal);
        var missing = ids.Where(id => !index.ContainsKey(id)).ToArray();
        if (missing.Length > 0)
        {
            throw new ArgumentException($"{missing.Length} patient(s) not in the data, e.g. {missing[0]}");
        }

        return data.SelectPatients([.. ids.Select(id => index[id])]);
    }

    /// <summary>The recipe's <see cref="TrainingConfig.BaseModel"/> loaded on the CPU (float32), or null when it names none.</summary>
    /// <exception cref="ArgumentException">The folder is missing or not a model folder.</exception>
    public static Model.UNet2d? LoadBaseModel(TrainingConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.BaseModel is not { } folder)
        {
            return null;
        }

        if (!File.Exists(Path.Combine(folder, Model.UNetModelFile.WeightsFileName)))
        {
            throw new ArgumentException($"base_model {folder}: no {Model.UNetModelFile.WeightsFileName} (produce it first: the phantom base of the BraTS recipes comes from `mriseg phantoms` and `mriseg train --config configs/phantoms-base.json`, README, section Quality on real data)");
        }

        try
        {
            return Model.UNetModelFile.Load(folder);
        }
        catch (Exception e) when (e is FormatException or IOException or Imaging.Formats.SafeTensorsFormatException)
        {
            throw new ArgumentException($"base_model {folder}: {e.Message}", e);
        }
    }

    /// <summary>
    /// <paramref name="config"/> with a relative <see cref="TrainingConfig.BaseModel"/> resolved: as given when it exists
    /// from the current folder, else beside <paramref name="configPath"/> or one folder above it (configs/ in a repository).
    /// </summary>
    public static TrainingConfig ResolveBaseModel(TrainingConfig config, string? configPath)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.BaseModel is not { } folder || Path.IsPathRooted(folder) || Directory.Exists(folder) || configPath is null)
        {
            return config;
        }

        var dir = Path.GetDirectoryName(Path.GetFullPath(configPath));
        foreach (var root in new[] { dir, dir is null ? null : Path.GetDirectoryName(dir) })
        {
            if (root is not null && Directory.Exists(Path.Combine(root, folder)))
            {
                return config with { BaseModel = Path.Combine(root, folder) };
            }
        }

        return config;
    }

    /// <summary>Pre-processes one folder of cases (one provider) in memory.</summary>
    public static async Task<SliceDataset> PreprocessAsync(
        string folder, PreprocessingConfig preprocessing, PseudonymKey key, int parallelism = 1, Action<string>? note = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(folder);
        ArgumentNullException.ThrowIfNull(preprocessing);
        ArgumentNullException.ThrowIfNull(key);
        IReadOnlyList<SourceCase> cases;
        try
        {
            cases = CaseDiscovery.Discover(folder);
        }
        catch (Exception e) when (e is PreprocessException or IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{folder}: {e.Message}", e);
        }

        if (cases.Count == 0)
        {
            throw new ArgumentException($"{folder}: no case found (BraTS volumes, named volumes or PNG slices)");
        }

        PreprocessResult result;
        try
        {
            result = await new Preprocessor(preprocessing.ToOptions(key, parallelism)).RunAsync(cases, null, cancellationToken).ConfigureAwait(false);
        }
        catch (PreprocessException e)
        {
            throw new ArgumentException($"{folder}: {e.Message}", e);
        }

        foreach (var skipped in result.Summary.Skipped)
        {
            note?.Invoke($"{folder}: skipped case {skipped.CaseId}: {skipped.Reason}");
        }

        var s = result.Summary;
        note?.Invoke($"{folder}: {s.Patients} patients, {s.Slices} slices ({s.TumourSlices} with tumour) pre-processed in memory ({result.Dataset.Describe()}, {result.Dataset.Provenance.SliceSelection})"
            + (s.CasesWithoutSlices > 0 ? $"; {s.CasesWithoutSlices} case(s) without a selected slice" : ""));
        return result.Dataset;
    }
}

/// <summary>How <see cref="TrainingData.LoadAsync"/> checks shards against the recipe's pre-processing.</summary>
public enum ShardCheck
{
    /// <summary>Shards are taken as they are.</summary>
    None,

    /// <summary>A shard must be what the recipe's pre-processing would have produced (training).</summary>
    Recipe,

    /// <summary>The same, except that any slice selection is accepted (scoring a model).</summary>
    RecipeAnySliceSelection,
}
