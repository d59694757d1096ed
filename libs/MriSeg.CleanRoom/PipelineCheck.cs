using MriSeg.Learning.Model;
using MriSeg.Learning.Training;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.CleanRoom;

/// <summary>
/// The clean room's check of a pipeline configuration before any data is opened: its own rules (patient-level DP,
/// always) and the contract's constraints where the clean room has them. Pinned pipeline hashes are enforced by the
/// KeyBroker at release (the clean room declares the SHA-256 of the pipeline it opened).
/// </summary>
public static class PipelineCheck
{
    /// <summary>Null when <paramref name="config"/> may run, else the reason.</summary>
    public static string? Problem(TrainingConfig config, V1.PipelineConstraints? constraints)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.Privacy.Mode != PrivacyMode.Dp)
        {
            return "the pipeline trains without differential privacy; the clean room runs patient-level DP-SGD only";
        }

        if (constraints is null)
        {
            return null;
        }

        if (constraints.MaxEpochs > 0 && config.Epochs > constraints.MaxEpochs)
        {
            return $"the pipeline declares {config.Epochs} epochs, the contract allows at most {constraints.MaxEpochs}";
        }

        if (constraints.MaxSlicesPerPatient > 0 && config.MaxSlicesPerPatient > constraints.MaxSlicesPerPatient)
        {
            return $"the pipeline uses {config.MaxSlicesPerPatient} slices per patient per step, the contract allows at most {constraints.MaxSlicesPerPatient}";
        }

        var architecture = config.Model?.Architecture ?? UNetConfig.ArchitectureName;
        if (constraints.AllowedArchitectures.Count > 0 && !constraints.AllowedArchitectures.Contains(architecture))
        {
            return $"the pipeline trains '{architecture}', the contract allows {string.Join(", ", constraints.AllowedArchitectures)}";
        }

        return null;
    }
}
