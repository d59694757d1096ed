namespace MriSeg.Trainer;

/// <summary>The Trainer's settings (section <c>Trainer</c>).</summary>
public sealed class TrainerSettings
{
    public const string Section = "Trainer";

    /// <summary><c>Trainer:PartyId</c>: the clean room's party id at the KeyBroker (role CCR).</summary>
    public string PartyId { get; init; } = "cleanroom";

    /// <summary><c>Trainer:PartyKeyPath</c>: the clean room's party signing key (PKCS#8 PEM); Development default <c>.mriseg/cleanroom/party.key</c>.</summary>
    public string? PartyKeyPath { get; init; }

    /// <summary><c>Trainer:CreatePartyKey</c>: make the party key when missing (default: in Development only).</summary>
    public bool? CreatePartyKey { get; init; }

    /// <summary><c>Trainer:KeyBrokerAdminToken</c>: the operator's token for the clean room's first registration where the broker needs one.</summary>
    public string? KeyBrokerAdminToken { get; init; }

    /// <summary><c>Trainer:KeyBrokerAddress</c>: the KeyBroker's gRPC address (service discovery by default).</summary>
    public string KeyBrokerAddress { get; init; } = "http://_grpc.keybroker";

    /// <summary><c>Trainer:AttestationIssuer</c>: the development attestation authority (local runs).</summary>
    public string AttestationIssuer { get; init; } = "http://localhost:5132/dev-attestation";

    /// <summary><c>Trainer:Device</c>: auto, cpu or cuda.</summary>
    public string Device { get; init; } = "auto";

    /// <summary><c>Trainer:MeasuredDirectory</c>: the folder whose software measurement the attestation states (default: the app's folder).</summary>
    public string MeasuredDirectory { get; init; } = AppContext.BaseDirectory;

    /// <summary>
    /// <c>Trainer:RunLeaseSeconds</c>: how long a Trainer's claim on a run it executes lasts unless renewed (every third of it;
    /// default 60 s). A killed Trainer's runs are resumed by another Trainer at most this long after it stopped renewing.
    /// </summary>
    public int RunLeaseSeconds { get; init; } = 60;

    public static TrainerSettings From(IConfiguration configuration) =>
        configuration.GetSection(Section).Get<TrainerSettings>() ?? new TrainerSettings();
}
