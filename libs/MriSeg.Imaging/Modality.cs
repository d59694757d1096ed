namespace MriSeg.Imaging;

/// <summary>The four BraTS MRI modalities.</summary>
public enum Modality
{
    /// <summary>T2 fluid-attenuated inversion recovery: oedema bright, CSF dark.</summary>
    Flair,

    /// <summary>Native T1: white matter bright, CSF dark.</summary>
    T1,

    /// <summary>Contrast-enhanced T1: enhancing tumour bright.</summary>
    T1ce,

    /// <summary>T2: CSF and oedema bright.</summary>
    T2,
}

/// <summary>BraTS file naming and label conventions.</summary>
public static class Brats
{
    /// <summary>The modalities in BraTS order (flair, t1, t1ce, t2).</summary>
    public static IReadOnlyList<Modality> Modalities { get; } = [Modality.Flair, Modality.T1, Modality.T1ce, Modality.T2];

    /// <summary>BraTS label 1: necrotic and non-enhancing tumour core.</summary>
    public const byte NecroticCore = 1;

    /// <summary>BraTS label 2: peritumoural oedema.</summary>
    public const byte Oedema = 2;

    /// <summary>BraTS label 4: enhancing tumour.</summary>
    public const byte Enhancing = 4;

    /// <summary>The file suffix of a modality ("flair", "t1", "t1ce", "t2").</summary>
    public static string Suffix(Modality modality) => modality switch
    {
        Modality.Flair => "flair",
        Modality.T1 => "t1",
        Modality.T1ce => "t1ce",
        Modality.T2 => "t2",
        _ => throw new ArgumentOutOfRangeException(nameof(modality)),
    };

    /// <summary>The suffix of the label file.</summary>
    public const string SegSuffix = "seg";

    /// <summary>True for the BraTS labels {0, 1, 2, 4}.</summary>
    public static bool IsValidLabel(int label) => label is 0 or NecroticCore or Oedema or Enhancing;
}
