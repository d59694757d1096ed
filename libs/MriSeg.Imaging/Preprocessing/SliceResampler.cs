using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>
/// Resizes a 2-D plane (R rows by C columns, row-major) to outR x outC: bilinear for images, nearest neighbour for
/// labels, both with pixel centres aligned (PyTorch's <c>align_corners=False</c>; edges clamped). The result comes
/// transposed (outC rows by outR columns): both passes then interpolate whole rows (vectorised), with one small
/// transposition between them, and the pre-processor wants the transposition anyway (slices of volumes are laid out
/// with rows along the source's columns). The tables depend only on the sizes, so one resampler serves a whole case.
/// </summary>
internal sealed class SliceResampler
{
    private readonly int _rows, _columns, _outRows, _outColumns;
    private readonly int[] _row0, _row1, _col0, _col1, _nearestRow, _nearestCol;
    private readonly float[] _rowWeight, _colWeight;
    private readonly float[] _pass, _passT;
    private readonly byte[] _bytePass, _bytePassT;

    public SliceResampler(int rows, int columns, int outRows, int outColumns)
    {
        (_rows, _columns, _outRows, _outColumns) = (rows, columns, outRows, outColumns);
        (_row0, _row1, _rowWeight, _nearestRow) = Tables(rows, outRows);
        (_col0, _col1, _colWeight, _nearestCol) = Tables(columns, outColumns);
        _pass = new float[outRows * columns];
        _passT = new float[columns * outRows];
        _bytePass = new byte[outRows * columns];
        _bytePassT = new byte[columns * outRows];
    }

    /// <summary>Bilinear resize of <paramref name="source"/> (R x C) into <paramref name="transposed"/> (outC x outR): transposed[c][r] = resized[r][c].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void BilinearTransposed(ReadOnlySpan<float> source, Span<float> transposed)
    {
        // Along the rows: pass[r] = lerp(source[row0[r]], source[row1[r]]), outR x C.
        for (var r = 0; r < _outRows; r++)
        {
            Lerp(source.Slice(_row0[r] * _columns, _columns), source.Slice(_row1[r] * _columns, _columns), _rowWeight[r], _pass.AsSpan(r * _columns, _columns));
        }

        TransposeFloats(_pass, _passT, _outRows, _columns);

        // Along the (former) columns: transposed[c] = lerp(passT[col0[c]], passT[col1[c]]), outC x outR.
        for (var c = 0; c < _outColumns; c++)
        {
            Lerp(_passT.AsSpan(_col0[c] * _outRows, _outRows), _passT.AsSpan(_col1[c] * _outRows, _outRows), _colWeight[c], transposed.Slice(c * _outRows, _outRows));
        }
    }

    /// <summary>Nearest-neighbour resize of a label plane, transposed as <see cref="BilinearTransposed"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void NearestTransposed(ReadOnlySpan<byte> source, Span<byte> transposed)
    {
        for (var r = 0; r < _outRows; r++)
        {
            source.Slice(_nearestRow[r] * _columns, _columns).CopyTo(_bytePass.AsSpan(r * _columns, _columns));
        }

        Transpose(_bytePass, _bytePassT, _outRows, _columns);
        for (var c = 0; c < _outColumns; c++)
        {
            _bytePassT.AsSpan(_nearestCol[c] * _outRows, _outRows).CopyTo(transposed.Slice(c * _outRows, _outRows));
        }
    }

    /// <summary>dst = a + w · (b − a).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Lerp(ReadOnlySpan<float> a, ReadOnlySpan<float> b, float w, Span<float> dst)
    {
        if (w == 0)
        {
            a.CopyTo(dst);
            return;
        }

        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var vw = Vector256.Create(w);
            for (; i <= dst.Length - 8; i += 8)
            {
                var va = Vector256.Create(a[i..]);
                (va + (vw * (Vector256.Create(b[i..]) - va))).CopyTo(dst[i..]);
            }
        }

        for (; i < dst.Length; i++)
        {
            dst[i] = a[i] + (w * (b[i] - a[i]));
        }
    }

    /// <summary>Transposes a float matrix as <see cref="Transpose{T}"/>, 4 x 4 blocks at a time with SSE shuffles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void TransposeFloats(ReadOnlySpan<float> source, Span<float> target, int rows, int columns)
    {
        if (!Sse.IsSupported)
        {
            Transpose(source, target, rows, columns);
            return;
        }

        var fullRows = rows & ~3;
        var fullColumns = columns & ~3;
        for (var r = 0; r < fullRows; r += 4)
        {
            for (var c = 0; c < fullColumns; c += 4)
            {
                var r0 = Vector128.Create(source.Slice((r * columns) + c, 4));
                var r1 = Vector128.Create(source.Slice(((r + 1) * columns) + c, 4));
                var r2 = Vector128.Create(source.Slice(((r + 2) * columns) + c, 4));
                var r3 = Vector128.Create(source.Slice(((r + 3) * columns) + c, 4));
                var t0 = Sse.UnpackLow(r0, r1);
                var t1 = Sse.UnpackLow(r2, r3);
                var t2 = Sse.UnpackHigh(r0, r1);
                var t3 = Sse.UnpackHigh(r2, r3);
                Sse.MoveLowToHigh(t0, t1).CopyTo(target.Slice((c * rows) + r, 4));
                Sse.MoveHighToLow(t1, t0).CopyTo(target.Slice(((c + 1) * rows) + r, 4));
                Sse.MoveLowToHigh(t2, t3).CopyTo(target.Slice(((c + 2) * rows) + r, 4));
                Sse.MoveHighToLow(t3, t2).CopyTo(target.Slice(((c + 3) * rows) + r, 4));
            }

            for (var c = fullColumns; c < columns; c++)
            {
                for (var k = 0; k < 4; k++)
                {
                    target[(c * rows) + r + k] = source[((r + k) * columns) + c];
                }
            }
        }

        for (var r = fullRows; r < rows; r++)
        {
            for (var c = 0; c < columns; c++)
            {
                target[(c * rows) + r] = source[(r * columns) + c];
            }
        }
    }

    /// <summary>Transposes a rows x columns matrix (row-major) into columns x rows, in 8 x 8 tiles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Transpose<T>(ReadOnlySpan<T> source, Span<T> target, int rows, int columns)
    {
        const int Tile = 8;
        for (var r0 = 0; r0 < rows; r0 += Tile)
        {
            var r1 = Math.Min(rows, r0 + Tile);
            for (var c0 = 0; c0 < columns; c0 += Tile)
            {
                var c1 = Math.Min(columns, c0 + Tile);
                for (var r = r0; r < r1; r++)
                {
                    var row = source.Slice(r * columns, columns);
                    for (var c = c0; c < c1; c++)
                    {
                        target[(c * rows) + r] = row[c];
                    }
                }
            }
        }
    }

    private static (int[] Lower, int[] Upper, float[] Weight, int[] Nearest) Tables(int source, int target)
    {
        var lower = new int[target];
        var upper = new int[target];
        var weight = new float[target];
        var nearest = new int[target];
        var scale = (double)source / target;
        for (var o = 0; o < target; o++)
        {
            var centre = ((o + 0.5) * scale) - 0.5;
            var i = (int)Math.Floor(centre);
            var t = centre - i;
            lower[o] = Math.Clamp(i, 0, source - 1);
            upper[o] = Math.Clamp(i + 1, 0, source - 1);
            weight[o] = lower[o] == upper[o] ? 0f : (float)t;
            nearest[o] = Math.Min(source - 1, (int)Math.Floor((o + 0.5) * scale));
        }

        return (lower, upper, weight, nearest);
    }
}
