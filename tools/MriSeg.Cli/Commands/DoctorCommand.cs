using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Learning.Torch;
using Spectre.Console;
using TorchSharp;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg doctor</c>: loads libtorch the way every training command will, runs one small
/// convolution on the chosen device, and says which backend, device and libtorch are in use.
/// Needs no service.
/// </summary>
internal static class DoctorCommand
{
    public static Command Create(CliApp app)
    {
        var command = new Command("doctor", "Check that libtorch loads here and show the backend and device training would use.");
        app.SetAction(command, (context, _) =>
        {
            TorchBackendInfo info;
            try
            {
                info = TorchRuntime.Initialize();
            }
            catch (TorchUnavailableException e)
            {
                // The exception lists every step tried; people get its first line unless they ask.
                throw new CliException(context.Output.IsVerbose
                    ? e.Message
                    : e.Message.Split('\n')[0].Trim() + " (--verbose shows what was tried and how to fix it)");
            }

            context.Output.WriteResult(new DoctorResult(info, ConvolutionWorks(info)), Render);
            return Task.FromResult(ExitCodes.Success);
        });
        return command;
    }

    internal sealed record DoctorResult(TorchBackendInfo Torch, string ConvolutionCheck);

    // A forward and backward pass of one convolution: proves the kernels run, not only that the library loaded.
    private static string ConvolutionWorks(TorchBackendInfo info)
    {
        using var scope = torch.NewDisposeScope();
        var device = info.CreateDevice();
        var conv = torch.nn.Conv2d(1, 4, 3, padding: 1).to(device);
        var input = torch.randn(2, 1, 32, 32, device: device);
        conv.forward(input).square().mean().backward();
        var gradNorm = conv.weight!.grad!.norm().item<float>();
        return float.IsFinite(gradNorm) && gradNorm > 0
            ? "ok"
            : throw new CliException($"libtorch loaded but a convolution's gradient is {gradNorm}: the backend is broken.");
    }

    private static void Render(IAnsiConsole console, DoctorResult result)
    {
        var t = result.Torch;
        var grid = new Grid().AddColumn().AddColumn();
        grid.AddRow("backend", Markup.Escape(t.Backend));
        grid.AddRow("device", Markup.Escape(t.Device));
        grid.AddRow("libtorch", Markup.Escape($"{t.LibTorchSource} ({t.LibTorchDirectory})"));
        grid.AddRow("CUDA devices", t.CudaDeviceCount.ToString(System.Globalization.CultureInfo.InvariantCulture));
        grid.AddRow("TorchSharp", Markup.Escape(t.TorchSharpVersion));
        grid.AddRow("native shim", Markup.Escape($"{t.ShimPatch} ({t.ShimPath})"));
        grid.AddRow("libstdc++", Markup.Escape(t.LibStdCxx));
        grid.AddRow("convolution", Markup.Escape(result.ConvolutionCheck));
        console.Write(grid);
    }
}
