namespace MriSeg.Imaging.Phantoms;

/// <summary>
/// One hospital's scanner: how it maps tissue signal to stored intensities (per modality scale, offset and
/// contrast gamma), how noisy and blurred its images are, and how strong its coil bias field is.
/// Derived deterministically from the dataset seed and the site index.
/// </summary>
/// <param name="Site">The site index.</param>
/// <param name="Scale">Per modality (BraTS order: flair, t1, t1ce, t2): stored intensity of signal 1.</param>
/// <param name="Offset">Per modality: added to every brain voxel.</param>
/// <param name="Gamma">Per modality: signal^gamma before scaling (contrast).</param>
/// <param name="NoiseSigma">Rician noise σ relative to white-matter T1 signal (1.0).</param>
/// <param name="BlurSigmaVoxels">Gaussian blur σ in voxels (resolution).</param>
/// <param name="BiasAmplitude">Log-amplitude of the smooth multiplicative bias field.</param>
public sealed record SiteProfile(
    int Site,
    IReadOnlyList<double> Scale,
    IReadOnlyList<double> Offset,
    IReadOnlyList<double> Gamma,
    double NoiseSigma,
    double BlurSigmaVoxels,
    double BiasAmplitude)
{
    /// <summary>The profile of site <paramref name="site"/> under dataset seed <paramref name="seed"/>.</summary>
    public static SiteProfile For(ulong seed, int site)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(site);
        var rng = new Xoshiro(Xoshiro.Derive(seed, 0x517E, site));

        // Spread the first sites over distinct regimes so that a handful of hospitals always differ clearly;
        // later sites draw freely.
        var regime = site % 3;
        var baseScale = regime switch
        {
            0 => rng.Uniform(380, 520),
            1 => rng.Uniform(700, 900),
            _ => rng.Uniform(1100, 1500),
        };
        var scale = new double[4];
        var offset = new double[4];
        var gamma = new double[4];
        for (var m = 0; m < 4; m++)
        {
            scale[m] = baseScale * rng.Uniform(0.8, 1.25);
            offset[m] = rng.Uniform(0, 0.06) * scale[m];
            gamma[m] = regime switch
            {
                0 => rng.Uniform(0.85, 0.97),
                1 => rng.Uniform(0.97, 1.07),
                _ => rng.Uniform(1.07, 1.2),
            };
        }

        var noise = regime switch
        {
            0 => rng.Uniform(0.035, 0.05),
            1 => rng.Uniform(0.06, 0.08),
            _ => rng.Uniform(0.045, 0.065),
        };
        var blur = regime switch
        {
            0 => rng.Uniform(0.3, 0.5),
            1 => rng.Uniform(0.55, 0.75),
            _ => rng.Uniform(0.8, 1.0),
        };
        var bias = rng.Uniform(0.18, 0.32);
        return new SiteProfile(site, scale, offset, gamma, noise, blur, bias);
    }
}
