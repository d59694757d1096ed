using MriSeg.Imaging.Datasets;

namespace MriSeg.Learning.Training;

/// <summary>
/// A train/validation/test split of a dataset's patients (never of slices: one patient's slices in two parts
/// would leak). Seeded and, optionally, stratified by whether the patient has tumour anywhere.
/// </summary>
/// <param name="Train">Patient indices (into <see cref="SliceDataset.PatientIds"/>) for training.</param>
/// <param name="Validation">Patient indices for validation.</param>
/// <param name="Test">Patient indices held out for the final test.</param>
public sealed record PatientSplit(IReadOnlyList<int> Train, IReadOnlyList<int> Validation, IReadOnlyList<int> Test)
{
    /// <summary>
    /// Splits the patients of <paramref name="data"/> (those with at least one slice): each stratum (with and without
    /// tumour, when <paramref name="stratify"/>) is shuffled with <paramref name="seed"/> and cut in the given shares,
    /// rounded to whole patients. When a share is positive and the data has at least three patients, that part gets
    /// at least one patient. Each part lists its patients in ascending order.
    /// </summary>
    public static PatientSplit Create(SliceDataset data, double validationFraction, double testFraction, ulong seed, bool stratify = true)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (!(validationFraction >= 0 && testFraction >= 0 && validationFraction + testFraction < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(validationFraction), "the validation and test shares must not be negative and must sum to less than 1.");
        }

        var slices = data.SlicesByPatient();
        var present = Enumerable.Range(0, slices.Length).Where(p => slices[p].Length > 0).ToArray();
        var tumour = present.Where(p => slices[p].Any(data.HasTumour)).ToHashSet();
        var strata = stratify
            ? new[] { present.Where(tumour.Contains).ToArray(), present.Where(p => !tumour.Contains(p)).ToArray() }
            : [present];

        var random = new Random(unchecked((int)(seed ^ (seed >> 32) ^ 0x5EED5417)));
        List<int> train = [], validation = [], test = [];
        foreach (var stratum in strata.Where(s => s.Length > 0))
        {
            var shuffled = stratum.ToArray();
            random.Shuffle(shuffled);
            var nTest = (int)Math.Round(testFraction * shuffled.Length, MidpointRounding.AwayFromZero);
            var nValidation = (int)Math.Round(validationFraction * shuffled.Length, MidpointRounding.AwayFromZero);
            nValidation = Math.Min(nValidation, shuffled.Length - nTest);
            test.AddRange(shuffled.Take(nTest));
            validation.AddRange(shuffled.Skip(nTest).Take(nValidation));
            train.AddRange(shuffled.Skip(nTest + nValidation));
        }

        // Tiny data: a part with a positive share still gets one patient, taken from training.
        if (present.Length >= 3)
        {
            if (testFraction > 0 && test.Count == 0)
            {
                test.Add(train[^1]);
                train.RemoveAt(train.Count - 1);
            }

            if (validationFraction > 0 && validation.Count == 0)
            {
                validation.Add(train[^1]);
                train.RemoveAt(train.Count - 1);
            }
        }

        train.Sort();
        validation.Sort();
        test.Sort();
        return new PatientSplit(train, validation, test);
    }
}
