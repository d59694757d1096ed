using MriSeg.ServiceDefaults;

namespace MriSeg.Preprocess;

[PendingCapability("the data providers' path (NIfTI and slice ingestion, phantoms, the Preprocess service)")]
public sealed class PreprocessService : Contracts.V1.Preprocess.PreprocessBase;
