using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Tests;

public sealed class OrientationTests
{
    // An anisotropic canonical grid with distinct sizes, so a wrong permutation cannot go unnoticed.
    private static readonly GridSize Canonical = new(6, 5, 4);
    private static readonly Affine CanonicalAffine = Affine.Diagonal(1.5, 2, 3, -4, -5, -6);

    /// <summary>All 48 storage orientations: every permutation of the three world axes, each either way.</summary>
    public static TheoryData<string> AllStorageOrientations()
    {
        var data = new TheoryData<string>();
        string[] axes = ["RL", "AP", "SI"];
        int[][] perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        foreach (var p in perms)
        {
            for (var signs = 0; signs < 8; signs++)
            {
                var code = string.Concat(Enumerable.Range(0, 3).Select(j => axes[p[j]][(signs >> j) & 1]));
                data.Add(code);
            }
        }

        return data;
    }

    /// <summary>
    /// A canonical volume with asymmetric markers: a bright voxel near the Right-Anterior-Superior corner, a
    /// second marker on the Left only, and a ramp elsewhere, so every flip and permutation shows.
    /// </summary>
    private static float[] MarkedCanonical()
    {
        var data = new float[Canonical.Count];
        for (var i = 0; i < data.Length; i++)
        {
            data[i] = i;
        }

        data[Canonical.Index(5, 4, 3)] = 1000; // right, anterior, superior corner
        data[Canonical.Index(0, 2, 1)] = -1000; // left side only
        return data;
    }

    [Theory]
    [MemberData(nameof(AllStorageOrientations))]
    public void A_volume_stored_in_any_orientation_reads_back_as_the_same_canonical_array(string storageCodes)
    {
        using var temp = new TempFolder();
        var orientation = Reorientation.FromStorageCodes(storageCodes);
        Assert.Equal(storageCodes, orientation.StorageCodes);
        var canonical = MarkedCanonical();
        var stored = orientation.ToStorage<float>(canonical, Canonical);
        var storageSize = orientation.StorageSize(Canonical);
        var storageAffine = orientation.StorageAffine(CanonicalAffine, Canonical);

        // Both routes to the affine: the sform (written) and the qform (sform_code zeroed).
        NiftiWriter.Write(temp.File("o.nii"), stored, storageSize, storageAffine, NiftiDatatype.Float32);
        var bytes = File.ReadAllBytes(temp.File("o.nii"));
        var qformOnly = (byte[])bytes.Clone();
        qformOnly[254] = 0;
        foreach (var (name, file) in new[] { ("sform", bytes), ("qform", qformOnly) })
        {
            var v = NiftiReader.Read(new MemoryStream(file), name);
            Assert.Equal(Canonical, v.Size);
            Assert.Equal(canonical, v.Data);
            Assert.Equal(1000f, v[5, 4, 3]);
            Assert.Equal(-1000f, v[0, 2, 1]);
            Assert.True(v.Affine.ApproximatelyEquals(CanonicalAffine, 1e-4), $"{name}: {v.Affine}");
            Assert.Equal(new Spacing(1.5, 2, 3), new Spacing(Math.Round(v.Spacing.X, 5), Math.Round(v.Spacing.Y, 5), Math.Round(v.Spacing.Z, 5)));
            Assert.Equal(storageCodes, v.StorageOrientation.StorageCodes);
            Assert.Equal(storageSize, v.StorageSize);
            Assert.Equal(stored, v.ToStorageOrder());

            // The world position of the marker is the same in both grids.
            var (wx, wy, wz) = v.Affine.Apply(5, 4, 3);
            var (ex, ey, ez) = CanonicalAffine.Apply(5, 4, 3);
            Assert.Equal(ex, wx, 1e-4);
            Assert.Equal(ey, wy, 1e-4);
            Assert.Equal(ez, wz, 1e-4);
        }
    }

    [Fact]
    public void Brats_lps_storage_puts_the_first_stored_column_on_the_right()
    {
        // The BraTS affine: srow_x = (−1, 0, 0, 0), srow_y = (0, −1, 0, 239), srow_z = (0, 0, 1, 0).
        var file = new NiftiBuilder
        {
            Datatype = 4,
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            Srow = [-1, 0, 0, 0, 0, -1, 0, 239, 0, 0, 1, 0],
        };
        var values = new double[24];
        values[0] = 7; // stored (0, 0, 0): the most right, most anterior, lowest voxel
        var v = NiftiReader.Read(new MemoryStream(file.WithValues(values).Build()), "brats-like");
        Assert.Equal("LPS", v.StorageOrientation.StorageCodes);
        Assert.Equal(7f, v[3, 2, 0]);
        var (x, y, z) = v.Affine.Apply(3, 2, 0);
        Assert.Equal((0.0, 239.0, 0.0), (x, y, z));
        Assert.True(v.Affine.ApproximatelyEquals(Affine.FromRows([1, 0, 0, -3, 0, 1, 0, 237, 0, 0, 1, 0])), v.Affine.ToString());
    }

    [Fact]
    public void The_brats_quaternion_gives_the_same_grid_as_its_sform()
    {
        // BraTS 2021 qform: b = c = 0, d = 1 (180° about z), qoffset (0, 239, 0), qfac 1.
        var builder = new NiftiBuilder
        {
            Datatype = 4,
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            QformCode = 1,
            SformCode = 0,
            Quatern = [0, 0, 1, 0, 239, 0],
        }.WithValues(Bytes.Ramp(24));
        var viaQ = NiftiReader.Read(new MemoryStream(builder.Build()), "q");
        builder.SformCode = 1;
        builder.QformCode = 0;
        builder.Srow = [-1, 0, 0, 0, 0, -1, 0, 239, 0, 0, 1, 0];
        var viaS = NiftiReader.Read(new MemoryStream(builder.Build()), "s");
        Assert.Equal(AffineSource.Qform, viaQ.AffineSource);
        Assert.Equal(viaS.Data, viaQ.Data);
        Assert.True(viaQ.Affine.ApproximatelyEquals(viaS.Affine, 1e-9), $"{viaQ.Affine} vs {viaS.Affine}");
    }

    [Fact]
    public void The_sform_wins_over_a_contradicting_qform()
    {
        var file = new NiftiBuilder
        {
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            QformCode = 1,
            SformCode = 1,
            Quatern = [0, 0, 1, 0, 0, 0], // the qform would flip x and y
            Srow = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        }.WithValues(Bytes.Ramp(24)).Build();
        var v = NiftiReader.Read(new MemoryStream(file), "both");
        Assert.Equal(AffineSource.Sform, v.AffineSource);
        Assert.True(v.StorageOrientation.IsIdentity);
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), v.Data);
    }

    [Fact]
    public void Without_qform_or_sform_the_grid_comes_from_pixdim_alone()
    {
        var file = new NiftiBuilder
        {
            Dim = [3, 4, 3, 2, 1, 1, 1, 1],
            Pixdim = [1, 0.5, -2, 0, 1, 1, 1, 1], // negative: its magnitude; zero: 1, as the reference library does
            QformCode = 0,
            SformCode = 0,
        }.WithValues(Bytes.Ramp(24)).Build();
        var v = NiftiReader.Read(new MemoryStream(file), "pixdim");
        Assert.Equal(AffineSource.Pixdim, v.AffineSource);
        Assert.Equal(new Spacing(0.5, 2, 1), v.Spacing);
        Assert.True(v.Affine.ApproximatelyEquals(Affine.Diagonal(0.5, 2, 1)));
        Assert.Equal(Bytes.Ramp(24).Select(d => (float)d), v.Data);
    }

    [Fact]
    public void An_oblique_affine_snaps_to_the_closest_axis_permutation()
    {
        // 20° about z: still closest to RAS. 70° about z: stored i now runs mostly anterior, j mostly left.
        Assert.Equal("RAS", Reorientation.FromAffine(RotZ(20)).StorageCodes);
        Assert.Equal("ALS", Reorientation.FromAffine(RotZ(70)).StorageCodes);
        Assert.Equal("LPS", Reorientation.FromAffine(RotZ(170)).StorageCodes);

        // Anisotropic columns do not bias the choice: only directions count.
        var sheared = Affine.FromRows([0.1, 3, 0, 0, 5, 0.2, 0, 0, 0, 0, -1, 0]);
        Assert.Equal("ARI", Reorientation.FromAffine(sheared).StorageCodes);

        static Affine RotZ(double degrees)
        {
            var a = degrees * Math.PI / 180;
            return Affine.FromRows([Math.Cos(a), -Math.Sin(a), 0, 0, Math.Sin(a), Math.Cos(a), 0, 0, 0, 0, 1, 0]);
        }
    }

    [Fact]
    public void Quaternion_form_round_trips_random_rotations_and_reflections()
    {
        var rng = new Random(7);
        for (var n = 0; n < 200; n++)
        {
            // Random rotation from a random unit quaternion, random spacing, random reflection.
            double a = rng.NextDouble() - 0.5, b = rng.NextDouble() - 0.5, c = rng.NextDouble() - 0.5, d = rng.NextDouble() - 0.5;
            var norm = Math.Sqrt((a * a) + (b * b) + (c * c) + (d * d));
            if (a < 0)
            {
                norm = -norm;
            }

            var qfac = rng.Next(2) == 0 ? 1.0 : -1.0;
            var original = Affine.FromQuaternion(b / norm, c / norm, d / norm, rng.NextDouble() * 100, -50, 3,
                0.5 + rng.NextDouble(), 0.5 + rng.NextDouble(), 0.5 + (2 * rng.NextDouble()), qfac);
            var q = original.ToQuaternion();
            Assert.Equal(qfac, q.Qfac);
            var back = Affine.FromQuaternion(q.B, q.C, q.D, q.OffsetX, q.OffsetY, q.OffsetZ, q.Dx, q.Dy, q.Dz, q.Qfac);
            Assert.True(back.ApproximatelyEquals(original, 1e-9), $"{original} → {back}");
        }
    }

    [Fact]
    public void Storage_codes_are_validated()
    {
        Assert.Throws<ArgumentException>(() => Reorientation.FromStorageCodes("RAR"));
        Assert.Throws<ArgumentException>(() => Reorientation.FromStorageCodes("RX S"));
        Assert.Throws<ArgumentException>(() => Reorientation.FromStorageCodes("RA"));
        Assert.True(Reorientation.FromStorageCodes("ras").IsIdentity);
    }
}
