using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;

namespace MriSeg.Imaging.Nifti;

/// <summary>
/// Vectorised conversions of voxels stored in this machine's byte order without scaling (the common case:
/// BraTS images are little-endian int16 or float32 with no scl_slope), and the non-finite check.
/// </summary>
internal static class VoxelConversion
{
    /// <summary>
    /// Converts native-order voxels of <paramref name="type"/> to float32; false for a type without a fast path
    /// (the caller then decodes them one by one).
    /// </summary>
    public static bool TryConvertNative(ReadOnlySpan<byte> src, Span<float> dst, NiftiDatatype type)
    {
        switch (type)
        {
            case NiftiDatatype.UInt8:
                FromByte(src, dst);
                return true;
            case NiftiDatatype.Int16:
                FromInt16(MemoryMarshal.Cast<byte, short>(src), dst);
                return true;
            case NiftiDatatype.Int32:
                FromInt32(MemoryMarshal.Cast<byte, int>(src), dst);
                return true;
            case NiftiDatatype.Float32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
                return true;
            default:
                return false;
        }
    }

    /// <summary>Replaces every NaN and ±Inf by <paramref name="replacement"/>; returns how many there were.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static long ReplaceNonFinite(Span<float> values, float replacement)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var exponent = Vector256.Create(0x7F800000);
            var bits = MemoryMarshal.Cast<float, int>(values);
            for (; i <= bits.Length - Vector256<int>.Count; i += Vector256<int>.Count)
            {
                // A float is finite unless its exponent bits are all ones.
                var v = Vector256.Create(bits[i..]);
                if (Vector256.EqualsAny(v & exponent, exponent))
                {
                    break;
                }
            }
        }

        long count = 0;
        for (; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                values[i] = replacement;
                count++;
            }
        }

        return count;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FromByte(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= src.Length - Vector256<byte>.Count; i += Vector256<byte>.Count)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Create(src[i..]));
                var (a, b) = Vector256.Widen(lo);
                var (c, d) = Vector256.Widen(hi);
                Vector256.ConvertToSingle(a.AsInt32()).CopyTo(dst[i..]);
                Vector256.ConvertToSingle(b.AsInt32()).CopyTo(dst[(i + 8)..]);
                Vector256.ConvertToSingle(c.AsInt32()).CopyTo(dst[(i + 16)..]);
                Vector256.ConvertToSingle(d.AsInt32()).CopyTo(dst[(i + 24)..]);
            }
        }

        for (; i < src.Length; i++)
        {
            dst[i] = src[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FromInt16(ReadOnlySpan<short> src, Span<float> dst)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= src.Length - Vector256<short>.Count; i += Vector256<short>.Count)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Create(src[i..]));
                Vector256.ConvertToSingle(lo).CopyTo(dst[i..]);
                Vector256.ConvertToSingle(hi).CopyTo(dst[(i + 8)..]);
            }
        }

        for (; i < src.Length; i++)
        {
            dst[i] = src[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FromInt32(ReadOnlySpan<int> src, Span<float> dst)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= src.Length - Vector256<int>.Count; i += Vector256<int>.Count)
            {
                Vector256.ConvertToSingle(Vector256.Create(src[i..])).CopyTo(dst[i..]);
            }
        }

        for (; i < src.Length; i++)
        {
            dst[i] = src[i];
        }
    }
}
