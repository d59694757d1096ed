using MriSeg.ServiceDefaults;

namespace MriSeg.Packaging;

[PendingCapability("sealed packages (the encryption format and the Packaging service)")]
public sealed class PackagingService : Contracts.V1.Packaging.PackagingBase;
