using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;

namespace MriSeg.Learning.Tests;

public sealed class SamplingTests
{
    [Theory]
    [InlineData(false, 0.05)]
    [InlineData(true, 0.05)]
    [InlineData(false, 0.5)]
    public void Poisson_sampling_includes_each_patient_independently_at_rate_q(bool secure, double q)
    {
        const int population = 1000, steps = 600;
        var sampler = secure ? PoissonSampler.CreateSecure(q) : PoissonSampler.CreateInsecureSeeded(q, 42);
        Assert.Equal(secure, sampler.IsCryptographicallySecure);
        var counts = new int[population];
        var sizes = new List<int>();
        for (var s = 0; s < steps; s++)
        {
            var batch = sampler.Sample(population);
            Assert.Equal(batch.Order(), batch);
            Assert.Equal(batch.Length, batch.Distinct().Count());
            sizes.Add(batch.Length);
            foreach (var p in batch)
            {
                counts[p]++;
            }
        }

        // Batch size ~ Binomial(N, q): mean and variance within six standard errors.
        var mean = sizes.Average();
        var variance = sizes.Sum(x => (x - mean) * (x - mean)) / (steps - 1);
        var expectedVariance = population * q * (1 - q);
        Assert.InRange(mean, (population * q) - (6 * Math.Sqrt(expectedVariance / steps)), (population * q) + (6 * Math.Sqrt(expectedVariance / steps)));
        Assert.InRange(variance, expectedVariance * 0.7, expectedVariance * 1.3);

        // Each patient's inclusion count ~ Binomial(steps, q); their spread shows no patient is favoured.
        var perPatientVariance = steps * q * (1 - q);
        var countMean = counts.Average();
        var countVariance = counts.Sum(c => (c - countMean) * (c - countMean)) / (population - 1);
        Assert.InRange(countVariance, perPatientVariance * 0.8, perPatientVariance * 1.2);
        Assert.True(counts.Max() < (steps * q) + (7 * Math.Sqrt(perPatientVariance)));
    }

    [Fact]
    public void Seeded_sampling_repeats_and_rate_one_takes_everyone()
    {
        var a = PoissonSampler.CreateInsecureSeeded(0.3, 5);
        var b = PoissonSampler.CreateInsecureSeeded(0.3, 5);
        for (var i = 0; i < 10; i++)
        {
            Assert.Equal(a.Sample(50), b.Sample(50));
        }

        Assert.Equal(Enumerable.Range(0, 20), PoissonSampler.CreateSecure(1).Sample(20));
        Assert.Empty(PoissonSampler.CreateSecure(0.5).Sample(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => PoissonSampler.CreateSecure(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => PoissonSampler.CreateSecure(1.5));
    }

    [Fact]
    public void Split_is_by_patient_disjoint_complete_seeded_and_stratified()
    {
        var data = TestSlices.Disks(patients: 200, slicesPerPatient: 3, size: 16, seed: 11, tumourFreeShare: 0.3);
        var split = PatientSplit.Create(data, 0.1, 0.2, seed: 9);
        var all = split.Train.Concat(split.Validation).Concat(split.Test).ToList();
        Assert.Equal(200, all.Count);
        Assert.Equal(Enumerable.Range(0, 200), all.Order());
        Assert.InRange(split.Test.Count, 38, 42);
        Assert.InRange(split.Validation.Count, 18, 22);

        // Tumour-free share equal (to rounding) in every part.
        var slices = data.SlicesByPatient();
        double FreeShare(IReadOnlyList<int> part) => part.Count(p => !slices[p].Any(data.HasTumour)) / (double)part.Count;
        var overall = FreeShare(Enumerable.Range(0, 200).ToList());
        Assert.InRange(overall, 0.2, 0.4);
        Assert.InRange(FreeShare(split.Test), overall - 0.03, overall + 0.03);
        Assert.InRange(FreeShare(split.Validation), overall - 0.05, overall + 0.05);
        Assert.InRange(FreeShare(split.Train), overall - 0.02, overall + 0.02);

        var again = PatientSplit.Create(data, 0.1, 0.2, seed: 9);
        Assert.Equal(split.Train, again.Train);
        Assert.Equal(split.Validation, again.Validation);
        Assert.Equal(split.Test, again.Test);
        Assert.NotEqual(split.Test, PatientSplit.Create(data, 0.1, 0.2, seed: 10).Test);
    }

    [Fact]
    public void Tiny_splits_still_give_each_requested_part_a_patient()
    {
        var data = TestSlices.Disks(patients: 4, slicesPerPatient: 1, size: 16, seed: 1, tumourFreeShare: 0);
        var split = PatientSplit.Create(data, 0.1, 0.1, seed: 1);
        Assert.Single(split.Test);
        Assert.Single(split.Validation);
        Assert.Equal(2, split.Train.Count);
        var none = PatientSplit.Create(data, 0, 0, seed: 1);
        Assert.Equal(4, none.Train.Count);
        Assert.Empty(none.Test);
    }
}
