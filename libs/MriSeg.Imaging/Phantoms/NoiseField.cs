namespace MriSeg.Imaging.Phantoms;

/// <summary>
/// Smooth random fields on a voxel grid: value noise (random values on a coarse lattice of a given cell size in
/// millimetres, smoothstep-interpolated), computed separably axis by axis so a whole field costs a few
/// operations per voxel. Values lie in [−1, 1] per octave.
/// </summary>
internal static class NoiseField
{
    /// <summary>One octave of value noise with lattice cell size <paramref name="cellMm"/>.</summary>
    public static float[] Generate(ulong seed, GridSize size, Spacing spacing, double cellMm)
    {
        var rng = new Xoshiro(seed);
        var lx = LatticeCount(size.X, spacing.X, cellMm);
        var ly = LatticeCount(size.Y, spacing.Y, cellMm);
        var lz = LatticeCount(size.Z, spacing.Z, cellMm);
        var lattice = new float[lx * ly * lz];
        for (var i = 0; i < lattice.Length; i++)
        {
            lattice[i] = (float)((2 * rng.NextDouble()) - 1);
        }

        // Random phase so lattice points do not sit on the same voxels in every field.
        var (ix, wx) = Weights(size.X, spacing.X, cellMm, rng.NextDouble());
        var (iy, wy) = Weights(size.Y, spacing.Y, cellMm, rng.NextDouble());
        var (iz, wz) = Weights(size.Z, spacing.Z, cellMm, rng.NextDouble());

        // Along x: [lz][ly][nx]
        var ax = new float[lz * ly * size.X];
        for (var c = 0; c < lz * ly; c++)
        {
            var src = c * lx;
            var dst = c * size.X;
            for (var x = 0; x < size.X; x++)
            {
                var a = lattice[src + ix[x]];
                var b = lattice[src + ix[x] + 1];
                ax[dst + x] = a + ((b - a) * wx[x]);
            }
        }

        // Along y: [lz][ny][nx]
        var ay = new float[lz * size.Y * size.X];
        for (var k = 0; k < lz; k++)
        {
            for (var y = 0; y < size.Y; y++)
            {
                var r0 = ((k * ly) + iy[y]) * size.X;
                var dst = ((k * size.Y) + y) * size.X;
                SpanMath.Lerp(ax.AsSpan(r0, size.X), ax.AsSpan(r0 + size.X, size.X), wy[y], ay.AsSpan(dst, size.X));
            }
        }

        // Along z: [nz][ny][nx]
        var plane = size.X * size.Y;
        var result = new float[plane * size.Z];
        for (var z = 0; z < size.Z; z++)
        {
            var p0 = iz[z] * plane;
            SpanMath.Lerp(ay.AsSpan(p0, plane), ay.AsSpan(p0 + plane, plane), wz[z], result.AsSpan(z * plane, plane));
        }

        return result;
    }

    /// <summary>A sum of octaves (cell sizes halving, amplitudes <paramref name="persistence"/>^o), rescaled to about [−1, 1].</summary>
    public static float[] Fractal(ulong seed, GridSize size, Spacing spacing, double cellMm, int octaves, double persistence = 0.5)
    {
        var result = Generate(Xoshiro.Derive(seed, 0), size, spacing, cellMm);
        var amplitude = 1.0;
        var total = 1.0;
        for (var o = 1; o < octaves; o++)
        {
            amplitude *= persistence;
            total += amplitude;
            var next = Generate(Xoshiro.Derive(seed, o), size, spacing, cellMm / (1 << o));
            SpanMath.AddScaled(result, next, (float)amplitude);
        }

        SpanMath.Scale(result, result, (float)(1 / total));

        return result;
    }

    private static int LatticeCount(int n, double spacing, double cellMm) => (int)Math.Ceiling(n * spacing / cellMm) + 2;

    private static (int[] Index, float[] Weight) Weights(int n, double spacing, double cellMm, double phase)
    {
        var index = new int[n];
        var weight = new float[n];
        for (var i = 0; i < n; i++)
        {
            var t = (i * spacing / cellMm) + phase;
            var cell = (int)Math.Floor(t);
            var f = t - cell;
            index[i] = cell;
            weight[i] = (float)(f * f * (3 - (2 * f))); // smoothstep
        }

        return (index, weight);
    }
}
