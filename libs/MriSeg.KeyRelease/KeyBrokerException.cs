namespace MriSeg.KeyRelease;

/// <summary>What kind of refusal or failure a <see cref="KeyBrokerException"/> is; the service maps each to a gRPC status.</summary>
public enum KeyBrokerError
{
    /// <summary>The request is malformed (INVALID_ARGUMENT).</summary>
    InvalidArgument,

    /// <summary>No credentials, or credentials that do not verify (UNAUTHENTICATED).</summary>
    Unauthenticated,

    /// <summary>The caller is authenticated but not allowed: wrong party, attestation or policy refused (PERMISSION_DENIED).</summary>
    PermissionDenied,

    /// <summary>The state does not allow it: revoked key, expired contract, exhausted budget (FAILED_PRECONDITION).</summary>
    FailedPrecondition,

    /// <summary>The key, contract or party does not exist (NOT_FOUND).</summary>
    NotFound,

    /// <summary>The key or registration exists already (ALREADY_EXISTS).</summary>
    AlreadyExists,

    /// <summary>Contention that did not settle after retries, or a dependency that did not answer (UNAVAILABLE).</summary>
    Unavailable,

    /// <summary>Stored state fails an integrity check (DATA_LOSS): a broken audit chain, key material that does not decrypt.</summary>
    DataLoss,
}

/// <summary>
/// A refusal or failure of the KeyBroker. The message is one line, names what failed, and never holds key material.
/// </summary>
public sealed class KeyBrokerException : Exception
{
    /// <summary>Creates the exception.</summary>
    public KeyBrokerException(KeyBrokerError error, string message, Exception? innerException = null)
        : base(OneLine(message), innerException)
    {
        Error = error;
    }

    /// <summary>The kind of refusal.</summary>
    public KeyBrokerError Error { get; }

    internal static KeyBrokerException InvalidArgument(string message) => new(KeyBrokerError.InvalidArgument, message);

    internal static KeyBrokerException Unauthenticated(string message) => new(KeyBrokerError.Unauthenticated, message);

    internal static KeyBrokerException PermissionDenied(string message) => new(KeyBrokerError.PermissionDenied, message);

    internal static KeyBrokerException FailedPrecondition(string message) => new(KeyBrokerError.FailedPrecondition, message);

    internal static KeyBrokerException NotFound(string message) => new(KeyBrokerError.NotFound, message);

    private static string OneLine(string message) => message.ReplaceLineEndings(" ");
}
