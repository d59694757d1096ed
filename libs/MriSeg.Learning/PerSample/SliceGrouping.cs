namespace MriSeg.Learning.PerSample;

/// <summary>How a group's slice losses combine into the group's loss (and gradient).</summary>
public enum GroupReduction
{
    /// <summary>Sum over the group's slices: the patient's summed gradient (ARCHITECTURE.md's privacy model).</summary>
    Sum,

    /// <summary>Mean over the group's slices, so patients with more slices do not get larger gradients before clipping.</summary>
    Mean,
}

/// <summary>
/// Which samples of a batch belong to which group (patient), and how they are laid out for the
/// folded pass: a k x G grid of slots, k = the largest group, slot (j, g) holding group g's j-th
/// slice. Groups with fewer slices repeat their first slice with weight 0, so they contribute
/// nothing (GroupNorm is per sample and group, so a padded slot cannot leak into another).
/// </summary>
public sealed class SliceGrouping
{
    private SliceGrouping(int[] groupIndex, int groupCount, GroupReduction reduction, int paddingGroups)
    {
        GroupIndex = groupIndex;
        GroupCount = groupCount;
        Reduction = reduction;
        PaddingGroups = paddingGroups;
        var members = new List<int>[groupCount];
        for (var g = 0; g < groupCount; g++)
        {
            members[g] = [];
        }

        for (var i = 0; i < groupIndex.Length; i++)
        {
            members[groupIndex[i]].Add(i);
        }

        SlicesPerGroup = [.. members.Select(m => m.Count)];
        SlotsPerGroup = groupCount == 0 ? 0 : SlicesPerGroup.Max();
        SlotSample = new long[SlotsPerGroup * groupCount];
        SlotWeight = new double[SlotsPerGroup * groupCount];
        IsIdentity = paddingGroups == 0 && SlotsPerGroup == 1 && groupIndex.Select((g, i) => g == i).All(x => x);
        for (var j = 0; j < SlotsPerGroup; j++)
        {
            for (var g = 0; g < groupCount; g++)
            {
                var slot = (j * groupCount) + g;
                var m = members[g];
                SlotSample[slot] = j < m.Count ? m[j] : m[0];
                SlotWeight[slot] = j >= m.Count || g >= groupCount - paddingGroups ? 0 : reduction == GroupReduction.Mean ? 1.0 / m.Count : 1.0;
            }
        }
    }

    /// <summary>
    /// Groups samples by <paramref name="groupIndex"/>: sample i belongs to group groupIndex[i].
    /// Groups are numbered 0..G-1 and every group needs at least one sample.
    /// </summary>
    /// <param name="groupIndex">One group number per sample.</param>
    /// <param name="reduction">How a group's slice losses combine.</param>
    /// <param name="maxSlicesPerGroup">Refuse groups with more slices (the DP sensitivity assumes a bound on what a patient contributes per step); 0 for no limit.</param>
    public static SliceGrouping Create(IReadOnlyList<int> groupIndex, GroupReduction reduction = GroupReduction.Sum, int maxSlicesPerGroup = 0) =>
        Create(groupIndex, reduction, maxSlicesPerGroup, 0);

    /// <summary>
    /// As <see cref="Create(IReadOnlyList{int}, GroupReduction, int)"/>, with the last <paramref name="paddingGroups"/>
    /// groups as padding: their slots weigh 0, so their gradient is exactly zero and they change no sum. Padding keeps
    /// the folded pass at a few fixed group counts (a Poisson batch has a random size), which spares libtorch a new
    /// set of convolution primitives for every count and keeps the CPU heap from fragmenting.
    /// </summary>
    public static SliceGrouping Create(IReadOnlyList<int> groupIndex, GroupReduction reduction, int maxSlicesPerGroup, int paddingGroups)
    {
        ArgumentNullException.ThrowIfNull(groupIndex);
        var index = groupIndex.ToArray();
        var groupCount = index.Length == 0 ? 0 : index.Max() + 1;
        if (index.Any(g => g < 0))
        {
            throw new ArgumentException("group indices must be non-negative.", nameof(groupIndex));
        }

        var counts = new int[groupCount];
        foreach (var g in index)
        {
            counts[g]++;
        }

        var empty = Array.IndexOf(counts, 0);
        if (empty >= 0)
        {
            throw new ArgumentException(
                $"group {empty} has no samples; groups must be numbered 0..{groupCount - 1} without gaps.", nameof(groupIndex));
        }

        if (maxSlicesPerGroup > 0 && counts.Any(c => c > maxSlicesPerGroup))
        {
            throw new ArgumentException(
                $"a group has {counts.Max()} slices, more than the limit of {maxSlicesPerGroup} per group.", nameof(groupIndex));
        }

        if (paddingGroups < 0 || paddingGroups > groupCount)
        {
            throw new ArgumentOutOfRangeException(nameof(paddingGroups), paddingGroups, $"padding must be 0..{groupCount} of the {groupCount} groups.");
        }

        return new SliceGrouping(index, groupCount, reduction, paddingGroups);
    }

    /// <summary>Each sample in its own group (sample-level DP, or one slice per patient).</summary>
    public static SliceGrouping OnePerSample(int samples) => Create([.. Enumerable.Range(0, samples)]);

    /// <summary>Group of each sample.</summary>
    public IReadOnlyList<int> GroupIndex { get; }

    /// <summary>Number of groups G.</summary>
    public int GroupCount { get; }

    /// <summary>Number of samples.</summary>
    public int SampleCount => GroupIndex.Count;

    /// <summary>Trailing groups that are padding (weight 0).</summary>
    public int PaddingGroups { get; }

    /// <summary>Groups that are not padding.</summary>
    public int RealGroupCount => GroupCount - PaddingGroups;

    /// <summary>Slices in each group.</summary>
    public IReadOnlyList<int> SlicesPerGroup { get; }

    /// <summary>k: slots per group in the folded layout (the largest group's slice count).</summary>
    public int SlotsPerGroup { get; }

    /// <summary>How slice losses combine.</summary>
    public GroupReduction Reduction { get; }

    /// <summary>Sample of slot j·G + g.</summary>
    internal long[] SlotSample { get; }

    /// <summary>Loss weight of slot j·G + g (0 for padding).</summary>
    internal double[] SlotWeight { get; }

    /// <summary>True when sample i is group i: the batch folds without a gather and without weights.</summary>
    internal bool IsIdentity { get; }
}
