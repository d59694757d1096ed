namespace MriSeg.Imaging;

/// <summary>
/// How a stored voxel grid maps onto the canonical RAS+ grid by axis permutations and flips only (no
/// resampling): canonical axis k (0 = Left→Right, 1 = Posterior→Anterior, 2 = Inferior→Superior) is stored
/// axis <see cref="SourceAxis"/>[k], reversed when <see cref="Flipped"/>[k].
/// </summary>
public sealed class Reorientation : IEquatable<Reorientation>
{
    private static readonly int[][] Permutations =
    [
        [0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0],
    ];

    private readonly int[] _source;
    private readonly bool[] _flipped;

    private Reorientation(int[] source, bool[] flipped)
    {
        _source = source;
        _flipped = flipped;
    }

    /// <summary>Storage is already canonical RAS+.</summary>
    public static Reorientation Identity { get; } = new([0, 1, 2], [false, false, false]);

    /// <summary>For each canonical axis, the stored axis it comes from.</summary>
    public IReadOnlyList<int> SourceAxis => _source;

    /// <summary>For each canonical axis, whether the stored axis runs the other way.</summary>
    public IReadOnlyList<bool> Flipped => _flipped;

    /// <summary>True when nothing moves.</summary>
    public bool IsIdentity => Equals(Identity);

    /// <summary>
    /// The direction each stored axis points to, as three letters (for example "LPS" for the BraTS files:
    /// i runs to the Left, j to the Posterior, k to the Superior; "RAS" is canonical).
    /// </summary>
    public string StorageCodes
    {
        get
        {
            Span<char> codes = stackalloc char[3];
            for (var k = 0; k < 3; k++)
            {
                codes[_source[k]] = (k, _flipped[k]) switch
                {
                    (0, false) => 'R',
                    (0, true) => 'L',
                    (1, false) => 'A',
                    (1, true) => 'P',
                    (2, false) => 'S',
                    _ => 'I',
                };
            }

            return new string(codes);
        }
    }

    /// <summary>
    /// The reorientation given by the three storage codes (each of R/L, A/P, S/I once, in any order; for
    /// example "LPS" or "ASR").
    /// </summary>
    public static Reorientation FromStorageCodes(string codes)
    {
        ArgumentNullException.ThrowIfNull(codes);
        if (codes.Length != 3)
        {
            throw new ArgumentException($"orientation codes need three letters, got \"{codes}\"", nameof(codes));
        }

        var source = new[] { -1, -1, -1 };
        var flipped = new bool[3];
        for (var j = 0; j < 3; j++)
        {
            var (k, flip) = char.ToUpperInvariant(codes[j]) switch
            {
                'R' => (0, false),
                'L' => (0, true),
                'A' => (1, false),
                'P' => (1, true),
                'S' => (2, false),
                'I' => (2, true),
                _ => throw new ArgumentException($"orientation code '{codes[j]}' is not one of R, L, A, P, S, I", nameof(codes)),
            };
            if (source[k] >= 0)
            {
                throw new ArgumentException($"orientation codes \"{codes}\" name one world axis twice", nameof(codes));
            }

            source[k] = j;
            flipped[k] = flip;
        }

        return new Reorientation(source, flipped);
    }

    /// <summary>
    /// The signed axis permutation closest to the affine's direction cosines: among the six permutations,
    /// the one maximising the summed absolute cosines of the column-normalised linear part (the Frobenius-
    /// closest signed permutation); ties go to the earlier permutation (identity first). Oblique
    /// acquisitions are thus snapped to the nearest orthogonal orientation, never resampled.
    /// </summary>
    public static Reorientation FromAffine(Affine storageAffine)
    {
        ArgumentNullException.ThrowIfNull(storageAffine);
        var (nx, ny, nz) = storageAffine.ColumnNorms();
        var norms = new[] { nx, ny, nz };
        var cos = new double[3, 3]; // [world, voxel]
        for (var w = 0; w < 3; w++)
        {
            for (var v = 0; v < 3; v++)
            {
                cos[w, v] = norms[v] > 0 ? storageAffine[w, v] / norms[v] : 0;
            }
        }

        int[]? best = null;
        var bestScore = double.NegativeInfinity;
        foreach (var p in Permutations)
        {
            // p[v] = world axis of voxel axis v.
            var score = Math.Abs(cos[p[0], 0]) + Math.Abs(cos[p[1], 1]) + Math.Abs(cos[p[2], 2]);
            if (score > bestScore + 1e-12)
            {
                bestScore = score;
                best = p;
            }
        }

        var source = new int[3];
        var flipped = new bool[3];
        for (var v = 0; v < 3; v++)
        {
            var w = best![v];
            source[w] = v;
            flipped[w] = cos[w, v] < 0;
        }

        return new Reorientation(source, flipped);
    }

    /// <summary>The canonical grid size of a stored grid.</summary>
    public GridSize CanonicalSize(GridSize storage) =>
        new(storage[_source[0]], storage[_source[1]], storage[_source[2]]);

    /// <summary>The stored grid size of a canonical grid.</summary>
    public GridSize StorageSize(GridSize canonical)
    {
        Span<int> n = stackalloc int[3];
        for (var k = 0; k < 3; k++)
        {
            n[_source[k]] = canonical[k];
        }

        return new GridSize(n[0], n[1], n[2]);
    }

    /// <summary>The canonical spacing of a stored spacing.</summary>
    public Spacing CanonicalSpacing(Spacing storage) =>
        new(storage[_source[0]], storage[_source[1]], storage[_source[2]]);

    /// <summary>The affine of the canonical grid, describing the same world positions as the stored one.</summary>
    public Affine CanonicalAffine(Affine storageAffine, GridSize storage)
    {
        ArgumentNullException.ThrowIfNull(storageAffine);

        // Stored index from canonical index: i[src_k] = flipped_k ? n - 1 - o_k : o_k.
        var t = new double[12];
        for (var k = 0; k < 3; k++)
        {
            var row = _source[k];
            t[(row * 4) + k] = _flipped[k] ? -1 : 1;
            t[(row * 4) + 3] = _flipped[k] ? storage[row] - 1 : 0;
        }

        return storageAffine.Multiply(Affine.FromRows(t));
    }

    /// <summary>The affine of the stored grid, given the canonical one (the inverse of <see cref="CanonicalAffine"/>).</summary>
    public Affine StorageAffine(Affine canonicalAffine, GridSize canonical)
    {
        ArgumentNullException.ThrowIfNull(canonicalAffine);

        // Canonical index from stored index: o_k = flipped_k ? n_k - 1 - i[src_k] : i[src_k].
        var t = new double[12];
        for (var k = 0; k < 3; k++)
        {
            t[(k * 4) + _source[k]] = _flipped[k] ? -1 : 1;
            t[(k * 4) + 3] = _flipped[k] ? canonical[k] - 1 : 0;
        }

        return canonicalAffine.Multiply(Affine.FromRows(t));
    }

    /// <summary>
    /// For each stored axis j: the canonical linear-index step per stored index step, and the canonical linear
    /// index offset contributed at stored index 0 (so canonical index = Σ offset_j + Σ i_j · step_j).
    /// </summary>
    internal void StorageToCanonicalSteps(GridSize storage, Span<long> step, Span<long> offset)
    {
        var canonical = CanonicalSize(storage);
        Span<long> strides = [1, canonical.X, (long)canonical.X * canonical.Y];
        for (var k = 0; k < 3; k++)
        {
            var j = _source[k];
            step[j] = _flipped[k] ? -strides[k] : strides[k];
            offset[j] = _flipped[k] ? (storage[j] - 1) * strides[k] : 0;
        }
    }

    /// <summary>Rearranges stored data (x fastest) into the canonical grid.</summary>
    public T[] ToCanonical<T>(ReadOnlySpan<T> storageData, GridSize storage)
    {
        storage.Validate();
        if (storageData.Length != storage.Count)
        {
            throw new ArgumentException($"data has {storageData.Length} voxels, grid {storage} needs {storage.Count}");
        }

        var result = new T[storageData.Length];
        Span<long> step = stackalloc long[3];
        Span<long> offset = stackalloc long[3];
        StorageToCanonicalSteps(storage, step, offset);
        var s = 0;
        for (var k = 0; k < storage.Z; k++)
        {
            for (var j = 0; j < storage.Y; j++)
            {
                var d = offset[0] + offset[1] + offset[2] + (j * step[1]) + (k * step[2]);
                for (var i = 0; i < storage.X; i++, s++, d += step[0])
                {
                    result[d] = storageData[s];
                }
            }
        }

        return result;
    }

    /// <summary>Rearranges canonical data back into the stored grid (the inverse of <see cref="ToCanonical{T}"/>).</summary>
    public T[] ToStorage<T>(ReadOnlySpan<T> canonicalData, GridSize canonical)
    {
        canonical.Validate();
        if (canonicalData.Length != canonical.Count)
        {
            throw new ArgumentException($"data has {canonicalData.Length} voxels, grid {canonical} needs {canonical.Count}");
        }

        var storage = StorageSize(canonical);
        var result = new T[canonicalData.Length];
        Span<long> step = stackalloc long[3];
        Span<long> offset = stackalloc long[3];
        StorageToCanonicalSteps(storage, step, offset);
        var s = 0;
        for (var k = 0; k < storage.Z; k++)
        {
            for (var j = 0; j < storage.Y; j++)
            {
                var d = offset[0] + offset[1] + offset[2] + (j * step[1]) + (k * step[2]);
                for (var i = 0; i < storage.X; i++, s++, d += step[0])
                {
                    result[s] = canonicalData[(int)d];
                }
            }
        }

        return result;
    }

    /// <inheritdoc />
    public bool Equals(Reorientation? other) =>
        other is not null && _source.AsSpan().SequenceEqual(other._source) && _flipped.AsSpan().SequenceEqual(other._flipped);

    /// <inheritdoc />
    public override bool Equals(object? obj) => Equals(obj as Reorientation);

    /// <inheritdoc />
    public override int GetHashCode() => StorageCodes.GetHashCode(StringComparison.Ordinal);

    /// <inheritdoc />
    public override string ToString() => $"{StorageCodes}→RAS";
}
