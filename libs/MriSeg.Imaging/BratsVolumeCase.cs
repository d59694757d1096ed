using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging;

/// <summary>
/// One case of the BraTS volume layout: a folder &lt;case&gt;/ holding &lt;case&gt;_{flair,t1,t1ce,t2}.nii.gz and
/// optionally &lt;case&gt;_seg.nii.gz (.nii also accepted), all read into the canonical RAS+ grid and checked to share
/// one grid and one affine.
/// </summary>
public sealed class BratsVolumeCase
{
    private readonly Volume[] _images;

    private BratsVolumeCase(string caseId, Volume[] images, Volume? seg)
    {
        CaseId = caseId;
        _images = images;
        Seg = seg;
    }

    /// <summary>The case name (the folder name).</summary>
    public string CaseId { get; }

    /// <summary>One modality.</summary>
    public Volume Image(Modality modality) => _images[(int)modality];

    /// <summary>The label volume, when the case has one.</summary>
    public Volume? Seg { get; }

    /// <summary>The canonical grid of the case.</summary>
    public GridSize Size => _images[0].Size;

    /// <summary>Reads a case folder. A label volume whose values are not all in {0, 1, 2, 4} is rejected.</summary>
    public static BratsVolumeCase Load(string caseFolder, NiftiReadOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(caseFolder);
        var caseId = Path.GetFileName(Path.TrimEndingDirectorySeparator(caseFolder));
        string? Find(string suffix)
        {
            foreach (var ext in new[] { ".nii.gz", ".nii" })
            {
                var path = Path.Combine(caseFolder, $"{caseId}_{suffix}{ext}");
                if (File.Exists(path))
                {
                    return path;
                }
            }

            return null;
        }

        var images = new Volume[4];
        foreach (var m in Brats.Modalities)
        {
            var path = Find(Brats.Suffix(m))
                ?? throw new FileNotFoundException($"{caseFolder}: missing {caseId}_{Brats.Suffix(m)}.nii.gz");
            images[(int)m] = NiftiReader.Read(path, options);
        }

        Volume? seg = null;
        if (Find(Brats.SegSuffix) is { } segPath)
        {
            seg = NiftiReader.Read(segPath, options);
            for (var i = 0; i < seg.Data.Length; i++)
            {
                var v = seg.Data[i];
                if (v != MathF.Round(v) || !Brats.IsValidLabel((int)v))
                {
                    throw new NiftiFormatException(segPath, $"voxel {i} has label {v}, not one of the BraTS labels 0, 1, 2, 4");
                }
            }
        }

        foreach (var v in images.Skip(1).Append(seg).OfType<Volume>())
        {
            if (v.Size != images[0].Size || !v.Affine.ApproximatelyEquals(images[0].Affine, 1e-3))
            {
                throw new NiftiFormatException(v.SourceName ?? caseId,
                    $"its grid {v.Size} / affine {v.Affine} differs from {images[0].SourceName}'s ({images[0].Size} / {images[0].Affine})");
            }
        }

        return new BratsVolumeCase(caseId, images, seg);
    }
}
