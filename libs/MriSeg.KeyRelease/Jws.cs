using System.Buffers.Text;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.Tokens;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease;

/// <summary>Compact JWS (JWT) creation with ES256 and reading of an unverified payload.</summary>
internal static class Jws
{
    /// <summary>An ES256 JWT signed by <paramref name="key"/> (SigningKey's P1363 low-s signature is JWS's format).</summary>
    public static string CreateEs256(SigningKey key, string kid, Action<Utf8JsonWriter> writeClaims)
    {
        var header = Json(w =>
        {
            w.WriteString("alg", "ES256");
            w.WriteString("typ", "JWT");
            w.WriteString("kid", kid);
        });
        var payload = Json(writeClaims);
        var signingInput = Base64UrlEncoder.Encode(header) + "." + Base64UrlEncoder.Encode(payload);
        var signature = key.SignData(Encoding.ASCII.GetBytes(signingInput));
        return signingInput + "." + Base64Url.EncodeToString(signature);
    }

    /// <summary>The JSON of an object written by <paramref name="write"/>.</summary>
    public static byte[] Json(Action<Utf8JsonWriter> write)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            write(writer);
            writer.WriteEndObject();
        }

        return buffer.ToArray();
    }

    /// <summary>The RFC 7638 thumbprint (base64url SHA-256 of the canonical JWK) of a P-256 public key.</summary>
    public static string EcThumbprint(ReadOnlySpan<byte> x, ReadOnlySpan<byte> y)
    {
        var canonical = $"{{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"{Base64Url.EncodeToString(x)}\",\"y\":\"{Base64Url.EncodeToString(y)}\"}}";
        return Base64Url.EncodeToString(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(canonical)));
    }
}
