using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using MriSeg.Cli.Infrastructure;
using MriSeg.Imaging;
using MriSeg.Imaging.Phantoms;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg phantoms</c>: the project's default data. Writes BraTS-layout NIfTI cases of synthetic,
/// multi-site brains with tumours (<c>DIR/site-S/&lt;case&gt;/&lt;case&gt;_{flair,t1,t1ce,t2,seg}.nii.gz</c>),
/// deterministic by seed.
/// </summary>
internal static class PhantomsCommand
{
    public static Command Create(CliApp app)
    {
        var output = new Option<string>("--out") { Description = "Folder to write the sites into.", Required = true, HelpName = "DIR" };
        var sites = new Option<int>("--sites") { Description = "Number of hospitals (scanner profiles).", DefaultValueFactory = _ => 3, HelpName = "N" };
        var patients = new Option<int>("--patients") { Description = "Patients per site.", DefaultValueFactory = _ => 20, HelpName = "N" };
        var seed = new Option<ulong>("--seed") { Description = "Seed: the same seed gives the same data.", DefaultValueFactory = _ => PhantomOptions.Default.Seed, HelpName = "S" };
        var shape = new Option<string>("--shape") { Description = "Volume size XxYxZ.", DefaultValueFactory = _ => PhantomOptions.Default.Size.ToString(), HelpName = "XxYxZ" };

        var command = new Command("phantoms", "Generate synthetic BraTS-like multi-site cases (the default dataset).") { output, sites, patients, seed, shape };
        app.SetAction(command, async (context, ct) =>
        {
            var (siteCount, perSite) = (context.GetValue(sites), context.GetValue(patients));
            if (siteCount is < 1 or > 64 || perSite is < 1 or > 10_000)
            {
                throw new CliException("--sites must be 1..64 and --patients 1..10000");
            }

            var generator = new PhantomGenerator(PhantomOptions.Default with { Size = ParseShape(context.GetValue(shape)!), Seed = context.GetValue(seed) });
            var root = Path.GetFullPath(context.GetValue(output)!);
            var clock = Stopwatch.StartNew();
            var cases = await Task.Run(() => generator.WriteDataset(root, siteCount, perSite, ct), ct);
            var result = new PhantomsResult(root, siteCount, cases.Count, generator.Options.Size.ToString(), generator.Options.Seed,
                cases.Count(c => c.WholeTumourVoxels > 0), Math.Round(clock.Elapsed.TotalSeconds, 2));
            context.Output.WriteResult(result, (console, r) => console.MarkupLine(Markup.Escape(
                $"{r.Cases} cases ({r.Sites} sites, {r.Shape}, seed {r.Seed}) in {r.Output} in {r.Seconds.ToString(CultureInfo.InvariantCulture)} s")));
            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record PhantomsResult(string Output, int Sites, int Cases, string Shape, ulong Seed, int CasesWithTumour, double Seconds);

    internal static GridSize ParseShape(string text)
    {
        var parts = text.Split('x', 'X');
        return parts.Length == 3 && parts.All(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n is >= 16 and <= 512)
            ? new GridSize(int.Parse(parts[0], CultureInfo.InvariantCulture), int.Parse(parts[1], CultureInfo.InvariantCulture), int.Parse(parts[2], CultureInfo.InvariantCulture))
            : throw new CliException($"--shape '{text}': expected XxYxZ with each side 16..512, e.g. 128x128x64");
    }
}
