using System.Security.Cryptography;
using System.Text;

namespace MriSeg.Imaging.Preprocessing;

/// <summary>
/// The data provider's pseudonymisation secret. A patient's pseudonym is HMAC-SHA256(secret, UTF-8 case id),
/// truncated to its first 16 bytes and written as 32 lower-case hex digits: the same case id gives the same
/// pseudonym under one key, and nobody without the key can compute or invert it.
/// </summary>
public sealed class PseudonymKey
{
    /// <summary>The shortest secret accepted, in bytes (128 bits).</summary>
    public const int MinimumLength = 16;

    /// <summary>The length of a generated secret in bytes (256 bits).</summary>
    public const int GeneratedLength = 32;

    /// <summary>Bytes of the HMAC kept in a pseudonym.</summary>
    public const int PseudonymBytes = 16;

    private readonly byte[] _secret;

    /// <summary>Creates a key from secret bytes (copied).</summary>
    /// <exception cref="ArgumentException">Fewer than <see cref="MinimumLength"/> bytes.</exception>
    public PseudonymKey(ReadOnlySpan<byte> secret)
    {
        if (secret.Length < MinimumLength)
        {
            throw new ArgumentException($"a pseudonym key needs at least {MinimumLength} bytes of secret, got {secret.Length}");
        }

        _secret = secret.ToArray();
    }

    /// <summary>A fresh random key (32 bytes from the system's cryptographic generator).</summary>
    public static PseudonymKey Generate() => new(RandomNumberGenerator.GetBytes(GeneratedLength));

    /// <summary>A key whose secret is the UTF-8 bytes of <paramref name="secret"/> (for a secret held in an environment variable).</summary>
    public static PseudonymKey FromText(string secret)
    {
        ArgumentNullException.ThrowIfNull(secret);
        return new PseudonymKey(Encoding.UTF8.GetBytes(secret.Trim()));
    }

    /// <summary>
    /// Reads a key file: the secret is the file's bytes without trailing white space (so a line of text, such as
    /// the 64 hex digits <see cref="CreateFile"/> writes, and a file of raw random bytes both work).
    /// </summary>
    /// <exception cref="ArgumentException">The file holds fewer than <see cref="MinimumLength"/> bytes.</exception>
    public static PseudonymKey Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var bytes = File.ReadAllBytes(path);
        var end = bytes.Length;
        while (end > 0 && bytes[end - 1] is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')
        {
            end--;
        }

        try
        {
            return new PseudonymKey(bytes.AsSpan(0, end));
        }
        finally
        {
            CryptographicOperations.ZeroMemory(bytes);
        }
    }

    /// <summary>
    /// Generates a key and writes it to a new file (64 hex digits and a newline; owner-only permissions where the
    /// platform has them). An existing file is never replaced.
    /// </summary>
    /// <exception cref="IOException">The file exists.</exception>
    public static PseudonymKey CreateFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var text = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(GeneratedLength));
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }

        using (var file = new FileStream(path, options))
        {
            file.Write(Encoding.ASCII.GetBytes(text + "\n"));
        }

        return FromText(text);
    }

    /// <summary>The pseudonym of a case id: the first 16 bytes of HMAC-SHA256(secret, UTF-8 case id), as 32 lower-case hex digits.</summary>
    public string Pseudonym(string caseId)
    {
        ArgumentNullException.ThrowIfNull(caseId);
        Span<byte> mac = stackalloc byte[HMACSHA256.HashSizeInBytes];
        HMACSHA256.HashData(_secret, Encoding.UTF8.GetBytes(caseId), mac);
        return Convert.ToHexStringLower(mac[..PseudonymBytes]);
    }
}
