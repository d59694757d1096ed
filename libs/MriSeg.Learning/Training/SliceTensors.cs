using System.Runtime.InteropServices;
using MriSeg.Imaging.Datasets;
using static TorchSharp.torch;

namespace MriSeg.Learning.Training;

/// <summary>
/// Batches of a <see cref="SliceDataset"/> as CPU float32 tensors, written straight into tensor memory: a managed
/// staging array per batch (several MB, so on the large-object heap) was garbage the GC collects only in full
/// collections, and the process grew by about 13 MB a step until one came.
/// </summary>
internal static class SliceTensors
{
    /// <summary>Images of the given slices, [n, C, H, W], in the caller's dispose scope.</summary>
    public static Tensor Images(SliceDataset data, IReadOnlyList<int> slices)
    {
        var values = data.Channels * data.Plane;
        var result = empty([slices.Count, data.Channels, data.Height, data.Width], ScalarType.Float32, CPU);
        var target = MemoryMarshal.Cast<byte, float>(result.bytes);
        for (var i = 0; i < slices.Count; i++)
        {
            data.Images.AsSpan(slices[i] * values, values).CopyTo(target.Slice(i * values, values));
        }

        return result;
    }

    /// <summary>Masks of the given slices as 0/1 floats, [n, K, H, W], in the caller's dispose scope.</summary>
    public static Tensor Masks(SliceDataset data, IReadOnlyList<int> slices)
    {
        var values = data.LabelChannels * data.Plane;
        var result = empty([slices.Count, data.LabelChannels, data.Height, data.Width], ScalarType.Float32, CPU);
        var target = MemoryMarshal.Cast<byte, float>(result.bytes);
        for (var i = 0; i < slices.Count; i++)
        {
            var source = data.Masks.AsSpan(slices[i] * values, values);
            var row = target.Slice(i * values, values);
            for (var j = 0; j < values; j++)
            {
                row[j] = source[j];
            }
        }

        return result;
    }
}
