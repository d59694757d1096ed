using V1 = MriSeg.Contracts.V1;

namespace MriSeg.CleanRoom;

/// <summary>What a clean-room run is asked to do (the StartRun request, checked).</summary>
public sealed record CleanRoomRunSpec
{
    /// <summary>The run id (a name: letters, digits, '-', '_', '.').</summary>
    public required string RunId { get; init; }

    /// <summary>The consumer (TDC) the run trains for.</summary>
    public required string Consumer { get; init; }

    /// <summary>The providers' sealed dataset shards.</summary>
    public required IReadOnlyList<V1.SealedPackageRef> Datasets { get; init; }

    /// <summary>The consumer's sealed base model (safetensors weights); null trains from the pipeline's seeded initial weights.</summary>
    public V1.SealedPackageRef? BaseModel { get; init; }

    /// <summary>The consumer's sealed pipeline configuration (a <c>TrainingConfig</c> JSON).</summary>
    public required V1.SealedPackageRef Pipeline { get; init; }

    /// <summary>The contract the dataset keys serve (the default of <see cref="DatasetContracts"/>).</summary>
    public required string ContractId { get; init; }

    /// <summary>The contract of each dataset key id where it is not <see cref="ContractId"/> (each provider has its own contract).</summary>
    public IReadOnlyDictionary<string, string> DatasetContracts { get; init; } = new Dictionary<string, string>();

    /// <summary>The contract of dataset key <paramref name="keyId"/>.</summary>
    public string ContractFor(string keyId) => DatasetContracts.TryGetValue(keyId, out var c) && c.Length > 0 ? c : ContractId;

    /// <summary>The consumer's output key (imported into the KeyBroker).</summary>
    public required string OutputKeyId { get; init; }

    /// <summary>Container of the outputs; null: the consumer id lower-cased.</summary>
    public string? OutputContainer { get; init; }

    /// <summary>Blob name prefix of the outputs; null: <c>outputs/&lt;run-id&gt;/</c>.</summary>
    public string? OutputPrefix { get; init; }
}

/// <summary>Why a run failed (the reason class; the message says the rest).</summary>
public enum RunFailure
{
    /// <summary>The request is malformed.</summary>
    InvalidRequest,

    /// <summary>Attestation or a key release was refused (policy, contract, budget).</summary>
    PolicyRefused,

    /// <summary>A package failed a check: sealed SHA-256, signer, manifest, authentication.</summary>
    TamperedPackage,

    /// <summary>A referenced package blob does not exist.</summary>
    MissingPackage,

    /// <summary>The providers' shards disagree in schema, or a shard is malformed.</summary>
    SchemaMismatch,

    /// <summary>The pipeline configuration breaks the contract or the clean room's rules.</summary>
    PipelineRefused,

    /// <summary>The run was cancelled.</summary>
    Cancelled,

    /// <summary>
    /// The run was stopped as a killed trainer stops (the host shutting down): nothing settled, its checkpoints kept;
    /// it continues with <see cref="CleanRoomRun.ResumeAsync"/>.
    /// </summary>
    Interrupted,

    /// <summary>Anything else (training error, storage outage).</summary>
    Internal,
}

/// <summary>A run ended without releasing anything; <see cref="Exception.Message"/> is the one-line reason.</summary>
public sealed class CleanRoomRunException : Exception
{
    /// <summary>A failure of class <paramref name="failure"/>.</summary>
    public CleanRoomRunException(RunFailure failure, string message, Exception? inner = null)
        : base(message, inner) => Failure = failure;

    /// <summary>An internal failure.</summary>
    public CleanRoomRunException()
        : this(RunFailure.Internal, "clean-room run failed")
    {
    }

    /// <summary>An internal failure with a message.</summary>
    public CleanRoomRunException(string message)
        : this(RunFailure.Internal, message)
    {
    }

    /// <summary>An internal failure with a message and cause.</summary>
    public CleanRoomRunException(string message, Exception inner)
        : this(RunFailure.Internal, message, inner)
    {
    }

    /// <summary>The reason class.</summary>
    public RunFailure Failure { get; }
}

/// <summary>
/// One progress report of a run. <see cref="Loss"/> is the mean training loss of the last finished epoch (computed on
/// the clear data, not differentially private: aggregate over an epoch only, never per step).
/// </summary>
/// <param name="Phase">The phase.</param>
/// <param name="Epoch">Epoch in progress or finished (training).</param>
/// <param name="Epochs">Planned epochs (steps / steps per epoch, rounded up).</param>
/// <param name="Step">Steps done.</param>
/// <param name="Steps">Steps planned.</param>
/// <param name="Loss">Mean loss of the last finished epoch.</param>
/// <param name="ValidationDice">Validation Dice of the last validation.</param>
/// <param name="Epsilon">ε spent so far.</param>
/// <param name="EpsilonTarget">The run's ε budget.</param>
/// <param name="Delta">δ.</param>
/// <param name="SamplesPerSecond">Training throughput.</param>
/// <param name="Message">What is happening, one line.</param>
public sealed record RunProgressEvent(
    V1.RunPhase Phase, int Epoch, int Epochs, long Step, long Steps, double? Loss, double? ValidationDice, double? Epsilon,
    double? EpsilonTarget, double? Delta, double SamplesPerSecond, string Message);

/// <summary>A finished run: the sealed outputs uploaded, the model card, the privacy settled.</summary>
/// <param name="Outputs">The sealed outputs, as uploaded.</param>
/// <param name="Card">The model card.</param>
/// <param name="Spent">The privacy spent (as settled with the KeyBroker).</param>
/// <param name="AttestationToken">The attestation token binding the outputs' signing key.</param>
/// <param name="SigningKeyPem">The run's ephemeral signing public key (PEM).</param>
public sealed record CleanRoomRunResult(
    IReadOnlyList<V1.SealedPackageRef> Outputs, ModelCard Card, V1.PrivacyParameters Spent, string AttestationToken, string SigningKeyPem);
