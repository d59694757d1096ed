using System.Text;
using System.Text.Json;
using MriSeg.KeyRelease.Attestation;
using MriSeg.Sealing;

namespace MriSeg.CleanRoom.Consumer;

/// <summary>Why pulling a run's outputs was refused.</summary>
public enum PullFailure
{
    /// <summary>The request is malformed (run id, missing settings).</summary>
    InvalidRequest,

    /// <summary>The run has no outputs (or one is missing).</summary>
    NotFound,

    /// <summary>A package failed a check: sealed SHA-256, signature, metadata, authentication.</summary>
    TamperedPackage,

    /// <summary>The attestation token does not verify, does not bind the signer, or names a measurement that is not allowed.</summary>
    AttestationRefused,

    /// <summary>The output key was not released.</summary>
    KeyRefused,
}

/// <summary>A pull was refused; <see cref="Exception.Message"/> is the one-line reason.</summary>
public sealed class ModelPullException : Exception
{
    /// <summary>A refusal of class <paramref name="failure"/>.</summary>
    public ModelPullException(PullFailure failure, string message, Exception? inner = null)
        : base(message, inner) => Failure = failure;

    /// <summary>An invalid-request refusal.</summary>
    public ModelPullException()
        : this(PullFailure.InvalidRequest, "model pull refused")
    {
    }

    /// <summary>An invalid-request refusal with a message.</summary>
    public ModelPullException(string message)
        : this(PullFailure.InvalidRequest, message)
    {
    }

    /// <summary>An invalid-request refusal with a message and cause.</summary>
    public ModelPullException(string message, Exception inner)
        : this(PullFailure.InvalidRequest, message, inner)
    {
    }

    /// <summary>The reason class.</summary>
    public PullFailure Failure { get; }
}

/// <summary>The metadata keys a clean-room run writes into every sealed output's signed manifest.</summary>
public static class OutputMetadata
{
    /// <summary>The run id.</summary>
    public const string RunId = "mriseg.run_id";

    /// <summary>The consumer the run trained for.</summary>
    public const string Consumer = "mriseg.consumer";

    /// <summary>The output's file name.</summary>
    public const string File = "mriseg.file";

    /// <summary>The attestation token binding the signer key.</summary>
    public const string AttestationToken = "mriseg.attestation_token";

    /// <summary>The run's ephemeral signing public key (PEM).</summary>
    public const string SignerPublicKey = "mriseg.signer_public_key";

    /// <summary>The code measurement the run states.</summary>
    public const string CodeMeasurement = "mriseg.code_measurement";

    /// <summary>The SHA-256 of the pipeline the run trained with.</summary>
    public const string PipelineSha256 = "mriseg.pipeline_sha256";
}

/// <summary>What the consumer requires of a run's attestation.</summary>
public sealed record ProvenancePolicy
{
    /// <summary>Trainer code measurements that are accepted (lower-case hex). Empty refuses every run unless the request names one.</summary>
    public IReadOnlyList<string> AllowedMeasurements { get; init; } = [];

    /// <summary>Token claims (dotted paths) that may carry the measurement, first found wins.</summary>
    public IReadOnlyList<string> MeasurementClaims { get; init; } = ["x-mriseg-measurement", "x-ms-sevsnpvm-hostdata"];

    /// <summary>
    /// When true, a measurement named by the request is accepted even if it is not in <see cref="AllowedMeasurements"/>
    /// (the request then narrows nothing: it is the allow-list). When false, a named measurement must also be allowed.
    /// </summary>
    public bool RequestMayNameMeasurement { get; init; }
}

/// <summary>The verified provenance of a run's outputs.</summary>
/// <param name="Issuer">The attestation authority.</param>
/// <param name="Measurement">The code measurement the token names.</param>
/// <param name="SignerPem">The attested signing key (PEM).</param>
/// <param name="PipelineSha256">The pipeline hash stated by the run.</param>
/// <param name="AttestationToken">The token.</param>
public sealed record VerifiedProvenance(string Issuer, string Measurement, string SignerPem, string PipelineSha256, string AttestationToken);

/// <summary>
/// Checks that an attestation token was issued by a trusted authority (signature with the issuer's keys, exactly as the
/// KeyBroker checks it), binds the outputs' signer key in <c>x-ms-runtime.keys</c>, and names an allowed measurement.
/// The token's lifetime is checked at the moment it was issued (it attests the clean room's state when the run began;
/// a pull happens later than its minutes of validity), and its nonce is the one it carries (the broker consumed it).
/// </summary>
public sealed class ProvenanceVerifier(AttestationOptions options, IIssuerKeySource issuerKeys, ProvenancePolicy policy)
{
    /// <summary>The policy.</summary>
    public ProvenancePolicy Policy => policy;

    /// <summary>Verifies <paramref name="token"/> for <paramref name="signerPem"/>; <paramref name="expectedMeasurement"/> optionally narrows the allow-list.</summary>
    /// <exception cref="ModelPullException">The token is refused.</exception>
    public async Task<VerifiedProvenance> VerifyAsync(string token, string signerPem, string statedMeasurement, string pipelineSha256,
        string? expectedMeasurement, CancellationToken cancellationToken)
    {
        JsonElement unverified;
        try
        {
            var parts = token.Split('.');
            if (parts.Length != 3)
            {
                throw new FormatException("not a compact JWS");
            }

            unverified = JsonDocument.Parse(Microsoft.IdentityModel.Tokens.Base64UrlEncoder.DecodeBytes(parts[1])).RootElement.Clone();
        }
        catch (Exception e) when (e is FormatException or JsonException or ArgumentException)
        {
            throw new ModelPullException(PullFailure.AttestationRefused, $"attestation token is malformed: {e.Message}", e);
        }

        var nonce = FindString(unverified, AttestationVerifier.NonceClaims) ?? "";
        var issuedAt = unverified.TryGetProperty("iat", out var iat) && iat.TryGetInt64(out var i) ? i
            : unverified.TryGetProperty("nbf", out var nbf) && nbf.TryGetInt64(out var n) ? n
            : throw new ModelPullException(PullFailure.AttestationRefused, "attestation token has neither iat nor nbf");
        RecipientPublicKey runtimeKey;
        try
        {
            runtimeKey = RecipientPublicKey.FromPem(signerPem);
        }
        catch (Exception e) when (e is FormatException or ArgumentException or System.Security.Cryptography.CryptographicException)
        {
            throw new ModelPullException(PullFailure.TamperedPackage, $"the outputs' signer key is not a public key: {e.Message}", e);
        }

        VerifiedAttestation verified;
        try
        {
            var verifier = new AttestationVerifier(options, issuerKeys, new FixedTime(DateTimeOffset.FromUnixTimeSeconds(issuedAt).AddSeconds(1)));
            verified = await verifier.VerifyAsync(token, [.. options.Authorities.Select(a => a.Issuer)], nonce, runtimeKey, cancellationToken).ConfigureAwait(false);
        }
        catch (AttestationException e)
        {
            throw new ModelPullException(PullFailure.AttestationRefused, e.Message, e);
        }

        var measurement = FindString(verified.Claims, policy.MeasurementClaims)
            ?? throw new ModelPullException(PullFailure.AttestationRefused, $"attestation token names no code measurement ({string.Join(" or ", policy.MeasurementClaims)})");
        if (!string.Equals(measurement, statedMeasurement, StringComparison.OrdinalIgnoreCase))
        {
            throw new ModelPullException(PullFailure.TamperedPackage, $"the outputs state code measurement {Short(statedMeasurement)}, their attestation token {Short(measurement)}");
        }

        var allowed = policy.AllowedMeasurements.Contains(measurement, StringComparer.OrdinalIgnoreCase)
            || (policy.RequestMayNameMeasurement && !string.IsNullOrEmpty(expectedMeasurement));
        if (!string.IsNullOrEmpty(expectedMeasurement) && !string.Equals(expectedMeasurement, measurement, StringComparison.OrdinalIgnoreCase))
        {
            throw new ModelPullException(PullFailure.AttestationRefused, $"attestation token names code measurement {Short(measurement)}, the request expects {Short(expectedMeasurement)}");
        }

        if (!allowed)
        {
            throw new ModelPullException(PullFailure.AttestationRefused, $"attestation token names code measurement {Short(measurement)}, which is not an allowed trainer measurement");
        }

        return new VerifiedProvenance(verified.Issuer, measurement.ToLowerInvariant(), signerPem, pipelineSha256, token);
    }

    private static string Short(string s) => s.Length > 16 ? s[..16] + "…" : s;

    private static string? FindString(JsonElement claims, IEnumerable<string> paths)
    {
        foreach (var path in paths)
        {
            var at = claims;
            var found = true;
            foreach (var part in path.Split('.'))
            {
                if (at.ValueKind == JsonValueKind.Object && at.TryGetProperty(part, out var next))
                {
                    at = next;
                }
                else if (at.ValueKind == JsonValueKind.Array && int.TryParse(part, out var k) && k >= 0 && k < at.GetArrayLength())
                {
                    at = at[k];
                }
                else
                {
                    found = false;
                    break;
                }
            }

            if (found && at.ValueKind == JsonValueKind.String)
            {
                return at.GetString();
            }
        }

        return null;
    }

    private sealed class FixedTime(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }
}

/// <summary>Helpers for text outputs.</summary>
internal static class Utf8
{
    public static string Text(byte[] bytes) => Encoding.UTF8.GetString(bytes);
}
