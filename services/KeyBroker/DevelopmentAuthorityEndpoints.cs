using System.Text.Json;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;

namespace MriSeg.KeyBroker;

/// <summary>
/// DEVELOPMENT ONLY: serves the development attestation authority over HTTP under its issuer's path
/// (default <c>/dev-attestation</c>): <c>GET …/.well-known/openid-configuration</c>, <c>GET …/certs</c> (JWKS), and
/// <c>POST …/attest</c> (a clean room's party token; body <c>{"nonce", "runtime_key_pem", "measurement"}</c> and optionally
/// <c>"backdate_seconds"</c>, a token issued that much earlier, which only ever expires sooner; answers <c>{"token"}</c>).
/// It attests a software measurement it cannot check: only policies written for it accept its tokens.
/// </summary>
public static class DevelopmentAuthorityEndpoints
{
    public static void MapDevelopmentAuthority(this WebApplication app, DevelopmentAttestationAuthority authority)
    {
        var path = new Uri(authority.Issuer).AbsolutePath.TrimEnd('/');
        app.MapGet(path + DevelopmentAttestationAuthority.MetadataPath, () => Results.Text(authority.OpenIdConfigurationJson(), "application/json"));
        app.MapGet(path + DevelopmentAttestationAuthority.JwksPath, () => Results.Text(authority.JwksJson(), "application/json"));
        app.MapPost(path + DevelopmentAttestationAuthority.AttestPath, (HttpContext http, KeyBrokerEngine engine, ILogger<DevelopmentAttestationAuthority> logger) =>
            AttestAsync(http, engine, authority, logger));
    }

    private static async Task<IResult> AttestAsync(HttpContext http, KeyBrokerEngine engine, DevelopmentAttestationAuthority authority, ILogger logger)
    {
        PartyPrincipal caller;
        try
        {
            caller = await engine.AuthenticateAsync(http.Request.Headers.Authorization.ToString(), http.RequestAborted);
        }
        catch (KeyBrokerException e)
        {
            return Error(StatusCodes.Status401Unauthorized, e.Message);
        }

        if (caller.Role != PartyRole.CleanRoom)
        {
            return Error(StatusCodes.Status403Forbidden, $"{caller}: only a clean room (CCR) is attested");
        }

        string? nonce, pem, measurement;
        long backdate;
        try
        {
            using var body = await JsonDocument.ParseAsync(http.Request.Body, cancellationToken: http.RequestAborted);
            nonce = Str(body.RootElement, "nonce");
            pem = Str(body.RootElement, "runtime_key_pem");
            measurement = Str(body.RootElement, "measurement");
            if (!TryBackdate(body.RootElement, out backdate))
            {
                return Error(StatusCodes.Status400BadRequest,
                    $"backdate_seconds must be a whole number from 0 to {(long)DevelopmentAttestationAuthority.MaxBackdate.TotalSeconds}");
            }
        }
        catch (JsonException)
        {
            return Error(StatusCodes.Status400BadRequest, "the body is not JSON");
        }

        if (string.IsNullOrEmpty(nonce) || string.IsNullOrEmpty(pem) || Ids.Sha256Hex(measurement) is null)
        {
            return Error(StatusCodes.Status400BadRequest, "nonce, runtime_key_pem and measurement (hex SHA-256) are required");
        }

        RecipientPublicKey runtimeKey;
        try
        {
            runtimeKey = RecipientPublicKey.FromPem(pem);
        }
        catch (Exception e) when (e is SealedPackageException or FormatException)
        {
            return Error(StatusCodes.Status400BadRequest, "runtime_key_pem: " + e.Message);
        }

        var token = authority.IssueToken(new DevelopmentAttestationRequest(caller.PartyId, runtimeKey, nonce, measurement!, TimeSpan.FromSeconds(backdate)));
        logger.LogInformation("Development attestation issued to {Caller} for measurement {Measurement}{Backdated} (software only, not hardware-backed)", caller, measurement,
            backdate > 0 ? $", backdated {backdate} s" : "");
        return Results.Json(new { token });
    }

    private static IResult Error(int status, string message) => Results.Json(new { error = message }, statusCode: status);

    private static bool TryBackdate(JsonElement e, out long seconds)
    {
        seconds = 0;
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty("backdate_seconds", out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return true;
        }

        return v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out seconds)
            && seconds >= 0 && seconds <= (long)DevelopmentAttestationAuthority.MaxBackdate.TotalSeconds;
    }

    private static string? Str(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}
