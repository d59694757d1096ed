using System.Collections.Concurrent;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>
/// Turns a provider's cases into a de-identified, normalised 2-D slice dataset. Per case:
/// <list type="number">
/// <item>read the chosen modalities and the label file (NIfTI volumes reoriented to RAS+; PNG slices as grey);</item>
/// <item>brain mask: a voxel is brain where any modality is non-zero, holes filled slice by slice;</item>
/// <item>per modality, a robust z-score inside the brain: values clipped to the brain's 0.5th and 99.5th
/// percentiles, then (v − mean) / std of the clipped values (statistics from up to 65,536 brain voxels sampled
/// evenly); everything outside the brain is 0;</item>
/// <item>slices: every axial slice with tumour, plus each tumour-free brain slice drawn with probability
/// <see cref="PreprocessOptions.TumourFreeShare"/> from the pseudonym and the slice index (1: all brain slices);</item>
/// <item>geometry: crop to the bounding box of brain and tumour over all the case's slices, pad to a square, resize
/// to <see cref="PreprocessOptions.Size"/> (bilinear images, nearest labels), or keep the native grid; slices are laid
/// out like the BraTS PNG slices (rows from the patient's right to left, columns from anterior to posterior);</item>
/// <item>masks: whole tumour, or the BraTS regions WT {1,2,4}, TC {1,4}, ET {4};</item>
/// <item>the patient is named only by HMAC-SHA256(key, case id) (<see cref="PseudonymKey"/>); nothing from file
/// names, headers or dates reaches the dataset.</item>
/// </list>
/// Cases run concurrently (each worker holds one case at a time); patients are ordered by pseudonym, so the result
/// does not depend on thread timing. A pre-processor keeps its workers' buffers (one case's volumes each) for its
/// next run; drop it to release them.
/// </summary>
public sealed class Preprocessor
{
    private readonly ConcurrentBag<CaseWorkspace> _workspaces = [];

    /// <summary>Creates a pre-processor.</summary>
    /// <exception cref="ArgumentException">An option is out of range.</exception>
    public Preprocessor(PreprocessOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Options = options;
    }

    /// <summary>The options.</summary>
    public PreprocessOptions Options { get; }

    /// <summary>Finds the cases under <paramref name="input"/> (<see cref="CaseDiscovery.Discover"/>) and processes them.</summary>
    /// <exception cref="PreprocessException">
    /// The input is missing or holds no case; in strict mode a case that cannot be used; otherwise when no case at all could be used.
    /// </exception>
    public Task<PreprocessResult> RunAsync(string input, IProgress<PreprocessProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var cases = CaseDiscovery.Discover(input);
        if (cases.Count == 0)
        {
            throw new PreprocessException(
                $"{input}: no case found (expected case folders with <case>_flair.nii.gz ... <case>_seg.nii.gz, FLAIR.nii.gz ... GT_W.nii.gz, or <case>_flair.png ... <case>_seg.png)");
        }

        return RunAsync(cases, progress, cancellationToken);
    }

    /// <summary>Processes the given cases.</summary>
    /// <exception cref="PreprocessException">In strict mode a case that cannot be used; otherwise when no case could be used.</exception>
    public async Task<PreprocessResult> RunAsync(IReadOnlyList<SourceCase> cases, IProgress<PreprocessProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(cases);
        var o = Options;
        if (o.Strict && cases.FirstOrDefault(c => c.Problem is not null) is { } bad)
        {
            throw new PreprocessException(bad.CaseId, bad.Problem!);
        }

        var nativeGrid = o.Size == PreprocessOptions.NativeSize ? NativeGrid(cases) : null;
        var results = new CaseSlices?[cases.Count];
        var skipped = new ConcurrentDictionary<int, SkippedCase>();
        var (done, slices) = (0, 0L);
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = o.MaxDegreeOfParallelism, CancellationToken = cancellationToken };
        await Parallel.ForEachAsync(Enumerable.Range(0, cases.Count), parallel, (i, ct) =>
        {
            var c = cases[i];
            if (!_workspaces.TryTake(out var ws))
            {
                ws = new CaseWorkspace();
            }

            try
            {
                ct.ThrowIfCancellationRequested();
                var r = CaseProcessor.Process(c, o, o.PseudonymKey.Pseudonym(c.CaseId), ws, nativeGrid);
                results[i] = r;
                Interlocked.Add(ref slices, r.Count);
            }
            catch (CaseProblemException e)
            {
                if (o.Strict)
                {
                    throw new PreprocessException(c.CaseId, e.Message, e);
                }

                skipped[i] = new SkippedCase(c.CaseId, e.Message);
            }
            finally
            {
                _workspaces.Add(ws);
            }

            progress?.Report(new PreprocessProgress(Interlocked.Increment(ref done), cases.Count, c.CaseId, Interlocked.Read(ref slices), skipped.Count));
            return ValueTask.CompletedTask;
        });

        var skippedList = skipped.OrderBy(p => p.Key).Select(p => p.Value).ToList();
        var processed = results.OfType<CaseSlices>().ToList();
        var layouts = cases.Where((_, i) => results[i] is not null).Select(c => c.Layout.Name()).Distinct().Order(StringComparer.Ordinal);
        if (processed.Count == 0)
        {
            var first = skippedList.FirstOrDefault();
            throw new PreprocessException(first is null
                ? "no case could be used"
                : $"no case could be used: {skippedList.Count} skipped; the first, case {first.CaseId}: {first.Reason}");
        }

        return Assemble(processed, skippedList, cases.Count, string.Join('+', layouts));
    }

    /// <summary>Native size: the in-plane grid of the first usable case (in discovery order), which every case must share.</summary>
    private (int Height, int Width)? NativeGrid(IReadOnlyList<SourceCase> cases)
    {
        foreach (var c in cases)
        {
            if (c.Problem is not null || !c.Files.TryGetValue(SourceLayouts.Role(Options.Modalities[0]), out var path))
            {
                continue;
            }

            try
            {
                if (c.Layout == SourceLayout.PngSlices)
                {
                    var head = new byte[24];
                    using var file = File.OpenRead(path);
                    if (file.ReadAtLeast(head, head.Length, throwOnEndOfStream: false) == head.Length)
                    {
                        return (System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(head.AsSpan(20)), System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(head.AsSpan(16)));
                    }

                    continue;
                }

                var header = NiftiReader.ReadHeader(path, new NiftiReadOptions { MaxVoxels = Options.MaxVoxels });
                var (affine, _) = NiftiReader.StorageAffine(header);
                var canonical = Reorientation.FromAffine(affine).CanonicalSize(header.StorageSize);
                return (canonical.X, canonical.Y);
            }
            catch (Exception e) when (e is NiftiFormatException or IOException or UnauthorizedAccessException)
            {
                // That case will be skipped with the reason when it is processed.
            }
        }

        return null;
    }

    private PreprocessResult Assemble(List<CaseSlices> processed, List<SkippedCase> skipped, int casesFound, string layouts)
    {
        var o = Options;
        var withSlices = processed.Where(p => p.Count > 0).OrderBy(p => p.Pseudonym, StringComparer.Ordinal).ToList();
        foreach (var empty in processed.Where(p => p.Count == 0))
        {
            empty.Return();
        }

        if (withSlices.Count == 0)
        {
            throw new PreprocessException($"no slice selected: the {processed.Count} usable case(s) have no tumour slice and no tumour-free slice was drawn (share {o.TumourFreeShare})");
        }

        var (height, width) = (withSlices[0].Height, withSlices[0].Width);
        var channels = o.Modalities.Count;
        var labelChannels = o.Labels.Channels().Count;
        var n = withSlices.Sum(p => p.Count);
        var plane = (long)height * width;
        // Filled completely by the copies below.
        var images = GC.AllocateUninitializedArray<float>(checked((int)(n * channels * plane)));
        var masks = GC.AllocateUninitializedArray<byte>(checked((int)(n * labelChannels * plane)));
        var index = new int[n];
        long io = 0, mo = 0;
        var at = 0;
        for (var p = 0; p < withSlices.Count; p++)
        {
            var c = withSlices[p];
            c.ImageValues.CopyTo(images.AsSpan((int)io));
            c.MaskValues.CopyTo(masks.AsSpan((int)mo));
            io += c.ImageLength;
            mo += c.MaskLength;
            c.Return();
            index.AsSpan(at, c.Count).Fill(p);
            at += c.Count;
        }

        var provenance = new DatasetProvenance(layouts, o.NormalisationName, o.SliceSelectionName);
        var dataset = new SliceDataset(images, masks, index, height, width, [.. o.Modalities.Select(Brats.Suffix)], o.Labels,
            [.. withSlices.Select(c => c.Pseudonym)], provenance);
        var summary = new PreprocessSummary(withSlices.Count, n, withSlices.Sum(c => c.TumourSlices), channels, height, width, casesFound,
            processed.Count - withSlices.Count, skipped);
        return new PreprocessResult(dataset, summary, [.. withSlices.Select(c => new ProcessedCase(c.CaseId, c.Pseudonym, c.Count, c.TumourSlices))]);
    }
}
