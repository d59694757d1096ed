using MriSeg.Imaging.Datasets;

namespace MriSeg.CleanRoom.Tests;

public sealed class ShardJoinTests
{
    private static SliceDataset Dataset(string prefix, int patients, int slicesEach, int seed, int size = 8, string[]? modalities = null)
    {
        modalities ??= ["flair", "t1"];
        var rng = new Random(seed);
        var n = patients * slicesEach;
        var images = new float[n * modalities.Length * size * size];
        for (var i = 0; i < images.Length; i++)
        {
            images[i] = (float)rng.NextDouble();
        }

        var masks = new byte[n * size * size];
        for (var i = 0; i < masks.Length; i++)
        {
            masks[i] = (byte)(rng.Next(4) == 0 ? 1 : 0);
        }

        var index = Enumerable.Range(0, n).Select(i => i / slicesEach).ToArray();
        var ids = Enumerable.Range(0, patients).Select(p => $"{prefix}{p}").ToArray();
        return new SliceDataset(images, masks, index, size, size, modalities, LabelScheme.WholeTumour, ids);
    }

    [Fact]
    public void JoinsProvidersAndKeepsProvenance()
    {
        var joined = ShardJoin.Join([new("a", Dataset("a", 3, 2, 1), "ha"), new("b", Dataset("b", 2, 3, 2), "hb")]);
        Assert.Equal(5, joined.Dataset.PatientIds.Count);
        Assert.Equal(12, joined.Dataset.Count);
        Assert.Equal(["a", "a", "a", "b", "b"], joined.PatientProvider);
        Assert.Equal(new ProviderContribution("b", 2, 6, joined.Contributions[1].TumourSlices, "hb"), joined.Contributions[1]);
        Assert.Empty(joined.DuplicatePatients);
    }

    [Fact]
    public void APatientGivenByTwoProvidersCountsOnce()
    {
        var a = Dataset("a", 3, 2, 1);
        var b = Dataset("b", 2, 2, 2);
        // Provider b's second patient is provider a's first scan under another pseudonym.
        var copied = b.Images.ToArray();
        var masks = b.Masks.ToArray();
        a.Images.AsSpan(0, 2 * a.Channels * a.Plane).CopyTo(copied.AsSpan(2 * b.Channels * b.Plane));
        a.Masks.AsSpan(0, 2 * a.Plane).CopyTo(masks.AsSpan(2 * b.Plane));
        b = new SliceDataset(copied, masks, b.PatientIndex, b.Height, b.Width, b.Modalities, b.Labels, b.PatientIds);

        var joined = ShardJoin.Join([new("a", a, "ha"), new("b", b, "hb")]);
        Assert.Equal(["b/b1"], joined.DuplicatePatients);
        Assert.Equal(4, joined.Dataset.PatientIds.Count);
        Assert.Equal(1, joined.Contributions[1].Patients);
    }

    [Fact]
    public void SchemaMismatchNamesBothProviders()
    {
        var e = Assert.Throws<DatasetSchemaException>(() =>
            ShardJoin.Join([new("hospital-a", Dataset("a", 1, 1, 1), "h"), new("hospital-b", Dataset("b", 1, 1, 1, modalities: ["flair"]), "h")]));
        Assert.Contains("hospital-a", e.Message);
        Assert.Contains("hospital-b", e.Message);
    }
}
