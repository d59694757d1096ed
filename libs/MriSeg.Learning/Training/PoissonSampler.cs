using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace MriSeg.Learning.Training;

/// <summary>
/// Poisson sampling of patients: every step includes each patient independently with probability q, so the
/// batch size varies (binomial with mean q·N). The privacy amplification the accountant counts on holds only if
/// nobody outside can tell which patients a step used, so the default draws from the OS CSPRNG.
/// </summary>
public sealed class PoissonSampler
{
    private readonly Random? _seeded;
    private ulong[] _words = [];

    private PoissonSampler(double sampleRate, Random? seeded)
    {
        if (!(sampleRate > 0 && sampleRate <= 1))
        {
            throw new ArgumentOutOfRangeException(nameof(sampleRate), sampleRate, "the sample rate must be in (0, 1].");
        }

        SampleRate = sampleRate;
        _seeded = seeded;
    }

    /// <summary>q.</summary>
    public double SampleRate { get; }

    /// <summary>True for the CSPRNG sampler.</summary>
    public bool IsCryptographicallySecure => _seeded is null;

    /// <summary>A sampler drawing from the OS CSPRNG (the one to use for DP training).</summary>
    public static PoissonSampler CreateSecure(double sampleRate) => new(sampleRate, null);

    /// <summary>INSECURE: a reproducible sampler for tests; anyone who knows the seed knows every batch.</summary>
    public static PoissonSampler CreateInsecureSeeded(double sampleRate, int seed) => new(sampleRate, new Random(seed));

    /// <summary>The members 0..population-1 chosen for one step, ascending (possibly none).</summary>
    public int[] Sample(int population)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(population);
        if (_words.Length < population)
        {
            _words = new ulong[population];
        }

        var words = _words.AsSpan(0, population);
        if (_seeded is null)
        {
            RandomNumberGenerator.Fill(MemoryMarshal.AsBytes(words));
        }
        else
        {
            _seeded.NextBytes(MemoryMarshal.AsBytes(words));
        }

        // u < q with u uniform on the 2^53 multiples of 2^-53 in [0, 1).
        var chosen = new List<int>((int)(SampleRate * population * 1.2) + 4);
        for (var i = 0; i < population; i++)
        {
            if ((words[i] >> 11) * (1.0 / (1UL << 53)) < SampleRate)
            {
                chosen.Add(i);
            }
        }

        return [.. chosen];
    }
}
