using System.Buffers.Text;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Policy;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>Which step of a Microsoft Azure Attestation request failed.</summary>
public enum MaaAttestationStage
{
    /// <summary>The vTPM: the device, its NV indices, or the HCL report it returned.</summary>
    Vtpm,

    /// <summary>The VCEK certificate chain from the instance metadata service (THIM).</summary>
    Certificates,

    /// <summary>The attestation service: unreachable, an error status, or an answer without a token.</summary>
    Service,
}

/// <summary>Obtaining an MAA token failed; the message says where and why, in one line.</summary>
public sealed class MaaAttestationException(MaaAttestationStage stage, string message, Exception? innerException = null)
    : Exception("MAA attestation: " + message, innerException)
{
    /// <summary>The failed step.</summary>
    public MaaAttestationStage Stage { get; } = stage;
}

/// <summary>
/// The Trainer's <see cref="AttestationProvider"/> on an Azure confidential VM (the deployment in <c>infra/</c>: an
/// NCCadsH100v5 VM with <c>securityType: ConfidentialVM</c>, not a confidential container group, so there is no SKR
/// sidecar; the container is given <c>/dev/tpmrm0</c>). For each release:
/// <list type="number">
/// <item>the user data <see cref="RuntimeKeys.UserData"/>(ephemeral key, broker nonce) goes into the vTPM and the HCL
/// report carrying it comes back (<see cref="AzureVtpm"/>): an SEV-SNP report whose REPORT_DATA hashes the paravisor's
/// runtime data, which holds that user data;</item>
/// <item>the VCEK certificate chain comes from the instance metadata service: <c>GET {imds}/metadata/THIM/amd/certification</c>
/// with <c>Metadata: true</c>, answering <c>{"vcekCert", "certificateChain", "tcbm"}</c> (PEM);</item>
/// <item><c>POST {maa}/attest/SevSnpVm?api-version=2022-08-01</c> with
/// <c>{"report": b64url(JSON {"SnpReport": b64url(report), "VcekCertChain": b64url(vcekCert + certificateChain)}),
/// "runtimeData": {"data": b64url(runtime data), "dataType": "JSON"}, "nonce": nonce}</c> answers <c>{"token": JWT}</c>.</item>
/// </list>
/// MAA's token then carries <c>x-ms-attestation-type</c> "sevsnpvm", <c>x-ms-compliance-status</c> "azure-compliant-cvm",
/// the <c>x-ms-sevsnpvm-*</c> claims of the report, <c>x-ms-runtime</c> (the runtime data, with <c>user-data</c> in hex)
/// and <c>nonce</c>, which is what the KeyBroker's <see cref="AttestationVerifier"/> checks.
/// Sources relied on (shapes only): the MAA REST reference "Attestation - Attest Sev Snp Vm" (api-version 2022-08-01;
/// the request's <c>nonce</c> is "emitted in the generated attestation token", in its <c>nonce</c> claim per the .NET SDK's
/// <c>AttestationRequest.Nonce</c>), and Microsoft's <c>Azure/cvm-attestation-tools</c> (<c>cvm-attestation/src/imds_client.py</c>:
/// the THIM call and the chain; <c>attestation_client.py</c> / <c>attestation_provider.py</c>: the platform attestation
/// request and its <c>{"token"}</c> answer).
/// </summary>
public sealed class MaaAttestation
{
    /// <summary>The MAA REST API version used.</summary>
    public const string ApiVersion = "2022-08-01";

    /// <summary>The Azure instance metadata service.</summary>
    public const string DefaultImdsAddress = "http://169.254.169.254";

    /// <summary>Where below the IMDS address the VCEK chain is served.</summary>
    public const string ThimPath = "/metadata/THIM/amd/certification";

    private const int MaxAnswerBytes = 1024 * 1024;

    private readonly HttpClient _http;
    private readonly AzureVtpm _vtpm;

    /// <summary>Creates the provider.</summary>
    /// <param name="http">For IMDS and MAA (give it a timeout).</param>
    /// <param name="maaEndpoint">The attestation provider, e.g. <c>https://sharedeus2.eus2.attest.azure.net</c> (a bare host means https).</param>
    /// <param name="vtpm">The vTPM (<see cref="TpmDevice"/> in the VM).</param>
    /// <param name="imdsAddress">The instance metadata service (default <see cref="DefaultImdsAddress"/>).</param>
    public MaaAttestation(HttpClient http, string maaEndpoint, AzureVtpm vtpm, string imdsAddress = DefaultImdsAddress)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(vtpm);
        Endpoint = NormalizeEndpoint(maaEndpoint);
        if (!Uri.TryCreate(imdsAddress, UriKind.Absolute, out var imds) || imds.Scheme is not ("http" or "https"))
        {
            throw new ArgumentException($"the instance metadata address '{Ids.Printable(imdsAddress)}' is not an http(s) URL", nameof(imdsAddress));
        }

        ImdsAddress = imdsAddress.TrimEnd('/');
        _http = http;
        _vtpm = vtpm;
    }

    /// <summary>The attestation provider (normalised: https, no trailing '/'): the issuer its tokens name.</summary>
    public string Endpoint { get; }

    /// <summary>The instance metadata service.</summary>
    public string ImdsAddress { get; }

    /// <summary>This as an <see cref="AttestationProvider"/>.</summary>
    public AttestationProvider Provider => AttestAsync;

    /// <summary>The normal form of an MAA endpoint: https URL without trailing '/'; a bare host gets https.</summary>
    /// <exception cref="ArgumentException">Not an https URL or host.</exception>
    public static string NormalizeEndpoint(string? endpoint)
    {
        var text = endpoint?.Trim() ?? "";
        if (text.Length > 0 && !text.Contains("://", StringComparison.Ordinal))
        {
            text = "https://" + text;
        }

        return Authorities.TryNormalize(text, out var normalized) && normalized.StartsWith("https://", StringComparison.Ordinal)
            ? normalized
            : throw new ArgumentException($"the MAA endpoint '{Ids.Printable(endpoint)}' is not an https URL or host name", nameof(endpoint));
    }

    /// <summary>An MAA token binding <paramref name="runtimeKey"/> and <paramref name="nonce"/> (see the class).</summary>
    /// <exception cref="MaaAttestationException">A step failed.</exception>
    public async Task<string> AttestAsync(string nonce, RecipientPublicKey runtimeKey, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(nonce);
        ArgumentNullException.ThrowIfNull(runtimeKey);
        var report = await _vtpm.GetReportAsync(RuntimeKeys.UserData(runtimeKey, nonce), cancellationToken).ConfigureAwait(false);
        var chain = await GetVcekChainAsync(cancellationToken).ConfigureAwait(false);
        return await RequestTokenAsync(report, chain, nonce, cancellationToken).ConfigureAwait(false);
    }

    private async Task<byte[]> GetVcekChainAsync(CancellationToken cancellationToken)
    {
        var url = ImdsAddress + ThimPath;
        using var request = new HttpRequestMessage(HttpMethod.Get, url);
        request.Headers.Add("Metadata", "true");
        using var answer = await SendAsync(request, MaaAttestationStage.Certificates, $"GET {url}", cancellationToken).ConfigureAwait(false);
        var root = answer.RootElement;
        var vcek = Str(root, "vcekCert");
        var chain = Str(root, "certificateChain");
        if (string.IsNullOrWhiteSpace(vcek) || string.IsNullOrWhiteSpace(chain))
        {
            throw new MaaAttestationException(MaaAttestationStage.Certificates, $"GET {url} answered without \"vcekCert\" and \"certificateChain\"");
        }

        return Encoding.UTF8.GetBytes(vcek + chain);
    }

    private async Task<string> RequestTokenAsync(HclReport report, byte[] vcekChain, string nonce, CancellationToken cancellationToken)
    {
        var url = $"{Endpoint}/attest/SevSnpVm?api-version={ApiVersion}";
        var evidence = Jws.Json(w =>
        {
            w.WriteString("SnpReport", Base64Url.EncodeToString(report.SnpReport));
            w.WriteString("VcekCertChain", Base64Url.EncodeToString(vcekChain));
        });
        var body = Jws.Json(w =>
        {
            w.WriteString("report", Base64Url.EncodeToString(evidence));
            w.WriteStartObject("runtimeData");
            w.WriteString("data", Base64Url.EncodeToString(report.RuntimeData));
            w.WriteString("dataType", "JSON");
            w.WriteEndObject();
            w.WriteString("nonce", nonce);
        });
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
        using var answer = await SendAsync(request, MaaAttestationStage.Service, $"POST {url}", cancellationToken).ConfigureAwait(false);
        var token = Str(answer.RootElement, "token");
        if (string.IsNullOrEmpty(token))
        {
            throw new MaaAttestationException(MaaAttestationStage.Service, $"{Endpoint} answered without a token");
        }

        if (token.Split('.') is not { Length: 3 } parts || parts.Any(p => p.Length == 0))
        {
            throw new MaaAttestationException(MaaAttestationStage.Service, $"{Endpoint} answered a token that is not a signed JWT");
        }

        return token;
    }

    private async Task<JsonDocument> SendAsync(HttpRequestMessage request, MaaAttestationStage stage, string what, CancellationToken cancellationToken)
    {
        try
        {
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if (response.Content.Headers.ContentLength > MaxAnswerBytes)
            {
                throw new MaaAttestationException(stage, $"{what} answered more than {MaxAnswerBytes} bytes");
            }

            var bytes = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
            if (bytes.Length > MaxAnswerBytes)
            {
                throw new MaaAttestationException(stage, $"{what} answered more than {MaxAnswerBytes} bytes");
            }

            if (!response.IsSuccessStatusCode)
            {
                throw new MaaAttestationException(stage, $"{what} answered {(int)response.StatusCode}{Reason(bytes)}");
            }

            try
            {
                var doc = JsonDocument.Parse(bytes);
                if (doc.RootElement.ValueKind != JsonValueKind.Object)
                {
                    doc.Dispose();
                    throw new MaaAttestationException(stage, $"{what} answered {(int)response.StatusCode} with JSON that is not an object");
                }

                return doc;
            }
            catch (JsonException e)
            {
                throw new MaaAttestationException(stage, $"{what} answered {(int)response.StatusCode} with malformed JSON", e);
            }
        }
        catch (HttpRequestException e)
        {
            throw new MaaAttestationException(stage, $"{what} failed: {OneLine(e.Message, 200)}", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new MaaAttestationException(stage, $"{what} timed out", e);
        }
        catch (Exception e) when (e is not (MaaAttestationException or OperationCanceledException))
        {
            // What a handler of the client adds (the service defaults' resilience pipeline: its timeouts and circuit breaker).
            throw new MaaAttestationException(stage, $"{what} failed: {e.GetType().Name}: {OneLine(e.Message, 200)}", e);
        }
    }

    // ": <the service's error message>" from MAA's {"error": {"code", "message"}}, else the start of the body.
    private static string Reason(byte[] body)
    {
        if (body.Length == 0)
        {
            return "";
        }

        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var error) && error.ValueKind == JsonValueKind.Object)
            {
                var code = Str(error, "code");
                var message = Str(error, "message");
                return ": " + OneLine(string.Join(": ", new[] { code, message }.Where(s => !string.IsNullOrEmpty(s))), 300);
            }
        }
        catch (JsonException)
        {
            // not JSON: shown as text
        }

        return ": " + OneLine(Encoding.UTF8.GetString(body), 300);
    }

    private static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static string OneLine(string text, int max)
    {
        var clean = new string(text.Take(max).Select(c => char.IsControl(c) ? ' ' : c).ToArray()).Trim();
        return text.Length > max ? clean + "…" : clean;
    }
}
