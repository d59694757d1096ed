using System.Security.Cryptography;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace MriSeg.Sealing;

/// <summary>
/// A 256-bit data key. Its key id is derived from the key (the first 16 bytes of
/// SHA-256("MriSeg.Sealing.v1 key id\0" ‖ key)), so a package's header tells whether a given key is its key.
/// Dispose to zero the key bytes.
/// </summary>
public sealed class DataKey : IDisposable
{
    /// <summary>Key length in bytes.</summary>
    public const int SizeInBytes = 32;

    /// <summary>The <c>type</c> member of a key file.</summary>
    public const string KeyFileType = "mriseg-data-key";

    private static ReadOnlySpan<byte> KeyIdContext => "MriSeg.Sealing.v1 key id\0"u8;

    private readonly byte[] _key;
    private bool _disposed;

    private DataKey(byte[] key)
    {
        _key = key;
        KeyIdBytes = DeriveKeyId(key);
        KeyId = Hex.Lower(KeyIdBytes);
    }

    /// <summary>The key id, 32 lowercase hex digits.</summary>
    public string KeyId { get; }

    internal byte[] KeyIdBytes { get; }

    internal ReadOnlySpan<byte> Key
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _key;
        }
    }

    /// <summary>A fresh key from <see cref="RandomNumberGenerator"/>.</summary>
    public static DataKey Generate() => new(RandomNumberGenerator.GetBytes(SizeInBytes));

    /// <summary>A key from its 32 bytes (copied).</summary>
    public static DataKey FromBytes(ReadOnlySpan<byte> key)
    {
        if (key.Length != SizeInBytes)
        {
            throw new SealedPackageException(SealingError.InvalidKey, $"a data key is {SizeInBytes} bytes, not {key.Length}");
        }

        return new DataKey(key.ToArray());
    }

    /// <summary>A copy of the key bytes (the caller should zero it after use).</summary>
    public byte[] ExportKeyBytes() => Key.ToArray();

    /// <summary>
    /// The key file document: <c>{"type":"mriseg-data-key","version":1,"alg":"A256GCM","kid":"&lt;hex&gt;","key":"&lt;base64&gt;"}</c>.
    /// </summary>
    public string ToKeyFileJson()
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            writer.WriteString("type", KeyFileType);
            writer.WriteNumber("version", 1);
            writer.WriteString("alg", "A256GCM");
            writer.WriteString("kid", KeyId);
            writer.WriteString("key", Convert.ToBase64String(Key));
            writer.WriteEndObject();
        }

        var json = Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
        CryptographicOperations.ZeroMemory(buffer.GetBuffer());
        return json + "\n";
    }

    /// <summary>Reads a key file document; the kid must match the key.</summary>
    public static DataKey FromKeyFileJson(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        try
        {
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw BadFile("not a JSON object");
            }

            if (Str(root, "type") != KeyFileType)
            {
                throw BadFile($"type is not \"{KeyFileType}\"");
            }

            if (!root.TryGetProperty("version", out var version) || version.ValueKind != JsonValueKind.Number || !version.TryGetInt32(out var v) || v != 1)
            {
                throw BadFile("version is not 1");
            }

            if (Str(root, "alg") != "A256GCM")
            {
                throw BadFile("alg is not \"A256GCM\"");
            }

            var kid = Str(root, "kid") ?? throw BadFile("kid missing");
            var keyText = Str(root, "key") ?? throw BadFile("key missing");
            byte[] key;
            try
            {
                key = Convert.FromBase64String(keyText);
            }
            catch (FormatException)
            {
                throw BadFile("key is not base64");
            }

            if (key.Length != SizeInBytes)
            {
                CryptographicOperations.ZeroMemory(key);
                throw BadFile($"key is {key.Length} bytes, not {SizeInBytes}");
            }

            var result = new DataKey(key);
            if (!string.Equals(result.KeyId, kid, StringComparison.Ordinal))
            {
                result.Dispose();
                throw BadFile($"kid {Hex.Short(kid)}… does not match the key (its id is {Hex.Short(result.KeyId)}…)");
            }

            return result;
        }
        catch (JsonException e)
        {
            throw new SealedPackageException(SealingError.InvalidKey, "key file: not valid JSON", innerException: e);
        }
    }

    /// <summary>Writes the key file with mode 0600 (owner read/write only) where the OS has modes.</summary>
    public void Save(string path, bool overwrite = false) => SecureFile.WriteAllText(path, ToKeyFileJson(), overwrite);

    /// <summary>Reads a key file.</summary>
    public static DataKey Load(string path) => FromKeyFileJson(File.ReadAllText(path));

    /// <summary>Zeroes the key bytes.</summary>
    public void Dispose()
    {
        if (!_disposed)
        {
            CryptographicOperations.ZeroMemory(_key);
            _disposed = true;
        }
    }

    internal static byte[] DeriveKeyId(ReadOnlySpan<byte> key)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(KeyIdContext);
        hash.AppendData(key);
        return hash.GetHashAndReset()[..PackageFormat.KeyIdLength];
    }

    private static string? Str(JsonElement root, string name) =>
        root.TryGetProperty(name, out var e) && e.ValueKind == JsonValueKind.String ? e.GetString() : null;

    private static SealedPackageException BadFile(string reason) => new(SealingError.InvalidKey, "key file: " + reason);
}
