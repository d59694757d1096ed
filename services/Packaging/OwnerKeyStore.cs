using System.Collections.Concurrent;
using MriSeg.Sealing;

namespace MriSeg.Packaging;

/// <summary>Why an owner's signing key cannot be used; becomes FAILED_PRECONDITION.</summary>
public sealed class OwnerKeyException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// The owners' signing keys, one pair per owner in the key folder (<see cref="PackagingSettings.KeysDirectory"/>):
/// <c>&lt;owner&gt;.key</c> (PKCS#8 PEM, mode 0600) and <c>&lt;owner&gt;.pub</c>. The Packaging service runs on the
/// owner's premises, so the key never leaves them. Keys are loaded once and kept; a missing key is generated
/// (and logged) only when <see cref="PackagingSettings.CreateOwnerKeys"/> is on (Development by default).
/// </summary>
public sealed class OwnerKeyStore(PackagingSettings settings, ILogger<OwnerKeyStore> logger) : IDisposable
{
    private readonly ConcurrentDictionary<string, SigningKey> _keys = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _gate = new(1, 1);

    /// <summary>The signing key of <paramref name="owner"/> (a canonical owner id).</summary>
    public async Task<SigningKey> GetAsync(string owner, CancellationToken cancellationToken)
    {
        if (_keys.TryGetValue(owner, out var key))
        {
            return key;
        }

        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_keys.TryGetValue(owner, out key))
            {
                return key;
            }

            key = LoadOrCreate(owner);
            _keys[owner] = key;
            return key;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Whether <paramref name="fullPath"/> lies in the key folder (Seal refuses to read such local paths).</summary>
    public bool IsInKeyFolder(string fullPath)
    {
        if (settings.KeysDirectory is not { } folder)
        {
            return false;
        }

        var root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder)) + Path.DirectorySeparatorChar;
        return fullPath.StartsWith(root, StringComparison.Ordinal);
    }

    private SigningKey LoadOrCreate(string owner)
    {
        var folder = settings.KeysDirectory ?? throw new OwnerKeyException(
            "no key folder: set Packaging:KeysDirectory to the folder of the owners' signing keys (outside Development they are provisioned, e.g. with `mriseg keygen --out <folder>/<owner>`)");
        var privatePath = Path.Combine(folder, owner + ".key");
        if (File.Exists(privatePath))
        {
            try
            {
                return SigningKey.Load(privatePath);
            }
            catch (Exception e) when (e is SealedPackageException or IOException or UnauthorizedAccessException)
            {
                logger.LogError("The signing key file of owner {Owner} at {Path} cannot be used: {Reason}", owner, privatePath, e.Message);
                throw new OwnerKeyException($"the signing key of owner '{owner}' in the key folder cannot be used (the service log says why)", e);
            }
        }

        if (!settings.CreateOwnerKeys)
        {
            logger.LogWarning("No signing key for owner {Owner}: expected {Path}", owner, privatePath);
            throw new OwnerKeyException(
                $"no signing key for owner '{owner}' in the service's key folder: provision {owner}.key there (`mriseg keygen --out <folder>/{owner}`)");
        }

        if (!Directory.Exists(folder))
        {
            if (OperatingSystem.IsWindows())
            {
                Directory.CreateDirectory(folder);
            }
            else
            {
                Directory.CreateDirectory(folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }

        var key = SigningKey.Generate();
        try
        {
            key.Save(privatePath);
            key.PublicKey.Save(Path.Combine(folder, owner + ".pub"), overwrite: true);
        }
        catch (SealedPackageException e) when (e.Error == SealingError.DestinationExists)
        {
            // Another process made it meanwhile: use that one.
            key.Dispose();
            return SigningKey.Load(privatePath);
        }

        logger.LogWarning(
            "Created a signing key for owner {Owner} (thumbprint {Thumbprint}) at {Path}: Packaging:CreateOwnerKeys is on (Development). Provision keys yourself elsewhere.",
            owner, key.Thumbprint, privatePath);
        return key;
    }

    public void Dispose()
    {
        foreach (var key in _keys.Values)
        {
            key.Dispose();
        }

        _gate.Dispose();
    }
}
