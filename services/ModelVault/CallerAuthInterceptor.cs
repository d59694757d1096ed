using System.Collections.Concurrent;
using Grpc.Core;
using MriSeg.KeyRelease;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using MriSeg.ServiceDefaults;

namespace MriSeg.ModelVault;

/// <summary>
/// Authenticates every ModelVault call from its "authorization: Bearer &lt;party token&gt;" (audience
/// <see cref="ModelVaultSettings.CallerAudience"/>, verified under the caller's key from <see cref="VaultCallers"/>, single
/// use, short-lived) before the method runs: no, malformed, forged, expired or replayed credentials and parties the vault
/// does not list are UNAUTHENTICATED. The vault acts as the consumer with the consumer's keys, so whoever may call it may
/// use the consumer's models.
/// </summary>
public sealed class CallerAuthInterceptor(PartyTokenValidator validator, ILogger<CallerAuthInterceptor> logger) : CallAuthenticationInterceptor("ModelVault")
{
    protected override async Task AuthenticateAsync(ServerCallContext context)
    {
        try
        {
            var caller = await validator.AuthenticateAsync(context.RequestHeaders.GetValue(PartyTokens.AuthorizationHeader), context.CancellationToken);
            logger.LogDebug("{Method} called by {Caller}", context.Method, caller);
        }
        catch (KeyBrokerException e)
        {
            logger.LogInformation("{Method}: unauthenticated: {Reason}", context.Method, e.Message);
            throw new RpcException(new Status(StatusCode.Unauthenticated, "ModelVault: " + e.Message));
        }
    }
}

/// <summary>
/// The parties the vault accepts calls from: the consumer (the public half of its party key) and the configured
/// <see cref="ModelVaultSettings.Callers"/>. Key files are read when they change, so a key provisioned or rotated later
/// is used without a restart; a caller whose key file is missing or unreadable is refused, with the reason in the log.
/// </summary>
public sealed class VaultCallers(ModelVaultSettings settings, ILogger<VaultCallers> logger) : IPartyDirectory
{
    private readonly ConcurrentDictionary<string, (DateTime Written, RegisteredParty Party)> _cache = new(StringComparer.Ordinal);

    public Task<RegisteredParty?> FindAsync(string partyId, CancellationToken cancellationToken)
    {
        if (partyId == settings.Consumer)
        {
            return Task.FromResult(settings.PartyKeyPath is { } own ? Read(partyId, own, isPrivate: true) : null);
        }

        return Task.FromResult(settings.Callers.FirstOrDefault(c => c.Party == partyId) is { } caller ? Read(partyId, caller.PublicKeyPath, isPrivate: false) : null);
    }

    private RegisteredParty? Read(string partyId, string path, bool isPrivate)
    {
        try
        {
            if (!File.Exists(path))
            {
                logger.LogWarning("Caller {Party}: no key at {Path}", partyId, path);
                return null;
            }

            var written = File.GetLastWriteTimeUtc(path);
            if (_cache.TryGetValue(path, out var cached) && cached.Written == written && cached.Party.PartyId == partyId)
            {
                return cached.Party;
            }

            RegisteredParty party;
            if (isPrivate)
            {
                using var key = SigningKey.Load(path);
                party = PartyRegistry.Create(partyId, PartyRole.DataConsumer, key.PublicKey, DateTimeOffset.UtcNow);
            }
            else
            {
                using var key = SignerPublicKey.Load(path);
                party = PartyRegistry.Create(partyId, PartyRole.DataConsumer, key, DateTimeOffset.UtcNow);
            }

            _cache[path] = (written, party);
            return party;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or SealedPackageException or ArgumentException or System.Security.Cryptography.CryptographicException)
        {
            logger.LogWarning("Caller {Party}: the key at {Path} cannot be read: {Reason}", partyId, path, e.Message);
            return null;
        }
    }
}
