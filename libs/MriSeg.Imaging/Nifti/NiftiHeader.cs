namespace MriSeg.Imaging.Nifti;

/// <summary>
/// The fields of a NIfTI-1 or NIfTI-2 header that matter for reading images, widened to the NIfTI-2 types
/// (dimensions and offsets as 64-bit integers, real numbers as doubles). Produced by the reader after the
/// structural checks; it carries no free text other than <see cref="Description"/>.
/// </summary>
public sealed class NiftiHeader
{
    internal NiftiHeader()
    {
    }

    /// <summary>1 or 2.</summary>
    public int Version { get; internal init; }

    /// <summary>The file's byte order.</summary>
    public bool IsLittleEndian { get; internal init; }

    /// <summary>sizeof_hdr: 348 (NIfTI-1) or 540 (NIfTI-2).</summary>
    public int HeaderSize => Version == 1 ? NiftiLayout.Nifti1HeaderSize : NiftiLayout.Nifti2HeaderSize;

    /// <summary>dim[0..7] as stored.</summary>
    public IReadOnlyList<long> Dim { get; internal init; } = [];

    /// <summary>pixdim[0..7] as stored (pixdim[0] is qfac).</summary>
    public IReadOnlyList<double> Pixdim { get; internal init; } = [];

    /// <summary>The datatype code as stored.</summary>
    public int DatatypeCode { get; internal init; }

    /// <summary>bitpix as stored.</summary>
    public int Bitpix { get; internal init; }

    /// <summary>vox_offset: where the voxels start.</summary>
    public long VoxOffset { get; internal init; }

    /// <summary>scl_slope as stored (0 or non-finite: no scaling).</summary>
    public double SclSlope { get; internal init; }

    /// <summary>scl_inter as stored.</summary>
    public double SclInter { get; internal init; }

    /// <summary>qform_code.</summary>
    public int QformCode { get; internal init; }

    /// <summary>sform_code.</summary>
    public int SformCode { get; internal init; }

    /// <summary>quatern_b, quatern_c, quatern_d.</summary>
    public (double B, double C, double D) Quaternion { get; internal init; }

    /// <summary>qoffset_x, qoffset_y, qoffset_z.</summary>
    public (double X, double Y, double Z) QuaternionOffset { get; internal init; }

    /// <summary>srow_x, srow_y, srow_z (12 values, row-major).</summary>
    public IReadOnlyList<double> Srow { get; internal init; } = [];

    /// <summary>xyzt_units.</summary>
    public int XyztUnits { get; internal init; }

    /// <summary>intent_code.</summary>
    public int IntentCode { get; internal init; }

    /// <summary>descrip (free text; never propagate it into de-identified outputs).</summary>
    public string Description { get; internal init; } = "";

    /// <summary>The datatype (valid after the reader's checks).</summary>
    public NiftiDatatype Datatype => (NiftiDatatype)DatatypeCode;

    /// <summary>The stored grid (dims 1..3; a dimension beyond dim[0] counts as 1).</summary>
    public GridSize StorageSize => new((int)Dim[1], Dim[0] >= 2 ? (int)Dim[2] : 1, Dim[0] >= 3 ? (int)Dim[3] : 1);

    /// <summary>Whether scl_slope/scl_inter change the values (slope 0 or non-finite means none, as in nibabel).</summary>
    public bool HasScaling => SclSlope != 0 && double.IsFinite(SclSlope) && (SclSlope != 1 || (double.IsFinite(SclInter) && SclInter != 0));

    /// <summary>The effective (slope, intercept).</summary>
    public (double Slope, double Intercept) Scaling =>
        SclSlope != 0 && double.IsFinite(SclSlope) ? (SclSlope, double.IsFinite(SclInter) ? SclInter : 0) : (1, 0);
}

/// <summary>Byte offsets of the header fields (from the NIfTI-1 and NIfTI-2 specifications).</summary>
internal static class NiftiLayout
{
    public const int Nifti1HeaderSize = 348;
    public const int Nifti2HeaderSize = 540;

    public static class V1
    {
        public const int SizeofHdr = 0;
        public const int DimInfo = 39;
        public const int Dim = 40;
        public const int IntentCode = 68;
        public const int Datatype = 70;
        public const int Bitpix = 72;
        public const int Pixdim = 76;
        public const int VoxOffset = 108;
        public const int SclSlope = 112;
        public const int SclInter = 116;
        public const int XyztUnits = 123;
        public const int Descrip = 148;
        public const int QformCode = 252;
        public const int SformCode = 254;
        public const int QuaternB = 256;
        public const int Srow = 280;
        public const int Magic = 344;
    }

    public static class V2
    {
        public const int SizeofHdr = 0;
        public const int Magic = 4;
        public const int Datatype = 12;
        public const int Bitpix = 14;
        public const int Dim = 16;
        public const int Pixdim = 104;
        public const int VoxOffset = 168;
        public const int SclSlope = 176;
        public const int SclInter = 184;
        public const int Descrip = 240;
        public const int QformCode = 344;
        public const int SformCode = 348;
        public const int QuaternB = 352;
        public const int Srow = 400;
        public const int XyztUnits = 500;
        public const int IntentCode = 504;
    }

    /// <summary>"n+1\0": NIfTI-1 single file.</summary>
    public static ReadOnlySpan<byte> Magic1 => "n+1\0"u8;

    /// <summary>"ni1\0": NIfTI-1 header of a .hdr/.img pair.</summary>
    public static ReadOnlySpan<byte> Magic1Pair => "ni1\0"u8;

    /// <summary>"n+2\0\r\n\x1A\n": NIfTI-2 single file.</summary>
    public static ReadOnlySpan<byte> Magic2 => [(byte)'n', (byte)'+', (byte)'2', 0, 0x0D, 0x0A, 0x1A, 0x0A];
}
