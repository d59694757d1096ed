using System.CommandLine;
using System.Globalization;
using MriSeg.Cli.Infrastructure;
using MriSeg.Privacy;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg accountant</c>: ε of the Poisson-subsampled Gaussian mechanism after N steps
/// (<c>--sigma</c>), the smallest σ reaching a target ε (<c>--target-epsilon</c>), or how many steps
/// fit a budget (<c>--sigma --budget</c>). Needs no service.
/// </summary>
internal static class AccountantCommand
{
    public static Command Create(CliApp app)
    {
        var q = new Option<double>("--q") { Description = "Poisson sampling rate (0 < q <= 1).", Required = true, HelpName = "Q" };
        var sigma = new Option<double?>("--sigma") { Description = "Noise multiplier (noise std / clipping norm).", HelpName = "S" };
        var steps = new Option<long?>("--steps") { Description = "Number of DP-SGD steps.", HelpName = "N" };
        var delta = new Option<double>("--delta") { Description = "Target delta.", Required = true, HelpName = "D" };
        var target = new Option<double?>("--target-epsilon") { Description = "Find the smallest sigma reaching this epsilon.", HelpName = "E" };
        var budget = new Option<double?>("--budget") { Description = "With --sigma: how many steps keep epsilon within this budget.", HelpName = "E" };
        var accountant = new Option<string>("--accountant")
        {
            Description = "rdp (Renyi DP, optimal conversion) or prv (tight numerical accountant).",
            DefaultValueFactory = _ => "prv",
            HelpName = "rdp|prv",
        };
        accountant.AcceptOnlyFromAmong("rdp", "prv");

        var command = new Command("accountant", "Privacy accounting of patient-level DP-SGD: epsilon, noise calibration, steps within a budget.")
        {
            q, sigma, steps, delta, target, budget, accountant,
        };
        app.SetAction(command, (context, _) =>
        {
            var kind = AccountantKinds.Parse(context.GetValue(accountant)!);
            var (qv, dv) = (context.GetValue(q), context.GetValue(delta));
            var (sv, nv, tv, bv) = (context.GetValue(sigma), context.GetValue(steps), context.GetValue(target), context.GetValue(budget));
            try
            {
                switch ((sv, nv, tv, bv))
                {
                    case ({ } s, { } n, null, null):
                        context.Output.WriteResult(PrivacyAccounting.ComputeEpsilon(qv, s, n, dv, kind), (c, r) =>
                            c.MarkupLine(Markup.Escape($"epsilon = {F(r.Epsilon)} at delta = {F(r.Delta)} after {r.Steps} steps (q = {F(r.Q)}, sigma = {F(r.Sigma)}, {r.Accountant})" + (r.Note is null ? "" : $"; {r.Note}"))));
                        break;
                    case (null, { } n, { } t, null):
                        context.Output.WriteResult(PrivacyAccounting.CalibrateNoise(t, qv, n, dv, kind), (c, r) =>
                            c.MarkupLine(Markup.Escape($"sigma = {F(r.Sigma)} reaches epsilon = {F(r.Epsilon)} <= {F(r.TargetEpsilon)} at delta = {F(r.Delta)} after {r.Steps} steps (q = {F(r.Q)}, {r.Accountant})")));
                        break;
                    case ({ } s, null, null, { } b):
                        context.Output.WriteResult(PrivacyAccounting.MaxSteps(b, qv, s, dv, kind), (c, r) =>
                            c.MarkupLine(Markup.Escape($"{r.Steps} steps keep epsilon = {F(r.Epsilon)} within {F(r.EpsilonBudget)} at delta = {F(r.Delta)} (q = {F(r.Q)}, sigma = {F(r.Sigma)}, {r.Accountant})")));
                        break;
                    default:
                        throw new CliException("give --sigma S --steps N (epsilon), --target-epsilon E --steps N (sigma), or --sigma S --budget E (steps).");
                }
            }
            catch (ArgumentException e)
            {
                throw new CliException(e.Message.Split('\n')[0].Trim());
            }
            catch (InvalidOperationException e)
            {
                throw new CliException(e.Message.Split('\n')[0].Trim());
            }

            return Task.FromResult(ExitCodes.Success);
        });
        return command;
    }

    private static string F(double value) => value.ToString("G6", CultureInfo.InvariantCulture);
}
