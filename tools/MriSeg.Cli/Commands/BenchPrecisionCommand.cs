using System.CommandLine;
using System.Globalization;
using MriSeg.Cli.Infrastructure;
using MriSeg.Learning.Benchmark;
using MriSeg.Learning.Torch;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg bench precision</c>: are the per-patient gradients right on this device (float64 folded against
/// micro-batching and against the CPU), how far float32, TF32 and bfloat16 are from float64, and what bfloat16 gains.
/// Exits 1 when an agreement row is over its tolerance.
/// </summary>
internal static class BenchPrecisionCommand
{
    public static Command Create(CliApp app)
    {
        var size = new Option<int>("--size") { Description = "Image side of the agreement checks (a multiple of 16).", HelpName = "N", DefaultValueFactory = _ => 64 };
        var speedSize = new Option<int>("--speed-size") { Description = "Image side of the bfloat16 speed check (a multiple of 16); 0 skips it.", HelpName = "N", DefaultValueFactory = _ => 0 };
        var speedBatch = new Option<int>("--speed-batch") { Description = "Patients per step in the speed check.", HelpName = "B", DefaultValueFactory = _ => 32 };
        var iterations = new Option<int>("--iterations") { Description = "Timed steps of each kind in the speed check (medians).", HelpName = "N", DefaultValueFactory = _ => 10 };
        var device = TrainCommand.DeviceOption();
        var command = new Command("precision", "Per-patient gradient agreement on a device (float64 exactness; float32, TF32 and bfloat16 rounding) and bfloat16 speed.")
        {
            size, speedSize, speedBatch, iterations, device,
        };
        app.SetAction(command, async (context, _) =>
        {
            var (n, sn, sb, it) = (context.GetValue(size), context.GetValue(speedSize), context.GetValue(speedBatch), context.GetValue(iterations));
            if (n < 16 || n % 16 != 0 || n > 512 || sn < 0 || sn % 16 != 0 || sn > 1024 || sb < 1 || sb > 512 || it < 1)
            {
                throw new CliException("--size must be a multiple of 16 up to 512, --speed-size 0 or a multiple of 16 up to 1024, --speed-batch 1..512, --iterations at least 1");
            }

            var chosen = TrainCommand.InitializeDevice(context, context.GetValue(device));
            var rows = await context.Output.StatusAsync($"comparing per-patient gradients on {chosen} at {n}x{n}",
                _ => Task.Run(() => PrecisionCheck.Agreement(chosen, n)));
            IReadOnlyList<PrecisionTiming> timing = [];
            if (sn > 0)
            {
                timing = await context.Output.StatusAsync($"timing float32 against bfloat16 at {sn}x{sn}, batch {sb}",
                    _ => Task.Run(() => PrecisionCheck.Speed(chosen, sn, sb, it)));
            }

            var result = new PrecisionResult(chosen.ToString(), TorchRuntime.Current!.Backend, n, rows, sn, sb, timing, rows.All(r => r.Passed));
            context.Output.WriteResult(result, Render, BenchCommand.JsonLine);
            return result.Passed ? ExitCodes.Success : ExitCodes.Failure;
        });
        return command;
    }

    private static void Render(IAnsiConsole console, PrecisionResult r)
    {
        var table = new Table().AddColumns("comparison", "max rel. error", "max norm error", "min cosine", "tolerance", "");
        foreach (var row in r.Agreement)
        {
            table.AddRow(Markup.Escape(row.Comparison), Format(row.MaxRelativeError), Format(row.MaxNormRelativeError),
                row.MinCosine.ToString("0.0000000", CultureInfo.InvariantCulture), row.Tolerance is { } bar ? Format(bar) : "(measured)",
                row.Tolerance is null ? "" : row.Passed ? "[green]ok[/]" : "[red]FAIL[/]");
        }

        console.MarkupLine(Markup.Escape($"per-patient gradients on {r.Device} ({r.Size}x{r.Size}), against float64:"));
        console.Write(table);
        foreach (var t in r.Timing)
        {
            console.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"{t.Precision} at {r.SpeedSize}x{r.SpeedSize}, batch {r.SpeedBatch}: non-private step {t.NonPrivateStepMs:0.0} ms, per-patient gradients {t.PerPatientGradientsMs:0.0} ms")));
        }
    }

    private static string Format(double value) => value.ToString("0.00e+0", CultureInfo.InvariantCulture);

    /// <summary>The <c>bench precision</c> result.</summary>
    internal sealed record PrecisionResult(
        string Device, string Backend, int Size, IReadOnlyList<GradientAgreement> Agreement, int SpeedSize, int SpeedBatch,
        IReadOnlyList<PrecisionTiming> Timing, bool Passed);
}
