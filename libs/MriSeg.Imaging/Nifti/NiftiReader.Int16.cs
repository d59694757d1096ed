using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;

namespace MriSeg.Imaging.Nifti;

/// <summary>A volume in the canonical RAS+ grid whose voxels are float32, or kept as integers for unscaled uint8/int16 files.</summary>
/// <param name="Size">The canonical grid.</param>
/// <param name="Affine">The canonical voxel-to-world affine.</param>
/// <param name="Name">The file name.</param>
/// <param name="Floats">The voxels as float32 (when the file is not unscaled uint8/int16), else null.</param>
/// <param name="Shorts">The voxels as int16 (unscaled int16 files, and uint8 files when no byte allocator is given), else null.</param>
/// <param name="Bytes">The voxels as uint8 (unscaled uint8 files, when a byte allocator is given), else null.</param>
internal sealed record CanonicalVolume(GridSize Size, Affine Affine, string Name, float[]? Floats, short[]? Shorts, byte[]? Bytes = null);

public static partial class NiftiReader
{
    /// <summary>
    /// Reads a file into the canonical grid, keeping unscaled uint8 and int16 voxels as int16 (half the memory
    /// traffic of float32, and no conversion), or unscaled uint8 voxels as bytes when <paramref name="bytes"/> is
    /// given; any other file is read as float32. The arrays come from the
    /// allocators (called once, after every header check) so that callers can reuse them. Every check of
    /// <see cref="Read(string, NiftiReadOptions?)"/> applies.
    /// </summary>
    internal static CanonicalVolume ReadCanonical(string path, NiftiReadOptions? options, Func<long, float[]> floats, Func<long, short[]> shorts, Func<long, byte[]>? bytes = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= NiftiReadOptions.Default;
        options.Validate();
        using var file = OpenFile(path);
        using var source = Open(file, path);
        var h = ReadHeaderCore(source, path, options);
        if (h.HasScaling || h.IsLittleEndian != BitConverter.IsLittleEndian || h.Datatype is not (NiftiDatatype.UInt8 or NiftiDatatype.Int16))
        {
            var v = ReadVoxels(source, path, h, options, floats);
            return new CanonicalVolume(v.Size, v.Affine, path, v.Data, null);
        }

        if (h.Datatype == NiftiDatatype.UInt8 && bytes is not null)
        {
            var (size, affine, data) = ReadIntegerVoxels(source, path, h, options, bytes);
            return new CanonicalVolume(size, affine, path, null, null, data);
        }

        var (grid, canonicalAffine, voxels) = ReadIntegerVoxels(source, path, h, options, shorts);
        return new CanonicalVolume(grid, canonicalAffine, path, null, voxels);
    }

    /// <summary>
    /// Reads unscaled native-order uint8 or int16 voxels into T (int16: either; byte: uint8 only) in the canonical
    /// grid, whole rows at a time.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (GridSize Size, Affine Affine, T[] Data) ReadIntegerVoxels<T>(SourceReader source, string name, NiftiHeader h, NiftiReadOptions options, Func<long, T[]> allocate)
        where T : unmanaged
    {
        var toSkip = h.VoxOffset - h.HeaderSize;
        var skipped = source.Skip(toSkip);
        if (skipped < toSkip)
        {
            throw new NiftiFormatException(name,
                $"bad vox_offset {h.VoxOffset}: beyond the end of the data ({source.EndDescription(h.HeaderSize + skipped)} bytes)");
        }

        var storage = h.StorageSize;
        var bytesPerVoxel = h.Datatype == NiftiDatatype.Int16 ? 2 : 1;
        var count = storage.Count;
        var (storageAffine, _) = StorageAffine(h);
        var reorientation = options.Canonicalize ? Reorientation.FromAffine(storageAffine) : Reorientation.Identity;
        var canonical = reorientation.CanonicalSize(storage);
        var data = allocate(count);
        if (data.LongLength != count)
        {
            throw new InvalidOperationException($"the allocator returned {data.LongLength} voxels for {count}");
        }

        Span<long> step = stackalloc long[3];
        Span<long> offset = stackalloc long[3];
        reorientation.StorageToCanonicalSteps(storage, step, offset);
        var widen = bytesPerVoxel == 1 && typeof(T) == typeof(short);
        var sliceVoxels = (long)storage.X * storage.Y;
        if (!widen && Math.Abs(step[0]) == 1 && Math.Abs(step[1]) == storage.X && Math.Abs(step[2]) == sliceVoxels && (step[0] < 0 || step[1] > 0))
        {
            // The axes keep their order and the rows of a slice keep theirs (or both the rows and their voxels are
            // reversed): a run of whole rows of one slice lands as one contiguous block, so it is decompressed
            // straight into its place and, for flipped axes, reversed there.
            ReadBlocks(source, name, h, data, storage, step, offset, bytesPerVoxel);
        }
        else
        {
            ReadRows(source, name, h, data, storage, step, offset, bytesPerVoxel, widen);
        }

        if (source.IsGzip)
        {
            source.VerifyGzipEnd(options.GzipTrailerCheckBytes);
        }

        return (canonical, reorientation.CanonicalAffine(storageAffine, storage), data);
    }

    /// <summary>
    /// Reads runs of whole rows of one slice straight into their canonical block: in storage order when the first
    /// two axes are not flipped, reversed as a whole when both are (rows and voxels), reversed row by row when only
    /// the first is.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ReadBlocks<T>(SourceReader source, string name, NiftiHeader h, T[] data, GridSize storage, ReadOnlySpan<long> step, ReadOnlySpan<long> offset, int bytesPerVoxel)
        where T : unmanaged
    {
        var rowLength = storage.X;
        var rowsPerBlock = Math.Max(1, Math.Min(storage.Y, ChunkVoxels / rowLength));
        var (flip0, flip1) = (step[0] < 0, step[1] < 0);
        long done = 0;
        for (var i2 = 0; i2 < storage.Z; i2++)
        {
            var sliceBase = offset[2] + (i2 * step[2]);
            for (var i1 = 0; i1 < storage.Y; i1 += rowsPerBlock)
            {
                var rows = Math.Min(rowsPerBlock, storage.Y - i1);
                var n = rows * rowLength;

                // Canonical rows of this run: i1 .. i1 + rows - 1, or (flipped) Y - i1 - rows .. Y - 1 - i1.
                var firstRow = flip1 ? storage.Y - i1 - rows : i1;
                var block = data.AsSpan((int)(sliceBase + ((long)firstRow * rowLength)), n);
                var bytes = MemoryMarshal.AsBytes(block);
                var got = source.Read(bytes);
                if (got < bytes.Length)
                {
                    var have = (done * bytesPerVoxel) + got;
                    throw new NiftiFormatException(name,
                        $"truncated: {source.EndDescription(h.VoxOffset + have)} bytes, but {storage.Count} {NiftiDatatypes.Name(h.DatatypeCode)} voxels need {storage.Count * bytesPerVoxel} bytes from offset {h.VoxOffset}");
                }

                if (flip1)
                {
                    block.Reverse();
                }
                else if (flip0)
                {
                    for (var r = 0; r < n; r += rowLength)
                    {
                        block.Slice(r, rowLength).Reverse();
                    }
                }

                done += n;
            }
        }
    }

    /// <summary>Reads chunks of whole rows and places each row in its canonical position (any reorientation).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ReadRows<T>(SourceReader source, string name, NiftiHeader h, T[] data, GridSize storage, ReadOnlySpan<long> step, ReadOnlySpan<long> offset, int bytesPerVoxel, bool widen)
        where T : unmanaged
    {
        var count = storage.Count;
        var rowLength = storage.X;
        var rowsPerChunk = Math.Max(1, ChunkVoxels / rowLength);
        var chunkVoxels = (int)Math.Min(count, (long)rowsPerChunk * rowLength);
        var bytes = new byte[(long)chunkVoxels * bytesPerVoxel];
        var widened = widen ? new short[chunkVoxels] : [];
        long done = 0;
        int i1 = 0, i2 = 0;
        var rowBase = offset[0] + offset[1] + offset[2];
        while (done < count)
        {
            var n = (int)Math.Min(chunkVoxels, count - done);
            var span = bytes.AsSpan(0, n * bytesPerVoxel);
            var got = source.Read(span);
            if (got < span.Length)
            {
                var have = (done * bytesPerVoxel) + got;
                throw new NiftiFormatException(name,
                    $"truncated: {source.EndDescription(h.VoxOffset + have)} bytes, but {count} {NiftiDatatypes.Name(h.DatatypeCode)} voxels need {count * bytesPerVoxel} bytes from offset {h.VoxOffset}");
            }

            ReadOnlySpan<T> chunk;
            if (widen)
            {
                Widen(span, widened.AsSpan(0, n));
                chunk = MemoryMarshal.Cast<short, T>(widened.AsSpan(0, n));
            }
            else
            {
                chunk = MemoryMarshal.Cast<byte, T>(span);
            }

            // Whole rows, placed in their canonical position (reversed for a flipped first axis).
            PlaceRows(chunk, data, rowLength, storage.Y, step, offset, ref i1, ref i2, ref rowBase);

            done += n;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Widen(ReadOnlySpan<byte> src, Span<short> dst)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= src.Length - Vector256<byte>.Count; i += Vector256<byte>.Count)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Create(src[i..]));
                lo.AsInt16().CopyTo(dst[i..]);
                hi.AsInt16().CopyTo(dst[(i + 16)..]);
            }
        }

        for (; i < src.Length; i++)
        {
            dst[i] = src[i];
        }
    }
}
