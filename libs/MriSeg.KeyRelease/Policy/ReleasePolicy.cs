using System.Globalization;
using System.Text;
using System.Text.Json;

namespace MriSeg.KeyRelease.Policy;

/// <summary>A policy document does not follow the grammar; <see cref="Exception.Message"/> names the place ("anyOf[0].allOf[2]: …").</summary>
public sealed class ReleasePolicyException(string message, Exception? innerException = null) : Exception(message, innerException);

/// <summary>The comparison a claim condition makes.</summary>
public enum ClaimOperator
{
    /// <summary><c>equals</c>: the claim has this value (string, number or boolean; same type).</summary>
    EqualTo,

    /// <summary><c>notEquals</c>: the claim is present and differs from this value.</summary>
    NotEqualTo,

    /// <summary><c>less</c>: the claim is a number below this one.</summary>
    Less,

    /// <summary><c>lessOrEquals</c>.</summary>
    LessOrEquals,

    /// <summary><c>greater</c>.</summary>
    Greater,

    /// <summary><c>greaterOrEquals</c>.</summary>
    GreaterOrEquals,

    /// <summary><c>exists</c>: <c>true</c>, the claim is present; <c>false</c>, it is absent.</summary>
    Exists,
}

/// <summary>The outcome of evaluating a policy against verified claims.</summary>
/// <param name="Allowed">Whether some authority block of the policy is satisfied.</param>
/// <param name="Reason">Why (on refusal: the first failing condition of each block for the token's issuer).</param>
/// <param name="Authority">The authority whose block was satisfied, when allowed.</param>
public sealed record PolicyDecision(bool Allowed, string Reason, string? Authority);

/// <summary>
/// An Azure Key Vault secure-key-release policy, version 1.0.0:
/// <code>
/// { "version": "1.0.0",
///   "anyOf": [ { "authority": "https://…", "allOf" | "anyOf": [ condition, … ] }, … ] }
/// condition = { "claim": "dotted.path", "equals" | "notEquals" | "less" | "lessOrEquals" | "greater" | "greaterOrEquals" | "exists": value }
///           | { "allOf" | "anyOf": [ condition, … ] }
/// </code>
/// A token satisfies the policy when one authority block whose authority is the token's issuer is satisfied.
/// Claims are found by dotted path through nested objects (a segment of digits indexes an array); a claim name that
/// itself holds dots is also found whole at the top level. Parsing is strict: unknown members, duplicate members,
/// missing or extra operators, wrong value types and empty lists are errors naming their place.
/// </summary>
public sealed class ReleasePolicy
{
    /// <summary>The one grammar version understood.</summary>
    public const string SupportedVersion = "1.0.0";

    /// <summary>Largest policy document accepted, in UTF-8 bytes.</summary>
    public const int MaxDocumentBytes = 16 * 1024;

    /// <summary>Deepest nesting of allOf/anyOf below an authority block.</summary>
    public const int MaxNesting = 8;

    private ReleasePolicy(string json, IReadOnlyList<AuthorityRule> rules)
    {
        Json = json;
        Rules = rules;
    }

    /// <summary>The policy document as given.</summary>
    public string Json { get; }

    /// <summary>The authority blocks, in order.</summary>
    public IReadOnlyList<AuthorityRule> Rules { get; }

    /// <summary>The distinct authorities the policy names (normalised: see <see cref="Authorities.Normalize"/>).</summary>
    public IReadOnlyList<string> AuthorityNames => Rules.Select(r => r.Authority).Distinct(StringComparer.Ordinal).ToList();

    /// <summary>Parses and checks a policy document.</summary>
    /// <exception cref="ReleasePolicyException">The document does not follow the grammar.</exception>
    public static ReleasePolicy Parse(string json)
    {
        if (string.IsNullOrWhiteSpace(json))
        {
            throw new ReleasePolicyException("the release policy is empty");
        }

        if (Encoding.UTF8.GetByteCount(json) > MaxDocumentBytes)
        {
            throw new ReleasePolicyException($"the release policy is larger than {MaxDocumentBytes} bytes");
        }

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw new ReleasePolicyException($"the release policy is not valid JSON: {e.Message.ReplaceLineEndings(" ")}", e);
        }

        using (doc)
        {
            var root = doc.RootElement;
            var members = Members(root, "policy", "version", "anyOf");
            if (!members.TryGetValue("version", out var version))
            {
                throw new ReleasePolicyException("policy: \"version\" is required (\"1.0.0\")");
            }

            if (version.ValueKind != JsonValueKind.String || version.GetString() != SupportedVersion)
            {
                throw new ReleasePolicyException($"policy: version {Shown(version)} is not supported (only \"{SupportedVersion}\")");
            }

            if (!members.TryGetValue("anyOf", out var anyOf))
            {
                throw new ReleasePolicyException("policy: \"anyOf\" (a list of authority blocks) is required");
            }

            var blocks = NonEmptyArray(anyOf, "anyOf");
            var rules = new List<AuthorityRule>();
            for (var i = 0; i < blocks.Count; i++)
            {
                rules.Add(ParseAuthority(blocks[i], $"anyOf[{i}]"));
            }

            return new ReleasePolicy(json, rules);
        }
    }

    /// <summary>
    /// Evaluates the policy for a token issued by <paramref name="issuer"/> with these <paramref name="claims"/>
    /// (the token's verified payload). Only blocks naming that issuer count.
    /// </summary>
    public PolicyDecision Evaluate(string issuer, JsonElement claims)
    {
        ArgumentNullException.ThrowIfNull(issuer);
        var normalized = Authorities.Normalize(issuer);
        var failures = new List<string>();
        var any = false;
        foreach (var rule in Rules)
        {
            if (!string.Equals(rule.Authority, normalized, StringComparison.Ordinal))
            {
                continue;
            }

            any = true;
            var failure = rule.Condition.Check(claims);
            if (failure is null)
            {
                return new PolicyDecision(true, $"satisfied by the block for authority {rule.Authority}", rule.Authority);
            }

            failures.Add(failure);
        }

        return any
            ? new PolicyDecision(false, "release policy not satisfied: " + string.Join("; or ", failures), null)
            : new PolicyDecision(false, $"release policy names no authority {Ids.Printable(normalized)}", null);
    }

    private static AuthorityRule ParseAuthority(JsonElement element, string place)
    {
        var members = Members(element, place, "authority", "allOf", "anyOf");
        if (!members.TryGetValue("authority", out var authority) || authority.ValueKind != JsonValueKind.String)
        {
            throw new ReleasePolicyException($"{place}: \"authority\" (the attestation service URL) is required as a string");
        }

        var name = authority.GetString()!;
        if (!Authorities.TryNormalize(name, out var normalized))
        {
            throw new ReleasePolicyException($"{place}.authority: \"{Ids.Printable(name)}\" is not an absolute http(s) URL");
        }

        return new AuthorityRule(normalized, ParseGroup(members, place, depth: 1, requireGroup: true)!);
    }

    private static PolicyCondition? ParseGroup(Dictionary<string, JsonElement> members, string place, int depth, bool requireGroup)
    {
        var hasAll = members.TryGetValue("allOf", out var allOf);
        var hasAny = members.TryGetValue("anyOf", out var anyOf);
        if (hasAll && hasAny)
        {
            throw new ReleasePolicyException($"{place}: give either \"allOf\" or \"anyOf\", not both");
        }

        if (!hasAll && !hasAny)
        {
            return requireGroup ? throw new ReleasePolicyException($"{place}: \"allOf\" or \"anyOf\" (a list of conditions) is required") : null;
        }

        if (depth > MaxNesting)
        {
            throw new ReleasePolicyException($"{place}: conditions nest deeper than {MaxNesting} levels");
        }

        var key = hasAll ? "allOf" : "anyOf";
        var items = NonEmptyArray(hasAll ? allOf : anyOf, $"{place}.{key}");
        var children = new List<PolicyCondition>();
        for (var i = 0; i < items.Count; i++)
        {
            children.Add(ParseCondition(items[i], $"{place}.{key}[{i}]", depth + 1));
        }

        return hasAll ? new AllOfCondition(children) : new AnyOfCondition(children);
    }

    private static PolicyCondition ParseCondition(JsonElement element, string place, int depth)
    {
        var members = Members(element, place, ["claim", "allOf", "anyOf", .. OperatorNames.Keys]);
        if (!members.ContainsKey("claim"))
        {
            if (members.Keys.Any(OperatorNames.ContainsKey))
            {
                throw new ReleasePolicyException($"{place}: an operator needs a \"claim\"");
            }

            return ParseGroup(members, place, depth, requireGroup: false)
                ?? throw new ReleasePolicyException($"{place}: a condition is {{\"claim\": …, <operator>: value}} or {{\"allOf\"|\"anyOf\": […]}}");
        }

        if (members.ContainsKey("allOf") || members.ContainsKey("anyOf"))
        {
            throw new ReleasePolicyException($"{place}: a claim condition cannot also hold \"allOf\" or \"anyOf\"");
        }

        var claim = members["claim"];
        if (claim.ValueKind != JsonValueKind.String || claim.GetString() is not { Length: > 0 } path)
        {
            throw new ReleasePolicyException($"{place}.claim: a non-empty string is required");
        }

        if (path.Split('.').Any(s => s.Length == 0))
        {
            throw new ReleasePolicyException($"{place}.claim: \"{Ids.Printable(path)}\" has an empty path segment");
        }

        var operators = members.Keys.Where(OperatorNames.ContainsKey).ToList();
        if (operators.Count != 1)
        {
            throw new ReleasePolicyException(operators.Count == 0
                ? $"{place}: an operator is required: one of {string.Join(", ", OperatorNames.Keys)}"
                : $"{place}: one operator per condition, found {string.Join(", ", operators)}");
        }

        var op = OperatorNames[operators[0]];
        var value = members[operators[0]];
        var valid = op switch
        {
            ClaimOperator.EqualTo or ClaimOperator.NotEqualTo => value.ValueKind is JsonValueKind.String or JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False,
            ClaimOperator.Exists => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
            _ => value.ValueKind == JsonValueKind.Number && double.IsFinite(value.GetDouble()),
        };
        if (!valid)
        {
            var expected = op switch
            {
                ClaimOperator.EqualTo or ClaimOperator.NotEqualTo => "a string, number or boolean",
                ClaimOperator.Exists => "true or false",
                _ => "a number",
            };
            throw new ReleasePolicyException($"{place}.{operators[0]}: {expected} is required, found {Shown(value)}");
        }

        return new ClaimCondition(path, op, value.Clone());
    }

    internal static readonly IReadOnlyDictionary<string, ClaimOperator> OperatorNames = new Dictionary<string, ClaimOperator>(StringComparer.Ordinal)
    {
        ["equals"] = ClaimOperator.EqualTo,
        ["notEquals"] = ClaimOperator.NotEqualTo,
        ["less"] = ClaimOperator.Less,
        ["lessOrEquals"] = ClaimOperator.LessOrEquals,
        ["greater"] = ClaimOperator.Greater,
        ["greaterOrEquals"] = ClaimOperator.GreaterOrEquals,
        ["exists"] = ClaimOperator.Exists,
    };

    private static Dictionary<string, JsonElement> Members(JsonElement element, string place, params string[] allowed)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ReleasePolicyException($"{place}: an object is required, found {Shown(element)}");
        }

        var members = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var property in element.EnumerateObject())
        {
            if (!allowed.Contains(property.Name, StringComparer.Ordinal))
            {
                throw new ReleasePolicyException($"{place}: unknown member \"{Ids.Printable(property.Name)}\" (expected {string.Join(", ", allowed)})");
            }

            if (!members.TryAdd(property.Name, property.Value))
            {
                throw new ReleasePolicyException($"{place}: duplicate member \"{property.Name}\"");
            }
        }

        return members;
    }

    private static List<JsonElement> NonEmptyArray(JsonElement element, string place)
    {
        if (element.ValueKind != JsonValueKind.Array)
        {
            throw new ReleasePolicyException($"{place}: a list is required, found {Shown(element)}");
        }

        var items = element.EnumerateArray().ToList();
        return items.Count == 0 ? throw new ReleasePolicyException($"{place}: the list is empty") : items;
    }

    internal static string Shown(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => "\"" + Ids.Printable(value.GetString()) + "\"",
        JsonValueKind.Number => value.GetRawText(),
        JsonValueKind.True => "true",
        JsonValueKind.False => "false",
        JsonValueKind.Null => "null",
        JsonValueKind.Array => "a list",
        JsonValueKind.Object => "an object",
        _ => "nothing",
    };
}

/// <summary>One authority block: the attestation authority and the conditions its tokens must satisfy.</summary>
/// <param name="Authority">The authority, normalised.</param>
/// <param name="Condition">The block's allOf/anyOf.</param>
public sealed record AuthorityRule(string Authority, PolicyCondition Condition);

/// <summary>A node of a policy's condition tree.</summary>
public abstract class PolicyCondition
{
    /// <summary>Null when satisfied, else why not (one line).</summary>
    public abstract string? Check(JsonElement claims);
}

/// <summary>Every child must hold.</summary>
public sealed class AllOfCondition(IReadOnlyList<PolicyCondition> children) : PolicyCondition
{
    /// <summary>The conditions.</summary>
    public IReadOnlyList<PolicyCondition> Children { get; } = children;

    /// <inheritdoc />
    public override string? Check(JsonElement claims)
    {
        foreach (var child in Children)
        {
            if (child.Check(claims) is { } failure)
            {
                return failure;
            }
        }

        return null;
    }
}

/// <summary>At least one child must hold.</summary>
public sealed class AnyOfCondition(IReadOnlyList<PolicyCondition> children) : PolicyCondition
{
    /// <summary>The conditions.</summary>
    public IReadOnlyList<PolicyCondition> Children { get; } = children;

    /// <inheritdoc />
    public override string? Check(JsonElement claims)
    {
        var failures = new List<string>();
        foreach (var child in Children)
        {
            if (child.Check(claims) is not { } failure)
            {
                return null;
            }

            failures.Add(failure);
        }

        return "none of: " + string.Join(" | ", failures);
    }
}

/// <summary>A claim compared with a value.</summary>
public sealed class ClaimCondition(string claim, ClaimOperator op, JsonElement value) : PolicyCondition
{
    /// <summary>The claim's dotted path.</summary>
    public string Claim { get; } = claim;

    /// <summary>The comparison.</summary>
    public ClaimOperator Operator { get; } = op;

    /// <summary>The policy's value.</summary>
    public JsonElement Value { get; } = value;

    /// <inheritdoc />
    public override string? Check(JsonElement claims)
    {
        var found = ClaimPath.TryFind(claims, Claim, out var actual);
        var name = ReleasePolicy.OperatorNames.First(p => p.Value == Operator).Key;
        if (Operator == ClaimOperator.Exists)
        {
            var wanted = Value.ValueKind == JsonValueKind.True;
            return found == wanted ? null : $"claim '{Ids.Printable(Claim)}' is {(found ? "present" : "absent")}, the policy requires exists {(wanted ? "true" : "false")}";
        }

        if (!found)
        {
            return $"claim '{Ids.Printable(Claim)}' is absent, the policy requires {name} {ReleasePolicy.Shown(Value)}";
        }

        var ok = Operator switch
        {
            ClaimOperator.EqualTo => SameValue(actual, Value),
            ClaimOperator.NotEqualTo => !SameValue(actual, Value),
            _ => actual.ValueKind == JsonValueKind.Number && Compare(actual.GetDouble(), Value.GetDouble()),
        };
        return ok ? null : $"claim '{Ids.Printable(Claim)}' is {ReleasePolicy.Shown(actual)}, the policy requires {name} {ReleasePolicy.Shown(Value)}";
    }

    private bool Compare(double actual, double wanted) => Operator switch
    {
        ClaimOperator.Less => actual < wanted,
        ClaimOperator.LessOrEquals => actual <= wanted,
        ClaimOperator.Greater => actual > wanted,
        ClaimOperator.GreaterOrEquals => actual >= wanted,
        _ => false,
    };

    private static bool SameValue(JsonElement a, JsonElement b)
    {
        if (a.ValueKind is JsonValueKind.True or JsonValueKind.False)
        {
            return a.ValueKind == b.ValueKind;
        }

        if (a.ValueKind != b.ValueKind)
        {
            return false;
        }

        return a.ValueKind switch
        {
            JsonValueKind.String => string.Equals(a.GetString(), b.GetString(), StringComparison.Ordinal),
            JsonValueKind.Number => a.TryGetDecimal(out var x) && b.TryGetDecimal(out var y) ? x == y : a.GetDouble().Equals(b.GetDouble()),
            _ => false,
        };
    }
}

/// <summary>Dotted claim paths ("x-ms-runtime.keys.0.kid").</summary>
public static class ClaimPath
{
    /// <summary>
    /// Finds <paramref name="path"/> in <paramref name="claims"/>: first a top-level member of that exact name, then
    /// segment by segment through objects (a segment of digits indexes an array).
    /// </summary>
    public static bool TryFind(JsonElement claims, string path, out JsonElement value)
    {
        value = default;
        if (claims.ValueKind != JsonValueKind.Object)
        {
            return false;
        }

        if (claims.TryGetProperty(path, out value))
        {
            return true;
        }

        var current = claims;
        foreach (var segment in path.Split('.'))
        {
            if (current.ValueKind == JsonValueKind.Object && current.TryGetProperty(segment, out var next))
            {
                current = next;
            }
            else if (current.ValueKind == JsonValueKind.Array
                     && int.TryParse(segment, NumberStyles.None, CultureInfo.InvariantCulture, out var index)
                     && index < current.GetArrayLength())
            {
                current = current[index];
            }
            else
            {
                value = default;
                return false;
            }
        }

        value = current;
        return true;
    }
}

/// <summary>Attestation authority (issuer) names.</summary>
public static class Authorities
{
    /// <summary>
    /// The normal form of an authority URL: scheme and host lower-cased, default port dropped, no trailing '/',
    /// no query or fragment. A policy's "https://x.attest.azure.net/" and a token's "https://x.attest.azure.net" match.
    /// </summary>
    public static string Normalize(string authority) => TryNormalize(authority, out var normalized) ? normalized : authority.TrimEnd('/');

    /// <summary>Normalises an absolute http(s) URL; false for anything else.</summary>
    public static bool TryNormalize(string? authority, out string normalized)
    {
        normalized = "";
        if (string.IsNullOrWhiteSpace(authority)
            || !Uri.TryCreate(authority, UriKind.Absolute, out var uri)
            || uri.Scheme is not ("https" or "http")
            || !string.IsNullOrEmpty(uri.Query) || !string.IsNullOrEmpty(uri.Fragment) || !string.IsNullOrEmpty(uri.UserInfo))
        {
            return false;
        }

        var port = uri.IsDefaultPort ? "" : ":" + uri.Port.ToString(CultureInfo.InvariantCulture);
        normalized = $"{uri.Scheme}://{uri.Host.ToLowerInvariant()}{port}{uri.AbsolutePath.TrimEnd('/')}";
        return true;
    }
}
