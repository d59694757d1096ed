using MriSeg.ServiceDefaults;

namespace MriSeg.Trainer;

[PendingCapability("the clean-room run (the Trainer service and the DP-SGD engine)")]
public sealed class TrainerService : Contracts.V1.Trainer.TrainerBase;
