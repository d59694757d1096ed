namespace MriSeg.Imaging.Preprocessing;

/// <summary>The ingestion layouts the pre-processor recognises.</summary>
public enum SourceLayout
{
    /// <summary>BraTS case folders: &lt;case&gt;/&lt;case&gt;_{flair,t1,t1ce,t2,seg}.nii(.gz) (also what <c>mriseg phantoms</c> writes).</summary>
    BratsVolumes,

    /// <summary>Folders of named volumes: FLAIR.nii.gz, T1.nii.gz, T1ce.nii.gz, T2.nii.gz and a mask such as GT_W.nii.gz.</summary>
    NamedVolumes,

    /// <summary>The reference scenario's 2-D layout: &lt;case&gt;/&lt;case&gt;_{flair,t1,t1ce,t2,seg}.png, one axial slice per patient.</summary>
    PngSlices,
}

/// <summary>What a file in a case folder holds.</summary>
public enum CaseFileRole
{
    /// <summary>FLAIR image.</summary>
    Flair,

    /// <summary>Native T1 image.</summary>
    T1,

    /// <summary>Contrast-enhanced T1 image.</summary>
    T1ce,

    /// <summary>T2 image.</summary>
    T2,

    /// <summary>A BraTS label map {0, 1, 2, 4} (for PNG slices: min-max scaled, only &gt; 0 is meaningful).</summary>
    BratsLabels,

    /// <summary>A binary whole-tumour mask {0, 1}.</summary>
    WholeTumourMask,
}

/// <summary>The names of <see cref="SourceLayout"/> and the file-name conventions of case folders.</summary>
public static class SourceLayouts
{
    /// <summary>The name used in shard metadata: "brats-volumes", "named-volumes" or "brats-png-slices".</summary>
    public static string Name(this SourceLayout layout) => layout switch
    {
        SourceLayout.BratsVolumes => "brats-volumes",
        SourceLayout.NamedVolumes => "named-volumes",
        SourceLayout.PngSlices => "brats-png-slices",
        _ => throw new ArgumentOutOfRangeException(nameof(layout)),
    };

    /// <summary>The image role of a modality.</summary>
    public static CaseFileRole Role(Modality modality) => modality switch
    {
        Modality.Flair => CaseFileRole.Flair,
        Modality.T1 => CaseFileRole.T1,
        Modality.T1ce => CaseFileRole.T1ce,
        Modality.T2 => CaseFileRole.T2,
        _ => throw new ArgumentOutOfRangeException(nameof(modality)),
    };

    /// <summary>
    /// The role of a name token (letters and digits only, lower case): flair/t2flair/t2f, t1/t1n/t1w, t1ce/t1c/t1gd/t1post,
    /// t2/t2w, seg/segm/segmentation/label/labels, gtw/gt/wt/tumourmask/wholetumour (a binary whole-tumour mask; a bare
    /// "mask" is not recognised: it is as often a brain mask).
    /// </summary>
    internal static CaseFileRole? RoleOfToken(string token) => token switch
    {
        "flair" or "t2flair" or "t2f" => CaseFileRole.Flair,
        "t1" or "t1n" or "t1w" or "t1native" => CaseFileRole.T1,
        "t1ce" or "t1c" or "t1gd" or "t1post" or "t1contrast" or "t1wce" => CaseFileRole.T1ce,
        "t2" or "t2w" => CaseFileRole.T2,
        "seg" or "segm" or "segmentation" or "label" or "labels" or "labelmap" => CaseFileRole.BratsLabels,
        "gtw" or "gt" or "wt" or "gtwt" or "tumourmask" or "tumormask" or "wholetumour" or "wholetumor" => CaseFileRole.WholeTumourMask,
        _ => null,
    };

    /// <summary>
    /// Classifies a file name: its kind (NIfTI or PNG, by extension, case-insensitive), its role, and whether the
    /// whole stem names the role ("FLAIR.nii.gz", "GT_W.nii.gz": named volumes) or only its last '_'/'-'-separated
    /// token does ("BraTS2021_00006_flair.nii.gz", "BraTS-GLI-00000-000-t2f.nii.gz": BraTS layout). Null for any
    /// other file (hidden files included).
    /// </summary>
    internal static (CaseFileRole Role, bool Png, bool WholeStem)? Classify(string fileName)
    {
        if (fileName.Length == 0 || fileName[0] == '.')
        {
            return null;
        }

        string stem;
        bool png;
        if (fileName.EndsWith(".nii.gz", StringComparison.OrdinalIgnoreCase))
        {
            (stem, png) = (fileName[..^7], false);
        }
        else if (fileName.EndsWith(".nii", StringComparison.OrdinalIgnoreCase))
        {
            (stem, png) = (fileName[..^4], false);
        }
        else if (fileName.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
        {
            (stem, png) = (fileName[..^4], true);
        }
        else
        {
            return null;
        }

        if (RoleOfToken(Normalise(stem)) is { } whole)
        {
            return (whole, png, true);
        }

        var cut = stem.LastIndexOfAny(['_', '-']);
        if (cut > 0 && RoleOfToken(Normalise(stem[(cut + 1)..])) is { } last)
        {
            return (last, png, false);
        }

        return null;
    }

    private static string Normalise(string text)
    {
        Span<char> buffer = stackalloc char[Math.Min(text.Length, 64)];
        var n = 0;
        foreach (var c in text)
        {
            if (char.IsAsciiLetterOrDigit(c))
            {
                if (n == buffer.Length)
                {
                    return "";
                }

                buffer[n++] = char.ToLowerInvariant(c);
            }
        }

        return new string(buffer[..n]);
    }
}

/// <summary>
/// One case found on disk: a folder (the case id is its name) and its recognised files by role. A case found
/// with a problem (two files for one role, NIfTI and PNG mixed) carries it in <see cref="Problem"/> and is skipped.
/// </summary>
/// <param name="CaseId">The case name (the folder's name); used only to derive the pseudonym, never written out.</param>
/// <param name="Folder">The case folder.</param>
/// <param name="Layout">The layout its files follow.</param>
/// <param name="Files">The recognised files by role (full paths).</param>
/// <param name="Problem">Why the case cannot be used, or null.</param>
public sealed record SourceCase(string CaseId, string Folder, SourceLayout Layout, IReadOnlyDictionary<CaseFileRole, string> Files, string? Problem = null)
{
    /// <summary>The label file and its kind: the BraTS label map when there is one, else a whole-tumour mask; null when neither.</summary>
    public (string Path, CaseFileRole Kind)? LabelFile =>
        Files.TryGetValue(CaseFileRole.BratsLabels, out var seg) ? (seg, CaseFileRole.BratsLabels)
        : Files.TryGetValue(CaseFileRole.WholeTumourMask, out var wt) ? (wt, CaseFileRole.WholeTumourMask)
        : null;
}

/// <summary>Finds cases under an input folder.</summary>
public static class CaseDiscovery
{
    /// <summary>How deep below the input folder case folders are looked for.</summary>
    public const int MaxDepth = 8;

    /// <summary>
    /// Finds the case folders at or under <paramref name="input"/>: a folder holding at least one recognised file
    /// (<see cref="SourceLayouts.Classify"/>) is a case, and its subfolders are not searched; other folders are
    /// searched down to <see cref="MaxDepth"/> levels (e.g. phantoms' root/site-N/&lt;case&gt;/, or
    /// brats_A/preprocessed/&lt;case&gt;/). The input may itself be one case folder. Cases come sorted by folder path
    /// (ordinal); a case id (folder name) seen twice is a problem of the later folder.
    /// </summary>
    /// <exception cref="PreprocessException">The input does not exist or is not a folder.</exception>
    public static IReadOnlyList<SourceCase> Discover(string input)
    {
        ArgumentException.ThrowIfNullOrEmpty(input);
        var root = Path.GetFullPath(input);
        if (File.Exists(root))
        {
            throw new PreprocessException($"{input} is a file: give the folder of a case, or a folder of case folders");
        }

        if (!Directory.Exists(root))
        {
            throw new PreprocessException($"{input}: no such folder");
        }

        var found = new List<SourceCase>();
        Walk(root, 0, found);
        found.Sort((a, b) => string.CompareOrdinal(a.Folder, b.Folder));
        var firstFolder = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < found.Count; i++)
        {
            var c = found[i];
            if (!firstFolder.TryAdd(c.CaseId, c.Folder))
            {
                found[i] = c with { Problem = c.Problem ?? $"duplicate case id: the folder {Path.GetRelativePath(root, c.Folder)} has the same name as {Path.GetRelativePath(root, firstFolder[c.CaseId])}" };
            }
        }

        return found;
    }

    /// <summary>Reads one folder as a case; null when it holds no recognised file.</summary>
    public static SourceCase? ReadCase(string folder)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        folder = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        var caseId = Path.GetFileName(folder);
        var byRole = new Dictionary<CaseFileRole, List<(string Path, bool Png, bool WholeStem)>>();
        foreach (var file in Directory.EnumerateFiles(folder))
        {
            if (SourceLayouts.Classify(Path.GetFileName(file)) is { } c)
            {
                if (!byRole.TryGetValue(c.Role, out var list))
                {
                    byRole[c.Role] = list = [];
                }

                list.Add((file, c.Png, c.WholeStem));
            }
        }

        if (byRole.Count == 0)
        {
            return null;
        }

        var all = byRole.Values.SelectMany(l => l).ToList();
        var anyPng = all.Exists(f => f.Png);
        var anyNifti = all.Exists(f => !f.Png);
        var layout = anyPng && !anyNifti ? SourceLayout.PngSlices
            : all.Exists(f => !f.WholeStem) ? SourceLayout.BratsVolumes
            : SourceLayout.NamedVolumes;
        var files = new Dictionary<CaseFileRole, string>();
        string? problem = anyPng && anyNifti ? "the folder holds both NIfTI volumes and PNG slices" : null;
        foreach (var (role, list) in byRole.OrderBy(p => p.Key))
        {
            // Where one role has several files, a file named after the case wins (BraTS: <case>_flair.nii.gz).
            var chosen = list.Count == 1 ? list
                : list.Where(f => Path.GetFileName(f.Path).StartsWith(caseId + "_", StringComparison.OrdinalIgnoreCase)).ToList();
            if (chosen.Count == 1)
            {
                files[role] = chosen[0].Path;
            }
            else
            {
                problem ??= $"{list.Count} files for {role}: {string.Join(", ", list.Select(f => Path.GetFileName(f.Path)).Order(StringComparer.Ordinal))}";
            }
        }

        return new SourceCase(caseId, folder, layout, files, problem);
    }

    private static void Walk(string folder, int depth, List<SourceCase> found)
    {
        if (ReadCase(folder) is { } c)
        {
            found.Add(c);
            return;
        }

        if (depth >= MaxDepth)
        {
            return;
        }

        foreach (var sub in Directory.EnumerateDirectories(folder))
        {
            if (!Path.GetFileName(sub).StartsWith('.'))
            {
                Walk(sub, depth + 1, found);
            }
        }
    }
}
