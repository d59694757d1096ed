using MriSeg.KeyRelease.Parties;

namespace MriSeg.KeyRelease;

/// <summary>The KeyBroker engine's settings (the service reads them from configuration section <c>KeyBroker</c>).</summary>
public sealed class KeyBrokerOptions
{
    /// <summary>The audience of party tokens and of attestation tokens that carry one (default "mriseg-keybroker").</summary>
    public string Audience { get; init; } = PartyTokens.DefaultAudience;

    /// <summary>Clock skew tolerated on exp, nbf and iat of every token (default 60 s).</summary>
    public TimeSpan ClockSkew { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Longest accepted lifetime of a party token (default 10 min).</summary>
    public TimeSpan MaxPartyTokenLifetime { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>How long an attestation nonce is accepted (default 5 min).</summary>
    public TimeSpan NonceLifetime { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>How first registrations are allowed (default: the admin token is required).</summary>
    public RegistrationMode Registration { get; init; } = RegistrationMode.AdminToken;

    /// <summary>The operator's admin token (first registrations in <see cref="RegistrationMode.AdminToken"/> mode; key recovery). Never logged.</summary>
    public string? AdminToken { get; init; }
}
