using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MriSeg.Learning.Model;

/// <summary>
/// A folded 3x3 convolution for layers with few pixels and many weights (the U-Net's deepest
/// levels): forward and input gradient run on the unfolded batch with one weight copy (all G
/// copies are equal by construction), and only the weight gradient is per group (im2col and one
/// batched matmul), so the G weight copies are never read. On the CPU this beats a grouped
/// convolution there (~3x at 8x8 with 256 channels) and loses at higher resolutions.
/// </summary>
internal sealed class SharedWeightConv : autograd.SingleTensorFunction<SharedWeightConv>
{
    /// <summary>Off forces grouped convolutions everywhere (for comparisons).</summary>
    internal static bool Enabled { get; set; } = true;

    /// <summary>
    /// Used where a group's im2col matrix (slots·H·W columns) is small next to its output width, on the
    /// CPU only: GPU grouped convolutions were measured fast (PLATFORM.md) and this path was not.
    /// </summary>
    public static bool Pays(Tensor input, long outChannels) =>
        Enabled && input.device_type == DeviceType.CPU && input.shape[0] * input.shape[2] * input.shape[3] * 2 <= outChannels;

    public override string Name => nameof(SharedWeightConv);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var weight = (Tensor)vars[1];
        var bias = (Tensor)vars[2];
        var groups = (int)vars[3];
        var (k, h, w) = (x.shape[0], x.shape[2], x.shape[3]);
        var o = weight.shape[0] / groups;
        var w0 = weight.narrow(0, 0, o);
        var input = x.view(k * groups, -1, h, w);
        ctx.save_for_backward([input, w0]);
        ctx.save_data("groups", groups);
        long[] one = [1, 1];
        return F.conv2d(input, w0, bias.narrow(0, 0, o), one, one, one, 1).view(k, -1, h, w);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradient)
    {
        var saved = ctx.get_saved_variables();
        var (input, w0) = (saved[0], saved[1]);
        var g = (int)ctx.get_data("groups")!;
        var (n, i, h, w) = (input.shape[0], input.shape[1], input.shape[2], input.shape[3]);
        var (k, o) = (n / g, w0.shape[0]);
        long[] one = [1, 1];
        var dy = gradient.view(n, o, h, w);
        var dx = F.conv_transpose2d(dy, w0, null, one, one, [0, 0], one, 1).view(k, -1, h, w);
        var columns = F.unfold(input, 3, padding: 1);
        Tensor cols, dyg;
        if (k == 1)
        {
            (cols, dyg) = (columns, dy.view(g, o, h * w));
        }
        else
        {
            cols = columns.view(k, g, i * 9, h * w).permute(1, 2, 0, 3).reshape(g, i * 9, k * h * w);
            dyg = dy.view(k, g, o, h * w).permute(1, 2, 0, 3).reshape(g, o, k * h * w);
        }

        var dw = dyg.bmm(cols.transpose(1, 2)).view(g * o, i, 3, 3);
        var db = dyg.sum(2).view(g * o);
        return [dx, dw, db, null!];
    }
}
