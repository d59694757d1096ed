using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging;

/// <summary>
/// A 3-D scalar volume in memory: float32 voxels (scaling already applied), x fastest, then y, then z.
/// Volumes read from NIfTI are in the canonical RAS+ grid (x: Left→Right, y: Posterior→Anterior, z:
/// Inferior→Superior, so z indexes axial slices bottom to top) whatever the file's storage order;
/// <see cref="StorageOrientation"/> says how the file was stored, so results can be written back voxel for
/// voxel in the input's own grid.
/// </summary>
public sealed class Volume
{
    /// <summary>Creates a volume over the given data (not copied).</summary>
    /// <param name="data">Voxels, x fastest.</param>
    /// <param name="size">Grid size.</param>
    /// <param name="affine">Voxel-to-world affine of this grid.</param>
    /// <param name="sourceDatatype">The datatype the voxels came from (or will be written as).</param>
    public Volume(float[] data, GridSize size, Affine affine, NiftiDatatype sourceDatatype = NiftiDatatype.Float32)
        : this(data, size, affine, sourceDatatype, AffineSource.Given, Reorientation.Identity, null, null, 0)
    {
    }

    internal Volume(float[] data, GridSize size, Affine affine, NiftiDatatype sourceDatatype, AffineSource affineSource,
        Reorientation storageOrientation, NiftiHeader? header, string? sourceName, long replacedNonFinite, Spacing? spacing = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(affine);
        ArgumentNullException.ThrowIfNull(storageOrientation);
        size.Validate();
        if (data.LongLength != size.Count)
        {
            throw new ArgumentException($"data has {data.LongLength} voxels, grid {size} needs {size.Count}", nameof(data));
        }

        Data = data;
        Size = size;
        Affine = affine;
        SourceDatatype = sourceDatatype;
        AffineSource = affineSource;
        StorageOrientation = storageOrientation;
        Header = header;
        SourceName = sourceName;
        ReplacedNonFiniteVoxels = replacedNonFinite;
        var (sx, sy, sz) = affine.ColumnNorms();
        Spacing = spacing ?? new Spacing(sx, sy, sz);
    }

    /// <summary>The voxels, x fastest (index = x + X·(y + Y·z)).</summary>
    public float[] Data { get; }

    /// <summary>The grid size.</summary>
    public GridSize Size { get; }

    /// <summary>
    /// Voxel spacing in mm along this grid's axes: for a file, |pixdim[1..3]| reordered with the axes.
    /// </summary>
    public Spacing Spacing { get; }

    /// <summary>The voxel-to-world (RAS+ mm) affine of this grid.</summary>
    public Affine Affine { get; }

    /// <summary>The datatype of the file's voxels.</summary>
    public NiftiDatatype SourceDatatype { get; }

    /// <summary>Where the affine came from.</summary>
    public AffineSource AffineSource { get; }

    /// <summary>How the file stored its axes relative to this canonical grid (identity for in-memory volumes).</summary>
    public Reorientation StorageOrientation { get; }

    /// <summary>The grid size as the file stored it.</summary>
    public GridSize StorageSize => StorageOrientation.StorageSize(Size);

    /// <summary>The affine as the file stored it (the same world positions, in the stored grid).</summary>
    public Affine StorageAffine => StorageOrientation.StorageAffine(Affine, Size);

    /// <summary>The parsed header, for volumes read from a file.</summary>
    public NiftiHeader? Header { get; }

    /// <summary>The file name, for volumes read from a file.</summary>
    public string? SourceName { get; }

    /// <summary>How many NaN/±Inf voxels were replaced (only with <see cref="NonFiniteVoxelPolicy.Replace"/>).</summary>
    public long ReplacedNonFiniteVoxels { get; }

    /// <summary>The voxel at (x, y, z).</summary>
    public float this[int x, int y, int z]
    {
        get
        {
            if ((uint)x >= (uint)Size.X || (uint)y >= (uint)Size.Y || (uint)z >= (uint)Size.Z)
            {
                throw new ArgumentOutOfRangeException(nameof(x), $"voxel ({x}, {y}, {z}) is outside the grid {Size}");
            }

            return Data[Size.Index(x, y, z)];
        }
    }

    /// <summary>This volume's voxels rearranged into the file's stored grid (for writing results back).</summary>
    public float[] ToStorageOrder() => StorageOrientation.ToStorage<float>(Data, Size);
}
