using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Google.Protobuf;
using Grpc.Core;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Audit;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Client;

/// <summary>Obtains an attestation token binding <paramref name="nonce"/> and <paramref name="runtimeKey"/> (MAA in the cloud, the development authority locally).</summary>
public delegate Task<string> AttestationProvider(string nonce, RecipientPublicKey runtimeKey, CancellationToken cancellationToken);

/// <summary>What a clean-room run states when it asks for a key.</summary>
/// <param name="RunId">The run.</param>
/// <param name="ContractId">The contract of the key (required for dataset keys).</param>
/// <param name="Consumer">The consumer (TDC id) it trains for.</param>
/// <param name="PipelineSha256">Hex SHA-256 of its pipeline configuration.</param>
/// <param name="Declared">Its declared privacy (q, σ, steps, ε, δ) for dataset keys.</param>
public sealed record ReleaseRun(string RunId, string ContractId, string Consumer, string PipelineSha256, V1.PrivacyParameters? Declared);

/// <summary>A released key, unwrapped, and the budget after the release (dataset keys).</summary>
/// <param name="Key">The data key (dispose to zero it).</param>
/// <param name="Budget">The contract's budget after this release, if any.</param>
public sealed record ReleasedKey(DataKey Key, V1.BudgetStatus? Budget) : IDisposable
{
    /// <inheritdoc />
    public void Dispose() => Key.Dispose();
}

/// <summary>
/// A party's side of the KeyBroker, for the CLI, Packaging and the Trainer: every call carries a fresh party token
/// minted from the party's <see cref="SigningKey"/> (ES256, short-lived, single-use jti). It registers, wraps and
/// imports keys, and obtains keys: under attestation (the clean room: ephemeral key pair, broker nonce, token, release,
/// unwrap) or as the owner of an output key.
/// </summary>
public sealed class KeyBrokerParty(V1.KeyBroker.KeyBrokerClient client, string partyId, SigningKey key, string audience = PartyTokens.DefaultAudience)
{
    /// <summary>The party id.</summary>
    public string PartyId => partyId;

    /// <summary>The generated client, for calls this helper does not wrap (pass <see cref="Credentials"/>).</summary>
    public V1.KeyBroker.KeyBrokerClient Client => client;

    /// <summary>A freshly minted party token.</summary>
    public string MintToken() => PartyTokens.Mint(key, partyId, audience);

    /// <summary>Call metadata with a fresh "authorization: Bearer …".</summary>
    public Metadata Credentials() => new() { { PartyTokens.AuthorizationHeader, PartyTokens.Bearer(MintToken()) } };

    /// <summary>
    /// Registers this party's key with <paramref name="role"/>. <paramref name="adminToken"/> where the broker requires it
    /// for first registrations; <paramref name="previousKey"/> (the registered key) to rotate to this one.
    /// </summary>
    public async Task<V1.RegisterPartyResponse> RegisterAsync(PartyRole role, string? adminToken = null, SigningKey? previousKey = null, CancellationToken cancellationToken = default,
        DateTime? deadline = null)
    {
        var headers = Credentials();
        if (adminToken is not null)
        {
            headers.Add(PartyTokens.AdminTokenHeader, adminToken);
        }

        if (previousKey is not null)
        {
            headers.Add(PartyTokens.PreviousKeyTokenHeader, PartyTokens.Mint(previousKey, partyId, audience));
        }

        return await client.RegisterPartyAsync(new V1.RegisterPartyRequest
        {
            PartyId = partyId,
            Role = role.ToContract(),
            PublicKeyPem = key.PublicKey.ExportPem(),
        }, headers, deadline, cancellationToken);
    }

    /// <summary>
    /// Registers this party's key with <paramref name="role"/> unless it is registered already, sending
    /// <paramref name="adminToken"/> only when the broker answers that a first registration needs it: never to replace
    /// a key registered for this party id (with the admin token the broker would replace it, as a recovery). A party
    /// registered with another key or role is refused (PERMISSION_DENIED, FAILED_PRECONDITION). Between the two calls
    /// someone may register the id first; the admin-token call then replaces their key with this one.
    /// </summary>
    public async Task<V1.RegisterPartyResponse> EnsureRegisteredAsync(PartyRole role, string? adminToken, CancellationToken cancellationToken = default, DateTime? deadline = null)
    {
        try
        {
            return await RegisterAsync(role, adminToken: null, cancellationToken: cancellationToken, deadline: deadline).ConfigureAwait(false);
        }
        catch (RpcException e) when (adminToken is not null && e.StatusCode == StatusCode.PermissionDenied
            && e.Status.Detail.Contains(FirstRegistrationNeedsAdmin, StringComparison.Ordinal))
        {
            return await RegisterAsync(role, adminToken, cancellationToken: cancellationToken, deadline: deadline).ConfigureAwait(false);
        }
    }

    /// <summary>What the broker's refusal of a first registration without the admin token says.</summary>
    public const string FirstRegistrationNeedsAdmin = "a first registration needs the operator's admin token";

    /// <summary>
    /// Wraps <paramref name="dataKey"/> to the broker's public key and imports it with its policy and contract. With
    /// <paramref name="expectedBrokerKeyId"/> (the broker key's thumbprint, learnt out of band) the broker's key is pinned.
    /// </summary>
    public async Task<V1.ImportKeyResponse> ImportKeyAsync(DataKey dataKey, V1.KeyPurpose purpose, string releasePolicyJson, V1.ContractTerms? contract,
        string? expectedBrokerKeyId = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(dataKey);
        var brokerKey = await client.GetBrokerKeyAsync(new V1.GetBrokerKeyRequest(), Credentials(), cancellationToken: cancellationToken);
        var recipient = RecipientPublicKey.FromPem(brokerKey.PublicKeyPem);
        if (expectedBrokerKeyId is not null && !string.Equals(recipient.Thumbprint, expectedBrokerKeyId, StringComparison.OrdinalIgnoreCase))
        {
            throw new InvalidOperationException($"the broker's key is {recipient.Thumbprint[..16]}…, not the expected {Ids.Printable(expectedBrokerKeyId)}: refusing to wrap to it");
        }

        var wrapped = KeyWrap.Wrap(dataKey, recipient);
        var request = new V1.ImportKeyRequest
        {
            KeyId = dataKey.KeyId,
            Purpose = purpose,
            WrappedKey = ByteString.CopyFromUtf8(wrapped.ToJson()),
            WrapAlgorithm = WrappedKey.AlgorithmName(wrapped.Algorithm),
            ReleasePolicyJson = releasePolicyJson,
        };
        if (contract is not null)
        {
            request.Contract = contract;
        }

        return await client.ImportKeyAsync(request, Credentials(), cancellationToken: cancellationToken);
    }

    /// <summary>
    /// Imports a key that is already wrapped to the broker's public key (<paramref name="wrappedKeyJson"/>: the wrapped-key
    /// document, e.g. a Seal's <c>wrapped_data_key</c> for the broker's key): what Packaging's HandOffKey forwards.
    /// </summary>
    public async Task<V1.ImportKeyResponse> ImportWrappedKeyAsync(string keyId, V1.KeyPurpose purpose, ByteString wrappedKeyJson, string wrapAlgorithm,
        string releasePolicyJson, V1.ContractTerms? contract, DateTime? deadline = null, CancellationToken cancellationToken = default)
    {
        var request = new V1.ImportKeyRequest
        {
            KeyId = keyId,
            Purpose = purpose,
            WrappedKey = wrappedKeyJson,
            WrapAlgorithm = wrapAlgorithm ?? "",
            ReleasePolicyJson = releasePolicyJson ?? "",
        };
        if (contract is not null)
        {
            request.Contract = contract;
        }

        return await client.ImportKeyAsync(request, Credentials(), deadline, cancellationToken);
    }

    /// <summary>
    /// The key's audit trail (owner only), read to its end and verified here too (<see cref="AuditReading"/>): the hash of
    /// every record and the links between them, besides the broker's own verification (DATA_LOSS at the end of the stream).
    /// </summary>
    public async Task<AuditReading> ReadAuditAsync(string keyId, CancellationToken cancellationToken = default)
    {
        var records = new List<V1.AuditRecord>();
        string? brokerProblem = null;
        using var call = client.ListAudit(new V1.ListAuditRequest { KeyId = keyId }, Credentials(), cancellationToken: cancellationToken);
        try
        {
            await foreach (var record in call.ResponseStream.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                records.Add(record);
            }
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.DataLoss)
        {
            brokerProblem = e.Status.Detail;
        }

        return new AuditReading(records, brokerProblem, AuditReading.VerifyHere(records));
    }

    /// <summary>
    /// The clean room's release: asks a nonce for the run, gets an attestation token binding it and the ephemeral key
    /// (<paramref name="ephemeral"/>, or a fresh P-256 pair), asks for the key and unwraps it.
    /// </summary>
    public async Task<ReleasedKey> ReleaseWithAttestationAsync(string keyId, ReleaseRun run, AttestationProvider attest, RecipientPrivateKey? ephemeral = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(run);
        ArgumentNullException.ThrowIfNull(attest);
        var owned = ephemeral is null;
        var recipient = ephemeral ?? RecipientPrivateKey.GenerateEcP256();
        try
        {
            var nonce = await client.GetAttestationNonceAsync(new V1.GetAttestationNonceRequest { RunId = run.RunId }, Credentials(), cancellationToken: cancellationToken);
            var token = await attest(nonce.Nonce, recipient.PublicKey, cancellationToken).ConfigureAwait(false);
            var request = new V1.ReleaseKeyRequest
            {
                KeyId = keyId,
                AttestationToken = token,
                RequesterPublicKeyPem = recipient.PublicKey.ExportPem(),
                RunId = run.RunId,
                ContractId = run.ContractId,
                PipelineSha256 = run.PipelineSha256,
                Nonce = nonce.Nonce,
                Consumer = run.Consumer,
            };
            if (run.Declared is not null)
            {
                request.Declared = run.Declared;
            }

            var response = await client.ReleaseKeyAsync(request, Credentials(), cancellationToken: cancellationToken);
            return new ReleasedKey(Unwrap(response, recipient), response.Budget);
        }
        finally
        {
            if (owned)
            {
                recipient.Dispose();
            }
        }
    }

    /// <summary>The consumer's own output key, outside the clean room (no attestation), unwrapped.</summary>
    public async Task<DataKey> ReleaseOwnOutputKeyAsync(string keyId, CancellationToken cancellationToken = default)
    {
        using var recipient = RecipientPrivateKey.GenerateEcP256();
        var response = await client.ReleaseKeyAsync(new V1.ReleaseKeyRequest
        {
            KeyId = keyId,
            RequesterPublicKeyPem = recipient.PublicKey.ExportPem(),
        }, Credentials(), cancellationToken: cancellationToken);
        return Unwrap(response, recipient);
    }

    /// <summary>
    /// An <see cref="AttestationProvider"/> backed by the development authority the KeyBroker serves at
    /// <paramref name="issuer"/> (POST <c>{issuer}/attest</c> with this party's token): development only.
    /// </summary>
    public AttestationProvider DevelopmentAttestation(HttpClient http, string issuer, string measurement) =>
        (nonce, runtimeKey, cancellationToken) => DevelopmentAttestationClient.RequestTokenAsync(http, issuer, MintToken(), nonce, runtimeKey, measurement, cancellationToken);

    private static DataKey Unwrap(V1.ReleaseKeyResponse response, RecipientPrivateKey recipient)
    {
        var key = KeyWrap.Unwrap(WrappedKey.FromJson(response.WrappedKey.ToStringUtf8()), recipient);
        if (key.KeyId != response.KeyId)
        {
            key.Dispose();
            throw new InvalidOperationException($"the broker released key {key.KeyId}, not {response.KeyId}");
        }

        return key;
    }
}

/// <summary>The request the development authority's HTTP endpoint takes (JSON, snake_case).</summary>
public static class DevelopmentAttestationClient
{
    /// <summary>
    /// POSTs to <c>{issuer}/attest</c>: <c>{"nonce", "runtime_key_pem", "measurement"}</c> (and <c>"backdate_seconds"</c> when
    /// <paramref name="backdate"/> is given) with a CCR party token; returns the token. <paramref name="issuer"/> is where the
    /// authority is reached, which may differ from the issuer its tokens name (a proxy, a test server).
    /// </summary>
    public static async Task<string> RequestTokenAsync(HttpClient http, string issuer, string partyToken, string nonce, RecipientPublicKey runtimeKey,
        string measurement, CancellationToken cancellationToken, TimeSpan? backdate = null)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(runtimeKey);
        var fields = new Dictionary<string, object>
        {
            ["nonce"] = nonce,
            ["runtime_key_pem"] = runtimeKey.ExportPem(),
            ["measurement"] = measurement,
        };
        if (backdate is { } by)
        {
            fields["backdate_seconds"] = (long)by.TotalSeconds;
        }

        using var request = new HttpRequestMessage(HttpMethod.Post, issuer.TrimEnd('/') + DevelopmentAttestationAuthority.AttestPath)
        {
            Content = JsonContent.Create(fields),
        };
        request.Headers.TryAddWithoutValidation(PartyTokens.AuthorizationHeader, PartyTokens.Bearer(partyToken));
        using var response = await http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            throw new InvalidOperationException($"development attestation at {issuer} answered {(int)response.StatusCode}: {Ids.Printable(body)}");
        }

        using var doc = JsonDocument.Parse(Encoding.UTF8.GetBytes(body));
        return doc.RootElement.TryGetProperty("token", out var token) && token.ValueKind == JsonValueKind.String
            ? token.GetString()!
            : throw new InvalidOperationException($"development attestation at {issuer} answered without a token");
    }
}
