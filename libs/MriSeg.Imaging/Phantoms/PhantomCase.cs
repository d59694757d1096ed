using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Phantoms;

/// <summary>
/// One synthetic patient: four int16 modalities and the uint8 BraTS label map {0, 1, 2, 4}, all in the canonical
/// RAS+ grid (x fastest), with their voxel-to-world affine.
/// </summary>
public sealed class PhantomCase
{
    private readonly short[][] _images;

    internal PhantomCase(string caseId, int site, int patient, GridSize size, Affine affine, short[][] images, byte[] labels)
    {
        CaseId = caseId;
        Site = site;
        Patient = patient;
        Size = size;
        Affine = affine;
        _images = images;
        Labels = labels;
    }

    /// <summary>The case name (also the folder and file prefix).</summary>
    public string CaseId { get; }

    /// <summary>The site (hospital) index.</summary>
    public int Site { get; }

    /// <summary>The patient index within the site.</summary>
    public int Patient { get; }

    /// <summary>The canonical grid size.</summary>
    public GridSize Size { get; }

    /// <summary>The canonical voxel-to-world affine.</summary>
    public Affine Affine { get; }

    /// <summary>BraTS labels (0 background, 1 necrotic core, 2 oedema, 4 enhancing), x fastest.</summary>
    public byte[] Labels { get; }

    /// <summary>The stored intensities of one modality, x fastest (0 outside the brain).</summary>
    public short[] Image(Modality modality) => _images[(int)modality];

    /// <summary>How many voxels carry <paramref name="label"/>.</summary>
    public long Count(byte label)
    {
        long n = 0;
        foreach (var l in Labels)
        {
            if (l == label)
            {
                n++;
            }
        }

        return n;
    }

    /// <summary>One modality as a float volume (canonical grid).</summary>
    public Volume ToVolume(Modality modality) =>
        new(Array.ConvertAll(Image(modality), v => (float)v), Size, Affine, NiftiDatatype.Int16);

    /// <summary>The labels as a float volume (canonical grid).</summary>
    public Volume LabelVolume() => new(Array.ConvertAll(Labels, v => (float)v), Size, Affine, NiftiDatatype.UInt8);
}
