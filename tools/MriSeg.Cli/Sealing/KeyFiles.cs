using System.Security.Cryptography;
using MriSeg.Cli.Infrastructure;
using MriSeg.Sealing;

namespace MriSeg.Cli.Sealing;

/// <summary>
/// Reading keys and checking paths for the sealing commands: every failure becomes a one-line
/// <see cref="CliException"/> naming the file and the option it came from.
/// </summary>
internal static class KeyFiles
{
    public static SigningKey LoadSigningKey(string path, string option) =>
        Load(path, option, "signing key", SigningKey.Load);

    public static SignerPublicKey LoadSignerPublicKey(string path, string option) =>
        Load(path, option, "signer public key", SignerPublicKey.Load);

    public static DataKey LoadDataKey(string path, string option) =>
        Load(path, option, "data key", DataKey.Load);

    public static RecipientPrivateKey LoadRecipientKey(string path, string option) =>
        Load(path, option, "recipient private key", RecipientPrivateKey.Load);

    public static WrappedKey LoadWrappedKey(string path, string option) =>
        Load(path, option, "wrapped key", p => WrappedKey.FromJson(File.ReadAllText(p)));

    /// <summary>An input file that must exist.</summary>
    public static string RequireFile(string path, string option)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            throw new CliException($"{option} {path}: is a folder, not a file");
        }

        if (!File.Exists(full))
        {
            throw new CliException($"{option} {path}: no such file");
        }

        return full;
    }

    /// <summary>An output file: its folder must exist, and the file must not unless <paramref name="force"/>.</summary>
    public static string RequireDestination(string path, string option, bool force)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full))
        {
            throw new CliException($"{option} {path}: is a folder");
        }

        if (!Directory.Exists(Path.GetDirectoryName(full)))
        {
            throw new CliException($"{option} {path}: the folder does not exist");
        }

        if (File.Exists(full) && !force)
        {
            throw new CliException($"{option} {path}: exists (--force replaces it)");
        }

        return full;
    }

    /// <summary>Refuses two options naming the same file (e.g. sealing a file onto itself).</summary>
    public static void RequireDistinct(params (string Option, string FullPath)[] paths)
    {
        for (var i = 0; i < paths.Length; i++)
        {
            for (var j = i + 1; j < paths.Length; j++)
            {
                if (string.Equals(paths[i].FullPath, paths[j].FullPath, StringComparison.Ordinal))
                {
                    throw new CliException($"{paths[i].Option} and {paths[j].Option} name the same file: {paths[i].FullPath}");
                }
            }
        }
    }

    /// <summary>A fresh temporary path beside <paramref name="path"/> (hidden, random, ".partial").</summary>
    public static string TemporaryBeside(string path) =>
        Path.Combine(Path.GetDirectoryName(path)!, $".{Path.GetFileName(path)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.partial");

    public static void DeleteQuietly(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static T Load<T>(string path, string option, string what, Func<string, T> load)
    {
        var full = RequireFile(path, option);
        try
        {
            return load(full);
        }
        catch (SealedPackageException e)
        {
            throw new CliException($"{option} {path}: {e.Message}", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{option} {path}: cannot read the {what}: {e.Message}", e);
        }
    }
}
