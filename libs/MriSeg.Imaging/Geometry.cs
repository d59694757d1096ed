namespace MriSeg.Imaging;

/// <summary>The size of a 3-D voxel grid (x fastest in memory, then y, then z).</summary>
/// <param name="X">Voxels along the first axis.</param>
/// <param name="Y">Voxels along the second axis.</param>
/// <param name="Z">Voxels along the third axis.</param>
public readonly record struct GridSize(int X, int Y, int Z)
{
    /// <summary>The number of voxels.</summary>
    public long Count => (long)X * Y * Z;

    /// <summary>The size along axis 0, 1 or 2.</summary>
    public int this[int axis] => axis switch
    {
        0 => X,
        1 => Y,
        2 => Z,
        _ => throw new ArgumentOutOfRangeException(nameof(axis)),
    };

    /// <summary>The linear index of voxel (x, y, z).</summary>
    public int Index(int x, int y, int z) => x + (X * (y + (Y * z)));

    /// <summary>Throws unless every size is positive and the count fits an array.</summary>
    public void Validate()
    {
        if (X <= 0 || Y <= 0 || Z <= 0)
        {
            throw new ArgumentException($"grid sizes must be positive, got {this}");
        }

        if (Count > Array.MaxLength)
        {
            throw new ArgumentException($"grid {this} has more voxels than an array can hold");
        }
    }

    /// <inheritdoc />
    public override string ToString() => $"{X}x{Y}x{Z}";
}

/// <summary>Voxel spacing in millimetres along the three grid axes.</summary>
/// <param name="X">Spacing along the first axis.</param>
/// <param name="Y">Spacing along the second axis.</param>
/// <param name="Z">Spacing along the third axis.</param>
public readonly record struct Spacing(double X, double Y, double Z)
{
    /// <summary>The spacing along axis 0, 1 or 2.</summary>
    public double this[int axis] => axis switch
    {
        0 => X,
        1 => Y,
        2 => Z,
        _ => throw new ArgumentOutOfRangeException(nameof(axis)),
    };
}

/// <summary>Where a volume's voxel-to-world affine came from.</summary>
public enum AffineSource
{
    /// <summary>The sform (srow_x/y/z), used when sform_code &gt; 0.</summary>
    Sform,

    /// <summary>The qform (quaternion, offsets, pixdim, qfac), used when qform_code &gt; 0 and sform_code is 0.</summary>
    Qform,

    /// <summary>Neither code set: a diagonal affine from pixdim alone (NIfTI "method 1").</summary>
    Pixdim,

    /// <summary>Given in memory (not read from a file).</summary>
    Given,
}
