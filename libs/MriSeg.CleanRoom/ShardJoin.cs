using System.Runtime.InteropServices;
using System.Security.Cryptography;
using MriSeg.Imaging.Datasets;

namespace MriSeg.CleanRoom;

/// <summary>One provider's opened shard, as the clean room holds it in memory.</summary>
/// <param name="Provider">The provider's party id (the sealed package's verified owner).</param>
/// <param name="Dataset">The shard's slices.</param>
/// <param name="PlaintextSha256">SHA-256 of the shard plaintext (from the package manifest).</param>
public sealed record ProviderShard(string Provider, SliceDataset Dataset, string PlaintextSha256);

/// <summary>The joined training data of a run.</summary>
/// <param name="Dataset">All providers' patients in one dataset (provider order, then shard order).</param>
/// <param name="PatientProvider">For each patient of <paramref name="Dataset"/>, its provider (provenance).</param>
/// <param name="Contributions">Counts per provider after de-duplication.</param>
/// <param name="DuplicatePatients">Patients dropped because a slice of theirs already came from an earlier shard.</param>
public sealed record JoinedDataset(
    SliceDataset Dataset,
    IReadOnlyList<string> PatientProvider,
    IReadOnlyList<ProviderContribution> Contributions,
    IReadOnlyList<string> DuplicatePatients);

/// <summary>
/// Joins the providers' shards of a run: the schemas must agree (modalities, labels, size: a mismatch names both
/// providers), and a patient whose slice content already came from an earlier shard (the same scan given by two
/// hospitals, or a shard given twice) is dropped, found by SHA-256 of each slice's image and mask bytes, so that no
/// person counts twice towards the privacy unit or the metrics.
/// </summary>
public static class ShardJoin
{
    /// <summary>Joins the shards.</summary>
    /// <exception cref="DatasetSchemaException">The shards disagree in schema, or none is given.</exception>
    public static JoinedDataset Join(IReadOnlyList<ProviderShard> shards)
    {
        ArgumentNullException.ThrowIfNull(shards);
        if (shards.Count == 0)
        {
            throw new DatasetSchemaException("a run needs at least one dataset shard");
        }

        var first = shards[0];
        foreach (var s in shards.Skip(1))
        {
            var d = s.Dataset;
            if (!d.Modalities.SequenceEqual(first.Dataset.Modalities) || d.Labels != first.Dataset.Labels
                || d.Height != first.Dataset.Height || d.Width != first.Dataset.Width)
            {
                throw new DatasetSchemaException(
                    $"schema mismatch between providers: {first.Provider} sent {first.Dataset.Describe()}, {s.Provider} sent {d.Describe()}");
            }
        }

        var seen = new HashSet<UInt128>();
        var parts = new List<SliceDataset>();
        var provenance = new List<string>();
        var contributions = new List<ProviderContribution>();
        var duplicates = new List<string>();
        foreach (var shard in shards)
        {
            var d = shard.Dataset;
            var byPatient = d.SlicesByPatient();
            var keep = new List<int>();
            for (var p = 0; p < byPatient.Length; p++)
            {
                var hashes = byPatient[p].Select(i => SliceHash(d, i)).ToList();
                if (hashes.Any(seen.Contains))
                {
                    duplicates.Add($"{shard.Provider}/{d.PatientIds[p]}");
                    continue;
                }

                hashes.ForEach(h => seen.Add(h));
                keep.Add(p);
            }

            var kept = d.SelectPatients(keep);
            parts.Add(kept);
            provenance.AddRange(Enumerable.Repeat(shard.Provider, kept.PatientIds.Count));
            contributions.Add(new ProviderContribution(shard.Provider, kept.PatientIds.Count, kept.Count, kept.TumourSlices, shard.PlaintextSha256));
        }

        return new JoinedDataset(SliceDataset.Concat(parts), provenance, contributions, duplicates);
    }

    /// <summary>First 128 bits of SHA-256 over a slice's image and mask bytes.</summary>
    private static UInt128 SliceHash(SliceDataset d, int slice)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(MemoryMarshal.AsBytes(d.Image(slice)));
        hash.AppendData(d.Mask(slice));
        Span<byte> digest = stackalloc byte[32];
        hash.GetHashAndReset(digest);
        return MemoryMarshal.Read<UInt128>(digest);
    }
}
