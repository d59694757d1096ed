using System.Globalization;

namespace MriSeg.Imaging;

/// <summary>
/// A voxel-to-world affine transform: world = M · (i, j, k, 1), with world coordinates in millimetres in
/// the NIfTI convention (x to the Right, y to the Anterior, z to the Superior: RAS+). Only the upper three
/// rows are stored; the fourth row is always (0, 0, 0, 1). Immutable.
/// </summary>
public sealed class Affine : IEquatable<Affine>
{
    private readonly double[] _m; // row-major 3x4

    private Affine(double[] m) => _m = m;

    /// <summary>Creates an affine from its upper three rows (row-major, 12 values).</summary>
    public static Affine FromRows(ReadOnlySpan<double> rows3x4)
    {
        if (rows3x4.Length != 12)
        {
            throw new ArgumentException("an affine needs 12 values (three rows of four)", nameof(rows3x4));
        }

        return new Affine(rows3x4.ToArray());
    }

    /// <summary>Creates an affine from three rows of four values (the NIfTI srow_x, srow_y, srow_z).</summary>
    public static Affine FromRows(ReadOnlySpan<double> rowX, ReadOnlySpan<double> rowY, ReadOnlySpan<double> rowZ)
    {
        if (rowX.Length != 4 || rowY.Length != 4 || rowZ.Length != 4)
        {
            throw new ArgumentException("each affine row needs four values");
        }

        var m = new double[12];
        rowX.CopyTo(m.AsSpan(0, 4));
        rowY.CopyTo(m.AsSpan(4, 4));
        rowZ.CopyTo(m.AsSpan(8, 4));
        return new Affine(m);
    }

    /// <summary>A diagonal affine: spacing on the diagonal, the given origin (world position of voxel 0,0,0).</summary>
    public static Affine Diagonal(double sx, double sy, double sz, double ox = 0, double oy = 0, double oz = 0) =>
        new([sx, 0, 0, ox, 0, sy, 0, oy, 0, 0, sz, oz]);

    /// <summary>The identity.</summary>
    public static Affine Identity { get; } = Diagonal(1, 1, 1);

    /// <summary>Element (row, column); row 3 is (0, 0, 0, 1).</summary>
    public double this[int row, int column]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfNegative(row);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(row, 3);
            ArgumentOutOfRangeException.ThrowIfNegative(column);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(column, 3);
            return row == 3 ? (column == 3 ? 1 : 0) : _m[(row * 4) + column];
        }
    }

    /// <summary>The upper three rows, row-major (a copy).</summary>
    public double[] ToRows() => (double[])_m.Clone();

    /// <summary>The full 4x4 matrix, row-major (a copy).</summary>
    public double[,] ToMatrix()
    {
        var r = new double[4, 4];
        for (var i = 0; i < 3; i++)
        {
            for (var j = 0; j < 4; j++)
            {
                r[i, j] = _m[(i * 4) + j];
            }
        }

        r[3, 3] = 1;
        return r;
    }

    /// <summary>The world position of a voxel index (continuous indices allowed).</summary>
    public (double X, double Y, double Z) Apply(double i, double j, double k) =>
        ((_m[0] * i) + (_m[1] * j) + (_m[2] * k) + _m[3],
         (_m[4] * i) + (_m[5] * j) + (_m[6] * k) + _m[7],
         (_m[8] * i) + (_m[9] * j) + (_m[10] * k) + _m[11]);

    /// <summary>The world direction (with length = spacing) of voxel axis <paramref name="axis"/> (0, 1, 2).</summary>
    public (double X, double Y, double Z) Column(int axis)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(axis);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(axis, 3);
        return (_m[axis], _m[4 + axis], _m[8 + axis]);
    }

    /// <summary>The world position of voxel (0, 0, 0).</summary>
    public (double X, double Y, double Z) Origin => (_m[3], _m[7], _m[11]);

    /// <summary>The length of each voxel axis' column: the voxel spacing this affine implies.</summary>
    public (double X, double Y, double Z) ColumnNorms()
    {
        static double Norm(double a, double b, double c) => Math.Sqrt((a * a) + (b * b) + (c * c));
        return (Norm(_m[0], _m[4], _m[8]), Norm(_m[1], _m[5], _m[9]), Norm(_m[2], _m[6], _m[10]));
    }

    /// <summary>The determinant of the 3x3 linear part.</summary>
    public double Determinant3 =>
        (_m[0] * ((_m[5] * _m[10]) - (_m[6] * _m[9])))
        - (_m[1] * ((_m[4] * _m[10]) - (_m[6] * _m[8])))
        + (_m[2] * ((_m[4] * _m[9]) - (_m[5] * _m[8])));

    /// <summary>True when every element is finite and the linear part is invertible.</summary>
    public bool IsUsable
    {
        get
        {
            foreach (var v in _m)
            {
                if (!double.IsFinite(v))
                {
                    return false;
                }
            }

            var (a, b, c) = ColumnNorms();
            var scale = a * b * c;
            return scale > 0 && Math.Abs(Determinant3) > 1e-8 * scale;
        }
    }

    /// <summary>This ∘ other: first <paramref name="other"/>, then this.</summary>
    public Affine Multiply(Affine other)
    {
        ArgumentNullException.ThrowIfNull(other);
        var r = new double[12];
        for (var i = 0; i < 3; i++)
        {
            for (var j = 0; j < 4; j++)
            {
                var s = j == 3 ? _m[(i * 4) + 3] : 0.0;
                for (var k = 0; k < 3; k++)
                {
                    s += _m[(i * 4) + k] * other._m[(k * 4) + j];
                }

                r[(i * 4) + j] = s;
            }
        }

        return new Affine(r);
    }

    /// <summary>
    /// The NIfTI "method 2" transform from a unit quaternion (b, c, d; a = sqrt(1 − b² − c² − d²)), the voxel
    /// spacing, qfac (pixdim[0]: −1 flips the third axis, anything else counts as +1) and the offsets.
    /// </summary>
    public static Affine FromQuaternion(double b, double c, double d, double qx, double qy, double qz,
        double dx, double dy, double dz, double qfac)
    {
        var sumSq = (b * b) + (c * c) + (d * d);
        double a;
        if (1.0 - sumSq < 1e-7)
        {
            // Numerically a 180° rotation: a = 0 and (b, c, d) normalised (as the reference library does).
            var n = Math.Sqrt(sumSq);
            if (n > 0)
            {
                b /= n;
                c /= n;
                d /= n;
            }

            a = 0;
        }
        else
        {
            a = Math.Sqrt(1.0 - sumSq);
        }

        var r00 = (a * a) + (b * b) - (c * c) - (d * d);
        var r01 = 2 * ((b * c) - (a * d));
        var r02 = 2 * ((b * d) + (a * c));
        var r10 = 2 * ((b * c) + (a * d));
        var r11 = (a * a) + (c * c) - (b * b) - (d * d);
        var r12 = 2 * ((c * d) - (a * b));
        var r20 = 2 * ((b * d) - (a * c));
        var r21 = 2 * ((c * d) + (a * b));
        var r22 = (a * a) + (d * d) - (c * c) - (b * b);
        var q = qfac < 0 ? -1.0 : 1.0;
        dz *= q;
        return new Affine([
            r00 * dx, r01 * dy, r02 * dz, qx,
            r10 * dx, r11 * dy, r12 * dz, qy,
            r20 * dx, r21 * dy, r22 * dz, qz,
        ]);
    }

    /// <summary>
    /// The NIfTI quaternion representation of this affine: (b, c, d), the offsets, the spacing (column norms)
    /// and qfac (−1 when the linear part is a reflection). The rotation is the orthogonal polar factor of the
    /// column-normalised linear part, so a sheared affine is represented approximately (the sform stays exact).
    /// </summary>
    public QuaternionForm ToQuaternion()
    {
        var (dx, dy, dz) = ColumnNorms();
        if (!(dx > 0 && dy > 0 && dz > 0) || !IsUsable)
        {
            throw new InvalidOperationException("the affine is degenerate: it has no quaternion form");
        }

        var r = new double[3, 3];
        for (var i = 0; i < 3; i++)
        {
            r[i, 0] = _m[i * 4] / dx;
            r[i, 1] = _m[(i * 4) + 1] / dy;
            r[i, 2] = _m[(i * 4) + 2] / dz;
        }

        var qfac = 1.0;
        if (Det(r) < 0)
        {
            qfac = -1.0;
            for (var i = 0; i < 3; i++)
            {
                r[i, 2] = -r[i, 2];
            }
        }

        Orthogonalise(r);
        double a, b, c, d;
        var trace = r[0, 0] + r[1, 1] + r[2, 2];
        if (trace > 0)
        {
            a = 0.5 * Math.Sqrt(1 + trace);
            b = (r[2, 1] - r[1, 2]) / (4 * a);
            c = (r[0, 2] - r[2, 0]) / (4 * a);
            d = (r[1, 0] - r[0, 1]) / (4 * a);
        }
        else if (r[0, 0] >= r[1, 1] && r[0, 0] >= r[2, 2])
        {
            b = 0.5 * Math.Sqrt(Math.Max(0, 1 + r[0, 0] - r[1, 1] - r[2, 2]));
            a = (r[2, 1] - r[1, 2]) / (4 * b);
            c = (r[0, 1] + r[1, 0]) / (4 * b);
            d = (r[0, 2] + r[2, 0]) / (4 * b);
        }
        else if (r[1, 1] >= r[2, 2])
        {
            c = 0.5 * Math.Sqrt(Math.Max(0, 1 - r[0, 0] + r[1, 1] - r[2, 2]));
            a = (r[0, 2] - r[2, 0]) / (4 * c);
            b = (r[0, 1] + r[1, 0]) / (4 * c);
            d = (r[1, 2] + r[2, 1]) / (4 * c);
        }
        else
        {
            d = 0.5 * Math.Sqrt(Math.Max(0, 1 - r[0, 0] - r[1, 1] + r[2, 2]));
            a = (r[1, 0] - r[0, 1]) / (4 * d);
            b = (r[0, 2] + r[2, 0]) / (4 * d);
            c = (r[1, 2] + r[2, 1]) / (4 * d);
        }

        if (a < 0)
        {
            b = -b;
            c = -c;
            d = -d;
        }

        return new QuaternionForm(b, c, d, _m[3], _m[7], _m[11], dx, dy, dz, qfac);
    }

    private static double Det(double[,] r) =>
        (r[0, 0] * ((r[1, 1] * r[2, 2]) - (r[1, 2] * r[2, 1])))
        - (r[0, 1] * ((r[1, 0] * r[2, 2]) - (r[1, 2] * r[2, 0])))
        + (r[0, 2] * ((r[1, 0] * r[2, 1]) - (r[1, 1] * r[2, 0])));

    /// <summary>Replaces r by its orthogonal polar factor (Newton iteration R ← (R + R⁻ᵀ)/2).</summary>
    private static void Orthogonalise(double[,] r)
    {
        for (var iteration = 0; iteration < 30; iteration++)
        {
            var det = Det(r);
            if (Math.Abs(det) < 1e-12)
            {
                return;
            }

            // Inverse transpose = cofactor matrix / det.
            var cof = new double[3, 3];
            cof[0, 0] = (r[1, 1] * r[2, 2]) - (r[1, 2] * r[2, 1]);
            cof[0, 1] = -((r[1, 0] * r[2, 2]) - (r[1, 2] * r[2, 0]));
            cof[0, 2] = (r[1, 0] * r[2, 1]) - (r[1, 1] * r[2, 0]);
            cof[1, 0] = -((r[0, 1] * r[2, 2]) - (r[0, 2] * r[2, 1]));
            cof[1, 1] = (r[0, 0] * r[2, 2]) - (r[0, 2] * r[2, 0]);
            cof[1, 2] = -((r[0, 0] * r[2, 1]) - (r[0, 1] * r[2, 0]));
            cof[2, 0] = (r[0, 1] * r[1, 2]) - (r[0, 2] * r[1, 1]);
            cof[2, 1] = -((r[0, 0] * r[1, 2]) - (r[0, 2] * r[1, 0]));
            cof[2, 2] = (r[0, 0] * r[1, 1]) - (r[0, 1] * r[1, 0]);
            var change = 0.0;
            for (var i = 0; i < 3; i++)
            {
                for (var j = 0; j < 3; j++)
                {
                    var next = 0.5 * (r[i, j] + (cof[i, j] / det));
                    change = Math.Max(change, Math.Abs(next - r[i, j]));
                    r[i, j] = next;
                }
            }

            if (change < 1e-15)
            {
                return;
            }
        }
    }

    /// <summary>True when every element differs by at most <paramref name="tolerance"/>.</summary>
    public bool ApproximatelyEquals(Affine other, double tolerance = 1e-6)
    {
        ArgumentNullException.ThrowIfNull(other);
        for (var i = 0; i < 12; i++)
        {
            if (!(Math.Abs(_m[i] - other._m[i]) <= tolerance))
            {
                return false;
            }
        }

        return true;
    }

    /// <inheritdoc />
    public bool Equals(Affine? other) => other is not null && _m.AsSpan().SequenceEqual(other._m);

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as Affine);

    /// <inheritdoc />
    public override int GetHashCode()
    {
        var h = new HashCode();
        foreach (var v in _m)
        {
            h.Add(v);
        }

        return h.ToHashCode();
    }

    /// <inheritdoc />
    public override string ToString()
    {
        string Row(int i) => string.Join(", ", Enumerable.Range(0, 4).Select(j => _m[(i * 4) + j].ToString("G6", CultureInfo.InvariantCulture)));
        return $"[[{Row(0)}], [{Row(1)}], [{Row(2)}]]";
    }
}

/// <summary>The NIfTI quaternion ("qform") representation of an affine.</summary>
/// <param name="B">Quaternion b.</param>
/// <param name="C">Quaternion c.</param>
/// <param name="D">Quaternion d.</param>
/// <param name="OffsetX">qoffset_x.</param>
/// <param name="OffsetY">qoffset_y.</param>
/// <param name="OffsetZ">qoffset_z.</param>
/// <param name="Dx">pixdim[1].</param>
/// <param name="Dy">pixdim[2].</param>
/// <param name="Dz">pixdim[3].</param>
/// <param name="Qfac">pixdim[0]: +1 or −1.</param>
public readonly record struct QuaternionForm(double B, double C, double D, double OffsetX, double OffsetY, double OffsetZ,
    double Dx, double Dy, double Dz, double Qfac);
