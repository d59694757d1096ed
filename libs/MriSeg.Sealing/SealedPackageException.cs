namespace MriSeg.Sealing;

/// <summary>Which check failed. Every failure of this library is a <see cref="SealedPackageException"/> carrying one of these.</summary>
public enum SealingError
{
    /// <summary>The bytes are not a well-formed sealed package (bad magic, bad lengths, non-zero reserved bytes, a malformed record).</summary>
    Malformed,

    /// <summary>The package names a format version or algorithm this library does not implement.</summary>
    UnsupportedFormat,

    /// <summary>The package ends early: no final chunk, an incomplete chunk, header or trailer.</summary>
    Truncated,

    /// <summary>Bytes follow the end of the package.</summary>
    TrailingData,

    /// <summary>The data key given is not the package's key (its key id differs from the header's).</summary>
    WrongDataKey,

    /// <summary>A chunk's AES-256-GCM tag does not verify (altered, reordered, duplicated, foreign or truncated chunk, or altered header or manifest).</summary>
    ChunkAuthenticationFailed,

    /// <summary>The manifest cannot be parsed or breaks a rule of the format.</summary>
    ManifestInvalid,

    /// <summary>The manifest names a signer other than the expected one.</summary>
    SignerMismatch,

    /// <summary>The signature does not verify against the expected signer's public key.</summary>
    SignatureInvalid,

    /// <summary>The decrypted plaintext's length differs from the manifest's.</summary>
    PlaintextLengthMismatch,

    /// <summary>The decrypted plaintext's SHA-256 differs from the manifest's.</summary>
    PlaintextDigestMismatch,

    /// <summary>The destination file exists and overwriting was not asked for.</summary>
    DestinationExists,

    /// <summary>The plaintext is too large to open into memory (over <see cref="Array.MaxLength"/> bytes).</summary>
    TooLargeForMemory,

    /// <summary>The operation needs a seekable stream (inspect).</summary>
    NotSeekable,

    /// <summary>The input to seal is too large for the chunk size (more than 2^32 chunks).</summary>
    InputTooLarge,

    /// <summary>An argument is invalid (chunk size, owner, metadata, key material).</summary>
    InvalidArgument,

    /// <summary>A key file, PEM or wrapped-key document is malformed or inconsistent.</summary>
    InvalidKey,

    /// <summary>A wrapped key was wrapped for another recipient key than the private key given.</summary>
    WrongRecipientKey,

    /// <summary>A wrapped key does not unwrap (wrong private key or altered wrapped key).</summary>
    KeyUnwrapFailed,
}

/// <summary>
/// The one exception of MriSeg.Sealing. <see cref="Exception.Message"/> is a single line naming the failed check,
/// e.g. "chunk 17: authentication failed" or "signature does not verify against the expected signer".
/// </summary>
public sealed class SealedPackageException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="error">The failed check.</param>
    /// <param name="reason">One line naming the failed check.</param>
    /// <param name="chunkIndex">The chunk concerned, where one is.</param>
    /// <param name="innerException">The underlying exception, if any.</param>
    public SealedPackageException(SealingError error, string reason, long? chunkIndex = null, Exception? innerException = null)
        : base(OneLine(reason), innerException)
    {
        Error = error;
        ChunkIndex = chunkIndex;
    }

    /// <summary>The failed check.</summary>
    public SealingError Error { get; }

    /// <summary>The index of the chunk that failed, where the failure concerns one chunk.</summary>
    public long? ChunkIndex { get; }

    private static string OneLine(string reason) =>
        reason.Contains('\n', StringComparison.Ordinal) || reason.Contains('\r', StringComparison.Ordinal)
            ? reason.ReplaceLineEndings(" ")
            : reason;
}
