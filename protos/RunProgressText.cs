using System.Globalization;

namespace MriSeg.Contracts.V1;

/// <summary>One line per progress message for people, the same wherever runs are watched (the CLI, the scenario).</summary>
public sealed partial class RunProgress
{
    /// <summary>
    /// A training step: epoch, step, loss, the validation Dice where the run validates, ε and throughput; any other message
    /// (a phase's progress, an epoch's end, a checkpoint): its phase and text.
    /// </summary>
    public string Describe()
    {
        if (Phase == RunPhase.Training && Message.StartsWith("step ", StringComparison.Ordinal))
        {
            var dice = HasValidationDice ? string.Create(CultureInfo.InvariantCulture, $", validation Dice {ValidationDice:F3}") : "";
            return string.Create(CultureInfo.InvariantCulture,
                $"epoch {Epoch}/{Epochs}, step {Step}/{Steps}, loss {Loss:F3}{dice}, ε {EpsilonSpent:F2}/{EpsilonTarget:F2}, {SamplesPerSecond:F0} slices/s");
        }

        return $"{Phase.ToString().ToLowerInvariant()}: {Message}";
    }
}
