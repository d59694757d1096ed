using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace MriSeg.Imaging.Nifti;

/// <summary>Choices for writing NIfTI-1 files.</summary>
public sealed record NiftiWriteOptions
{
    /// <summary>The defaults.</summary>
    public static NiftiWriteOptions Default { get; } = new();

    /// <summary>qform_code and sform_code (default 1, NIFTI_XFORM_SCANNER_ANAT, as in the BraTS files).</summary>
    public short XformCode { get; init; } = 1;

    /// <summary>descrip: at most 79 printable ASCII characters (default empty; never put patient data here).</summary>
    public string Description { get; init; } = "";

    /// <summary>Gzip level when compressing (default <see cref="CompressionLevel.Fastest"/>).</summary>
    public CompressionLevel Compression { get; init; } = CompressionLevel.Fastest;

    /// <summary>Compress or not; null (default) decides by the file name (compress when it ends with ".gz").</summary>
    public bool? Gzip { get; init; }
}

/// <summary>
/// Writes single-file NIfTI-1 images (little-endian, vox_offset 352, no extensions) with a given voxel-to-world
/// affine stored both as sform (exact, float32) and qform (its rotation, spacing and qfac), gzip-compressed when
/// the name ends with ".gz". Files are written to a temporary name and renamed, so a reader never sees half a
/// file.
/// </summary>
public static class NiftiWriter
{
    private const int ChunkVoxels = 64 * 1024;

    /// <summary>Writes a volume's voxels in its own (canonical) grid with its affine.</summary>
    public static void Write(string path, Volume volume, NiftiDatatype datatype, NiftiWriteOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(volume);
        Write(path, volume.Data, volume.Size, volume.Affine, datatype, options);
    }

    /// <summary>
    /// Writes voxels given in <paramref name="like"/>'s canonical grid (a segmentation of it, say) in the grid the
    /// file of <paramref name="like"/> was stored in, with its stored affine: the result lines up voxel for voxel
    /// with the input file.
    /// </summary>
    public static void WriteLike(string path, Volume like, ReadOnlySpan<float> canonicalData, NiftiDatatype datatype, NiftiWriteOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(like);
        var stored = like.StorageOrientation.ToStorage(canonicalData, like.Size);
        Write(path, stored, like.StorageSize, like.StorageAffine, datatype, options);
    }

    /// <summary>Writes float voxels (x fastest) as <paramref name="datatype"/>; integer types round to nearest and reject values out of range.</summary>
    public static void Write(string path, ReadOnlySpan<float> data, GridSize size, Affine affine, NiftiDatatype datatype, NiftiWriteOptions? options = null)
    {
        Check(data.Length, size, affine);
        using var target = new AtomicFile(path, options);
        Write(target.Stream, data, size, affine, datatype, options);
        target.Commit();
    }

    /// <summary>Writes int16 voxels (x fastest) as DT_INT16.</summary>
    public static void Write(string path, ReadOnlySpan<short> data, GridSize size, Affine affine, NiftiWriteOptions? options = null)
    {
        Check(data.Length, size, affine);
        using var target = new AtomicFile(path, options);
        Write(target.Stream, data, size, affine, options);
        target.Commit();
    }

    /// <summary>Writes uint8 voxels (x fastest) as DT_UINT8.</summary>
    public static void Write(string path, ReadOnlySpan<byte> data, GridSize size, Affine affine, NiftiWriteOptions? options = null)
    {
        Check(data.Length, size, affine);
        using var target = new AtomicFile(path, options);
        Write(target.Stream, data, size, affine, options);
        target.Commit();
    }

    /// <summary>Writes an uncompressed NIfTI-1 image of float voxels to a stream.</summary>
    public static void Write(Stream stream, ReadOnlySpan<float> data, GridSize size, Affine affine, NiftiDatatype datatype, NiftiWriteOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Check(data.Length, size, affine);
        stream.Write(Header(size, affine, datatype, options ?? NiftiWriteOptions.Default));
        var elementSize = NiftiDatatypes.BytesPerVoxel(datatype);
        var buffer = new byte[Math.Min(data.Length, ChunkVoxels) * elementSize];
        for (var start = 0; start < data.Length; start += ChunkVoxels)
        {
            var chunk = data.Slice(start, Math.Min(ChunkVoxels, data.Length - start));
            var bytes = buffer.AsSpan(0, chunk.Length * elementSize);
            for (var i = 0; i < chunk.Length; i++)
            {
                var v = chunk[i];
                switch (datatype)
                {
                    case NiftiDatatype.Float32:
                        BinaryPrimitives.WriteSingleLittleEndian(bytes.Slice(i * 4), v);
                        break;
                    case NiftiDatatype.Float64:
                        BinaryPrimitives.WriteDoubleLittleEndian(bytes.Slice(i * 8), v);
                        break;
                    case NiftiDatatype.UInt8:
                        bytes[i] = (byte)ToInteger(v, byte.MinValue, byte.MaxValue, start + i, datatype);
                        break;
                    case NiftiDatatype.Int16:
                        BinaryPrimitives.WriteInt16LittleEndian(bytes.Slice(i * 2), (short)ToInteger(v, short.MinValue, short.MaxValue, start + i, datatype));
                        break;
                    case NiftiDatatype.Int32:
                        BinaryPrimitives.WriteInt32LittleEndian(bytes.Slice(i * 4), (int)ToInteger(v, int.MinValue, int.MaxValue, start + i, datatype));
                        break;
                    default:
                        throw new ArgumentOutOfRangeException(nameof(datatype), datatype, "unsupported NIfTI datatype");
                }
            }

            stream.Write(bytes);
        }
    }

    /// <summary>Writes an uncompressed NIfTI-1 DT_INT16 image to a stream.</summary>
    public static void Write(Stream stream, ReadOnlySpan<short> data, GridSize size, Affine affine, NiftiWriteOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Check(data.Length, size, affine);
        stream.Write(Header(size, affine, NiftiDatatype.Int16, options ?? NiftiWriteOptions.Default));
        var buffer = new byte[Math.Min(data.Length, ChunkVoxels) * 2];
        for (var start = 0; start < data.Length; start += ChunkVoxels)
        {
            var chunk = data.Slice(start, Math.Min(ChunkVoxels, data.Length - start));
            for (var i = 0; i < chunk.Length; i++)
            {
                BinaryPrimitives.WriteInt16LittleEndian(buffer.AsSpan(i * 2), chunk[i]);
            }

            stream.Write(buffer.AsSpan(0, chunk.Length * 2));
        }
    }

    /// <summary>Writes an uncompressed NIfTI-1 DT_UINT8 image to a stream.</summary>
    public static void Write(Stream stream, ReadOnlySpan<byte> data, GridSize size, Affine affine, NiftiWriteOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Check(data.Length, size, affine);
        stream.Write(Header(size, affine, NiftiDatatype.UInt8, options ?? NiftiWriteOptions.Default));
        stream.Write(data);
    }

    /// <summary>The 352 bytes (348-byte header + empty extension flag) that precede the voxels.</summary>
    internal static byte[] Header(GridSize size, Affine affine, NiftiDatatype datatype, NiftiWriteOptions options)
    {
        size.Validate();
        if (size.X > short.MaxValue || size.Y > short.MaxValue || size.Z > short.MaxValue)
        {
            throw new ArgumentException($"grid {size} does not fit NIfTI-1 (at most {short.MaxValue} per axis)");
        }

        var description = options.Description ?? "";
        if (description.Length > 79 || description.Any(c => c is < ' ' or > '~'))
        {
            throw new ArgumentException("the description must be at most 79 printable ASCII characters", nameof(options));
        }

        var q = affine.ToQuaternion();
        var h = new byte[352];
        var s = h.AsSpan();
        BinaryPrimitives.WriteInt32LittleEndian(s[NiftiLayout.V1.SizeofHdr..], NiftiLayout.Nifti1HeaderSize);
        h[38] = (byte)'r'; // "regular", as ANALYZE readers expect
        short[] dim = [3, (short)size.X, (short)size.Y, (short)size.Z, 1, 1, 1, 1];
        float[] pixdim = [(float)q.Qfac, (float)q.Dx, (float)q.Dy, (float)q.Dz, 1, 1, 1, 1];
        for (var i = 0; i < 8; i++)
        {
            BinaryPrimitives.WriteInt16LittleEndian(s[(NiftiLayout.V1.Dim + (2 * i))..], dim[i]);
            BinaryPrimitives.WriteSingleLittleEndian(s[(NiftiLayout.V1.Pixdim + (4 * i))..], pixdim[i]);
        }

        BinaryPrimitives.WriteInt16LittleEndian(s[NiftiLayout.V1.Datatype..], (short)datatype);
        BinaryPrimitives.WriteInt16LittleEndian(s[NiftiLayout.V1.Bitpix..], (short)(NiftiDatatypes.BytesPerVoxel(datatype) * 8));
        BinaryPrimitives.WriteSingleLittleEndian(s[NiftiLayout.V1.VoxOffset..], 352f);
        BinaryPrimitives.WriteSingleLittleEndian(s[NiftiLayout.V1.SclSlope..], 1f);
        BinaryPrimitives.WriteSingleLittleEndian(s[NiftiLayout.V1.SclInter..], 0f);
        h[NiftiLayout.V1.XyztUnits] = 2; // NIFTI_UNITS_MM
        Encoding.ASCII.GetBytes(description, s.Slice(NiftiLayout.V1.Descrip, 79));
        BinaryPrimitives.WriteInt16LittleEndian(s[NiftiLayout.V1.QformCode..], options.XformCode);
        BinaryPrimitives.WriteInt16LittleEndian(s[NiftiLayout.V1.SformCode..], options.XformCode);
        float[] quatern = [(float)q.B, (float)q.C, (float)q.D, (float)q.OffsetX, (float)q.OffsetY, (float)q.OffsetZ];
        for (var i = 0; i < 6; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(s[(NiftiLayout.V1.QuaternB + (4 * i))..], quatern[i]);
        }

        var rows = affine.ToRows();
        for (var i = 0; i < 12; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(s[(NiftiLayout.V1.Srow + (4 * i))..], (float)rows[i]);
        }

        NiftiLayout.Magic1.CopyTo(s[NiftiLayout.V1.Magic..]);
        return h;
    }

    private static void Check(int length, GridSize size, Affine affine)
    {
        ArgumentNullException.ThrowIfNull(affine);
        size.Validate();
        if (length != size.Count)
        {
            throw new ArgumentException($"data has {length} voxels, grid {size} needs {size.Count}");
        }

        if (!affine.IsUsable)
        {
            throw new ArgumentException($"the affine is degenerate (non-finite or singular): {affine}", nameof(affine));
        }
    }

    private static long ToInteger(float v, long min, long max, long index, NiftiDatatype datatype)
    {
        if (!float.IsFinite(v))
        {
            throw new ArgumentException($"voxel {index} is {v.ToString(CultureInfo.InvariantCulture)}: cannot be stored as {datatype}");
        }

        var r = Math.Round((double)v, MidpointRounding.AwayFromZero);
        if (r < min || r > max)
        {
            throw new ArgumentException(
                $"voxel {index} is {v.ToString(CultureInfo.InvariantCulture)}: outside the {datatype} range {min}..{max}");
        }

        return (long)r;
    }

    /// <summary>A file written under a temporary name (gzip-wrapped when asked) and renamed into place on commit.</summary>
    private sealed class AtomicFile : IDisposable
    {
        private readonly string _final;
        private readonly string _temp;
        private readonly FileStream _file;
        private readonly GZipStream? _gzip;
        private bool _committed;

        public AtomicFile(string path, NiftiWriteOptions? options)
        {
            ArgumentException.ThrowIfNullOrEmpty(path);
            options ??= NiftiWriteOptions.Default;
            _final = Path.GetFullPath(path);
            var directory = Path.GetDirectoryName(_final)!;
            Directory.CreateDirectory(directory);
            _temp = Path.Combine(directory, $".{Path.GetFileName(_final)}.{Guid.NewGuid():N}.tmp");
            _file = new FileStream(_temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 64 * 1024);
            if (options.Gzip ?? path.EndsWith(".gz", StringComparison.OrdinalIgnoreCase))
            {
                _gzip = new GZipStream(_file, options.Compression, leaveOpen: true);
            }
        }

        public Stream Stream => (Stream?)_gzip ?? _file;

        public void Commit()
        {
            _gzip?.Dispose();
            _file.Flush();
            _file.Dispose();
            File.Move(_temp, _final, overwrite: true);
            _committed = true;
        }

        public void Dispose()
        {
            if (_committed)
            {
                return;
            }

            _gzip?.Dispose();
            _file.Dispose();
            try
            {
                File.Delete(_temp);
            }
            catch (IOException)
            {
            }
        }
    }
}
