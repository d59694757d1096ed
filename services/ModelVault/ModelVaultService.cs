using MriSeg.ServiceDefaults;

namespace MriSeg.ModelVault;

[PendingCapability("the model consumer's side (ModelVault, model registry and segmentation)")]
public sealed class ModelVaultService : Contracts.V1.ModelVault.ModelVaultBase;
