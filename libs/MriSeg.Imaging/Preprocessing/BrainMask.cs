using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>
/// The brain mask of a skull-stripped case: a voxel is brain when any modality is non-zero there (BraTS and the
/// phantoms have an exact zero background), and holes are filled slice by slice (background not connected to the
/// slice's border becomes brain), as nnU-Net's crop-to-nonzero does.
/// </summary>
internal static class BrainMask
{
    /// <summary>mask[i] = 1 where any of the images is non-zero, else 0 (int16 or float32 voxels).</summary>
    public static void Union<T>(IReadOnlyList<T[]> images, int length, Span<byte> mask)
        where T : unmanaged, INumber<T>
    {
        if (typeof(T) == typeof(short))
        {
            Union((IReadOnlyList<short[]>)images, length, mask);
        }
        else if (typeof(T) == typeof(float))
        {
            Union((IReadOnlyList<float[]>)images, length, mask);
        }
        else
        {
            for (var i = 0; i < length; i++)
            {
                var any = false;
                foreach (var image in images)
                {
                    any |= image[i] != T.Zero;
                }

                mask[i] = any ? (byte)1 : (byte)0;
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Union(IReadOnlyList<short[]> images, int length, Span<byte> mask)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated && images.Count <= 4)
        {
            var a = images[0].AsSpan(0, length);
            var b = images[images.Count > 1 ? 1 : 0].AsSpan(0, length);
            var c = images[images.Count > 2 ? 2 : 0].AsSpan(0, length);
            var d = images[images.Count > 3 ? 3 : 0].AsSpan(0, length);
            var one = Vector256.Create((byte)1);
            for (; i <= length - 32; i += 32)
            {
                var lo = Vector256.Create(a[i..]) | Vector256.Create(b[i..]) | Vector256.Create(c[i..]) | Vector256.Create(d[i..]);
                var hi = Vector256.Create(a[(i + 16)..]) | Vector256.Create(b[(i + 16)..]) | Vector256.Create(c[(i + 16)..]) | Vector256.Create(d[(i + 16)..]);
                var flags = Vector256.Narrow(~Vector256.Equals(lo, Vector256<short>.Zero), ~Vector256.Equals(hi, Vector256<short>.Zero));
                (flags.AsByte() & one).CopyTo(mask[i..]);
            }
        }

        for (; i < length; i++)
        {
            var any = false;
            foreach (var image in images)
            {
                any |= image[i] != 0;
            }

            mask[i] = any ? (byte)1 : (byte)0;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Union(IReadOnlyList<float[]> images, int length, Span<byte> mask)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated && images.Count <= 4)
        {
            // OR the bit patterns of the modalities (sign bits dropped, so -0 counts as zero), compare with zero,
            // and narrow 32 flags to bytes at a time.
            var a = MemoryMarshal.Cast<float, int>(images[0].AsSpan(0, length));
            var b = MemoryMarshal.Cast<float, int>(images[images.Count > 1 ? 1 : 0].AsSpan(0, length));
            var c = MemoryMarshal.Cast<float, int>(images[images.Count > 2 ? 2 : 0].AsSpan(0, length));
            var d = MemoryMarshal.Cast<float, int>(images[images.Count > 3 ? 3 : 0].AsSpan(0, length));
            var magnitude = Vector256.Create(0x7FFFFFFF);
            var one = Vector256.Create((byte)1);
            for (; i <= length - 32; i += 32)
            {
                var f0 = Flags(a, b, c, d, i, magnitude);
                var f1 = Flags(a, b, c, d, i + 8, magnitude);
                var f2 = Flags(a, b, c, d, i + 16, magnitude);
                var f3 = Flags(a, b, c, d, i + 24, magnitude);
                var bytes = Vector256.Narrow(Vector256.Narrow(f0, f1), Vector256.Narrow(f2, f3));
                (bytes.AsByte() & one).CopyTo(mask[i..]);
            }
        }

        for (; i < length; i++)
        {
            var any = false;
            foreach (var image in images)
            {
                any |= image[i] != 0;
            }

            mask[i] = any ? (byte)1 : (byte)0;
        }
    }

    private static Vector256<int> Flags(ReadOnlySpan<int> a, ReadOnlySpan<int> b, ReadOnlySpan<int> c, ReadOnlySpan<int> d, int at, Vector256<int> magnitude)
    {
        var bits = (Vector256.Create(a[at..]) | Vector256.Create(b[at..]) | Vector256.Create(c[at..]) | Vector256.Create(d[at..])) & magnitude;

        // All ones where non-zero: ~(bits == 0).
        return ~Vector256.Equals(bits, Vector256<int>.Zero);
    }

    /// <summary>
    /// Fills the holes of each slice z in [z0, z1] inside the box [i0a, i0b] x [i1a, i1b] (the mask is zero outside it):
    /// background pixels not connected (4-neighbourhood) to the box's outside become 1. Uses <paramref name="stack"/>
    /// as the flood-fill stack, replacing it by a larger one when it is too small.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FillHoles(Span<byte> mask, int n0, int n1, Box box, int z0, int z1, ref int[] stack)
    {
        const byte Outside = 2;
        var sliceLength = n0 * n1;

        // Each run of background is pushed at most once per overlapping run of a neighbouring row, plus the border seeds.
        var need = (4 * sliceLength) + (4 * n1) + 16;
        if (stack.Length < need)
        {
            stack = new int[need];
        }

        for (var z = z0; z <= z1; z++)
        {
            var slice = mask.Slice(z * sliceLength, sliceLength);
            if (!HasRowGap(slice, n0, box))
            {
                // A hole needs brain on both sides of it in its row: no row with an inner gap, no hole.
                continue;
            }

            // Scan-line flood fill of the background from the box's border (everything beyond the box is background,
            // connected to the outside): runs of a row are filled at once, and each neighbouring row's runs seeded.
            var top = 0;
            SeedRuns(slice, box, box.I1a, box.I0a, box.I0b, n0, stack, ref top);
            SeedRuns(slice, box, box.I1b, box.I0a, box.I0b, n0, stack, ref top);
            for (var i1 = box.I1a + 1; i1 < box.I1b; i1++)
            {
                Push(slice, box.I0a + (i1 * n0), stack, ref top);
                Push(slice, box.I0b + (i1 * n0), stack, ref top);
            }

            while (top > 0)
            {
                var p = stack[--top];
                if (slice[p] != 0)
                {
                    continue;
                }

                var i1 = p / n0;
                var row = slice.Slice(i1 * n0, n0);
                var x = p - (i1 * n0);
                var left = x;
                while (left > box.I0a && row[left - 1] == 0)
                {
                    left--;
                }

                var right = x;
                while (right < box.I0b && row[right + 1] == 0)
                {
                    right++;
                }

                row[left..(right + 1)].Fill(Outside);
                if (i1 > box.I1a)
                {
                    SeedRuns(slice, box, i1 - 1, left, right, n0, stack, ref top);
                }

                if (i1 < box.I1b)
                {
                    SeedRuns(slice, box, i1 + 1, left, right, n0, stack, ref top);
                }
            }

            // Reached background back to 0; unreached background (a hole) to 1.
            for (var i1 = box.I1a; i1 <= box.I1b; i1++)
            {
                var row = slice.Slice((i1 * n0) + box.I0a, box.I0b - box.I0a + 1);
                for (var k = 0; k < row.Length; k++)
                {
                    row[k] = row[k] switch
                    {
                        Outside => 0,
                        0 => 1,
                        var v => v,
                    };
                }
            }
        }

        static bool HasRowGap(ReadOnlySpan<byte> slice, int n0, Box box)
        {
            for (var i1 = box.I1a; i1 <= box.I1b; i1++)
            {
                var row = slice.Slice((i1 * n0) + box.I0a, box.Size0);
                var first = row.IndexOfAnyExcept((byte)0);
                if (first >= 0 && row[first..(row.LastIndexOfAnyExcept((byte)0) + 1)].Contains((byte)0))
                {
                    return true;
                }
            }

            return false;
        }

        // Pushes the first pixel of every background run of row i1 within [from, to].
        static void SeedRuns(Span<byte> slice, Box box, int i1, int from, int to, int n0, int[] stack, ref int top)
        {
            var row = slice.Slice((i1 * n0) + from, to - from + 1);
            var at = 0;
            while (at < row.Length)
            {
                var start = row[at..].IndexOf((byte)0);
                if (start < 0)
                {
                    return;
                }

                at += start;
                stack[top++] = (i1 * n0) + from + at;
                var end = row[at..].IndexOfAnyExcept((byte)0);
                if (end < 0)
                {
                    return;
                }

                at += end;
            }
        }

        static void Push(Span<byte> slice, int p, int[] stack, ref int top)
        {
            if (slice[p] == 0)
            {
                stack[top++] = p;
            }
        }
    }
}

/// <summary>An inclusive box of a slice grid: first axis [I0a, I0b], second axis [I1a, I1b].</summary>
internal readonly record struct Box(int I0a, int I0b, int I1a, int I1b)
{
    public int Size0 => I0b - I0a + 1;

    public int Size1 => I1b - I1a + 1;
}
