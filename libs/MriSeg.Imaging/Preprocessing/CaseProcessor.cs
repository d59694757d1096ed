using System.Buffers;
using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Security.Cryptography;
using System.Text;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Slices;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>A case that cannot be used: a missing or unreadable file, grids that disagree, bad labels. The message is the reason.</summary>
internal sealed class CaseProblemException : Exception
{
    public CaseProblemException(string reason, Exception? inner = null)
        : base(reason, inner)
    {
    }

    public CaseProblemException()
    {
    }

    public CaseProblemException(string message)
        : base(message)
    {
    }
}

/// <summary>
/// One case's extracted slices: [n, C, H, W] images and [n, K, H, W] masks, in the first ImageLength and MaskLength
/// elements of arrays rented from the shared pool (returned by <see cref="Return"/> once copied into the dataset).
/// </summary>
internal sealed record CaseSlices(string CaseId, string Pseudonym, int Count, int TumourSlices, int Height, int Width, float[] Images, int ImageLength, byte[] Masks, int MaskLength)
{
    public ReadOnlySpan<float> ImageValues => Images.AsSpan(0, ImageLength);

    public ReadOnlySpan<byte> MaskValues => Masks.AsSpan(0, MaskLength);

    public void Return()
    {
        if (Images.Length > 0)
        {
            ArrayPool<float>.Shared.Return(Images);
        }

        if (Masks.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(Masks);
        }
    }
}

/// <summary>
/// The buffers one worker reuses from case to case (volumes of one grid size are read into the same arrays), so a
/// run allocates per worker, not per volume.
/// </summary>
internal sealed class CaseWorkspace
{
    private readonly float[]?[] _floats = new float[6][];
    private readonly short[]?[] _shorts = new short[6][];
    private byte[]? _labelBytes;

    public byte[] Mask { get; private set; } = [];

    public byte[] Labels { get; private set; } = [];

    /// <summary>The sampled brain voxels' indices (at most <see cref="CaseProcessor.StatisticsSamples"/> + 1).</summary>
    public int[] Indices { get; } = new int[CaseProcessor.StatisticsSamples + 1];

    /// <summary>The sampled voxels' values.</summary>
    public float[] Compact { get; } = new float[CaseProcessor.StatisticsSamples + 1];

    public int[] Stack = [];

    public IntensityStats.Scratch Stats { get; } = new();

    /// <summary>The float array of a slot (one per modality, plus one for the label volume), exactly n long.</summary>
    public float[] Floats(int slot, long n)
    {
        var a = _floats[slot];
        if (a is null || a.LongLength != n)
        {
            _floats[slot] = null;
            a = GC.AllocateUninitializedArray<float>(checked((int)n)); // the reader writes every voxel
            _floats[slot] = a;
        }

        return a;
    }

    /// <summary>The int16 array of a slot, exactly n long.</summary>
    public short[] Shorts(int slot, long n)
    {
        var a = _shorts[slot];
        if (a is null || a.LongLength != n)
        {
            _shorts[slot] = null;
            a = GC.AllocateUninitializedArray<short>(checked((int)n));
            _shorts[slot] = a;
        }

        return a;
    }

    /// <summary>The byte array labels are read into, exactly n long.</summary>
    public byte[] LabelBytes(long n)
    {
        if (_labelBytes is null || _labelBytes.LongLength != n)
        {
            _labelBytes = null;
            _labelBytes = GC.AllocateUninitializedArray<byte>(checked((int)n));
        }

        return _labelBytes;
    }

    /// <summary>Makes the mask and label buffers hold at least <paramref name="voxels"/>.</summary>
    public void Reserve(int voxels)
    {
        if (Mask.Length < voxels)
        {
            Mask = new byte[voxels];
            Labels = new byte[voxels];
        }
    }
}

/// <summary>Reads and pre-processes one case (see <see cref="Preprocessor"/> for the steps).</summary>
internal static class CaseProcessor
{
    private const int LabelSlot = 5;

    /// <summary>
    /// Processes one case. <paramref name="nativeGrid"/>: in native mode, the in-plane grid every case must have.
    /// </summary>
    /// <exception cref="CaseProblemException">The case cannot be used; the message says why and names the file.</exception>
    public static CaseSlices Process(SourceCase source, PreprocessOptions options, string pseudonym, CaseWorkspace ws, (int Height, int Width)? nativeGrid)
    {
        if (source.Problem is { } problem)
        {
            throw new CaseProblemException(problem);
        }

        var imagePaths = options.Modalities.Select(m => source.Files.TryGetValue(SourceLayouts.Role(m), out var p)
            ? p
            : throw new CaseProblemException($"missing {Brats.Suffix(m)} (expected {ExpectedName(source, SourceLayouts.Role(m))})")).ToArray();
        if (source.LabelFile is not { } label)
        {
            throw new CaseProblemException($"missing the label file (expected {ExpectedName(source, source.Layout == SourceLayout.NamedVolumes ? CaseFileRole.WholeTumourMask : CaseFileRole.BratsLabels)})");
        }

        if (options.Labels == LabelScheme.BratsRegions)
        {
            if (source.Layout == SourceLayout.PngSlices)
            {
                throw new CaseProblemException("labels brats need BraTS label maps, and the PNG slice layout carries only whole tumour (its label PNGs are min-max scaled): use labels wt");
            }

            if (label.Kind == CaseFileRole.WholeTumourMask)
            {
                throw new CaseProblemException($"labels brats need a BraTS label map {{0,1,2,4}}, and the case has only the whole-tumour mask {Path.GetFileName(label.Path)}: use labels wt");
            }
        }

        var loaded = source.Layout == SourceLayout.PngSlices
            ? LoadPng(imagePaths, label.Path, options, ws)
            : LoadVolumes(imagePaths, label, options, ws);
        return loaded switch
        {
            Loaded<short> shorts => Extract(source.CaseId, pseudonym, shorts, options, ws, nativeGrid),
            Loaded<float> floats => Extract(source.CaseId, pseudonym, floats, options, ws, nativeGrid),
            _ => throw new InvalidOperationException("unknown voxel type"),
        };
    }

    /// <summary>The file name a role is expected under, for messages.</summary>
    internal static string ExpectedName(SourceCase source, CaseFileRole role)
    {
        var suffix = role switch
        {
            CaseFileRole.Flair => "flair",
            CaseFileRole.T1 => "t1",
            CaseFileRole.T1ce => "t1ce",
            CaseFileRole.T2 => "t2",
            CaseFileRole.BratsLabels => "seg",
            _ => "GT_W",
        };
        return source.Layout switch
        {
            SourceLayout.PngSlices => $"{source.CaseId}_{suffix}.png",
            SourceLayout.NamedVolumes => role switch
            {
                CaseFileRole.Flair => "FLAIR.nii.gz",
                CaseFileRole.T1 => "T1.nii.gz",
                CaseFileRole.T1ce => "T1ce.nii.gz",
                CaseFileRole.T2 => "T2.nii.gz",
                CaseFileRole.BratsLabels => "seg.nii.gz",
                _ => "GT_W.nii.gz",
            },
            _ => $"{source.CaseId}_{suffix}.nii.gz",
        };
    }

    /// <summary>A case's data in memory: labels and the grid (n0 fastest, then n1, then slices).</summary>
    /// <param name="Labels">BraTS labels {0, 1, 2, 4} (a whole-tumour mask as {0, 1}).</param>
    /// <param name="N0">Size of the fastest axis.</param>
    /// <param name="N1">Size of the second axis.</param>
    /// <param name="Slices">Number of axial slices.</param>
    /// <param name="VolumeOrientation">
    /// True for a volume in the canonical RAS+ grid: a slice's rows (h) run along −x (patient right to left) and its
    /// columns (w) along −y (anterior to posterior), as in the BraTS PNG slices. False for a PNG: rows and columns as stored.
    /// </param>
    private abstract record Loaded(byte[] Labels, int N0, int N1, int Slices, bool VolumeOrientation)
    {
        public int Height => VolumeOrientation ? N0 : N1;

        public int Width => VolumeOrientation ? N1 : N0;
    }

    /// <summary>The images, one array per modality, of int16 or float32 voxels.</summary>
    private sealed record Loaded<T>(T[][] Images, byte[] Labels, int N0, int N1, int Slices, bool VolumeOrientation)
        : Loaded(Labels, N0, N1, Slices, VolumeOrientation)
        where T : unmanaged, INumber<T>;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Loaded LoadVolumes(string[] imagePaths, (string Path, CaseFileRole Kind) label, PreprocessOptions options, CaseWorkspace ws)
    {
        var read = new NiftiReadOptions { MaxVoxels = options.MaxVoxels };
        var volumes = new CanonicalVolume[imagePaths.Length];
        for (var m = 0; m < imagePaths.Length; m++)
        {
            var slot = m;
            volumes[m] = ReadVolume(imagePaths[m], read, ws, slot);
            CheckSameGrid(volumes[0], volumes[m]);
        }

        var labelVolume = ReadVolume(label.Path, read, ws, LabelSlot);
        CheckSameGrid(volumes[0], labelVolume);
        var size = volumes[0].Size;
        var count = (int)size.Count;
        ws.Reserve(count);
        var labelName = Path.GetFileName(label.Path);
        var labels = ws.Labels;
        if (labelVolume.Bytes is { } byteLabels)
        {
            // uint8 label files are read straight into bytes: only checked (and 3 renumbered) in place.
            ConvertLabels(byteLabels, byteLabels, label.Kind, labelName);
            labels = byteLabels;
        }
        else if (labelVolume.Shorts is { } shortLabels)
        {
            ConvertLabels(shortLabels, labels.AsSpan(0, count), label.Kind, labelName);
        }
        else
        {
            ConvertLabels(labelVolume.Floats!, labels.AsSpan(0, count), label.Kind, labelName);
        }

        // int16 voxels stay int16 (half the memory traffic) unless the case mixes them with float32 images.
        if (volumes.All(v => v.Shorts is not null))
        {
            return new Loaded<short>([.. volumes.Select(v => v.Shorts!)], labels, size.X, size.Y, size.Z, VolumeOrientation: true);
        }

        var floats = new float[volumes.Length][];
        for (var m = 0; m < volumes.Length; m++)
        {
            if (volumes[m].Shorts is { } shorts)
            {
                floats[m] = ws.Floats(m, count);
                for (var i = 0; i < count; i++)
                {
                    floats[m][i] = shorts[i];
                }
            }
            else
            {
                floats[m] = volumes[m].Floats!;
            }
        }

        return new Loaded<float>(floats, labels, size.X, size.Y, size.Z, VolumeOrientation: true);
    }

    private static CanonicalVolume ReadVolume(string path, NiftiReadOptions read, CaseWorkspace ws, int slot)
    {
        try
        {
            return NiftiReader.ReadCanonical(path, read, n => ws.Floats(slot, n), n => ws.Shorts(slot, n), slot == LabelSlot ? ws.LabelBytes : null);
        }
        catch (NiftiFormatException e)
        {
            throw new CaseProblemException($"{Path.GetFileName(path)}: {e.Problem}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CaseProblemException($"{Path.GetFileName(path)}: cannot read: {e.Message}", e);
        }
    }

    private static void CheckSameGrid(CanonicalVolume first, CanonicalVolume v)
    {
        if (v.Size != first.Size || !v.Affine.ApproximatelyEquals(first.Affine, 1e-3))
        {
            throw new CaseProblemException(
                $"{Path.GetFileName(v.Name)}: its grid {v.Size} / affine {v.Affine} differs from {Path.GetFileName(first.Name)}'s ({first.Size} / {first.Affine})");
        }
    }

    /// <summary>uint8 labels checked and copied (in place when the spans are the same); see the float overload for the rules.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvertLabels(ReadOnlySpan<byte> values, Span<byte> labels, CaseFileRole kind, string fileName)
    {
        var top = (byte)(kind == CaseFileRole.WholeTumourMask ? 1 : 4);
        var bad = values.IndexOfAnyExceptInRange((byte)0, top);
        if (bad >= 0)
        {
            var allowed = kind == CaseFileRole.WholeTumourMask ? "a whole-tumour mask holds only 0 and 1" : "BraTS labels are 0, 1, 2, 4";
            throw new CaseProblemException($"{fileName}: voxel {bad} has label {values[bad]}; {allowed}");
        }

        if (!values.Overlaps(labels))
        {
            values.CopyTo(labels);
        }

        var seen = (labels.Contains((byte)3) ? 1 << 3 : 0) | (labels.Contains((byte)4) ? 1 << 4 : 0);
        FinishLabels(labels[..values.Length], seen, fileName);
    }

    /// <summary>int16 labels to bytes (see the float overload for the rules).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvertLabels(ReadOnlySpan<short> values, Span<byte> labels, CaseFileRole kind, string fileName)
    {
        var i = 0;
        var seen = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var top = Vector256.Create((ushort)(kind == CaseFileRole.WholeTumourMask ? 1 : 4));
            var three = Vector256.Create((short)3);
            var four = Vector256.Create((short)4);
            var has3 = Vector256<short>.Zero;
            var has4 = Vector256<short>.Zero;
            for (; i <= values.Length - 32; i += 32)
            {
                var a = Vector256.Create(values[i..]);
                var b = Vector256.Create(values[(i + 16)..]);

                // 0 <= v <= top, as unsigned (negative values become large).
                if (Vector256.GreaterThanAny(Vector256.Max(a.AsUInt16(), b.AsUInt16()), top))
                {
                    break;
                }

                Vector256.Narrow(a, b).AsByte().CopyTo(labels[i..]);
                has3 |= Vector256.Equals(a, three) | Vector256.Equals(b, three);
                has4 |= Vector256.Equals(a, four) | Vector256.Equals(b, four);
            }

            seen |= (has3 != Vector256<short>.Zero ? 1 << 3 : 0) | (has4 != Vector256<short>.Zero ? 1 << 4 : 0);
        }

        for (; i < values.Length; i++)
        {
            var k = values[i];
            if (k is < 0 or > 4 || (kind == CaseFileRole.WholeTumourMask && k > 1))
            {
                var allowed = kind == CaseFileRole.WholeTumourMask ? "a whole-tumour mask holds only 0 and 1" : "BraTS labels are 0, 1, 2, 4";
                throw new CaseProblemException($"{fileName}: voxel {i} has label {k}; {allowed}");
            }

            seen |= 1 << k;
            labels[i] = (byte)k;
        }

        FinishLabels(labels, seen, fileName);
    }

    /// <summary>
    /// Float labels to bytes. A BraTS label map must hold only {0, 1, 2, 4}, or {0, 1, 2, 3} (the BraTS 2023
    /// numbering, enhancing tumour 3, stored here as 4); a whole-tumour mask only {0, 1}.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ConvertLabels(ReadOnlySpan<float> values, Span<byte> labels, CaseFileRole kind, string fileName)
    {
        // Fast path: every value one of 0..4 (checked 32 at a time), narrowed to bytes; anything else is found and
        // named by the scalar loop.
        var i = 0;
        var seen = 0; // bit k set: label k occurs
        if (Vector256.IsHardwareAccelerated)
        {
            var top = Vector256.Create(kind == CaseFileRole.WholeTumourMask ? 1f : 4f);
            var three = Vector256.Create(3);
            var four = Vector256.Create(4);
            var has3 = Vector256<int>.Zero;
            var has4 = Vector256<int>.Zero;
            for (; i <= values.Length - 32; i += 32)
            {
                var a = Vector256.Create(values[i..]);
                var b = Vector256.Create(values[(i + 8)..]);
                var c = Vector256.Create(values[(i + 16)..]);
                var d = Vector256.Create(values[(i + 24)..]);
                var ia = Vector256.ConvertToInt32(a);
                var ib = Vector256.ConvertToInt32(b);
                var ic = Vector256.ConvertToInt32(c);
                var id = Vector256.ConvertToInt32(d);

                // Whole numbers in [0, top]: v == (float)(int)v, 0 <= v <= top.
                var ok = Vector256.Equals(Vector256.ConvertToSingle(ia), a) & Vector256.Equals(Vector256.ConvertToSingle(ib), b)
                    & Vector256.Equals(Vector256.ConvertToSingle(ic), c) & Vector256.Equals(Vector256.ConvertToSingle(id), d)
                    & Vector256.GreaterThanOrEqual(Vector256.Min(Vector256.Min(a, b), Vector256.Min(c, d)), Vector256<float>.Zero)
                    & Vector256.LessThanOrEqual(Vector256.Max(Vector256.Max(a, b), Vector256.Max(c, d)), top);
                if (ok.AsInt32() != Vector256<int>.AllBitsSet)
                {
                    break;
                }

                var bytes = Vector256.Narrow(Vector256.Narrow(ia, ib), Vector256.Narrow(ic, id)).AsByte();
                bytes.CopyTo(labels[i..]);
                has3 |= Vector256.Equals(ia, three) | Vector256.Equals(ib, three) | Vector256.Equals(ic, three) | Vector256.Equals(id, three);
                has4 |= Vector256.Equals(ia, four) | Vector256.Equals(ib, four) | Vector256.Equals(ic, four) | Vector256.Equals(id, four);
            }

            seen |= (has3 != Vector256<int>.Zero ? 1 << 3 : 0) | (has4 != Vector256<int>.Zero ? 1 << 4 : 0);
        }

        for (; i < values.Length; i++)
        {
            var v = values[i];
            int k = v switch
            {
                0f => 0,
                1f => 1,
                2f => 2,
                3f => 3,
                4f => 4,
                _ => -1,
            };
            if (k < 0 || (kind == CaseFileRole.WholeTumourMask && k > 1))
            {
                var allowed = kind == CaseFileRole.WholeTumourMask ? "a whole-tumour mask holds only 0 and 1" : "BraTS labels are 0, 1, 2, 4";
                throw new CaseProblemException($"{fileName}: voxel {i} has label {v}; {allowed}");
            }

            seen |= 1 << k;
            labels[i] = (byte)k;
        }

        FinishLabels(labels, seen, fileName);
    }

    /// <summary>Maps the BraTS 2023 numbering (enhancing tumour 3) to the classic one (4); both at once is an error.</summary>
    private static void FinishLabels(Span<byte> labels, int seen, string fileName)
    {
        if ((seen & (1 << 3)) != 0)
        {
            if ((seen & (1 << 4)) != 0)
            {
                throw new CaseProblemException($"{fileName}: the label map holds both 3 and 4; BraTS labels are 0, 1, 2, 4 (or 0, 1, 2, 3 in the 2023 numbering)");
            }

            labels.Replace((byte)3, (byte)4);
        }
    }

    private static Loaded LoadPng(string[] imagePaths, string labelPath, PreprocessOptions options, CaseWorkspace ws)
    {
        GraySlice Read(string path)
        {
            try
            {
                var bytes = File.ReadAllBytes(path);

                // The IHDR's size (checked and decoded by the reader); any size is accepted if all files of the case agree.
                var (w, h) = bytes.Length >= 24 ? (BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)), BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(20))) : (1, 1);
                if (w < 1 || h < 1 || (long)w * h > options.MaxVoxels)
                {
                    throw new CaseProblemException($"{Path.GetFileName(path)}: the PNG declares {w}x{h} pixels (limit {options.MaxVoxels})");
                }

                return PngSliceReader.Read(bytes, Path.GetFileName(path), w, h);
            }
            catch (SliceFormatException e)
            {
                throw new CaseProblemException(e.Message, e);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CaseProblemException($"{Path.GetFileName(path)}: cannot read: {e.Message}", e);
            }
        }

        var seg = Read(labelPath);
        var n = seg.Pixels.Length;
        var images = new short[imagePaths.Length][];
        for (var m = 0; m < imagePaths.Length; m++)
        {
            var slice = Read(imagePaths[m]);
            if (slice.Width != seg.Width || slice.Height != seg.Height)
            {
                throw new CaseProblemException($"{Path.GetFileName(imagePaths[m])}: {slice.Width}x{slice.Height}, but {Path.GetFileName(labelPath)} is {seg.Width}x{seg.Height}");
            }

            var data = ws.Shorts(m, n);
            for (var i = 0; i < n; i++)
            {
                data[i] = slice.Pixels[i];
            }

            images[m] = data;
        }

        ws.Reserve(n);
        var labels = ws.Labels.AsSpan(0, n);
        for (var i = 0; i < n; i++)
        {
            labels[i] = seg.Pixels[i] > 0 ? (byte)1 : (byte)0;
        }

        return new Loaded<short>(images, ws.Labels, seg.Width, seg.Height, 1, VolumeOrientation: false);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static CaseSlices Extract<T>(string caseId, string pseudonym, Loaded<T> data, PreprocessOptions options, CaseWorkspace ws, (int Height, int Width)? nativeGrid)
        where T : unmanaged, INumber<T>
    {
        var (n0, n1, nz) = (data.N0, data.N1, data.Slices);
        var sliceLength = n0 * n1;
        var count = sliceLength * nz;
        var native = options.Size == PreprocessOptions.NativeSize;
        if (native && nativeGrid is { } grid && (grid.Height != data.Height || grid.Width != data.Width))
        {
            throw new CaseProblemException(
                $"its slices are {data.Height}x{data.Width}, the dataset's {grid.Height}x{grid.Width}: the native size keeps every case's own grid, so they must agree (give a size to resample)");
        }

        var mask = ws.Mask.AsSpan(0, count);
        var labels = data.Labels.AsSpan(0, count);
        BrainMask.Union(data.Images, count, mask);

        // Per slice: brain and tumour presence; the bounding box of brain and tumour over all slices.
        var brain = new bool[nz];
        var tumour = new bool[nz];
        var brainBox = new BoxBuilder();
        var tumourBox = new BoxBuilder();
        for (var z = 0; z < nz; z++)
        {
            for (var i1 = 0; i1 < n1; i1++)
            {
                var at = (z * sliceLength) + (i1 * n0);
                brain[z] |= brainBox.AddRow(mask.Slice(at, n0), i1, z);
                tumour[z] |= tumourBox.AddRow(labels.Slice(at, n0), i1, z);
            }
        }

        if (brainBox.IsEmpty)
        {
            throw new CaseProblemException("no brain: every image is zero everywhere");
        }

        var maskBox = brainBox.Box;
        BrainMask.FillHoles(mask, n0, n1, maskBox, brainBox.Z0, brainBox.Z1, ref ws.Stack);
        var box = tumourBox.IsEmpty ? maskBox : Union(maskBox, tumourBox.Box);

        // Robust z-score parameters of each modality over the brain's voxels: from every k-th voxel of the brain's
        // bounding box (in memory order, k coprime to the row length so that the samples sweep all columns), those
        // inside the brain; k = 1 (all of them) up to StatisticsSamples voxels.
        var indices = ws.Indices;
        var sampled = 0;
        var boxVolume = (long)(brainBox.Z1 - brainBox.Z0 + 1) * maskBox.Size1 * maskBox.Size0;
        var stride = SampleStride(boxVolume, maskBox.Size0);
        var phase = 0;
        for (var z = brainBox.Z0; z <= brainBox.Z1; z++)
        {
            for (var i1 = maskBox.I1a; i1 <= maskBox.I1b; i1++)
            {
                var rowStart = (z * sliceLength) + (i1 * n0) + maskBox.I0a;
                var row = mask.Slice(rowStart, maskBox.Size0);
                var k = phase;
                for (; k < row.Length; k += stride)
                {
                    if (row[k] != 0)
                    {
                        indices[sampled++] = rowStart + k;
                    }
                }

                phase = k - row.Length;
            }
        }

        var stats = new IntensityStats[data.Images.Length];
        var compact = ws.Compact.AsSpan(0, sampled);
        for (var m = 0; m < stats.Length; m++)
        {
            var image = data.Images[m];
            for (var j = 0; j < compact.Length; j++)
            {
                compact[j] = float.CreateTruncating(image[indices[j]]);
            }

            stats[m] = IntensityStats.Compute(compact, options.LowerPercentile, options.UpperPercentile, ws.Stats);
        }

        // Slices: every slice with tumour, and tumour-free brain slices drawn with the pseudonym.
        var selected = new List<int>();
        for (var z = 0; z < nz; z++)
        {
            if (tumour[z] || (brain[z] && (options.TumourFreeShare >= 1 || Draw(pseudonym, z) < options.TumourFreeShare)))
            {
                selected.Add(z);
            }
        }

        // Geometry. The output plane: rows h, columns w (for volumes h runs along -i0, w along -i1; for PNG slices
        // h = i1, w = i0). Crop mode: the box (in plane terms bh x bw) is centred in a square of side S (padding
        // (S - bh) / 2 above, (S - bw) / 2 left), resized to Size x Size. Native: the whole slice, no resize.
        // The work happens in the source's own orientation (rows i1, columns i0: contiguous reads, vectorised
        // normalisation), with the padding placed so that the final transposed, reversed copy (volumes) or
        // straight copy (PNG) lands each pixel where the plane definition says; bilinear resampling with centred
        // pixels commutes with that reversal.
        var crop = native ? new Box(0, n0 - 1, 0, n1 - 1) : box;
        var volume = data.VolumeOrientation;
        var (bh, bw) = volume ? (crop.Size0, crop.Size1) : (crop.Size1, crop.Size0);
        var side = native ? 0 : Math.Max(bh, bw);
        var (padH, padW) = native ? (0, 0) : ((side - bh) / 2, (side - bw) / 2);

        // Source-oriented working plane: R rows (along i1) by C columns (along i0), with the crop at (padR, padC).
        var (planeR, planeC) = native ? (crop.Size1, crop.Size0) : (side, side);
        var (padR, padC) = volume ? (planeR - crop.Size1 - padW, planeC - crop.Size0 - padH) : (padH, padW);
        var (outR, outC) = native ? (planeR, planeC) : (options.Size, options.Size);
        var (outHeight, outWidth) = volume ? (outC, outR) : (outR, outC);
        var resampler = new SliceResampler(planeR, planeC, outR, outC);
        var channels = data.Images.Length;
        var labelChannels = options.Labels.Channels().Count;
        var outPlane = outHeight * outWidth;
        // Pooled (a run's outputs are copied into one dataset at the end, so these are transient); every element
        // in use is written below.
        var imageLength = checked(selected.Count * channels * outPlane);
        var maskLength = checked(selected.Count * labelChannels * outPlane);
        var images = ArrayPool<float>.Shared.Rent(imageLength);
        var masks = ArrayPool<byte>.Shared.Rent(maskLength);
        var plane = new float[planeR * planeC];
        var resized = new float[outPlane];
        var labelPlane = new byte[planeR * planeC];
        var labelResized = new byte[outPlane];
        var labelOut = new byte[outPlane];
        var tumourSlices = 0;
        for (var s = 0; s < selected.Count; s++)
        {
            var z = selected[s];
            var sliceMask = mask.Slice(z * sliceLength, sliceLength);
            for (var m = 0; m < channels; m++)
            {
                var slice = data.Images[m].AsSpan(z * sliceLength, sliceLength);
                GatherImage(slice, sliceMask, n0, crop, stats[m], plane, planeC, padR, padC);
                var output = images.AsSpan((int)(((long)s * channels) + m) * outPlane, outPlane);
                if (volume)
                {
                    // Resized straight into the output, then reversed there (see PlacePng).
                    resampler.BilinearTransposed(plane, output);
                    output.Reverse();
                }
                else
                {
                    resampler.BilinearTransposed(plane, resized);
                    PlacePng<float>(resized, output, outR, outC);
                }
            }

            GatherLabels(labels.Slice(z * sliceLength, sliceLength), n0, crop, labelPlane, planeC, padR, padC);
            if (volume)
            {
                resampler.NearestTransposed(labelPlane, labelOut);
                labelOut.AsSpan().Reverse();
            }
            else
            {
                resampler.NearestTransposed(labelPlane, labelResized);
                PlacePng<byte>(labelResized, labelOut, outR, outC);
            }
            var target = masks.AsSpan(s * labelChannels * outPlane, labelChannels * outPlane);
            ExpandLabels(labelOut, target, labelChannels, outPlane);
            tumourSlices += target[..outPlane].ContainsAnyExcept((byte)0) ? 1 : 0;
        }

        return new CaseSlices(caseId, pseudonym, selected.Count, tumourSlices, outHeight, outWidth, images, imageLength, masks, maskLength);
    }

    /// <summary>Voxels sampled at most for a modality's statistics.</summary>
    internal const int StatisticsSamples = 1 << 16;

    /// <summary>The sampling stride over a box of <paramref name="boxVolume"/> voxels: 1 when it holds at most <see cref="StatisticsSamples"/>, else the smallest k reaching that which is coprime to the row length.</summary>
    internal static int SampleStride(long boxVolume, int rowLength)
    {
        var k = (int)Math.Max(1, (boxVolume + StatisticsSamples - 1) / StatisticsSamples);
        while (k > 1 && BigGcd(k, rowLength) != 1)
        {
            k++;
        }

        return k;

        static int BigGcd(int a, int b) => b == 0 ? a : BigGcd(b, a % b);
    }

    /// <summary>
    /// Writes the normalised crop of one slice into the working plane (rows i1, columns i0; zero padding; zero
    /// outside the brain): each source row is one contiguous, vectorised run.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GatherImage<T>(ReadOnlySpan<T> slice, ReadOnlySpan<byte> mask, int n0, Box crop, IntensityStats stats,
        Span<float> plane, int planeC, int padR, int padC)
        where T : unmanaged, INumber<T>
    {
        ClearPadding(plane, planeC, padR, padC, crop.Size1, crop.Size0);
        var low = stats.Low;
        var high = stats.High;
        var mean = (float)stats.Mean;
        var scale = stats.Scale;
        for (var i1 = crop.I1a; i1 <= crop.I1b; i1++)
        {
            var at = (i1 * n0) + crop.I0a;
            var target = plane.Slice(((i1 - crop.I1a + padR) * planeC) + padC, crop.Size0);
            Normalise(slice.Slice(at, crop.Size0), mask.Slice(at, crop.Size0), target, low, high, mean, scale);
        }
    }

    /// <summary>Zeroes the working plane outside the crop's rectangle (rows [padR, padR + rows), columns [padC, padC + columns)), which the caller then writes whole.</summary>
    private static void ClearPadding<T>(Span<T> plane, int planeC, int padR, int padC, int rows, int columns)
    {
        plane[..(padR * planeC)].Clear();
        plane[((padR + rows) * planeC)..].Clear();
        var right = planeC - padC - columns;
        if (padC == 0 && right == 0)
        {
            return;
        }

        for (var r = padR; r < padR + rows; r++)
        {
            var row = plane.Slice(r * planeC, planeC);
            row[..padC].Clear();
            row[(padC + columns)..].Clear();
        }
    }

    /// <summary>target = mask ? (clamp(v, low, high) − mean) · scale : 0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Normalise<T>(ReadOnlySpan<T> values, ReadOnlySpan<byte> mask, Span<float> target, float low, float high, float mean, float scale)
        where T : unmanaged, INumber<T>
    {
        var k = 0;
        if (Vector256.IsHardwareAccelerated && typeof(T) == typeof(short))
        {
            var shorts = MemoryMarshal.Cast<T, short>(values);
            var (vlow, vhigh, vmean, vscale) = (Vector256.Create(low), Vector256.Create(high), Vector256.Create(mean), Vector256.Create(scale));
            for (; k <= values.Length - 16; k += 16)
            {
                var (a, b) = Vector256.Widen(Vector256.Create(shorts[k..]));
                var (ma, mb) = MaskFlags(mask[k..]);
                var fa = (Vector256.Min(Vector256.Max(Vector256.ConvertToSingle(a), vlow), vhigh) - vmean) * vscale;
                var fb = (Vector256.Min(Vector256.Max(Vector256.ConvertToSingle(b), vlow), vhigh) - vmean) * vscale;
                (fa & ~Vector256.Equals(ma, Vector256<int>.Zero).AsSingle()).CopyTo(target[k..]);
                (fb & ~Vector256.Equals(mb, Vector256<int>.Zero).AsSingle()).CopyTo(target[(k + 8)..]);
            }
        }
        else if (Vector256.IsHardwareAccelerated && typeof(T) == typeof(float))
        {
            var floats = MemoryMarshal.Cast<T, float>(values);
            var (vlow, vhigh, vmean, vscale) = (Vector256.Create(low), Vector256.Create(high), Vector256.Create(mean), Vector256.Create(scale));
            for (; k <= values.Length - 16; k += 16)
            {
                var (ma, mb) = MaskFlags(mask[k..]);
                var fa = (Vector256.Min(Vector256.Max(Vector256.Create(floats[k..]), vlow), vhigh) - vmean) * vscale;
                var fb = (Vector256.Min(Vector256.Max(Vector256.Create(floats[(k + 8)..]), vlow), vhigh) - vmean) * vscale;
                (fa & ~Vector256.Equals(ma, Vector256<int>.Zero).AsSingle()).CopyTo(target[k..]);
                (fb & ~Vector256.Equals(mb, Vector256<int>.Zero).AsSingle()).CopyTo(target[(k + 8)..]);
            }
        }

        for (; k < values.Length; k++)
        {
            target[k] = mask[k] != 0 ? (Math.Clamp(float.CreateTruncating(values[k]), low, high) - mean) * scale : 0f;
        }
    }

    /// <summary>16 mask bytes widened to two vectors of 32-bit lanes (0 or not 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (Vector256<int> Lower, Vector256<int> Upper) MaskFlags(ReadOnlySpan<byte> mask)
    {
        var m = Vector128.Create(mask);
        var (lo, hi) = Vector256.Widen(Vector256.Create(Vector128.WidenLower(m), Vector128.WidenUpper(m)));
        return (lo.AsInt32(), hi.AsInt32());
    }

    private static void GatherLabels(ReadOnlySpan<byte> slice, int n0, Box crop, Span<byte> plane, int planeC, int padR, int padC)
    {
        ClearPadding(plane, planeC, padR, padC, crop.Size1, crop.Size0);
        for (var i1 = crop.I1a; i1 <= crop.I1b; i1++)
        {
            slice.Slice((i1 * n0) + crop.I0a, crop.Size0).CopyTo(plane.Slice(((i1 - crop.I1a + padR) * planeC) + padC, crop.Size0));
        }
    }

    /// <summary>
    /// The output plane of a resized image, given transposed (outC rows by outR columns, see <see cref="SliceResampler"/>).
    /// For volumes it is that plane reversed along both axes (out[h][w] = resized[R − 1 − w][C − 1 − h] =
    /// transposed[C − 1 − h][R − 1 − w], a C-high, R-wide plane), which the caller gets by resizing straight into the
    /// output and reversing it there; for PNG slices, this: transposed back (out = resized).
    /// </summary>
    private static void PlacePng<T>(ReadOnlySpan<T> transposed, Span<T> target, int rows, int columns) =>
        SliceResampler.Transpose(transposed, target, columns, rows);

    /// <summary>Label map to mask channels: WT = label &gt; 0; with three channels also TC = {1, 4} and ET = {4}.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ExpandLabels(ReadOnlySpan<byte> labels, Span<byte> target, int channels, int plane)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var (one, four) = (Vector256.Create((byte)1), Vector256.Create((byte)4));
            for (; i <= plane - 32; i += 32)
            {
                var l = Vector256.Create(labels[i..]);
                Vector256.Min(l, one).CopyTo(target[i..]);
                if (channels == 3)
                {
                    var et = Vector256.Equals(l, four);
                    ((Vector256.Equals(l, one) | et) & one).CopyTo(target[(plane + i)..]);
                    (et & one).CopyTo(target[((2 * plane) + i)..]);
                }
            }
        }

        for (; i < plane; i++)
        {
            var l = labels[i];
            target[i] = l != 0 ? (byte)1 : (byte)0;
            if (channels == 3)
            {
                target[plane + i] = l is Brats.NecroticCore or Brats.Enhancing ? (byte)1 : (byte)0;
                target[(2 * plane) + i] = l == Brats.Enhancing ? (byte)1 : (byte)0;
            }
        }
    }


    /// <summary>A number in [0, 1) drawn from the pseudonym and the slice index (SHA-256; the same in every run under one key).</summary>
    internal static double Draw(string pseudonym, int slice)
    {
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(Encoding.UTF8.GetBytes($"mriseg-slice-selection/{pseudonym}/{slice}"), hash);
        return (BinaryPrimitives.ReadUInt64LittleEndian(hash) >> 11) * (1.0 / (1UL << 53));
    }

    private static Box Union(Box a, Box b) =>
        new(Math.Min(a.I0a, b.I0a), Math.Max(a.I0b, b.I0b), Math.Min(a.I1a, b.I1a), Math.Max(a.I1b, b.I1b));

    /// <summary>Grows a bounding box row by row (vectorised search for the first and last non-zero byte of each row).</summary>
    private sealed class BoxBuilder
    {
        private int _i0a = int.MaxValue, _i0b = -1, _i1a = int.MaxValue, _i1b = -1;

        public int Z0 { get; private set; } = int.MaxValue;

        public int Z1 { get; private set; } = -1;

        public bool IsEmpty => _i0b < 0;

        public Box Box => new(_i0a, _i0b, _i1a, _i1b);

        /// <summary>Adds one row; true when it has a non-zero byte.</summary>
        public bool AddRow(ReadOnlySpan<byte> row, int i1, int z)
        {
            var first = row.IndexOfAnyExcept((byte)0);
            if (first < 0)
            {
                return false;
            }

            var last = row.LastIndexOfAnyExcept((byte)0);
            _i0a = Math.Min(_i0a, first);
            _i0b = Math.Max(_i0b, last);
            _i1a = Math.Min(_i1a, i1);
            _i1b = Math.Max(_i1b, i1);
            Z0 = Math.Min(Z0, z);
            Z1 = Math.Max(Z1, z);
            return true;
        }
    }
}
