using MriSeg.CleanRoom;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;

namespace MriSeg.Trainer;

/// <summary>
/// How the clean room attests to the KeyBroker (section <c>Trainer:Attestation</c>):
/// <list type="bullet">
/// <item><c>Provider</c> = <c>development</c> (default): the KeyBroker's development authority at <c>Trainer:AttestationIssuer</c>,
/// stating the software hash of <c>Trainer:MeasuredDirectory</c>; no hardware behind it.</item>
/// <item><c>Provider</c> = <c>maa</c>: Microsoft Azure Attestation from the Azure confidential VM that <c>infra/</c> deploys
/// (<see cref="MaaAttestation"/>: the SEV-SNP report through the vTPM, the VCEK chain from the instance metadata
/// service, MAA's SevSnpVm API). Needs <c>MaaEndpoint</c> and <c>ExpectedMeasurement</c>.</item>
/// </list>
/// </summary>
public sealed class AttestationSettings
{
    public const string Section = "Trainer:Attestation";

    public const string DevelopmentProvider = "development";

    public const string MaaProvider = "maa";

    /// <summary><c>Provider</c>: <c>development</c> or <c>maa</c>.</summary>
    public string Provider { get; init; } = DevelopmentProvider;

    /// <summary><c>MaaEndpoint</c>: the attestation provider (e.g. <c>https://sharedeus2.eus2.attest.azure.net</c>), the issuer the KeyBroker trusts.</summary>
    public string? MaaEndpoint { get; init; }

    /// <summary>
    /// <c>ExpectedMeasurement</c> (maa): the code measurement the run's outputs state: the Trainer image's digest
    /// (<c>sha256:…</c> or its 64 hex digits), which the deployment pins the VM to. It is stated, not attested: a stock
    /// confidential-VM image does not measure the container into the SEV-SNP report (README, "What is attested").
    /// </summary>
    public string? ExpectedMeasurement { get; init; }

    /// <summary><c>TpmDevice</c> (maa): the vTPM device (default <c>/dev/tpmrm0</c>).</summary>
    public string TpmDevice { get; init; } = MriSeg.KeyRelease.Attestation.TpmDevice.DefaultPath;

    /// <summary><c>ImdsAddress</c> (maa): the instance metadata service that serves the VCEK chain (default <c>http://169.254.169.254</c>).</summary>
    public string ImdsAddress { get; init; } = MaaAttestation.DefaultImdsAddress;

    public static AttestationSettings From(IConfiguration configuration) =>
        configuration.GetSection(Section).Get<AttestationSettings>() ?? new AttestationSettings();

    /// <summary>The attestation provider and the code measurement the run's outputs state.</summary>
    /// <exception cref="CleanRoomRunException">The settings are incomplete or invalid (class Internal).</exception>
    public (AttestationProvider Provider, string Measurement) Create(KeyBrokerParty party, CleanRoomIdentity identity, IHttpClientFactory http)
    {
        ArgumentNullException.ThrowIfNull(party);
        ArgumentNullException.ThrowIfNull(identity);
        ArgumentNullException.ThrowIfNull(http);
        switch (Provider.Trim().ToLowerInvariant())
        {
            case DevelopmentProvider:
                return (party.DevelopmentAttestation(http.CreateClient("attestation"), identity.Settings.AttestationIssuer, identity.Measurement), identity.Measurement);
            case MaaProvider:
                string endpoint;
                try
                {
                    endpoint = MaaAttestation.NormalizeEndpoint(MaaEndpoint);
                }
                catch (ArgumentException e)
                {
                    throw Invalid($"{Section}:MaaEndpoint: {e.Message}");
                }

                var measurement = NormalizeMeasurement(ExpectedMeasurement)
                    ?? throw Invalid($"{Section}:ExpectedMeasurement must be the Trainer image's digest (sha256:<64 hex digits>) with Provider \"maa\", found '{ExpectedMeasurement}'");
                var maa = new MaaAttestation(http.CreateClient("attestation"), endpoint, new AzureVtpm(new MriSeg.KeyRelease.Attestation.TpmDevice(TpmDevice)), ImdsAddress);
                return (maa.Provider, measurement);
            default:
                throw Invalid($"{Section}:Provider is '{Provider}': \"{DevelopmentProvider}\" or \"{MaaProvider}\"");
        }
    }

    /// <summary>64 lower-case hex digits from "sha256:&lt;hex&gt;" or "&lt;hex&gt;"; null otherwise.</summary>
    public static string? NormalizeMeasurement(string? value)
    {
        var text = value?.Trim() ?? "";
        if (text.StartsWith("sha256:", StringComparison.OrdinalIgnoreCase))
        {
            text = text["sha256:".Length..];
        }

        return text.Length == 64 && text.All(char.IsAsciiHexDigit) ? text.ToLowerInvariant() : null;
    }

    private static CleanRoomRunException Invalid(string message) => new(RunFailure.Internal, message);
}
