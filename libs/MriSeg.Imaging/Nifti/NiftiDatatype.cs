namespace MriSeg.Imaging.Nifti;

/// <summary>The NIfTI datatypes this library reads (the value is the NIfTI datatype code).</summary>
public enum NiftiDatatype : short
{
    /// <summary>DT_UINT8 (code 2), 8 bits.</summary>
    UInt8 = 2,

    /// <summary>DT_INT16 (code 4), 16 bits.</summary>
    Int16 = 4,

    /// <summary>DT_INT32 (code 8), 32 bits.</summary>
    Int32 = 8,

    /// <summary>DT_FLOAT32 (code 16), 32 bits.</summary>
    Float32 = 16,

    /// <summary>DT_FLOAT64 (code 64), 64 bits.</summary>
    Float64 = 64,
}

/// <summary>Facts about NIfTI datatype codes.</summary>
public static class NiftiDatatypes
{
    /// <summary>True when this library reads the code.</summary>
    public static bool IsSupported(int code) => code is 2 or 4 or 8 or 16 or 64;

    /// <summary>Bytes per voxel of a supported datatype.</summary>
    public static int BytesPerVoxel(NiftiDatatype datatype) => datatype switch
    {
        NiftiDatatype.UInt8 => 1,
        NiftiDatatype.Int16 => 2,
        NiftiDatatype.Int32 => 4,
        NiftiDatatype.Float32 => 4,
        NiftiDatatype.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(datatype), datatype, "unsupported NIfTI datatype"),
    };

    /// <summary>The specification's name of any NIfTI datatype code (also the unsupported ones).</summary>
    public static string Name(int code) => code switch
    {
        0 => "DT_UNKNOWN",
        1 => "DT_BINARY",
        2 => "DT_UINT8",
        4 => "DT_INT16",
        8 => "DT_INT32",
        16 => "DT_FLOAT32",
        32 => "DT_COMPLEX64",
        64 => "DT_FLOAT64",
        128 => "DT_RGB24",
        256 => "DT_INT8",
        512 => "DT_UINT16",
        768 => "DT_UINT32",
        1024 => "DT_INT64",
        1280 => "DT_UINT64",
        1536 => "DT_FLOAT128",
        1792 => "DT_COMPLEX128",
        2048 => "DT_COMPLEX256",
        2304 => "DT_RGBA32",
        _ => "not a NIfTI datatype",
    };
}
