using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace MriSeg.Sealing;

/// <summary>
/// A data key wrapped to one recipient. JSON document (<see cref="ToJson"/>):
/// <c>{"type":"mriseg-wrapped-key","version":1,"alg":"RSA-OAEP-256"|"ECDH-ES+A256GCM","kid","recipient","ek"[,"epk","iv","tag"]}</c>,
/// binary members in standard base64, ids and thumbprints in lowercase hex.
/// </summary>
public sealed class WrappedKey
{
    /// <summary>The <c>type</c> member of the JSON document.</summary>
    public const string DocumentType = "mriseg-wrapped-key";

    internal WrappedKey(KeyWrapAlgorithm algorithm, byte[] keyId, byte[] recipientThumbprint, byte[] encryptedKey,
        byte[]? ephemeralPublicKey, byte[]? nonce, byte[]? tag)
    {
        Algorithm = algorithm;
        KeyIdBytes = keyId;
        RecipientThumbprintBytes = recipientThumbprint;
        EncryptedKey = encryptedKey;
        EphemeralPublicKey = ephemeralPublicKey;
        Nonce = nonce;
        Tag = tag;
    }

    /// <summary>The wrapping algorithm.</summary>
    public KeyWrapAlgorithm Algorithm { get; }

    /// <summary>Key id of the wrapped data key.</summary>
    public string KeyId => Hex.Lower(KeyIdBytes);

    /// <summary>Thumbprint of the recipient public key the key was wrapped to.</summary>
    public string RecipientThumbprint => Hex.Lower(RecipientThumbprintBytes);

    internal byte[] KeyIdBytes { get; }

    internal byte[] RecipientThumbprintBytes { get; }

    internal byte[] EncryptedKey { get; }

    internal byte[]? EphemeralPublicKey { get; }

    internal byte[]? Nonce { get; }

    internal byte[]? Tag { get; }

    /// <summary>The JOSE-style name of the algorithm.</summary>
    public static string AlgorithmName(KeyWrapAlgorithm algorithm) => algorithm switch
    {
        KeyWrapAlgorithm.RsaOaep256 => "RSA-OAEP-256",
        KeyWrapAlgorithm.EcdhEsA256Gcm => "ECDH-ES+A256GCM",
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    /// <summary>The JSON document.</summary>
    public string ToJson()
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            writer.WriteString("type", DocumentType);
            writer.WriteNumber("version", 1);
            writer.WriteString("alg", AlgorithmName(Algorithm));
            writer.WriteString("kid", KeyId);
            writer.WriteString("recipient", RecipientThumbprint);
            if (EphemeralPublicKey is not null)
            {
                writer.WriteString("epk", Convert.ToBase64String(EphemeralPublicKey));
            }

            if (Nonce is not null)
            {
                writer.WriteString("iv", Convert.ToBase64String(Nonce));
            }

            writer.WriteString("ek", Convert.ToBase64String(EncryptedKey));
            if (Tag is not null)
            {
                writer.WriteString("tag", Convert.ToBase64String(Tag));
            }

            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length) + "\n";
    }

    /// <summary>Parses the JSON document.</summary>
    public static WrappedKey FromJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || Str(root, "type") != DocumentType)
            {
                throw Bad($"type is not \"{DocumentType}\"");
            }

            if (!root.TryGetProperty("version", out var version) || version.ValueKind != JsonValueKind.Number || !version.TryGetInt32(out var v) || v != 1)
            {
                throw Bad("version is not 1");
            }

            var algorithm = Str(root, "alg") switch
            {
                "RSA-OAEP-256" => KeyWrapAlgorithm.RsaOaep256,
                "ECDH-ES+A256GCM" => KeyWrapAlgorithm.EcdhEsA256Gcm,
                var other => throw Bad($"unknown alg \"{other}\""),
            };
            if (!Hex.TryParse(Str(root, "kid"), PackageFormat.KeyIdLength, out var kid))
            {
                throw Bad("kid is not 32 lowercase hex digits");
            }

            if (!Hex.TryParse(Str(root, "recipient"), 32, out var recipient))
            {
                throw Bad("recipient is not 64 lowercase hex digits");
            }

            var ek = B64(root, "ek") ?? throw Bad("ek missing");
            if (algorithm == KeyWrapAlgorithm.RsaOaep256)
            {
                return new WrappedKey(algorithm, kid, recipient, ek, null, null, null);
            }

            var epk = B64(root, "epk") ?? throw Bad("epk missing");
            var iv = B64(root, "iv") ?? throw Bad("iv missing");
            var tag = B64(root, "tag") ?? throw Bad("tag missing");
            if (iv.Length != 12 || tag.Length != 16 || ek.Length != DataKey.SizeInBytes)
            {
                throw Bad("iv, tag or ek has the wrong length");
            }

            return new WrappedKey(algorithm, kid, recipient, ek, epk, iv, tag);
        }
        catch (JsonException e)
        {
            throw new SealedPackageException(SealingError.InvalidKey, "wrapped key: not valid JSON", innerException: e);
        }
    }

    private static string? Str(JsonElement root, string name) =>
        root.TryGetProperty(name, out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;

    private static byte[]? B64(JsonElement root, string name)
    {
        var text = Str(root, name);
        if (text is null)
        {
            return null;
        }

        try
        {
            return Convert.FromBase64String(text);
        }
        catch (FormatException)
        {
            throw Bad($"{name} is not base64");
        }
    }

    private static SealedPackageException Bad(string reason) => new(SealingError.InvalidKey, "wrapped key: " + reason);
}

/// <summary>
/// Wraps a data key to a recipient's public key and unwraps it with the private key.
/// RSA keys use RSA-OAEP-256; P-256 keys use ECDH-ES+A256GCM: an ephemeral P-256 key, the raw ECDH
/// shared secret Z, KEK = HKDF-SHA256(Z, salt = empty, info = "MriSeg.Sealing.v1 ECDH-ES+A256GCM\0" ‖
/// ephemeral SPKI ‖ recipient SPKI), then AES-256-GCM of the 32 key bytes under KEK with a random
/// 96-bit nonce and associated data "ECDH-ES+A256GCM\0" ‖ key id ‖ recipient thumbprint.
/// After unwrapping, the key's derived id must equal the document's kid.
/// </summary>
public static class KeyWrap
{
    private static ReadOnlySpan<byte> HkdfInfoPrefix => "MriSeg.Sealing.v1 ECDH-ES+A256GCM\0"u8;

    private static ReadOnlySpan<byte> AadPrefix => "ECDH-ES+A256GCM\0"u8;

    /// <summary>Wraps <paramref name="key"/> to <paramref name="recipient"/> with the algorithm its key type takes.</summary>
    public static WrappedKey Wrap(DataKey key, RecipientPublicKey recipient)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(recipient);
        if (recipient.Algorithm == KeyWrapAlgorithm.RsaOaep256)
        {
            using var rsa = RSA.Create();
            rsa.ImportSubjectPublicKeyInfo(recipient.SubjectPublicKeyInfo, out _);
            var ek = rsa.Encrypt(key.Key, RSAEncryptionPadding.OaepSHA256);
            return new WrappedKey(KeyWrapAlgorithm.RsaOaep256, key.KeyIdBytes.ToArray(), recipient.ThumbprintBytes.ToArray(), ek, null, null, null);
        }

        using var recipientEcdh = ECDiffieHellman.Create();
        recipientEcdh.ImportSubjectPublicKeyInfo(recipient.SubjectPublicKeyInfo, out _);
        using var ephemeral = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP256);
        var epk = ephemeral.ExportSubjectPublicKeyInfo();
        var kek = DeriveKek(ephemeral, recipientEcdh.PublicKey, epk, recipient.SubjectPublicKeyInfo);
        try
        {
            var nonce = RandomNumberGenerator.GetBytes(12);
            var ciphertext = new byte[DataKey.SizeInBytes];
            var tag = new byte[16];
            using var gcm = new AesGcm(kek, 16);
            gcm.Encrypt(nonce, key.Key, ciphertext, tag, Aad(key.KeyIdBytes, recipient.ThumbprintBytes));
            return new WrappedKey(KeyWrapAlgorithm.EcdhEsA256Gcm, key.KeyIdBytes.ToArray(), recipient.ThumbprintBytes.ToArray(), ciphertext, epk, nonce, tag);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    /// <summary>
    /// Unwraps with the recipient's private key. A key wrapped for another recipient, a wrong private key or an
    /// altered document throws <see cref="SealedPackageException"/> (<see cref="SealingError.WrongRecipientKey"/>
    /// or <see cref="SealingError.KeyUnwrapFailed"/>).
    /// </summary>
    public static DataKey Unwrap(WrappedKey wrapped, RecipientPrivateKey recipient)
    {
        ArgumentNullException.ThrowIfNull(wrapped);
        ArgumentNullException.ThrowIfNull(recipient);
        if (wrapped.Algorithm != recipient.Algorithm)
        {
            throw new SealedPackageException(SealingError.WrongRecipientKey,
                $"wrong private key: the key is wrapped with {WrappedKey.AlgorithmName(wrapped.Algorithm)}, the private key is for {WrappedKey.AlgorithmName(recipient.Algorithm)}");
        }

        if (!CryptographicOperations.FixedTimeEquals(wrapped.RecipientThumbprintBytes, recipient.PublicKey.ThumbprintBytes))
        {
            throw new SealedPackageException(SealingError.WrongRecipientKey,
                $"wrong private key: the key is wrapped for recipient {Hex.Short(wrapped.RecipientThumbprint)}…, the private key is {Hex.Short(recipient.PublicKey.Thumbprint)}…");
        }

        byte[] keyBytes;
        if (wrapped.Algorithm == KeyWrapAlgorithm.RsaOaep256)
        {
            try
            {
                lock (recipient.Rsa)
                {
                    keyBytes = recipient.Rsa.Decrypt(wrapped.EncryptedKey, RSAEncryptionPadding.OaepSHA256);
                }
            }
            catch (CryptographicException e)
            {
                throw new SealedPackageException(SealingError.KeyUnwrapFailed, "key unwrap failed: RSA-OAEP-256 decryption failed (wrong private key or altered wrapped key)", innerException: e);
            }
        }
        else
        {
            keyBytes = UnwrapEcdh(wrapped, recipient);
        }

        try
        {
            if (keyBytes.Length != DataKey.SizeInBytes)
            {
                throw new SealedPackageException(SealingError.KeyUnwrapFailed, $"key unwrap failed: the unwrapped key is {keyBytes.Length} bytes, not {DataKey.SizeInBytes}");
            }

            var key = DataKey.FromBytes(keyBytes);
            if (!CryptographicOperations.FixedTimeEquals(key.KeyIdBytes, wrapped.KeyIdBytes))
            {
                key.Dispose();
                throw new SealedPackageException(SealingError.KeyUnwrapFailed, $"key unwrap failed: the unwrapped key's id is not the document's kid {Hex.Short(wrapped.KeyId)}…");
            }

            return key;
        }
        finally
        {
            CryptographicOperations.ZeroMemory(keyBytes);
        }
    }

    private static byte[] UnwrapEcdh(WrappedKey wrapped, RecipientPrivateKey recipient)
    {
        using var ephemeral = ECDiffieHellman.Create();
        try
        {
            ephemeral.ImportSubjectPublicKeyInfo(wrapped.EphemeralPublicKey, out var read);
            if (read != wrapped.EphemeralPublicKey!.Length)
            {
                throw new CryptographicException("trailing bytes");
            }

            KeyChecks.RequireP256(ephemeral.ExportParameters(false), "wrapped key epk");
        }
        catch (CryptographicException e)
        {
            throw new SealedPackageException(SealingError.KeyUnwrapFailed, "key unwrap failed: the ephemeral public key is not a P-256 key", innerException: e);
        }

        var recipientSpki = recipient.PublicKey.SubjectPublicKeyInfo;
        byte[] kek;
        try
        {
            lock (recipient.Ecdh)
            {
                kek = DeriveKek(recipient.Ecdh, ephemeral.PublicKey, wrapped.EphemeralPublicKey, recipientSpki);
            }
        }
        catch (CryptographicException e)
        {
            throw new SealedPackageException(SealingError.KeyUnwrapFailed, "key unwrap failed: ECDH failed", innerException: e);
        }

        var keyBytes = new byte[DataKey.SizeInBytes];
        try
        {
            using var gcm = new AesGcm(kek, 16);
            gcm.Decrypt(wrapped.Nonce!, wrapped.EncryptedKey, wrapped.Tag!, keyBytes, Aad(wrapped.KeyIdBytes, wrapped.RecipientThumbprintBytes));
            return keyBytes;
        }
        catch (CryptographicException e)
        {
            throw new SealedPackageException(SealingError.KeyUnwrapFailed, "key unwrap failed: ECDH-ES+A256GCM authentication failed (wrong private key or altered wrapped key)", innerException: e);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(kek);
        }
    }

    private static byte[] DeriveKek(ECDiffieHellman own, ECDiffieHellmanPublicKey other, ReadOnlySpan<byte> ephemeralSpki, ReadOnlySpan<byte> recipientSpki)
    {
        var z = own.DeriveRawSecretAgreement(other);
        try
        {
            var info = new byte[HkdfInfoPrefix.Length + ephemeralSpki.Length + recipientSpki.Length];
            HkdfInfoPrefix.CopyTo(info);
            ephemeralSpki.CopyTo(info.AsSpan(HkdfInfoPrefix.Length));
            recipientSpki.CopyTo(info.AsSpan(HkdfInfoPrefix.Length + ephemeralSpki.Length));
            return HKDF.DeriveKey(HashAlgorithmName.SHA256, z, 32, salt: [], info: info);
        }
        finally
        {
            CryptographicOperations.ZeroMemory(z);
        }
    }

    private static byte[] Aad(ReadOnlySpan<byte> keyId, ReadOnlySpan<byte> recipientThumbprint)
    {
        var aad = new byte[AadPrefix.Length + keyId.Length + recipientThumbprint.Length];
        AadPrefix.CopyTo(aad);
        keyId.CopyTo(aad.AsSpan(AadPrefix.Length));
        recipientThumbprint.CopyTo(aad.AsSpan(AadPrefix.Length + keyId.Length));
        return aad;
    }
}
