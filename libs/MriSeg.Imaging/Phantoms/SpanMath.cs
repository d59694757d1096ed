using System.Numerics;
using System.Runtime.InteropServices;

namespace MriSeg.Imaging.Phantoms;

/// <summary>Small SIMD helpers over float spans (System.Numerics.Vector).</summary>
internal static class SpanMath
{
    /// <summary>dst = a + (b − a) · w.</summary>
    public static void Lerp(ReadOnlySpan<float> a, ReadOnlySpan<float> b, float w, Span<float> dst)
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated && dst.Length >= Vector<float>.Count)
        {
            var va = MemoryMarshal.Cast<float, Vector<float>>(a);
            var vb = MemoryMarshal.Cast<float, Vector<float>>(b);
            var vd = MemoryMarshal.Cast<float, Vector<float>>(dst);
            var vw = new Vector<float>(w);
            var n = Math.Min(vd.Length, Math.Min(va.Length, vb.Length));
            for (var k = 0; k < n; k++)
            {
                vd[k] = va[k] + ((vb[k] - va[k]) * vw);
            }

            i = n * Vector<float>.Count;
        }

        for (; i < dst.Length; i++)
        {
            dst[i] = a[i] + ((b[i] - a[i]) * w);
        }
    }

    /// <summary>dst += src · w.</summary>
    public static void AddScaled(Span<float> dst, ReadOnlySpan<float> src, float w)
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated && dst.Length >= Vector<float>.Count)
        {
            var vs = MemoryMarshal.Cast<float, Vector<float>>(src);
            var vd = MemoryMarshal.Cast<float, Vector<float>>(dst);
            var vw = new Vector<float>(w);
            var n = Math.Min(vd.Length, vs.Length);
            for (var k = 0; k < n; k++)
            {
                vd[k] += vs[k] * vw;
            }

            i = n * Vector<float>.Count;
        }

        for (; i < dst.Length; i++)
        {
            dst[i] += src[i] * w;
        }
    }

    /// <summary>dst = src · w.</summary>
    public static void Scale(Span<float> dst, ReadOnlySpan<float> src, float w)
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated && dst.Length >= Vector<float>.Count)
        {
            var vs = MemoryMarshal.Cast<float, Vector<float>>(src);
            var vd = MemoryMarshal.Cast<float, Vector<float>>(dst);
            var vw = new Vector<float>(w);
            var n = Math.Min(vd.Length, vs.Length);
            for (var k = 0; k < n; k++)
            {
                vd[k] = vs[k] * vw;
            }

            i = n * Vector<float>.Count;
        }

        for (; i < dst.Length; i++)
        {
            dst[i] = src[i] * w;
        }
    }
}
