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
    /// <exception cref="ArgumentException">A path that does not exist, a shard that does not match, no usable case, or parts of different schemas.</exception>
    public static async Task<SliceDataset> LoadAsync(
        IReadOnlyList<string> paths, PreprocessingConfig? preprocessing, PseudonymKey? key = null, int parallelism = 1,
        Action<string>? note = null, CancellationToken cancellationToken = default)
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

                if (preprocessing?.Mismatch(shard) is { } problem)
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
