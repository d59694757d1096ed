using System.Buffers.Text;
using System.Security.Cryptography;
using System.Text.Json;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>
/// The binding of the requester's ephemeral public key in an attestation token, in one of two forms:
/// <list type="bullet">
/// <item>the claim <c>x-ms-runtime.keys</c> (MAA's runtime-data shape, where the attested workload writes the runtime
/// data itself: confidential containers, the development authority) is a list of JWKs, and one of them must be the
/// requester's key — compared as the SHA-256 of the canonical SubjectPublicKeyInfo, so the JWK's form (members, order)
/// does not matter. EC P-256 (<c>kty</c> "EC", <c>crv</c> "P-256", <c>x</c>, <c>y</c>) and RSA (<c>kty</c> "RSA",
/// <c>n</c>, <c>e</c>) keys;</item>
/// <item>the claim <c>x-ms-runtime.user-data</c> (an Azure confidential VM: the runtime data is the paravisor's, whose
/// keys are the vTPM's, and the guest contributes only 64 bytes of user data through vTPM NV index 0x01400002) is the
/// hex of <see cref="UserData"/>: a SHA-512 over the requester key's thumbprint and the broker's nonce.</item>
/// </list>
/// </summary>
public static class RuntimeKeys
{
    /// <summary>The claim holding the runtime keys.</summary>
    public const string KeysClaim = "x-ms-runtime.keys";

    /// <summary>The claim holding an Azure confidential VM's 64 bytes of user data (hex), as MAA reports the paravisor's runtime data.</summary>
    public const string UserDataClaim = "x-ms-runtime.user-data";

    /// <summary>Size of a confidential VM's user data (vTPM NV index 0x01400002).</summary>
    public const int UserDataSize = 64;

    private static ReadOnlySpan<byte> UserDataContext => "MriSeg.KeyRelease.v1 runtime binding\0"u8;

    /// <summary>The kid the development authority and <see cref="ToJwk"/> give the ephemeral key.</summary>
    public const string EphemeralKeyId = "mriseg-ephemeral";

    /// <summary>The JWK of a recipient public key (EC P-256 or RSA), as a trainer puts it into its runtime data.</summary>
    public static void WriteJwk(Utf8JsonWriter writer, RecipientPublicKey key, string kid = EphemeralKeyId)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(key);
        var spki = key.ExportSubjectPublicKeyInfo();
        writer.WriteStartObject();
        writer.WriteString("kid", kid);
        if (key.Algorithm == KeyWrapAlgorithm.EcdhEsA256Gcm)
        {
            using var ec = ECDiffieHellman.Create();
            ec.ImportSubjectPublicKeyInfo(spki, out _);
            var p = ec.ExportParameters(false);
            writer.WriteString("kty", "EC");
            writer.WriteString("crv", "P-256");
            writer.WriteString("x", Base64Url.EncodeToString(p.Q.X));
            writer.WriteString("y", Base64Url.EncodeToString(p.Q.Y));
        }
        else
        {
            using var rsa = RSA.Create();
            rsa.ImportSubjectPublicKeyInfo(spki, out _);
            var p = rsa.ExportParameters(false);
            writer.WriteString("kty", "RSA");
            writer.WriteString("n", Base64Url.EncodeToString(p.Modulus));
            writer.WriteString("e", Base64Url.EncodeToString(p.Exponent));
        }

        writer.WriteStartArray("key_ops");
        writer.WriteStringValue("encrypt");
        writer.WriteEndArray();
        writer.WriteEndObject();
    }

    /// <summary>The JWK JSON of a recipient public key.</summary>
    public static string ToJwk(RecipientPublicKey key, string kid = EphemeralKeyId)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            WriteJwk(writer, key, kid);
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>The thumbprint (hex SHA-256 of the canonical SubjectPublicKeyInfo) of a JWK, or null when it is not a usable EC P-256 or RSA public key.</summary>
    public static string? ThumbprintOf(JsonElement jwk)
    {
        if (jwk.ValueKind != JsonValueKind.Object)
        {
            return null;
        }

        try
        {
            byte[] spki;
            switch (Str(jwk, "kty"))
            {
                case "EC":
                    if (Str(jwk, "crv") != "P-256")
                    {
                        return null;
                    }

                    using (var ec = ECDiffieHellman.Create())
                    {
                        ec.ImportParameters(new ECParameters
                        {
                            Curve = ECCurve.NamedCurves.nistP256,
                            Q = new ECPoint { X = Bytes(jwk, "x"), Y = Bytes(jwk, "y") },
                        });
                        spki = ec.ExportSubjectPublicKeyInfo();
                    }

                    break;
                case "RSA":
                    using (var rsa = RSA.Create())
                    {
                        rsa.ImportParameters(new RSAParameters { Modulus = Bytes(jwk, "n"), Exponent = Bytes(jwk, "e") });
                        spki = rsa.ExportSubjectPublicKeyInfo();
                    }

                    break;
                default:
                    return null;
            }

            return RecipientPublicKey.FromSubjectPublicKeyInfo(spki).Thumbprint;
        }
        catch (Exception e) when (e is CryptographicException or FormatException or SealedPackageException or ArgumentException)
        {
            return null;
        }
    }

    /// <summary>Whether <paramref name="claims"/> bind <paramref name="key"/> in <see cref="KeysClaim"/>.</summary>
    public static bool Binds(JsonElement claims, RecipientPublicKey key)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (!Policy.ClaimPath.TryFind(claims, KeysClaim, out var keys) || keys.ValueKind != JsonValueKind.Array)
        {
            return false;
        }

        foreach (var jwk in keys.EnumerateArray())
        {
            if (ThumbprintOf(jwk) is { } thumbprint && string.Equals(thumbprint, key.Thumbprint, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// The 64 bytes of user data a confidential VM puts into its report to bind <paramref name="key"/> and
    /// <paramref name="nonce"/>:
    /// <code>SHA-512( "MriSeg.KeyRelease.v1 runtime binding\0" ‖ thumbprint (hex, UTF-8) ‖ 0x00 ‖ nonce (UTF-8) )</code>
    /// where the thumbprint is <see cref="RecipientPublicKey.Thumbprint"/> (SHA-256 of the SubjectPublicKeyInfo).
    /// </summary>
    public static byte[] UserData(RecipientPublicKey key, string nonce)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentException.ThrowIfNullOrEmpty(nonce);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA512);
        hash.AppendData(UserDataContext);
        hash.AppendData(System.Text.Encoding.UTF8.GetBytes(key.Thumbprint));
        hash.AppendData([0]);
        hash.AppendData(System.Text.Encoding.UTF8.GetBytes(nonce));
        return hash.GetHashAndReset();
    }

    /// <summary>
    /// Whether <paramref name="claims"/> bind <paramref name="key"/> and <paramref name="nonce"/> in <see cref="UserDataClaim"/>
    /// (hex of <see cref="UserData"/>, either case).
    /// </summary>
    public static bool BindsUserData(JsonElement claims, RecipientPublicKey key, string nonce)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (string.IsNullOrEmpty(nonce)
            || !Policy.ClaimPath.TryFind(claims, UserDataClaim, out var value)
            || value.ValueKind != JsonValueKind.String
            || value.GetString() is not { Length: UserDataSize * 2 } hex
            || !hex.All(char.IsAsciiHexDigit))
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(Convert.FromHexString(hex), UserData(key, nonce));
    }

    private static string? Str(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static byte[] Bytes(JsonElement e, string name) =>
        Base64Url.DecodeFromChars((Str(e, name) ?? throw new FormatException(name + " missing")).AsSpan());
}
