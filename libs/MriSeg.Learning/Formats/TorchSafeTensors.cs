using MriSeg.Imaging.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Formats;

/// <summary>
/// Converts between TorchSharp tensors and <see cref="SafeTensor"/>. The only torch-dependent file of
/// Formats/: <see cref="SafeTensors"/> itself works on bytes so dataset tools need no libtorch.
/// </summary>
public static class TorchSafeTensors
{
    /// <summary>The safetensors dtype of a torch dtype.</summary>
    /// <exception cref="NotSupportedException">Complex and quantised dtypes.</exception>
    public static SafeTensorDType ToSafeTensorDType(ScalarType type) => type switch
    {
        ScalarType.Float32 => SafeTensorDType.Float32,
        ScalarType.Float64 => SafeTensorDType.Float64,
        ScalarType.Float16 => SafeTensorDType.Float16,
        ScalarType.BFloat16 => SafeTensorDType.BFloat16,
        ScalarType.Byte => SafeTensorDType.UInt8,
        ScalarType.Int8 => SafeTensorDType.Int8,
        ScalarType.Int16 => SafeTensorDType.Int16,
        ScalarType.Int32 => SafeTensorDType.Int32,
        ScalarType.Int64 => SafeTensorDType.Int64,
        ScalarType.Bool => SafeTensorDType.Bool,
        _ => throw new NotSupportedException($"torch dtype {type} has no safetensors equivalent here."),
    };

    /// <summary>The torch dtype of a safetensors dtype.</summary>
    /// <exception cref="NotSupportedException">U16, U32, U64 and the F8 types, which TorchSharp 0.107 lacks.</exception>
    public static ScalarType ToScalarType(SafeTensorDType type) => type switch
    {
        SafeTensorDType.Float32 => ScalarType.Float32,
        SafeTensorDType.Float64 => ScalarType.Float64,
        SafeTensorDType.Float16 => ScalarType.Float16,
        SafeTensorDType.BFloat16 => ScalarType.BFloat16,
        SafeTensorDType.UInt8 => ScalarType.Byte,
        SafeTensorDType.Int8 => ScalarType.Int8,
        SafeTensorDType.Int16 => ScalarType.Int16,
        SafeTensorDType.Int32 => ScalarType.Int32,
        SafeTensorDType.Int64 => ScalarType.Int64,
        SafeTensorDType.Bool => ScalarType.Bool,
        _ => throw new NotSupportedException($"safetensors dtype {type.Code()} has no TorchSharp equivalent; read it with SafeTensor.Data instead."),
    };

    /// <summary>Copies a tensor (any device, any layout) into a named <see cref="SafeTensor"/>.</summary>
    public static SafeTensor FromTensor(string name, Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var dtype = ToSafeTensorDType(tensor.dtype);
        using var cpu = tensor.detach().cpu().contiguous();
        var bytes = cpu.bytes.ToArray();
        SafeTensors.ToLittleEndian(bytes, dtype.ElementSize());
        return new SafeTensor(name, dtype, cpu.shape, bytes);
    }

    /// <summary>Creates a tensor holding a copy of <paramref name="tensor"/>'s data.</summary>
    public static Tensor ToTensor(SafeTensor tensor, Device? device = null)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        var type = ToScalarType(tensor.DType);
        var bytes = tensor.Data.ToArray();
        SafeTensors.ToLittleEndian(bytes, tensor.DType.ElementSize());
        var result = empty([.. tensor.Shape], type);
        if (bytes.Length > 0)
        {
            result.bytes = bytes;
        }

        return device is null || device.type == DeviceType.CPU ? result : result.to(device);
    }

    /// <summary>Writes named tensors to a safetensors file.</summary>
    public static void Save(string path, IEnumerable<(string Name, Tensor Tensor)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        SafeTensors.Save(path, tensors.Select(t => FromTensor(t.Name, t.Tensor)), metadata);
    }

    /// <summary>Reads every tensor of a safetensors file.</summary>
    public static Dictionary<string, Tensor> Load(string path, Device? device = null) =>
        SafeTensors.Load(path).Tensors.ToDictionary(t => t.Name, t => ToTensor(t, device), StringComparer.Ordinal);
}
