using System.Globalization;
using System.Text.RegularExpressions;

namespace MriSeg.KeyRelease;

/// <summary>Identifier rules and safe rendering of request text in one-line messages.</summary>
public static partial class Ids
{
    /// <summary>The rule for party ids (the same as the Packaging service's owner ids, lower case).</summary>
    public const string PartyIdRule = "3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit";

    /// <summary>The rule for run, contract and dataset ids.</summary>
    public const string NameRule = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit";

    /// <summary>Whether <paramref name="id"/> is a valid party id.</summary>
    public static bool IsPartyId(string? id) => id is not null && PartyId().IsMatch(id);

    /// <summary>Whether <paramref name="name"/> is a valid run, contract or dataset id.</summary>
    public static bool IsName(string? name) => name is not null && Name().IsMatch(name);

    /// <summary>Whether <paramref name="keyId"/> is a data key id: 32 lower-case hex digits (MriSeg.Sealing's key id).</summary>
    public static bool IsKeyId(string? keyId) => keyId is { Length: 32 } && LowerHex().IsMatch(keyId);

    /// <summary>The lower-case form of a SHA-256 hex digest, or null when <paramref name="hex"/> is not 64 hex digits.</summary>
    public static string? Sha256Hex(string? hex) =>
        hex is { Length: 64 } && AnyHex().IsMatch(hex) ? hex.ToLowerInvariant() : null;

    /// <summary>Request text safe for a one-line message: control characters as '?', at most 80 characters.</summary>
    public static string Printable(string? text)
    {
        if (text is null)
        {
            return "";
        }

        var clean = new string(text.Take(80).Select(c => char.IsControl(c) ? '?' : c).ToArray());
        return text.Length > 80 ? clean + "…" : clean;
    }

    /// <summary>A number for messages: four decimals, or four significant digits below 0.01 (δ = 1e-05 must not read as 0).</summary>
    public static string Num(double value) => value != 0 && Math.Abs(value) < 0.01
        ? value.ToString("0.###E+0", CultureInfo.InvariantCulture)
        : value.ToString("0.####", CultureInfo.InvariantCulture);

    [GeneratedRegex("^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex PartyId();

    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex Name();

    [GeneratedRegex("^[0-9a-f]+\\z", RegexOptions.CultureInvariant)]
    private static partial Regex LowerHex();

    [GeneratedRegex("^[0-9a-fA-F]+\\z", RegexOptions.CultureInvariant)]
    private static partial Regex AnyHex();
}
