using MriSeg.Contracts;
using MriSeg.ServiceDefaults;

namespace MriSeg.Packaging;

/// <summary>
/// The Packaging service's settings (section <c>Packaging</c>), with their environment-dependent defaults
/// resolved once at start.
/// </summary>
public sealed class PackagingSettings
{
    public const string Section = "Packaging";

    /// <summary>
    /// <c>Packaging:AllowLocalPaths</c>: whether Seal may read a path on the service's machine (default: in
    /// Development only). A development convenience: a caller can then seal any file the service can read
    /// (except the key folder's), so leave it off where callers are not the machine's owner.
    /// </summary>
    public bool AllowLocalPaths { get; init; }

    /// <summary>
    /// <c>Packaging:KeysDirectory</c>: the folder of the owners' signing keys, <c>&lt;owner&gt;.key</c> (PKCS#8 PEM,
    /// mode 0600) and <c>&lt;owner&gt;.pub</c>, as <c>mriseg keygen --out &lt;folder&gt;/&lt;owner&gt;</c> writes them.
    /// Default in Development: <c>.mriseg/keys</c> in the repository above the content root, else
    /// <c>MriSeg/keys</c> in the user's local application data. Required otherwise (null until set: Seal then
    /// answers FAILED_PRECONDITION; Verify does not need it).
    /// </summary>
    public string? KeysDirectory { get; init; }

    /// <summary>
    /// <c>Packaging:CreateOwnerKeys</c>: whether a missing owner key is generated on first use, with a log line
    /// (default: in Development only). Otherwise keys must be provisioned.
    /// </summary>
    public bool CreateOwnerKeys { get; init; }

    /// <summary>
    /// <c>Packaging:ProgressIntervalMs</c>: the least time between two progress messages of a Seal (default 250 ms;
    /// 0 sends one per chunk read).
    /// </summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// <c>Packaging:KeyBrokerAddress</c>: the KeyBroker's gRPC address for HandOffKey (default
    /// <see cref="DefaultKeyBrokerAddress"/>: the broker's <c>grpc</c> endpoint through service discovery, which the AppHost's
    /// reference provides as <c>services__keybroker__grpc__0</c>).
    /// </summary>
    public string KeyBrokerAddress { get; init; } = DefaultKeyBrokerAddress;

    /// <summary>Service discovery's name of the KeyBroker's gRPC endpoint.</summary>
    public const string DefaultKeyBrokerAddress = "http://_grpc.keybroker";

    /// <summary>
    /// <c>Packaging:KeyBrokerAdminToken</c>: the operator's admin token, sent when registering an owner with the KeyBroker
    /// on its first hand-off where the broker requires it (its <c>KeyBroker:Registration</c> is <c>AdminToken</c>, the
    /// default outside Development). Unset: registration relies on the broker's trust on first use. Never logged.
    /// </summary>
    public string? KeyBrokerAdminToken { get; init; }

    /// <summary><c>Packaging:KeyBrokerTimeoutSeconds</c>: deadline of a call to the KeyBroker (default 30 s).</summary>
    public TimeSpan KeyBrokerTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public static PackagingSettings From(IConfiguration configuration, IHostEnvironment environment)
    {
        var section = configuration.GetSection(Section);
        var development = environment.IsDevelopment();
        var keys = section["KeysDirectory"];
        return new PackagingSettings
        {
            AllowLocalPaths = section.GetValue("AllowLocalPaths", development),
            CreateOwnerKeys = section.GetValue("CreateOwnerKeys", development),
            ProgressInterval = TimeSpan.FromMilliseconds(Math.Max(0, section.GetValue("ProgressIntervalMs", 250))),
            KeyBrokerAddress = section["KeyBrokerAddress"] is { Length: > 0 } address ? address : DefaultKeyBrokerAddress,
            KeyBrokerAdminToken = section["KeyBrokerAdminToken"] is { Length: > 0 } admin ? admin : null,
            KeyBrokerTimeout = TimeSpan.FromSeconds(Math.Clamp(section.GetValue("KeyBrokerTimeoutSeconds", 30), 1, 600)),
            KeysDirectory = !string.IsNullOrWhiteSpace(keys)
                ? Path.GetFullPath(keys, environment.ContentRootPath)
                : development ? DevelopmentFolders.Resolve(environment.ContentRootPath, "keys") : null,
        };
    }
}
