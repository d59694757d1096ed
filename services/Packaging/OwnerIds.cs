using System.Text.RegularExpressions;

namespace MriSeg.Packaging;

/// <summary>
/// Owner ids and blob names. An owner id is 3 to 63 letters, digits and single hyphens, starting and ending with
/// a letter or digit: lower-cased (its canonical form, used everywhere: manifest, key file, registry) it is a
/// valid Azure blob container name, the owner's container, and a safe file and table-key name.
/// </summary>
public static partial class OwnerIds
{
    public const string Rule = "3 to 63 letters, digits and single hyphens, starting and ending with a letter or digit";

    /// <summary>The canonical (lower-case) owner id, or null with the reason in <paramref name="error"/>.</summary>
    public static string? Canonicalize(string? owner, out string error)
    {
        error = "";
        if (string.IsNullOrEmpty(owner))
        {
            error = "owner is required";
            return null;
        }

        if (!ContainerName().IsMatch(owner))
        {
            error = $"owner '{Printable(owner)}' is not a valid owner id: use {Rule} (it names the owner's blob container)";
            return null;
        }

        return owner.ToLowerInvariant();
    }

    /// <summary>Whether <paramref name="name"/> is a valid Azure blob container name (3 to 63 lower-case letters, digits, single hyphens).</summary>
    public static bool IsContainerName(string name) => ContainerName().IsMatch(name) && name == name.ToLowerInvariant();

    /// <summary>Reason a blob name is unusable, or null (1 to 1024 characters, no control characters, no trailing '.' or '/').</summary>
    public static string? BlobNameProblem(string name)
    {
        if (name.Length is 0 or > 1024)
        {
            return "must be 1 to 1024 characters";
        }

        if (name.Any(char.IsControl))
        {
            return "must not hold control characters";
        }

        return name.EndsWith('.') || name.EndsWith('/') || name.EndsWith('\\') ? "must not end with '.', '/' or '\\'" : null;
    }

    /// <summary>Text from a request, safe to put in a one-line message (control characters shown as '?', at most 80 characters).</summary>
    public static string Printable(string text)
    {
        var clean = new string(text.Take(80).Select(c => char.IsControl(c) ? '?' : c).ToArray());
        return text.Length > 80 ? clean + "…" : clean;
    }

    [GeneratedRegex("^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){2,62}\\z", RegexOptions.CultureInvariant)]
    private static partial Regex ContainerName();
}
