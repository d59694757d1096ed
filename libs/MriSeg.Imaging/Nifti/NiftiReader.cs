using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Runtime.CompilerServices;

namespace MriSeg.Imaging.Nifti;

/// <summary>
/// Reads NIfTI-1 and NIfTI-2 single-file images (.nii), gzip-compressed or not (detected by the gzip magic
/// bytes, whatever the extension), in either byte order. Datatypes uint8, int16, int32, float32 and float64;
/// scl_slope/scl_inter applied; reoriented to the canonical RAS+ grid by axis permutations and flips.
/// </summary>
/// <remarks>
/// Defensive by design: the header is validated completely, and the declared voxel count checked against
/// <see cref="NiftiReadOptions.MaxVoxels"/>, before anything proportional to it is allocated; the voxels are
/// decompressed and converted in bounded chunks straight into their canonical place. Every problem with the
/// bytes (truncation, corruption, lies, unsupported content) is a <see cref="NiftiFormatException"/> naming the
/// file and the problem.
/// </remarks>
public static partial class NiftiReader
{
    private const int ChunkVoxels = 64 * 1024;
    private const string SupportedList = "2 (uint8), 4 (int16), 8 (int32), 16 (float32), 64 (float64)";

    /// <summary>Reads a volume from a file.</summary>
    public static Volume Read(string path, NiftiReadOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using var file = OpenFile(path);
        return Read(file, path, options);
    }

    /// <summary>Reads a volume from a stream (read forward only; <paramref name="name"/> names it in errors).</summary>
    public static Volume Read(Stream stream, string name, NiftiReadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(name);
        options ??= NiftiReadOptions.Default;
        options.Validate();
        using var source = Open(stream, name);
        var header = ReadHeaderCore(source, name, options);
        return ReadVoxels(source, name, header, options, null);
    }

    /// <summary>
    /// Reads a volume from a file into an array that <paramref name="allocate"/> provides for the declared voxel
    /// count (called once, after every header check), so that callers reading many volumes can reuse buffers.
    /// </summary>
    internal static Volume Read(string path, NiftiReadOptions? options, Func<long, float[]> allocate)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        options ??= NiftiReadOptions.Default;
        options.Validate();
        using var file = OpenFile(path);
        using var source = Open(file, path);
        var header = ReadHeaderCore(source, path, options);
        return ReadVoxels(source, path, header, options, allocate);
    }

    /// <summary>Reads and validates only the header of a file.</summary>
    public static NiftiHeader ReadHeader(string path, NiftiReadOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        using var file = OpenFile(path);
        return ReadHeader(file, path, options);
    }

    /// <summary>Reads and validates only the header from a stream.</summary>
    public static NiftiHeader ReadHeader(Stream stream, string name, NiftiReadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(name);
        options ??= NiftiReadOptions.Default;
        options.Validate();
        using var source = Open(stream, name);
        return ReadHeaderCore(source, name, options);
    }

    /// <summary>True when the bytes start with the gzip magic (1F 8B).</summary>
    public static bool IsGzip(ReadOnlySpan<byte> start) => start.Length >= 2 && start[0] == 0x1F && start[1] == 0x8B;

    private static FileStream OpenFile(string path) =>
        new(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 64 * 1024, FileOptions.SequentialScan);

    private static SourceReader Open(Stream stream, string name)
    {
        long? remaining = null;
        if (stream.CanSeek)
        {
            try
            {
                remaining = stream.Length - stream.Position;
            }
            catch (NotSupportedException)
            {
            }
        }

        var magic = new byte[2];
        var got = 0;
        while (got < 2)
        {
            var n = stream.Read(magic, got, 2 - got);
            if (n == 0)
            {
                break;
            }

            got += n;
        }

        if (got == 0)
        {
            throw new NiftiFormatException(name, "the file is empty");
        }

        var prefixed = new PrefixedStream(magic.AsSpan(0, got).ToArray(), stream);
        if (IsGzip(magic.AsSpan(0, got)))
        {
            return new SourceReader(new GZipStream(prefixed, CompressionMode.Decompress, leaveOpen: false), name, gzip: true, knownLength: null);
        }

        return new SourceReader(prefixed, name, gzip: false, knownLength: remaining);
    }

    private static NiftiHeader ReadHeaderCore(SourceReader source, string name, NiftiReadOptions options)
    {
        Span<byte> first = stackalloc byte[4];
        var got = source.Read(first);
        if (got < 4)
        {
            throw new NiftiFormatException(name, $"truncated: {source.EndDescription(got)} bytes, too short for a NIfTI header");
        }

        var le = BinaryPrimitives.ReadInt32LittleEndian(first);
        var be = BinaryPrimitives.ReadInt32BigEndian(first);
        int version;
        bool little;
        if (le is NiftiLayout.Nifti1HeaderSize or NiftiLayout.Nifti2HeaderSize)
        {
            little = true;
            version = le == NiftiLayout.Nifti1HeaderSize ? 1 : 2;
        }
        else if (be is NiftiLayout.Nifti1HeaderSize or NiftiLayout.Nifti2HeaderSize)
        {
            little = false;
            version = be == NiftiLayout.Nifti1HeaderSize ? 1 : 2;
        }
        else
        {
            throw new NiftiFormatException(name,
                $"not a NIfTI file: sizeof_hdr is {le} (little-endian) / {be} (big-endian), must be 348 (NIfTI-1) or 540 (NIfTI-2)");
        }

        var size = version == 1 ? NiftiLayout.Nifti1HeaderSize : NiftiLayout.Nifti2HeaderSize;
        var bytes = new byte[size];
        first.CopyTo(bytes);
        got = source.Read(bytes.AsSpan(4));
        if (got < size - 4)
        {
            throw new NiftiFormatException(name,
                $"truncated: {source.EndDescription(4 + got)} bytes, inside the {size}-byte NIfTI-{version} header");
        }

        var h = version == 1 ? ParseV1(bytes, little, name) : ParseV2(bytes, little, name);
        Validate(h, name, options, source.KnownLength);
        return h;
    }

    private static NiftiHeader ParseV1(byte[] b, bool little, string name)
    {
        var magic = b.AsSpan(NiftiLayout.V1.Magic, 4);
        if (!magic.SequenceEqual(NiftiLayout.Magic1))
        {
            if (magic.SequenceEqual(NiftiLayout.Magic1Pair))
            {
                throw new NiftiFormatException(name,
                    "magic is \"ni1\": a detached .hdr/.img pair, which is not supported (only single-file .nii/.nii.gz)");
            }

            throw new NiftiFormatException(name, $"bad magic {Printable(magic)}, expected \"n+1\\0\" for a NIfTI-1 single file");
        }

        var r = new FieldReader(b, little);
        var dim = new long[8];
        var pixdim = new double[8];
        for (var i = 0; i < 8; i++)
        {
            dim[i] = r.I16(NiftiLayout.V1.Dim + (2 * i));
            pixdim[i] = r.F32(NiftiLayout.V1.Pixdim + (4 * i));
        }

        var voxOffset = r.F32(NiftiLayout.V1.VoxOffset);
        if (!double.IsFinite(voxOffset) || voxOffset < 0 || voxOffset != Math.Floor(voxOffset) || voxOffset > long.MaxValue / 2)
        {
            throw new NiftiFormatException(name, $"bad vox_offset {Num(voxOffset)}: must be a non-negative whole number of bytes");
        }

        var srow = new double[12];
        for (var i = 0; i < 12; i++)
        {
            srow[i] = r.F32(NiftiLayout.V1.Srow + (4 * i));
        }

        return new NiftiHeader
        {
            Version = 1,
            IsLittleEndian = little,
            Dim = dim,
            Pixdim = pixdim,
            DatatypeCode = r.I16(NiftiLayout.V1.Datatype),
            Bitpix = r.I16(NiftiLayout.V1.Bitpix),
            VoxOffset = (long)voxOffset,
            SclSlope = r.F32(NiftiLayout.V1.SclSlope),
            SclInter = r.F32(NiftiLayout.V1.SclInter),
            QformCode = r.I16(NiftiLayout.V1.QformCode),
            SformCode = r.I16(NiftiLayout.V1.SformCode),
            Quaternion = (r.F32(NiftiLayout.V1.QuaternB), r.F32(NiftiLayout.V1.QuaternB + 4), r.F32(NiftiLayout.V1.QuaternB + 8)),
            QuaternionOffset = (r.F32(NiftiLayout.V1.QuaternB + 12), r.F32(NiftiLayout.V1.QuaternB + 16), r.F32(NiftiLayout.V1.QuaternB + 20)),
            Srow = srow,
            XyztUnits = b[NiftiLayout.V1.XyztUnits],
            IntentCode = r.I16(NiftiLayout.V1.IntentCode),
            Description = Text(b.AsSpan(NiftiLayout.V1.Descrip, 80)),
        };
    }

    private static NiftiHeader ParseV2(byte[] b, bool little, string name)
    {
        var magic = b.AsSpan(NiftiLayout.V2.Magic, 8);
        if (!magic.SequenceEqual(NiftiLayout.Magic2))
        {
            if (magic[..4].SequenceEqual("ni2\0"u8))
            {
                throw new NiftiFormatException(name,
                    "magic is \"ni2\": a detached .hdr/.img pair, which is not supported (only single-file .nii/.nii.gz)");
            }

            if (magic[..4].SequenceEqual("n+2\0"u8))
            {
                throw new NiftiFormatException(name,
                    $"corrupted NIfTI-2 magic {Printable(magic)} (expected \"n+2\\0\\r\\n\\x1A\\n\"; the file went through a text-mode transfer?)");
            }

            throw new NiftiFormatException(name, $"bad magic {Printable(magic)}, expected \"n+2\\0\\r\\n\\x1A\\n\" for a NIfTI-2 single file");
        }

        var r = new FieldReader(b, little);
        var dim = new long[8];
        var pixdim = new double[8];
        for (var i = 0; i < 8; i++)
        {
            dim[i] = r.I64(NiftiLayout.V2.Dim + (8 * i));
            pixdim[i] = r.F64(NiftiLayout.V2.Pixdim + (8 * i));
        }

        var srow = new double[12];
        for (var i = 0; i < 12; i++)
        {
            srow[i] = r.F64(NiftiLayout.V2.Srow + (8 * i));
        }

        var voxOffset = r.I64(NiftiLayout.V2.VoxOffset);
        if (voxOffset < 0)
        {
            throw new NiftiFormatException(name, $"bad vox_offset {voxOffset}: must be a non-negative number of bytes");
        }

        return new NiftiHeader
        {
            Version = 2,
            IsLittleEndian = little,
            Dim = dim,
            Pixdim = pixdim,
            DatatypeCode = r.I16(NiftiLayout.V2.Datatype),
            Bitpix = r.I16(NiftiLayout.V2.Bitpix),
            VoxOffset = voxOffset,
            SclSlope = r.F64(NiftiLayout.V2.SclSlope),
            SclInter = r.F64(NiftiLayout.V2.SclInter),
            QformCode = r.I32(NiftiLayout.V2.QformCode),
            SformCode = r.I32(NiftiLayout.V2.SformCode),
            Quaternion = (r.F64(NiftiLayout.V2.QuaternB), r.F64(NiftiLayout.V2.QuaternB + 8), r.F64(NiftiLayout.V2.QuaternB + 16)),
            QuaternionOffset = (r.F64(NiftiLayout.V2.QuaternB + 24), r.F64(NiftiLayout.V2.QuaternB + 32), r.F64(NiftiLayout.V2.QuaternB + 40)),
            Srow = srow,
            XyztUnits = r.I32(NiftiLayout.V2.XyztUnits),
            IntentCode = r.I32(NiftiLayout.V2.IntentCode),
            Description = Text(b.AsSpan(NiftiLayout.V2.Descrip, 80)),
        };
    }

    private static void Validate(NiftiHeader h, string name, NiftiReadOptions options, long? knownLength)
    {
        var dim0 = h.Dim[0];
        if (dim0 is < 1 or > 7)
        {
            throw new NiftiFormatException(name, $"dim[0] is {dim0}, must be 1..7 (the number of dimensions)");
        }

        for (var i = 1; i <= dim0; i++)
        {
            if (h.Dim[i] <= 0)
            {
                throw new NiftiFormatException(name, $"dim[{i}] is {h.Dim[i]}: every dimension must be positive");
            }
        }

        for (var i = 4; i <= dim0; i++)
        {
            if (h.Dim[i] > 1)
            {
                var what = i == 4 ? $"a 4-D series of {h.Dim[4]} volumes" : $"a {dim0}-D image with dim[{i}] = {h.Dim[i]}";
                throw new NiftiFormatException(name,
                    $"{what}: only 3-D volumes are supported (a 4-D file with a single volume, dim[4] = 1, is fine)");
            }
        }

        long voxels = 1;
        try
        {
            for (var i = 1; i <= Math.Min(dim0, 3); i++)
            {
                voxels = checked(voxels * h.Dim[i]);
            }
        }
        catch (OverflowException)
        {
            throw new NiftiFormatException(name,
                $"dimensions {DimText(h)} overflow: their product does not fit 64 bits (a lying header or a decompression bomb)");
        }

        if (voxels > options.MaxVoxels)
        {
            throw new NiftiFormatException(name,
                $"dimensions {DimText(h)} declare {voxels.ToString(CultureInfo.InvariantCulture)} voxels, over the limit of {options.MaxVoxels.ToString(CultureInfo.InvariantCulture)} (NiftiReadOptions.MaxVoxels)");
        }

        if (!NiftiDatatypes.IsSupported(h.DatatypeCode))
        {
            throw new NiftiFormatException(name,
                $"unsupported datatype code {h.DatatypeCode} ({NiftiDatatypes.Name(h.DatatypeCode)}); supported: {SupportedList}");
        }

        var bits = NiftiDatatypes.BytesPerVoxel(h.Datatype) * 8;
        if (h.Bitpix != bits)
        {
            throw new NiftiFormatException(name,
                $"bitpix is {h.Bitpix} but datatype {h.DatatypeCode} ({NiftiDatatypes.Name(h.DatatypeCode)}) has {bits} bits per voxel");
        }

        var headerSize = h.HeaderSize;
        if (h.VoxOffset < headerSize)
        {
            throw new NiftiFormatException(name, $"bad vox_offset {h.VoxOffset}: the voxels cannot start inside the {headerSize}-byte header");
        }

        if (h.VoxOffset - headerSize > options.MaxExtensionBytes + 4)
        {
            throw new NiftiFormatException(name,
                $"bad vox_offset {h.VoxOffset}: it leaves {h.VoxOffset - headerSize} bytes of header extensions, over the limit of {options.MaxExtensionBytes} (NiftiReadOptions.MaxExtensionBytes)");
        }

        var dataBytes = voxels * NiftiDatatypes.BytesPerVoxel(h.Datatype);
        if (knownLength is { } length)
        {
            if (h.VoxOffset >= length && dataBytes > 0)
            {
                throw new NiftiFormatException(name, $"bad vox_offset {h.VoxOffset}: beyond the end of the data (the file has {length} bytes)");
            }

            if (h.VoxOffset + dataBytes > length)
            {
                throw new NiftiFormatException(name,
                    $"truncated: {voxels} {NiftiDatatypes.Name(h.DatatypeCode)} voxels need {dataBytes} bytes from offset {h.VoxOffset}, but the file has only {length} bytes");
            }
        }

        for (var i = 1; i <= 3; i++)
        {
            if (!double.IsFinite(h.Pixdim[i]) && i <= dim0)
            {
                throw new NiftiFormatException(name, $"pixdim[{i}] is {Num(h.Pixdim[i])}: voxel sizes must be finite");
            }
        }

        if (h.SformCode > 0 && !Affine.FromRows(h.Srow.ToArray()).IsUsable)
        {
            throw new NiftiFormatException(name,
                $"sform_code is {h.SformCode} but srow_x/y/z are degenerate (non-finite or singular): {Affine.FromRows(h.Srow.ToArray())}");
        }

        if (h.SformCode <= 0 && h.QformCode > 0)
        {
            var (b, c, d) = h.Quaternion;
            var (x, y, z) = h.QuaternionOffset;
            if (!(double.IsFinite(b) && double.IsFinite(c) && double.IsFinite(d) && double.IsFinite(x) && double.IsFinite(y) && double.IsFinite(z)))
            {
                throw new NiftiFormatException(name, $"qform_code is {h.QformCode} but the quaternion or its offsets are not finite");
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Volume ReadVoxels(SourceReader source, string name, NiftiHeader h, NiftiReadOptions options, Func<long, float[]>? allocate)
    {
        // Skip header extensions up to vox_offset (bounded by MaxExtensionBytes in Validate).
        var toSkip = h.VoxOffset - h.HeaderSize;
        var skipped = source.Skip(toSkip);
        if (skipped < toSkip)
        {
            throw new NiftiFormatException(name,
                $"bad vox_offset {h.VoxOffset}: beyond the end of the data ({source.EndDescription(h.HeaderSize + skipped)} bytes)");
        }

        var storage = h.StorageSize;
        var datatype = h.Datatype;
        var elementSize = NiftiDatatypes.BytesPerVoxel(datatype);
        var count = storage.Count;

        var (storageAffine, affineSource) = StorageAffine(h);
        var reorientation = options.Canonicalize ? Reorientation.FromAffine(storageAffine) : Reorientation.Identity;
        var canonical = reorientation.CanonicalSize(storage);

        // Every check on the declared size has passed: this is the one allocation proportional to it.
        var data = allocate?.Invoke(count) ?? new float[count];
        if (data.LongLength != count)
        {
            throw new InvalidOperationException($"the allocator returned {data.LongLength} voxels for {count}");
        }

        Span<long> step = stackalloc long[3];
        Span<long> offset = stackalloc long[3];
        reorientation.StorageToCanonicalSteps(storage, step, offset);
        var (slope, intercept) = h.Scaling;
        var scaled = h.HasScaling;
        var little = h.IsLittleEndian;
        var replace = options.NonFinite == NonFiniteVoxelPolicy.Replace;
        var replacement = options.NonFiniteReplacement;

        // Chunks of whole stored rows where a row fits a chunk: each row then lands in its canonical place with
        // one block copy (reversed for a flipped first axis) instead of voxel by voxel.
        var rowLength = storage.X;
        var rowsPerChunk = rowLength <= ChunkVoxels ? Math.Max(1, ChunkVoxels / rowLength) : 0;
        var chunkVoxels = (int)Math.Min(count, rowsPerChunk > 0 ? (long)rowsPerChunk * rowLength : ChunkVoxels);
        var bytes = new byte[chunkVoxels * elementSize];
        var values = new float[chunkVoxels];
        var mayBeNonFinite = scaled || datatype is NiftiDatatype.Float32 or NiftiDatatype.Float64;
        var step0 = step[0];
        long nonFinite = 0;
        long done = 0;
        int i0 = 0, i1 = 0, i2 = 0;
        var rowBase = offset[0] + offset[1] + offset[2];
        while (done < count)
        {
            var n = (int)Math.Min(chunkVoxels, count - done);
            var span = bytes.AsSpan(0, n * elementSize);
            var got = source.Read(span);
            if (got < span.Length)
            {
                var have = (done * elementSize) + got;
                throw new NiftiFormatException(name,
                    $"truncated: {source.EndDescription(h.VoxOffset + have)} bytes, but {count} {NiftiDatatypes.Name(h.DatatypeCode)} voxels need {count * elementSize} bytes from offset {h.VoxOffset}");
            }

            var chunk = values.AsSpan(0, n);
            Decode(span, chunk, datatype, little, scaled, slope, intercept);
            if (mayBeNonFinite)
            {
                nonFinite += VoxelConversion.ReplaceNonFinite(chunk, replacement);
            }

            if (rowsPerChunk > 0)
            {
                // The voxel count is a whole number of rows, and so is every chunk.
                PlaceRows<float>(chunk, data, rowLength, storage.Y, step, offset, ref i1, ref i2, ref rowBase);
            }
            else
            {
                for (var v = 0; v < n; v++)
                {
                    data[rowBase + (i0 * step0)] = chunk[v];
                    if (++i0 == storage.X)
                    {
                        i0 = 0;
                        if (++i1 == storage.Y)
                        {
                            i1 = 0;
                            i2++;
                        }

                        rowBase = offset[0] + offset[1] + offset[2] + (i1 * step[1]) + (i2 * step[2]);
                    }
                }
            }

            done += n;
        }

        if (nonFinite > 0 && !replace)
        {
            throw new NiftiFormatException(name,
                $"{nonFinite} of {count} voxels are NaN or infinite (after scaling); read with NonFiniteVoxelPolicy.Replace to replace them");
        }

        if (source.IsGzip)
        {
            source.VerifyGzipEnd(options.GzipTrailerCheckBytes);
        }

        var storageSpacing = new Spacing(Pixdim(h, 1), Pixdim(h, 2), Pixdim(h, 3));
        var canonicalAffine = reorientation.CanonicalAffine(storageAffine, storage);
        return new Volume(data, canonical, canonicalAffine, datatype, affineSource, reorientation, h, name,
            replace ? nonFinite : 0, reorientation.CanonicalSpacing(storageSpacing));
    }

    /// <summary>|pixdim[i]| for a used axis; 1 for an unused axis or a zero voxel size (as the reference library does).</summary>
    private static double Pixdim(NiftiHeader h, int i)
    {
        if (i > h.Dim[0])
        {
            return 1;
        }

        var v = Math.Abs(h.Pixdim[i]);
        return v > 0 ? v : 1;
    }

    /// <summary>The stored grid's affine: sform when sform_code &gt; 0, else qform when qform_code &gt; 0, else pixdim.</summary>
    internal static (Affine Affine, AffineSource Source) StorageAffine(NiftiHeader h)
    {
        if (h.SformCode > 0)
        {
            return (Affine.FromRows(h.Srow.ToArray()), AffineSource.Sform);
        }

        if (h.QformCode > 0)
        {
            var (b, c, d) = h.Quaternion;
            var (x, y, z) = h.QuaternionOffset;
            return (Affine.FromQuaternion(b, c, d, x, y, z, Pixdim(h, 1), Pixdim(h, 2), Pixdim(h, 3), h.Pixdim[0]), AffineSource.Qform);
        }

        return (Affine.Diagonal(Pixdim(h, 1), Pixdim(h, 2), Pixdim(h, 3)), AffineSource.Pixdim);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Decode(ReadOnlySpan<byte> src, Span<float> dst, NiftiDatatype type, bool little, bool scaled, double slope, double intercept)
    {
        if (!scaled && little == BitConverter.IsLittleEndian && VoxelConversion.TryConvertNative(src, dst, type))
        {
            return;
        }

        switch (type)
        {
            case NiftiDatatype.UInt8:
                for (var i = 0; i < dst.Length; i++)
                {
                    dst[i] = scaled ? (float)((src[i] * slope) + intercept) : src[i];
                }

                break;
            case NiftiDatatype.Int16:
                for (var i = 0; i < dst.Length; i++)
                {
                    var s = src.Slice(i * 2, 2);
                    double v = little ? BinaryPrimitives.ReadInt16LittleEndian(s) : BinaryPrimitives.ReadInt16BigEndian(s);
                    dst[i] = scaled ? (float)((v * slope) + intercept) : (float)v;
                }

                break;
            case NiftiDatatype.Int32:
                for (var i = 0; i < dst.Length; i++)
                {
                    var s = src.Slice(i * 4, 4);
                    double v = little ? BinaryPrimitives.ReadInt32LittleEndian(s) : BinaryPrimitives.ReadInt32BigEndian(s);
                    dst[i] = scaled ? (float)((v * slope) + intercept) : (float)v;
                }

                break;
            case NiftiDatatype.Float32:
                for (var i = 0; i < dst.Length; i++)
                {
                    var s = src.Slice(i * 4, 4);
                    var v = little ? BinaryPrimitives.ReadSingleLittleEndian(s) : BinaryPrimitives.ReadSingleBigEndian(s);
                    dst[i] = scaled ? (float)((v * slope) + intercept) : v;
                }

                break;
            case NiftiDatatype.Float64:
                for (var i = 0; i < dst.Length; i++)
                {
                    var s = src.Slice(i * 8, 8);
                    var v = little ? BinaryPrimitives.ReadDoubleLittleEndian(s) : BinaryPrimitives.ReadDoubleBigEndian(s);
                    dst[i] = (float)(scaled ? (v * slope) + intercept : v);
                }

                break;
            default:
                throw new InvalidOperationException($"datatype {type} passed validation but has no decoder");
        }
    }

    private static string DimText(NiftiHeader h) =>
        string.Join("x", Enumerable.Range(1, (int)h.Dim[0]).Select(i => h.Dim[i].ToString(CultureInfo.InvariantCulture)));

    private static string Num(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private static string Text(ReadOnlySpan<byte> field)
    {
        var end = field.IndexOf((byte)0);
        if (end >= 0)
        {
            field = field[..end];
        }

        return Encoding.Latin1.GetString(field).Trim();
    }

    private static string Printable(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder("\"");
        foreach (var b in bytes)
        {
            if (b is >= 0x20 and < 0x7F && b != (byte)'"' && b != (byte)'\\')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append(CultureInfo.InvariantCulture, $"\\x{b:X2}");
            }
        }

        return sb.Append('"').ToString();
    }

    /// <summary>Reads header fields in the file's byte order.</summary>
    private readonly struct FieldReader(byte[] bytes, bool little)
    {
        public short I16(int at) => little
            ? BinaryPrimitives.ReadInt16LittleEndian(bytes.AsSpan(at))
            : BinaryPrimitives.ReadInt16BigEndian(bytes.AsSpan(at));

        public int I32(int at) => little
            ? BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(at))
            : BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(at));

        public long I64(int at) => little
            ? BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(at))
            : BinaryPrimitives.ReadInt64BigEndian(bytes.AsSpan(at));

        public double F32(int at) => little
            ? BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(at))
            : BinaryPrimitives.ReadSingleBigEndian(bytes.AsSpan(at));

        public double F64(int at) => little
            ? BinaryPrimitives.ReadDoubleLittleEndian(bytes.AsSpan(at))
            : BinaryPrimitives.ReadDoubleBigEndian(bytes.AsSpan(at));
    }

    /// <summary>
    /// Places a chunk of whole stored rows at their canonical positions (one block copy per row, reversed for a flipped
    /// first axis) and advances the row cursor (<paramref name="i1"/>, <paramref name="i2"/>, <paramref name="rowBase"/>).
    /// </summary>
    private static void PlaceRows<T>(ReadOnlySpan<T> chunk, T[] data, int rowLength, int rows, ReadOnlySpan<long> step, ReadOnlySpan<long> offset,
        ref int i1, ref int i2, ref long rowBase)
    {
        var step0 = step[0];
        for (var r = 0; r < chunk.Length; r += rowLength)
        {
            var row = chunk.Slice(r, rowLength);
            if (step0 == 1)
            {
                row.CopyTo(data.AsSpan((int)rowBase, rowLength));
            }
            else if (step0 == -1)
            {
                var target = data.AsSpan((int)(rowBase - rowLength + 1), rowLength);
                row.CopyTo(target);
                target.Reverse();
            }
            else
            {
                var d = rowBase;
                for (var v = 0; v < rowLength; v++, d += step0)
                {
                    data[d] = row[v];
                }
            }

            if (++i1 == rows)
            {
                i1 = 0;
                i2++;
            }

            rowBase = offset[0] + offset[1] + offset[2] + (i1 * step[1]) + (i2 * step[2]);
        }
    }
}
