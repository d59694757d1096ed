namespace MriSeg.Imaging.Nifti;

/// <summary>What to do with NaN or ±Inf voxels.</summary>
public enum NonFiniteVoxelPolicy
{
    /// <summary>Reject the file, naming how many voxels are non-finite (the default).</summary>
    Reject,

    /// <summary>Replace each with <see cref="NiftiReadOptions.NonFiniteReplacement"/> and count them.</summary>
    Replace,
}

/// <summary>Limits and choices for reading NIfTI files.</summary>
public sealed record NiftiReadOptions
{
    /// <summary>The default voxel limit: 512 × 512 × 512.</summary>
    public const long DefaultMaxVoxels = 512L * 512 * 512;

    /// <summary>The defaults.</summary>
    public static NiftiReadOptions Default { get; } = new();

    /// <summary>
    /// The most voxels a file may declare; checked before anything is allocated (decompression bombs and lying
    /// headers stop here). At most <see cref="Array.MaxLength"/>.
    /// </summary>
    public long MaxVoxels { get; init; } = DefaultMaxVoxels;

    /// <summary>
    /// The most bytes allowed between the end of the header and vox_offset (header extensions). Bounds the work
    /// spent skipping to the voxels of a compressed file.
    /// </summary>
    public long MaxExtensionBytes { get; init; } = 16L * 1024 * 1024;

    /// <summary>NaN/±Inf voxels (after scaling): reject (default) or replace.</summary>
    public NonFiniteVoxelPolicy NonFinite { get; init; } = NonFiniteVoxelPolicy.Reject;

    /// <summary>The value that replaces a non-finite voxel under <see cref="NonFiniteVoxelPolicy.Replace"/>.</summary>
    public float NonFiniteReplacement { get; init; }

    /// <summary>
    /// Reorient to the canonical RAS+ grid (default). When false the data stays in the file's storage order
    /// and the volume's affine is the file's.
    /// </summary>
    public bool Canonicalize { get; init; } = true;

    /// <summary>
    /// How many decompressed bytes after the voxels are read to reach the end of a gzip member, so that its
    /// CRC-32 and length are verified; a longer tail is left unread (trailing content is allowed).
    /// </summary>
    public int GzipTrailerCheckBytes { get; init; } = 64 * 1024;

    internal void Validate()
    {
        if (MaxVoxels <= 0 || MaxVoxels > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxVoxels), MaxVoxels, $"must be in 1..{Array.MaxLength}");
        }

        ArgumentOutOfRangeException.ThrowIfNegative(MaxExtensionBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(GzipTrailerCheckBytes);
        if (!float.IsFinite(NonFiniteReplacement))
        {
            throw new ArgumentOutOfRangeException(nameof(NonFiniteReplacement), NonFiniteReplacement, "must be finite");
        }
    }
}
