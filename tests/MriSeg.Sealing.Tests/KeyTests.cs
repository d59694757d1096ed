using System.Numerics;
using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace MriSeg.Sealing.Tests;

/// <summary>RSA keys are slow to make: two per test run.</summary>
public sealed class RsaKeys : IDisposable
{
    public RecipientPrivateKey A { get; } = RecipientPrivateKey.GenerateRsa(2048);

    public RecipientPrivateKey B { get; } = RecipientPrivateKey.GenerateRsa(2048);

    public void Dispose()
    {
        A.Dispose();
        B.Dispose();
    }
}

public sealed class KeyTests(RsaKeys rsa) : IClassFixture<RsaKeys>, IDisposable
{
    private readonly TempFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    [Fact]
    public void Data_keys_are_fresh_and_their_ids_derive_from_the_key()
    {
        using var a = DataKey.Generate();
        using var b = DataKey.Generate();
        Assert.NotEqual(a.KeyId, b.KeyId);
        Assert.Equal(32, a.ExportKeyBytes().Length);
        Assert.Matches("^[0-9a-f]{32}$", a.KeyId);
        using var again = DataKey.FromBytes(a.ExportKeyBytes());
        Assert.Equal(a.KeyId, again.KeyId);

        var expected = SHA256.HashData([.. "MriSeg.Sealing.v1 key id\0"u8.ToArray(), .. a.ExportKeyBytes()])[..16];
        Assert.Equal(Convert.ToHexStringLower(expected), a.KeyId);

        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => DataKey.FromBytes(new byte[16])).Error);
    }

    [Fact]
    public void Key_files_round_trip_with_mode_0600_and_are_checked()
    {
        using var key = DataKey.Generate();
        var path = _folder.File("data.key.json");
        key.Save(path);
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        }

        using var loaded = DataKey.Load(path);
        Assert.Equal(key.KeyId, loaded.KeyId);
        Assert.Equal(key.ExportKeyBytes(), loaded.ExportKeyBytes());
        Assert.Equal(SealingError.DestinationExists, Assert.Throws<SealedPackageException>(() => key.Save(path)).Error);

        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        Assert.Equal("mriseg-data-key", (string?)json["type"]);
        Assert.Equal(1, (int?)json["version"]);
        Assert.Equal("A256GCM", (string?)json["alg"]);
        Assert.Equal(key.KeyId, (string?)json["kid"]);

        using var other = DataKey.Generate();
        json["kid"] = other.KeyId;
        var e = Assert.Throws<SealedPackageException>(() => DataKey.FromKeyFileJson(json.ToJsonString()));
        Assert.Equal(SealingError.InvalidKey, e.Error);
        Assert.Contains("does not match the key", e.Message, StringComparison.Ordinal);

        foreach (var bad in new[] { "", "[]", "{\"type\":\"mriseg-data-key\",\"version\":2}", "{\"type\":\"other\"}", "not json" })
        {
            Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => DataKey.FromKeyFileJson(bad)).Error);
        }
    }

    [Fact]
    public void Signing_keys_export_and_import_pem_with_stable_thumbprints()
    {
        using var key = SigningKey.Generate();
        var pem = key.ExportPkcs8Pem();
        Assert.StartsWith("-----BEGIN PRIVATE KEY-----", pem, StringComparison.Ordinal);
        using var imported = SigningKey.FromPkcs8Pem(pem);
        Assert.Equal(key.Thumbprint, imported.Thumbprint);

        var publicPem = key.PublicKey.ExportPem();
        Assert.StartsWith("-----BEGIN PUBLIC KEY-----", publicPem, StringComparison.Ordinal);
        using var publicKey = SignerPublicKey.FromPem(publicPem);
        Assert.Equal(key.Thumbprint, publicKey.Thumbprint);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(key.PublicKey.ExportSubjectPublicKeyInfo())), key.Thumbprint);

        var data = "message"u8.ToArray();
        Assert.True(publicKey.VerifyData(data, imported.SignData(data)));

        var path = _folder.File("owner.key.pem");
        key.Save(path);
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        }

        Assert.Equal(key.Thumbprint, SigningKey.Load(path).Thumbprint);
        key.PublicKey.Save(_folder.File("owner.pub.pem"));
        Assert.Equal(key.Thumbprint, SignerPublicKey.Load(_folder.File("owner.pub.pem")).Thumbprint);
    }

    [Fact]
    public void Signing_keys_must_be_p256_and_of_the_right_kind()
    {
        using var p384 = ECDsa.Create(ECCurve.NamedCurves.nistP384);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => SigningKey.FromPkcs8Pem(p384.ExportPkcs8PrivateKeyPem())).Error);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => SignerPublicKey.FromPem(p384.ExportSubjectPublicKeyInfoPem())).Error);

        using var key = SigningKey.Generate();
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => SigningKey.FromPkcs8Pem(key.PublicKey.ExportPem())).Error);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => SignerPublicKey.FromPem(key.ExportPkcs8Pem())).Error);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => SignerPublicKey.FromPem(rsa.A.PublicKey.ExportPem())).Error);
    }

    [Fact]
    public void Signatures_are_low_s_and_high_s_twins_are_refused()
    {
        using var key = SigningKey.Generate();
        using var raw = ECDsa.Create();
        raw.ImportSubjectPublicKeyInfo(key.PublicKey.ExportSubjectPublicKeyInfo(), out _);
        var order = new BigInteger(Convert.FromHexString("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551"), isUnsigned: true, isBigEndian: true);
        for (var i = 0; i < 40; i++)
        {
            var data = BitConverter.GetBytes(i);
            var signature = key.SignData(data);
            var s = new BigInteger(signature.AsSpan(32), isUnsigned: true, isBigEndian: true);
            Assert.True(s <= order / 2);

            var twin = (byte[])signature.Clone();
            var high = (order - s).ToByteArray(isUnsigned: true, isBigEndian: true);
            Array.Clear(twin, 32, 32);
            high.CopyTo(twin, 64 - high.Length);
            Assert.True(raw.VerifyData(data, twin, HashAlgorithmName.SHA256, DSASignatureFormat.IeeeP1363FixedFieldConcatenation));
            Assert.False(key.PublicKey.VerifyData(data, twin));
            Assert.True(key.PublicKey.VerifyData(data, signature));
        }
    }

    [Fact]
    public void Rsa_oaep_256_wraps_and_unwraps()
    {
        using var key = DataKey.Generate();
        var wrapped = KeyWrap.Wrap(key, rsa.A.PublicKey);
        Assert.Equal(KeyWrapAlgorithm.RsaOaep256, wrapped.Algorithm);
        Assert.Equal(key.KeyId, wrapped.KeyId);
        Assert.Equal(rsa.A.PublicKey.Thumbprint, wrapped.RecipientThumbprint);
        using var unwrapped = KeyWrap.Unwrap(WrappedKey.FromJson(wrapped.ToJson()), rsa.A);
        Assert.Equal(key.ExportKeyBytes(), unwrapped.ExportKeyBytes());
        Assert.Contains("\"alg\": \"RSA-OAEP-256\"", wrapped.ToJson(), StringComparison.Ordinal);

        // Randomised: wrapping twice gives different documents.
        Assert.NotEqual(wrapped.ToJson(), KeyWrap.Wrap(key, rsa.A.PublicKey).ToJson());
    }

    [Fact]
    public void Ecdh_es_a256gcm_wraps_and_unwraps()
    {
        using var key = DataKey.Generate();
        using var recipient = RecipientPrivateKey.GenerateEcP256();
        var wrapped = KeyWrap.Wrap(key, recipient.PublicKey);
        Assert.Equal(KeyWrapAlgorithm.EcdhEsA256Gcm, wrapped.Algorithm);
        var json = wrapped.ToJson();
        Assert.Contains("\"alg\": \"ECDH-ES+A256GCM\"", json, StringComparison.Ordinal);
        using var unwrapped = KeyWrap.Unwrap(WrappedKey.FromJson(json), recipient);
        Assert.Equal(key.ExportKeyBytes(), unwrapped.ExportKeyBytes());
        Assert.NotEqual(json, KeyWrap.Wrap(key, recipient.PublicKey).ToJson());

        // Through PEM, as a key broker and a clean room would exchange them.
        using var imported = RecipientPrivateKey.FromPkcs8Pem(recipient.ExportPkcs8Pem());
        var viaPem = KeyWrap.Wrap(key, RecipientPublicKey.FromPem(recipient.PublicKey.ExportPem()));
        using var again = KeyWrap.Unwrap(viaPem, imported);
        Assert.Equal(key.KeyId, again.KeyId);
    }

    [Fact]
    public void The_wrong_private_key_is_refused_clearly()
    {
        using var key = DataKey.Generate();
        using var ecA = RecipientPrivateKey.GenerateEcP256();
        using var ecB = RecipientPrivateKey.GenerateEcP256();

        foreach (var (right, wrong) in new[] { (rsa.A, rsa.B), (ecA, ecB) })
        {
            var wrapped = KeyWrap.Wrap(key, right.PublicKey);
            var e = Assert.Throws<SealedPackageException>(() => KeyWrap.Unwrap(wrapped, wrong));
            Assert.Equal(SealingError.WrongRecipientKey, e.Error);
            Assert.StartsWith("wrong private key: the key is wrapped for recipient ", e.Message, StringComparison.Ordinal);

            // Even with the recipient field rewritten to match, the cryptography refuses.
            var json = JsonNode.Parse(wrapped.ToJson())!.AsObject();
            json["recipient"] = wrong.PublicKey.Thumbprint;
            e = Assert.Throws<SealedPackageException>(() => KeyWrap.Unwrap(WrappedKey.FromJson(json.ToJsonString()), wrong));
            Assert.Equal(SealingError.KeyUnwrapFailed, e.Error);
            Assert.StartsWith("key unwrap failed: ", e.Message, StringComparison.Ordinal);
        }

        var rsaWrapped = KeyWrap.Wrap(key, rsa.A.PublicKey);
        Assert.Equal(SealingError.WrongRecipientKey, Assert.Throws<SealedPackageException>(() => KeyWrap.Unwrap(rsaWrapped, ecA)).Error);
    }

    [Fact]
    public void Altered_wrapped_keys_are_refused()
    {
        using var key = DataKey.Generate();
        using var other = DataKey.Generate();
        using var ec = RecipientPrivateKey.GenerateEcP256();
        foreach (var recipient in new[] { rsa.A, ec })
        {
            var json = JsonNode.Parse(KeyWrap.Wrap(key, recipient.PublicKey).ToJson())!.AsObject();
            var ek = Convert.FromBase64String((string)json["ek"]!);
            ek[5] ^= 1;
            var flipped = json.DeepClone().AsObject();
            flipped["ek"] = Convert.ToBase64String(ek);
            Assert.Equal(SealingError.KeyUnwrapFailed, Assert.Throws<SealedPackageException>(() => KeyWrap.Unwrap(WrappedKey.FromJson(flipped.ToJsonString()), recipient)).Error);

            var relabelled = json.DeepClone().AsObject();
            relabelled["kid"] = other.KeyId;
            Assert.Equal(SealingError.KeyUnwrapFailed, Assert.Throws<SealedPackageException>(() => KeyWrap.Unwrap(WrappedKey.FromJson(relabelled.ToJsonString()), recipient)).Error);
        }

        foreach (var bad in new[] { "{}", "{\"type\":\"mriseg-wrapped-key\",\"version\":1,\"alg\":\"A128KW\"}", "nope" })
        {
            Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => WrappedKey.FromJson(bad)).Error);
        }
    }

    [Fact]
    public void Recipient_keys_are_checked()
    {
        Assert.Equal(SealingError.InvalidArgument, Assert.Throws<SealedPackageException>(() => RecipientPrivateKey.GenerateRsa(1024)).Error);
        using var small = RSA.Create(1024);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => RecipientPublicKey.FromPem(small.ExportSubjectPublicKeyInfoPem())).Error);
        using var p384 = ECDiffieHellman.Create(ECCurve.NamedCurves.nistP384);
        Assert.Equal(SealingError.InvalidKey, Assert.Throws<SealedPackageException>(() => RecipientPublicKey.FromPem(p384.ExportSubjectPublicKeyInfoPem())).Error);

        using var imported = RecipientPrivateKey.FromPkcs8Pem(rsa.A.ExportPkcs8Pem());
        Assert.Equal(KeyWrapAlgorithm.RsaOaep256, imported.Algorithm);
        Assert.Equal(rsa.A.PublicKey.Thumbprint, imported.PublicKey.Thumbprint);
    }
}
