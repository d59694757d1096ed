namespace MriSeg.ServiceDefaults;

/// <summary>
/// Naming of MriSeg's own activity sources and meters: every library and service names its
/// source "MriSeg.&lt;Area&gt;", and the service defaults subscribe to them all with one wildcard.
/// </summary>
public static class MriSegTelemetry
{
    public const string Prefix = "MriSeg.";
    public const string Wildcard = Prefix + "*";
}
