using System.IO.Compression;
using MriSeg.Imaging.Nifti;

namespace MriSeg.Imaging.Phantoms;

/// <summary>Choices for the phantom generator.</summary>
public sealed record PhantomOptions
{
    /// <summary>The defaults (128 × 128 × 64 over a BraTS-sized field of view, seed 2021).</summary>
    public static PhantomOptions Default { get; } = new();

    /// <summary>The canonical grid size (default 128 × 128 × 64).</summary>
    public GridSize Size { get; init; } = new(128, 128, 64);

    /// <summary>The field of view in mm (default 240 × 240 × 155, as BraTS); spacing = field of view / size.</summary>
    public Spacing FieldOfViewMm { get; init; } = new(240, 240, 155);

    /// <summary>The dataset seed: with the site and patient indices it fixes every voxel.</summary>
    public ulong Seed { get; init; } = 2021;

    /// <summary>How the files store their axes (default "LPS", as the BraTS files do); readers reorient to RAS.</summary>
    public string StorageOrientation { get; init; } = "LPS";

    /// <summary>Gzip level of the written files.</summary>
    public CompressionLevel Compression { get; init; } = CompressionLevel.Fastest;

    /// <summary>Patients generated at once when writing (default: processor count).</summary>
    public int MaxDegreeOfParallelism { get; init; } = Environment.ProcessorCount;

    /// <summary>The voxel spacing in mm.</summary>
    public Spacing Spacing => new(FieldOfViewMm.X / Size.X, FieldOfViewMm.Y / Size.Y, FieldOfViewMm.Z / Size.Z);
}

/// <summary>A written phantom case.</summary>
/// <param name="CaseId">The case name.</param>
/// <param name="Site">The site index.</param>
/// <param name="Patient">The patient index.</param>
/// <param name="Folder">The case folder holding &lt;case&gt;_{flair,t1,t1ce,t2,seg}.nii.gz.</param>
/// <param name="NecroticVoxels">Voxels with label 1.</param>
/// <param name="OedemaVoxels">Voxels with label 2.</param>
/// <param name="EnhancingVoxels">Voxels with label 4.</param>
public sealed record PhantomCaseInfo(string CaseId, int Site, int Patient, string Folder, long NecroticVoxels, long OedemaVoxels, long EnhancingVoxels)
{
    /// <summary>Whole tumour voxels (labels 1, 2, 4).</summary>
    public long WholeTumourVoxels => NecroticVoxels + OedemaVoxels + EnhancingVoxels;
}

/// <summary>
/// BraTS-like synthetic brain MRI: skull-stripped brains (cortex with gyri and sulci, white matter, deep grey
/// nuclei, ventricles, cerebellum, brainstem) on a zero background, in FLAIR, T1, T1ce and T2 with plausible
/// relative contrasts, carrying a glioma-like tumour (necrotic core, enhancing rim, oedema; a few merged,
/// rotated ellipsoids with noise-perturbed boundaries, of varied size and position) labelled {0, 1, 2, 4} as in
/// BraTS. A smooth multiplicative bias field, Rician noise and per-site scanner differences (intensity scale,
/// offset, contrast gamma, noise level, blur) make hospitals differ; oedema fading into the white matter and
/// non-tumour distractors (small FLAIR/T2-bright white-matter lesions, periventricular caps, enhancing choroid
/// plexus) make the tumour's intensities overlap the brain's, so no single threshold finds it.
/// </summary>
/// <remarks>
/// Every case depends only on (dataset seed, site, patient): each has its own random streams, so results are
/// identical whatever the thread scheduling or the degree of parallelism (bit for bit on one machine and .NET
/// version; single-precision maths functions may differ in the last bit across platforms). All work happens
/// inside the box of the grid the head can reach.
/// </remarks>
public sealed class PhantomGenerator
{
    // Tissue classes.
    private const byte Background = 0, Csf = 1, Gm = 2, Wm = 3, DeepGm = 4, Necrosis = 5, Enhancing = 6, Oedema = 7, Lesion = 8, Plexus = 9;
    private const int Classes = 10;

    // Signal per class (rows) and modality (columns: flair, t1, t1ce, t2), white-matter T1 = 1.
    private static readonly double[,] BaseSignal =
    {
        { 0, 0, 0, 0 },
        { 0.12, 0.28, 0.30, 1.00 }, // CSF
        { 0.68, 0.72, 0.74, 0.62 }, // grey matter
        { 0.55, 1.00, 1.00, 0.45 }, // white matter
        { 0.62, 0.84, 0.85, 0.53 }, // deep grey nuclei
        { 0.75, 0.35, 0.40, 0.95 }, // necrotic core
        { 0.95, 0.68, 1.45, 0.80 }, // enhancing tumour
        { 1.05, 0.70, 0.72, 1.00 }, // oedema (at its densest; it fades into the white matter)
        { 0.84, 0.80, 0.82, 0.76 }, // non-tumour white-matter lesion (FLAIR/T2 bright, label 0)
        { 0.45, 0.60, 1.30, 0.70 }, // choroid plexus (enhances, label 0)
    };

    /// <summary>
    /// 65,536 standard normal samples, fixed once (Box–Muller from a constant seed): per-voxel noise indexes it
    /// with 16 random bits, far cheaper than a transcendental Gaussian per voxel.
    /// </summary>
    private static readonly float[] GaussianTable = BuildGaussianTable();

    // Relative amplitudes of the noise perturbing the tumour's boundaries (fields lie in about [−1, 1]).
    private const double TumourBoundaryNoise = 0.25, OedemaBoundaryNoise = 0.4;

    private readonly PhantomOptions _options;

    /// <summary>Creates a generator.</summary>
    public PhantomGenerator(PhantomOptions? options = null)
    {
        _options = options ?? PhantomOptions.Default;
        _options.Size.Validate();
        if (_options.Size.X < 16 || _options.Size.Y < 16 || _options.Size.Z < 8)
        {
            throw new ArgumentException($"phantom grid {_options.Size} is too small (at least 16x16x8)");
        }

        var fov = _options.FieldOfViewMm;
        if (!(fov.X > 0 && fov.Y > 0 && fov.Z > 0 && double.IsFinite(fov.X) && double.IsFinite(fov.Y) && double.IsFinite(fov.Z)))
        {
            throw new ArgumentException($"the field of view must be positive and finite, got {fov}");
        }

        _ = Reorientation.FromStorageCodes(_options.StorageOrientation);
        ArgumentOutOfRangeException.ThrowIfLessThan(_options.MaxDegreeOfParallelism, 1);
    }

    /// <summary>The options.</summary>
    public PhantomOptions Options => _options;

    /// <summary>The case name of (site, patient): "Phantom_S{site:00}_{patient:000}".</summary>
    public static string CaseName(int site, int patient) => $"Phantom_S{site:00}_{patient:000}";

    /// <summary>The scanner profile of a site.</summary>
    public SiteProfile Site(int site) => SiteProfile.For(_options.Seed, site);

    /// <summary>The canonical (RAS+) affine of every phantom: the grid centred on the world origin.</summary>
    public Affine CanonicalAffine
    {
        get
        {
            var s = _options.Spacing;
            var n = _options.Size;
            return Affine.Diagonal(s.X, s.Y, s.Z, -(n.X - 1) * s.X / 2, -(n.Y - 1) * s.Y / 2, -(n.Z - 1) * s.Z / 2);
        }
    }

    /// <summary>Generates one case in memory.</summary>
    public PhantomCase Generate(int site, int patient)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(site);
        ArgumentOutOfRangeException.ThrowIfNegative(patient);
        return new CaseBuilder(this, site, patient).Build();
    }

    /// <summary>
    /// Writes one case as a BraTS case folder &lt;parent&gt;/&lt;case&gt;/&lt;case&gt;_{flair,t1,t1ce,t2}.nii.gz
    /// (int16) and &lt;case&gt;_seg.nii.gz (uint8), stored in <see cref="PhantomOptions.StorageOrientation"/>.
    /// </summary>
    public PhantomCaseInfo WriteCase(PhantomCase phantom, string parentFolder)
    {
        ArgumentNullException.ThrowIfNull(phantom);
        ArgumentException.ThrowIfNullOrEmpty(parentFolder);
        var folder = Path.Combine(parentFolder, phantom.CaseId);
        Directory.CreateDirectory(folder);
        var orientation = Reorientation.FromStorageCodes(_options.StorageOrientation);
        var storageSize = orientation.StorageSize(phantom.Size);
        var storageAffine = orientation.StorageAffine(phantom.Affine, phantom.Size);
        var write = new NiftiWriteOptions { Compression = _options.Compression, Gzip = true };
        foreach (var m in Brats.Modalities)
        {
            var stored = orientation.ToStorage<short>(phantom.Image(m), phantom.Size);
            NiftiWriter.Write(Path.Combine(folder, $"{phantom.CaseId}_{Brats.Suffix(m)}.nii.gz"), stored, storageSize, storageAffine, write);
        }

        var labels = orientation.ToStorage<byte>(phantom.Labels, phantom.Size);
        NiftiWriter.Write(Path.Combine(folder, $"{phantom.CaseId}_{Brats.SegSuffix}.nii.gz"), labels, storageSize, storageAffine, write);
        return new PhantomCaseInfo(phantom.CaseId, phantom.Site, phantom.Patient, folder,
            phantom.Count(Brats.NecroticCore), phantom.Count(Brats.Oedema), phantom.Count(Brats.Enhancing));
    }

    /// <summary>Generates and writes patients [first, first + count) of one site into <paramref name="folder"/>, in parallel.</summary>
    public IReadOnlyList<PhantomCaseInfo> WriteSite(string folder, int site, int count, int firstPatient = 0, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        return WriteMany(folder, Enumerable.Range(firstPatient, count).Select(p => (site, p)).ToArray(), _ => folder, cancellationToken);
    }

    /// <summary>
    /// Generates and writes a multi-site dataset: &lt;root&gt;/site-&lt;s&gt;/&lt;case&gt;/… for sites 0..sites−1 with
    /// patients 0..patientsPerSite−1 each, in parallel over all patients.
    /// </summary>
    public IReadOnlyList<PhantomCaseInfo> WriteDataset(string root, int sites, int patientsPerSite, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(root);
        ArgumentOutOfRangeException.ThrowIfNegative(sites);
        ArgumentOutOfRangeException.ThrowIfNegative(patientsPerSite);
        var jobs = (from s in Enumerable.Range(0, sites) from p in Enumerable.Range(0, patientsPerSite) select (s, p)).ToArray();
        return WriteMany(root, jobs, s => SiteFolder(root, s), cancellationToken);
    }

    /// <summary>The folder of one site in a dataset written by <see cref="WriteDataset"/>.</summary>
    public static string SiteFolder(string root, int site) => Path.Combine(root, $"site-{site}");

    private PhantomCaseInfo[] WriteMany(string root, (int Site, int Patient)[] jobs, Func<int, string> folderOf, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(root);
        var results = new PhantomCaseInfo[jobs.Length];
        Parallel.For(0, jobs.Length,
            new ParallelOptions { MaxDegreeOfParallelism = _options.MaxDegreeOfParallelism, CancellationToken = cancellationToken },
            i =>
            {
                var (s, p) = jobs[i];
                results[i] = WriteCase(Generate(s, p), folderOf(s));
            });
        return results;
    }

    /// <summary>Builds one case: anatomy, tumour, contrasts, scanner effects.</summary>
    private sealed class CaseBuilder
    {
        private readonly PhantomGenerator _g;
        private readonly int _site;
        private readonly int _patient;
        private readonly ulong _seed;
        private readonly GridSize _n;
        private GridSize _box; // the part of the grid the head can reach: all work happens there
        private (int X, int Y, int Z) _origin; // the box's first voxel in the grid
        private readonly Spacing _sp;

        public CaseBuilder(PhantomGenerator g, int site, int patient)
        {
            _g = g;
            _site = site;
            _patient = patient;
            _seed = Xoshiro.Derive(g._options.Seed, 0xCA5E, site, patient);
            _n = g._options.Size;
            _sp = g._options.Spacing;
        }

        private ulong Stream(int id) => Xoshiro.Derive(_seed, id);

        private float[] Field(int id, double cellMm, int octaves = 1) =>
            octaves == 1 ? NoiseField.Generate(Stream(id), _box, _sp, cellMm) : NoiseField.Fractal(Stream(id), _box, _sp, cellMm, octaves);

        public PhantomCase Build()
        {
            var rng = new Xoshiro(Stream(1));

            // ---- Anatomy parameters (mm, head-local frame: x right, y anterior, z superior).
            var globalScale = rng.Uniform(0.93, 1.05);
            var ax = 68 * globalScale * rng.Uniform(0.94, 1.06);
            var ay = 84 * globalScale * rng.Uniform(0.94, 1.06);
            var az = 62 * globalScale * rng.Uniform(0.94, 1.06);
            var azLow = az * 0.8;
            var centre = (X: rng.Gaussian() * 2, Y: -4 + (rng.Gaussian() * 3), Z: 4 + (rng.Gaussian() * 3));
            var rotation = Rotation(Deg(rng.Gaussian() * 4), Deg(rng.Gaussian() * 4), Deg(rng.Gaussian() * 2));
            var cortex = rng.Uniform(0.12, 0.15);
            var vs = rng.Uniform(0.7, 1.5); // ventricle size (age)
            var caps = rng.NextDouble() < 0.5; // periventricular FLAIR-bright caps

            HeadBox(rotation, centre, ax, ay, az);
            var count = (int)_box.Count;

            // ---- Tumour parameters, in the head-local frame first.
            var tumour = TumourShape.Sample(rng, ax, ay, az, azLow, vs);

            // ---- Distractors: a few small non-tumour white-matter lesions, bright in FLAIR and T2 like oedema.
            var lesions = new (double X, double Y, double Z, double R)[rng.NextInt(7)];
            for (var k = 0; k < lesions.Length; k++)
            {
                var (lx, ly, lz) = (rng.Uniform(-0.6, 0.6) * ax, rng.Uniform(-0.6, 0.6) * ay, rng.Uniform(-0.3, 0.6) * az);
                lesions[k] = (lx, ly, lz, rng.Uniform(2.5, 6));
            }

            // ---- Smooth random fields.
            var nBrain = Field(10, 45, 2);
            var nGyri = Field(11, 12, 2);
            var nSulci = Field(12, 11);
            var nTexture = Field(13, 5);
            var nTumour = Field(14, 14, 3);
            var nNecrosis = Field(15, 8);
            var nOedema = Field(16, 18, 3);

            var tissue = new byte[count];
            var labels = new byte[count];
            var oedemaDepth = new float[count]; // 1 next to the core, 0 at the oedema's edge

            var cx = (_n.X - 1) / 2.0;
            var cy = (_n.Y - 1) / 2.0;
            var cz = (_n.Z - 1) / 2.0;
            for (var z = 0; z < _box.Z; z++)
            {
                var pz = ((z + _origin.Z - cz) * _sp.Z) - centre.Z;
                for (var y = 0; y < _box.Y; y++)
                {
                    var py = ((y + _origin.Y - cy) * _sp.Y) - centre.Y;
                    var row = _box.Index(0, y, z);
                    for (var x = 0; x < _box.X; x++)
                    {
                        var i = row + x;
                        var px = ((x + _origin.X - cx) * _sp.X) - centre.X;

                        // Head-local coordinates: Rᵀ (p − c).
                        var qx = (rotation[0] * px) + (rotation[3] * py) + (rotation[6] * pz);
                        var qy = (rotation[1] * px) + (rotation[4] * py) + (rotation[7] * pz);
                        var qz = (rotation[2] * px) + (rotation[5] * py) + (rotation[8] * pz);
                        var cls = Anatomy(qx, qy, qz, ax, ay, az, azLow, cortex, vs, caps, nBrain[i], nGyri[i], nSulci[i], out var cerebrum);
                        if (cls == Background)
                        {
                            continue;
                        }

                        if (cls == Wm)
                        {
                            foreach (var l in lesions)
                            {
                                if (Sq(qx - l.X) + Sq(qy - l.Y) + Sq(qz - l.Z) < Sq(l.R * (1 + (0.3 * nNecrosis[i]))))
                                {
                                    cls = Lesion;
                                    break;
                                }
                            }
                        }

                        // Tumour (cerebrum only).
                        if (cerebrum < 0.99 && tumour.InBox(qx, qy, qz))
                        {
                            var f = tumour.Distance(qx, qy, qz);
                            var fp = f * (1 + (TumourBoundaryNoise * nTumour[i]));
                            if (fp < 1)
                            {
                                var necrotic = tumour.NecroticFraction > 0 && fp < tumour.NecroticFraction * (1 + (0.45 * nNecrosis[i]));
                                cls = necrotic ? Necrosis : Enhancing;
                                labels[i] = necrotic ? Brats.NecroticCore : Brats.Enhancing;
                            }
                            else
                            {
                                var g = f * (1 + (OedemaBoundaryNoise * nOedema[i])) / tumour.OedemaScale;
                                var limit = cls == Gm ? 0.8 : 1.0;
                                if (g < limit && cls is Wm or DeepGm or Gm or Lesion)
                                {
                                    cls = Oedema;
                                    labels[i] = Brats.Oedema;
                                    var inner = 1 / tumour.OedemaScale;
                                    oedemaDepth[i] = (float)Math.Clamp((limit - g) / (limit - inner), 0, 1);
                                }
                            }
                        }

                        tissue[i] = cls;
                    }
                }
            }

            // ---- Contrasts: per-patient jitter of each class/modality signal.
            var signal = new double[Classes, 4];
            for (var c = 1; c < Classes; c++)
            {
                for (var m = 0; m < 4; m++)
                {
                    var spread = c >= Necrosis ? 0.08 : 0.04;
                    signal[c, m] = BaseSignal[c, m] * Math.Exp(rng.Gaussian() * spread);
                }
            }

            var site = _g.Site(_site);
            var images = new short[4][];
            var noiseRng = new Xoshiro(Stream(2));
            var nBias1 = Field(17, 110);
            var nBias2 = Field(18, 70);
            var image = new float[count];
            var scratch = new float[count];
            for (var m = 0; m < 4; m++)
            {
                Array.Clear(image);
                for (var i = 0; i < count; i++)
                {
                    var cls = tissue[i];
                    if (cls == Background)
                    {
                        continue;
                    }

                    var v = signal[cls, m];
                    if (cls is Necrosis or Enhancing or Oedema)
                    {
                        if (cls == Oedema)
                        {
                            // Densest next to the core, fading into the white matter at its edge.
                            v = signal[Wm, m] + ((v - signal[Wm, m]) * (0.45 + (0.55 * oedemaDepth[i])));
                        }

                        v *= 1 + (0.12 * nTexture[i]);
                        if (cls == Enhancing && m == (int)Modality.T1ce)
                        {
                            v *= 1 + (0.2 * nNecrosis[i]);
                        }
                    }
                    else
                    {
                        v *= 1 + (0.035 * nTexture[i]);
                    }

                    image[i] = (float)v;
                }

                Blur(image, scratch, site.BlurSigmaVoxels);

                // Bias field (smooth, multiplicative, its own mix per modality) and Rician noise.
                var w1 = noiseRng.Gaussian();
                var w2 = noiseRng.Gaussian();
                var gx = noiseRng.Gaussian() * 0.4;
                var gz = noiseRng.Gaussian() * 0.4;
                var norm = Math.Sqrt((w1 * w1) + (w2 * w2) + (gx * gx) + (gz * gz)) + 1e-9;
                var sigma = (float)site.NoiseSigma;
                var scale = (float)(site.Scale[m] * rng.Uniform(0.93, 1.07));
                var offset = (float)site.Offset[m];
                var gamma = site.Gamma[m];
                var response = new PowerTable(gamma);
                var amp = (float)(site.BiasAmplitude / norm);
                var (fw1, fw2, fgx, fgz) = ((float)w1, (float)w2, (float)gx, (float)gz);
                var stored = new short[count];
                for (var z = 0; z < _box.Z; z++)
                {
                    var tz = ((2f * (z + _origin.Z)) / (_n.Z - 1)) - 1;
                    for (var y = 0; y < _box.Y; y++)
                    {
                        var row = _box.Index(0, y, z);
                        for (var x = 0; x < _box.X; x++)
                        {
                            var i = row + x;
                            if (tissue[i] == Background)
                            {
                                continue;
                            }

                            var tx = ((2f * (x + _origin.X)) / (_n.X - 1)) - 1;
                            var logBias = (fw1 * nBias1[i]) + (fw2 * nBias2[i]) + (fgx * tx) + (fgz * tz);
                            var v = image[i] * ExpSmall(amp * logBias);
                            var bits = noiseRng.NextUInt64();
                            var re = v + (sigma * GaussianTable[(int)(bits & 0xFFFF)]);
                            var im = sigma * GaussianTable[(int)((bits >> 16) & 0xFFFF)];
                            v = MathF.Sqrt((re * re) + (im * im));
                            var s = (scale * response.Apply(v)) + offset;
                            stored[i] = (short)Math.Clamp(MathF.Round(s), 1f, short.MaxValue);
                        }
                    }
                }

                images[m] = stored;
            }

            return new PhantomCase(CaseName(_site, _patient), _site, _patient, _n, _g.CanonicalAffine,
                Array.ConvertAll(images, Embed), Embed(labels));
        }

        /// <summary>
        /// Sets the box of the grid that the head can reach (cerebrum, cerebellum, brainstem down to the bottom of
        /// the field of view), with a margin for the blur: the corners of the head-local bounding box, rotated and
        /// shifted into the grid.
        /// </summary>
        private void HeadBox(double[] rotation, (double X, double Y, double Z) centre, double ax, double ay, double az)
        {
            var reach = 1.15; // brain-boundary noise and the cerebellum stay inside 1.15 × the semi-axes
            double[] xs = [-reach * ax, reach * ax];
            double[] ys = [-reach * ay, reach * ay];
            double[] zs = [-10 * az, reach * az]; // the brainstem runs down out of the field of view
            var lo = new[] { double.MaxValue, double.MaxValue, double.MaxValue };
            var hi = new[] { double.MinValue, double.MinValue, double.MinValue };
            foreach (var qx in xs)
            {
                foreach (var qy in ys)
                {
                    foreach (var qz in zs)
                    {
                        double[] c = [centre.X, centre.Y, centre.Z];
                        for (var r = 0; r < 3; r++)
                        {
                            var p = (rotation[r * 3] * qx) + (rotation[(r * 3) + 1] * qy) + (rotation[(r * 3) + 2] * qz) + c[r];
                            lo[r] = Math.Min(lo[r], p);
                            hi[r] = Math.Max(hi[r], p);
                        }
                    }
                }
            }

            const int margin = 4;
            (int Lo, int Size) Axis(int axis, int n, double spacing)
            {
                var centreIndex = (n - 1) / 2.0;
                var first = Math.Clamp((int)Math.Floor((lo[axis] / spacing) + centreIndex) - margin, 0, n - 1);
                var last = Math.Clamp((int)Math.Ceiling((hi[axis] / spacing) + centreIndex) + margin, first, n - 1);
                return (first, last - first + 1);
            }

            var (x0, nx) = Axis(0, _n.X, _sp.X);
            var (y0, ny) = Axis(1, _n.Y, _sp.Y);
            var (z0, nz) = Axis(2, _n.Z, _sp.Z);
            _box = new GridSize(nx, ny, nz);
            _origin = (x0, y0, z0);
        }

        /// <summary>Places box-sized data into a zero full grid.</summary>
        private T[] Embed<T>(T[] boxData)
        {
            var full = new T[_n.Count];
            for (var z = 0; z < _box.Z; z++)
            {
                for (var y = 0; y < _box.Y; y++)
                {
                    boxData.AsSpan(_box.Index(0, y, z), _box.X).CopyTo(full.AsSpan(_n.Index(_origin.X, y + _origin.Y, z + _origin.Z), _box.X));
                }
            }

            return full;
        }

        /// <summary>The tissue class at head-local position q; <paramref name="cerebrum"/> is the perturbed cerebral radius.</summary>
        private static byte Anatomy(double qx, double qy, double qz, double ax, double ay, double az, double azLow, double cortex, double vs,
            bool caps, float nBrain, float nGyri, float nSulci, out double cerebrum)
        {
            var ez = qz >= 0 ? az : azLow;
            var e = Math.Sqrt(Sq(qx / ax) + Sq(qy / ay) + Sq(qz / ez));
            cerebrum = e * (1 + (0.04 * nBrain));
            if (cerebrum < 1)
            {
                var thickness = cortex * Math.Max(0.15, 1 + (1.8 * nGyri));
                var depth = 1 - cerebrum;
                if (depth < 0.018)
                {
                    return Csf; // subarachnoid space
                }

                var fissureZone = qz > az * (0.15 - (0.9 * Sq(qy / ay))); // above the arch of the corpus callosum
                var ax0 = Math.Abs(qx);
                if (fissureZone && ax0 < 1.1 + (0.5 * nGyri))
                {
                    return Csf; // longitudinal fissure
                }

                if (depth < thickness * 1.05 && Math.Abs(nSulci) < 0.09)
                {
                    return Csf; // sulcus
                }

                if (depth < thickness || (fissureZone && ax0 < 4.5 && cerebrum > 0.3))
                {
                    return Gm;
                }

                // Lateral ventricles: arched bodies either side of the midline.
                var vx = 3 + (3.5 * vs);
                var vzc = 13 - (0.008 * Sq(qy + 3));
                var ventricle = Sq((ax0 - vx) / (4 * vs)) + Sq((qy + 3) / 24) + Sq((qz - vzc) / (6.5 * vs)) - (0.15 * nGyri);
                if (ventricle < 1)
                {
                    // Choroid plexus in the posterior bodies.
                    return ventricle < 0.3 && qy + 3 < -8 ? Plexus : Csf;
                }

                if (caps && ventricle < 1.7 && Math.Abs(qy + 3) > 14)
                {
                    return Lesion; // periventricular caps at the horns
                }

                // Third ventricle.
                if (ax0 < 1.2 * vs && Sq((qy + 8) / 10) + Sq(qz / 8) < 1)
                {
                    return Csf;
                }

                // Thalami and basal ganglia.
                if (Sq((ax0 - 8.5) / 7) + Sq((qy + 10) / 11) + Sq((qz - 2) / 7.5) < 1
                    || Sq((ax0 - 19) / 5.5) + Sq((qy - 7) / 12) + Sq((qz - 3) / 9) < 1)
                {
                    return DeepGm;
                }

                return Wm;
            }

            if (qz > -0.2 * az)
            {
                return Background; // above the cerebellum and brainstem
            }

            // Cerebellum below the occipital lobes.
            var rc = Math.Sqrt(Sq(qx / (0.7 * ax)) + Sq((qy + (0.5 * ay)) / (0.33 * ay)) + Sq((qz + (0.75 * azLow)) / (0.32 * az))) * (1 + (0.05 * nBrain));
            if (rc < 1)
            {
                if (rc > 0.97 || (rc > 0.5 && Math.Abs(nSulci) < 0.06))
                {
                    return Csf;
                }

                return rc < 0.5 ? Wm : Gm;
            }

            // Brainstem down to the bottom of the field of view.
            if (qz < -0.25 * az && Sq(qx / 11) + Sq((qy + 15) / 13) < 1)
            {
                return Wm;
            }

            return Background;
        }

        /// <summary>Separable Gaussian blur (σ in voxels in-plane, the same σ in mm through-plane).</summary>
        private void Blur(float[] image, float[] tmp, double sigmaVoxels)
        {
            if (sigmaVoxels <= 0.05)
            {
                return;
            }

            var kx = Kernel(sigmaVoxels);
            var kz = Kernel(sigmaVoxels * _sp.X / _sp.Z);
            Convolve(image, tmp, kx, 1, _box.X);
            Convolve(tmp, image, kx, _box.X, _box.Y);
            if (kz.Length > 1)
            {
                Convolve(image, tmp, kz, _box.X * _box.Y, _box.Z);
                Array.Copy(tmp, image, image.Length);
            }
        }

        /// <summary>
        /// 1-D convolution along an axis: <paramref name="stride"/> between neighbours, <paramref name="length"/> voxels
        /// per line; beyond the grid counts as zero. Done as shifted, weighted adds of contiguous runs (SIMD).
        /// </summary>
        private static void Convolve(float[] src, float[] dst, float[] kernel, int stride, int length)
        {
            var r = kernel.Length / 2;
            var block = stride * length; // one full line set: lines of this axis repeat every block
            Array.Clear(dst);
            for (var start = 0; start < src.Length; start += block)
            {
                for (var k = -r; k <= r; k++)
                {
                    // Positions pos with 0 <= pos + k < length: a contiguous run of (length − |k|) · stride values.
                    var lo = Math.Max(0, -k);
                    var hi = Math.Min(length, length - k);
                    if (hi <= lo)
                    {
                        continue;
                    }

                    var run = (hi - lo) * stride;
                    SpanMath.AddScaled(dst.AsSpan(start + (lo * stride), run), src.AsSpan(start + ((lo + k) * stride), run), kernel[k + r]);
                }
            }
        }

        private static float[] Kernel(double sigma)
        {
            if (sigma <= 0.05)
            {
                return [1f];
            }

            var r = Math.Max(1, (int)Math.Ceiling(2.5 * sigma));
            var k = new float[(2 * r) + 1];
            double sum = 0;
            for (var i = -r; i <= r; i++)
            {
                sum += k[i + r] = (float)Math.Exp(-(i * i) / (2 * sigma * sigma));
            }

            for (var i = 0; i < k.Length; i++)
            {
                k[i] = (float)(k[i] / sum);
            }

            return k;
        }

        private static double Deg(double degrees) => degrees * Math.PI / 180;

        /// <summary>Row-major rotation Rz(yaw) · Rx(pitch) · Ry(roll).</summary>
        private static double[] Rotation(double yaw, double pitch, double roll)
        {
            double[] rz = [Math.Cos(yaw), -Math.Sin(yaw), 0, Math.Sin(yaw), Math.Cos(yaw), 0, 0, 0, 1];
            double[] rx = [1, 0, 0, 0, Math.Cos(pitch), -Math.Sin(pitch), 0, Math.Sin(pitch), Math.Cos(pitch)];
            double[] ry = [Math.Cos(roll), 0, Math.Sin(roll), 0, 1, 0, -Math.Sin(roll), 0, Math.Cos(roll)];
            return Mul(Mul(rz, rx), ry);
        }

        internal static double[] Mul(double[] a, double[] b)
        {
            var r = new double[9];
            for (var i = 0; i < 3; i++)
            {
                for (var j = 0; j < 3; j++)
                {
                    r[(i * 3) + j] = (a[i * 3] * b[j]) + (a[(i * 3) + 1] * b[3 + j]) + (a[(i * 3) + 2] * b[6 + j]);
                }
            }

            return r;
        }
    }

    private static double Sq(double v) => v * v;

    /// <summary>e^x for the small exponents of a bias field (|x| &lt; 1): a degree-6 Taylor polynomial, relative error below 2e-4.</summary>
    private static float ExpSmall(float x)
    {
        x = Math.Clamp(x, -1f, 1f);
        var p = 1f / 720;
        p = (1f / 120) + (x * p);
        p = (1f / 24) + (x * p);
        p = (1f / 6) + (x * p);
        p = 0.5f + (x * p);
        p = 1 + (x * p);
        return 1 + (x * p);
    }

    /// <summary>v^gamma by a table with linear interpolation over [0, 4] (signals stay well inside; beyond, v^gamma exactly).</summary>
    private sealed class PowerTable
    {
        private const int Steps = 8192;
        private const float Max = 4f;
        private readonly float[] _table = new float[Steps + 2];
        private readonly double _gamma;

        public PowerTable(double gamma)
        {
            _gamma = gamma;
            for (var i = 0; i < _table.Length; i++)
            {
                _table[i] = (float)Math.Pow(i * (double)Max / Steps, gamma);
            }
        }

        public float Apply(float v)
        {
            if (!(v < Max))
            {
                return (float)Math.Pow(v, _gamma);
            }

            var t = v * (Steps / Max);
            var k = (int)t;
            var f = t - k;
            return _table[k] + ((_table[k + 1] - _table[k]) * f);
        }
    }

    private static float[] BuildGaussianTable()
    {
        var rng = new Xoshiro(0x6A05_51A7);
        var table = new float[1 << 16];
        for (var i = 0; i < table.Length; i++)
        {
            table[i] = (float)rng.Gaussian();
        }

        return table;
    }

    /// <summary>The tumour: a union of rotated ellipsoids in the head-local frame, with its core/oedema proportions.</summary>
    private sealed class TumourShape
    {
        private readonly (double X, double Y, double Z)[] _centres;
        private readonly double[][] _inverse; // per component: row-major (R · S)⁻¹ = S⁻¹ Rᵀ
        private double _minX, _maxX, _minY, _maxY, _minZ, _maxZ;

        private TumourShape((double X, double Y, double Z)[] centres, double[][] inverse, double necroticFraction, double oedemaScale, double reach)
        {
            _centres = centres;
            _inverse = inverse;
            NecroticFraction = necroticFraction;
            OedemaScale = oedemaScale;
            var c = centres[0];
            _minX = c.X - reach;
            _maxX = c.X + reach;
            _minY = c.Y - reach;
            _maxY = c.Y + reach;
            _minZ = c.Z - reach;
            _maxZ = c.Z + reach;
        }

        /// <summary>Core radius fraction below which the core is necrotic (0: no necrosis).</summary>
        public double NecroticFraction { get; }

        /// <summary>How far the oedema reaches, as a multiple of the core's size.</summary>
        public double OedemaScale { get; }

        public static TumourShape Sample(Xoshiro rng, double ax, double ay, double az, double azLow, double vs)
        {
            // Centre: inside a hemisphere's white matter, off the midline and away from the ventricles.
            (double X, double Y, double Z) t0;
            var attempts = 0;
            while (true)
            {
                attempts++;
                var x = rng.Uniform(-ax, ax);
                var y = rng.Uniform(-ay, ay);
                var z = rng.Uniform(-azLow, az);
                var e = Math.Sqrt(Sq(x / ax) + Sq(y / ay) + Sq(z / (z >= 0 ? az : azLow)));
                var nearVentricle = Math.Abs(x) < 3 + (3.5 * vs) + (6 * vs) && Math.Abs(y + 3) < 26 && Math.Abs(z - 10) < 12;
                if ((e is > 0.15 and < 0.62 && Math.Abs(x) > 12 && z > -0.4 * az && !nearVentricle) || attempts > 1000)
                {
                    t0 = (x, y, z);
                    break;
                }
            }

            var eCentre = Math.Sqrt(Sq(t0.X / ax) + Sq(t0.Y / ay) + Sq(t0.Z / (t0.Z >= 0 ? az : azLow)));
            var minAxis = Math.Min(ax, Math.Min(ay, azLow));
            var radius = rng.Uniform(11, 30);
            radius = Math.Max(7, Math.Min(radius, (0.85 - eCentre) * minAxis));

            var components = 2 + rng.NextInt(3); // 2..4 merged ellipsoids
            var centres = new (double X, double Y, double Z)[components];
            var inverse = new double[components][];
            var reach = 0.0;
            for (var k = 0; k < components; k++)
            {
                double sx, sy, sz;
                (double X, double Y, double Z) c;
                if (k == 0)
                {
                    c = t0;
                    sx = radius * rng.Uniform(0.75, 1.1);
                    sy = radius * rng.Uniform(0.75, 1.1);
                    sz = radius * rng.Uniform(0.75, 1.1);
                }
                else
                {
                    var (ux, uy, uz) = UnitVector(rng);
                    var d = radius * rng.Uniform(0.4, 0.95);
                    c = (t0.X + (d * ux), t0.Y + (d * uy), t0.Z + (d * uz));
                    sx = radius * rng.Uniform(0.35, 0.8);
                    sy = radius * rng.Uniform(0.35, 0.8);
                    sz = radius * rng.Uniform(0.35, 0.8);
                }

                var r = RandomRotation(rng);

                // (R S)⁻¹ = S⁻¹ Rᵀ: row i of the result is row i of Rᵀ (column i of R) divided by s_i.
                double[] s = [sx, sy, sz];
                var inv = new double[9];
                for (var i = 0; i < 3; i++)
                {
                    for (var j = 0; j < 3; j++)
                    {
                        inv[(i * 3) + j] = r[(j * 3) + i] / s[i];
                    }
                }

                centres[k] = c;
                inverse[k] = inv;
                var dc = Math.Sqrt(Sq(c.X - t0.X) + Sq(c.Y - t0.Y) + Sq(c.Z - t0.Z));
                reach = Math.Max(reach, dc + Math.Max(sx, Math.Max(sy, sz)));
            }

            var necrotic = rng.NextDouble() < 0.08 ? 0 : rng.Uniform(0.35, 0.7);
            var oedema = rng.Uniform(1.5, 2.4);

            // Distances can shrink by the oedema's boundary noise: reach it everywhere.
            reach *= oedema / (1 - OedemaBoundaryNoise) * 1.05;
            return new TumourShape(centres, inverse, necrotic, oedema, reach);
        }

        public bool InBox(double x, double y, double z) =>
            x >= _minX && x <= _maxX && y >= _minY && y <= _maxY && z >= _minZ && z <= _maxZ;

        /// <summary>The smallest ellipsoidal radius over the components (below 1: inside the core).</summary>
        public double Distance(double x, double y, double z)
        {
            var best = double.MaxValue;
            for (var k = 0; k < _centres.Length; k++)
            {
                var c = _centres[k];
                var m = _inverse[k];
                double dx = x - c.X, dy = y - c.Y, dz = z - c.Z;
                var u = (m[0] * dx) + (m[1] * dy) + (m[2] * dz);
                var v = (m[3] * dx) + (m[4] * dy) + (m[5] * dz);
                var w = (m[6] * dx) + (m[7] * dy) + (m[8] * dz);
                var d = (u * u) + (v * v) + (w * w);
                if (d < best)
                {
                    best = d;
                }
            }

            return Math.Sqrt(best);
        }

        private static (double X, double Y, double Z) UnitVector(Xoshiro rng)
        {
            while (true)
            {
                var (x, y, z) = (rng.Gaussian(), rng.Gaussian(), rng.Gaussian());
                var n = Math.Sqrt((x * x) + (y * y) + (z * z));
                if (n > 1e-6)
                {
                    return (x / n, y / n, z / n);
                }
            }
        }

        /// <summary>A uniformly random rotation (from a random unit quaternion), row-major.</summary>
        private static double[] RandomRotation(Xoshiro rng)
        {
            double a, b, c, d, n;
            do
            {
                (a, b, c, d) = (rng.Gaussian(), rng.Gaussian(), rng.Gaussian(), rng.Gaussian());
                n = Math.Sqrt((a * a) + (b * b) + (c * c) + (d * d));
            }
            while (n < 1e-6);

            (a, b, c, d) = (a / n, b / n, c / n, d / n);
            return
            [
                (a * a) + (b * b) - (c * c) - (d * d), 2 * ((b * c) - (a * d)), 2 * ((b * d) + (a * c)),
                2 * ((b * c) + (a * d)), (a * a) + (c * c) - (b * b) - (d * d), 2 * ((c * d) - (a * b)),
                2 * ((b * d) - (a * c)), 2 * ((c * d) + (a * b)), (a * a) + (d * d) - (b * b) - (c * c),
            ];
        }
    }
}
