using Grpc.Core;
using Grpc.Core.Interceptors;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Client;

/// <summary>Client calls that carry a fresh party token each ("authorization: Bearer …"; tokens are single-use).</summary>
public static class PartyCredentials
{
    /// <summary>A call invoker over <paramref name="channel"/> whose every call is signed by <paramref name="key"/> as <paramref name="partyId"/> for <paramref name="audience"/>.</summary>
    public static CallInvoker WithPartyTokens(this ChannelBase channel, SigningKey key, string partyId, string audience)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentNullException.ThrowIfNull(key);
        return channel.CreateCallInvoker().Intercept(headers =>
        {
            headers.Add(PartyTokens.AuthorizationHeader, PartyTokens.Bearer(PartyTokens.Mint(key, partyId, audience)));
            return headers;
        });
    }
}
