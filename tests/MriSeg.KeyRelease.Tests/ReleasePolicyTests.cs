using System.Text.Json;
using MriSeg.KeyRelease.Policy;

namespace MriSeg.KeyRelease.Tests;

public sealed class ReleasePolicyTests
{
    private const string Maa = "https://sharedeus.eus.attest.azure.net";

    private static readonly JsonElement Claims = JsonDocument.Parse("""
        {
          "iss": "https://sharedeus.eus.attest.azure.net",
          "x-ms-attestation-type": "sevsnpvm",
          "x-ms-compliance-status": "azure-compliant-uvm",
          "x-ms-sevsnpvm-guestsvn": 3,
          "x-ms-sevsnpvm-is-debuggable": false,
          "x-ms-isolation-tee": { "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-vmpl": 0 },
          "x-ms-runtime": { "keys": [ { "kid": "TpmEphemeralEncryptionKey", "kty": "RSA" } ], "client-payload": { "nonce": "abc" } },
          "dotted.name": "top"
        }
        """).RootElement.Clone();

    private static string Policy(string conditions, string group = "allOf", string authority = Maa + "/") => $$"""
        { "version": "1.0.0", "anyOf": [ { "authority": "{{authority}}", "{{group}}": [ {{conditions}} ] } ] }
        """;

    private static PolicyDecision Evaluate(string policyJson, string issuer = Maa) => ReleasePolicy.Parse(policyJson).Evaluate(issuer, Claims);

    [Theory]
    [InlineData("""{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}""", true)]
    [InlineData("""{"claim":"x-ms-attestation-type","equals":"sgx"}""", false)]
    [InlineData("""{"claim":"x-ms-attestation-type","equals":"SEVSNPVM"}""", false)] // case-sensitive
    [InlineData("""{"claim":"x-ms-sevsnpvm-is-debuggable","equals":false}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"}""", false)] // types must match
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","equals":3}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","equals":3.0}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","equals":"3"}""", false)]
    [InlineData("""{"claim":"x-ms-compliance-status","notEquals":"mriseg-development-not-hardware-backed"}""", true)]
    [InlineData("""{"claim":"x-ms-compliance-status","notEquals":"azure-compliant-uvm"}""", false)]
    [InlineData("""{"claim":"no-such-claim","notEquals":"x"}""", false)] // absent never satisfies notEquals
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","less":4}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","less":3}""", false)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","lessOrEquals":3}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","lessOrEquals":2.5}""", false)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","greater":2}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","greater":3}""", false)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","greaterOrEquals":3}""", true)]
    [InlineData("""{"claim":"x-ms-sevsnpvm-guestsvn","greaterOrEquals":4}""", false)]
    [InlineData("""{"claim":"x-ms-attestation-type","greater":1}""", false)] // a string is not a number
    [InlineData("""{"claim":"x-ms-runtime.keys","exists":true}""", true)]
    [InlineData("""{"claim":"x-ms-runtime.nothing","exists":true}""", false)]
    [InlineData("""{"claim":"x-ms-runtime.nothing","exists":false}""", true)]
    [InlineData("""{"claim":"x-ms-runtime","exists":false}""", false)]
    [InlineData("""{"claim":"x-ms-isolation-tee.x-ms-attestation-type","equals":"sevsnpvm"}""", true)]
    [InlineData("""{"claim":"x-ms-isolation-tee.x-ms-sevsnpvm-vmpl","equals":0}""", true)]
    [InlineData("""{"claim":"x-ms-runtime.keys.0.kid","equals":"TpmEphemeralEncryptionKey"}""", true)]
    [InlineData("""{"claim":"x-ms-runtime.keys.1.kid","exists":true}""", false)]
    [InlineData("""{"claim":"x-ms-runtime.client-payload.nonce","equals":"abc"}""", true)]
    [InlineData("""{"claim":"dotted.name","equals":"top"}""", true)] // a dotted top-level name is found whole
    public void Each_operator_on_plain_and_nested_claims(string condition, bool allowed)
    {
        var decision = Evaluate(Policy(condition));
        Assert.Equal(allowed, decision.Allowed);
        if (!allowed)
        {
            Assert.StartsWith("release policy not satisfied: claim", decision.Reason);
        }
    }

    [Fact]
    public void AllOf_needs_every_condition_and_names_the_first_failing_one()
    {
        var policy = Policy("""
            {"claim":"x-ms-attestation-type","equals":"sevsnpvm"},
            {"claim":"x-ms-compliance-status","equals":"azure-compliant-cvm"},
            {"claim":"x-ms-sevsnpvm-guestsvn","greaterOrEquals":9}
            """);
        var decision = Evaluate(policy);
        Assert.False(decision.Allowed);
        Assert.Contains("claim 'x-ms-compliance-status' is \"azure-compliant-uvm\", the policy requires equals \"azure-compliant-cvm\"", decision.Reason);
        Assert.DoesNotContain("guestsvn", decision.Reason);
    }

    [Fact]
    public void AnyOf_needs_one_condition()
    {
        Assert.True(Evaluate(Policy("""{"claim":"x-ms-attestation-type","equals":"sgx"},{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}""", "anyOf")).Allowed);
        var refused = Evaluate(Policy("""{"claim":"x-ms-attestation-type","equals":"sgx"},{"claim":"x-ms-attestation-type","equals":"tdx"}""", "anyOf"));
        Assert.False(refused.Allowed);
        Assert.Contains("none of:", refused.Reason);
    }

    [Fact]
    public void Groups_nest_inside_groups()
    {
        // allOf [ type == sevsnpvm, anyOf [ svn >= 9, allOf [ compliance == uvm, debuggable == false ] ] ]
        var nested = Policy("""
            {"claim":"x-ms-attestation-type","equals":"sevsnpvm"},
            {"anyOf":[
                {"claim":"x-ms-sevsnpvm-guestsvn","greaterOrEquals":9},
                {"allOf":[ {"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"}, {"claim":"x-ms-sevsnpvm-is-debuggable","equals":false} ]}
            ]}
            """);
        Assert.True(Evaluate(nested).Allowed);
        var inner = Policy("""
            {"anyOf":[
                {"claim":"x-ms-sevsnpvm-guestsvn","greaterOrEquals":9},
                {"allOf":[ {"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"}, {"claim":"x-ms-sevsnpvm-is-debuggable","equals":true} ]}
            ]}
            """);
        var decision = Evaluate(inner);
        Assert.False(decision.Allowed);
        Assert.Contains("x-ms-sevsnpvm-is-debuggable", decision.Reason);
    }

    [Fact]
    public void Only_blocks_of_the_tokens_issuer_count_and_authorities_are_normalised()
    {
        var policy = $$"""
            { "version": "1.0.0", "anyOf": [
                { "authority": "https://other.attest.example", "allOf": [ {"claim":"x-ms-attestation-type","exists":true} ] },
                { "authority": "HTTPS://SHAREDEUS.eus.attest.azure.net:443/", "allOf": [ {"claim":"x-ms-attestation-type","equals":"sevsnpvm"} ] } ] }
            """;
        var parsed = ReleasePolicy.Parse(policy);
        Assert.Equal(["https://other.attest.example", Maa], parsed.AuthorityNames);
        var decision = parsed.Evaluate(Maa, Claims);
        Assert.True(decision.Allowed);
        Assert.Equal(Maa, decision.Authority);

        var foreign = parsed.Evaluate("https://third.example", Claims);
        Assert.False(foreign.Allowed);
        Assert.Contains("names no authority https://third.example", foreign.Reason);
    }

    [Fact]
    public void A_second_block_for_the_same_authority_can_satisfy_it()
    {
        var policy = $$"""
            { "version": "1.0.0", "anyOf": [
                { "authority": "{{Maa}}", "allOf": [ {"claim":"x-ms-attestation-type","equals":"tdx"} ] },
                { "authority": "{{Maa}}", "allOf": [ {"claim":"x-ms-attestation-type","equals":"sevsnpvm"} ] } ] }
            """;
        Assert.True(Evaluate(policy).Allowed);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("not json", "not valid JSON")]
    [InlineData("[]", "policy: an object is required")]
    [InlineData("""{"anyOf":[]}""", "\"version\" is required")]
    [InlineData("""{"version":"0.2","anyOf":[]}""", "version \"0.2\" is not supported")]
    [InlineData("""{"version":1.0,"anyOf":[]}""", "version 1.0 is not supported")]
    [InlineData("""{"version":"1.0.0"}""", "\"anyOf\" (a list of authority blocks) is required")]
    [InlineData("""{"version":"1.0.0","anyOf":[]}""", "anyOf: the list is empty")]
    [InlineData("""{"version":"1.0.0","anyOf":{}}""", "anyOf: a list is required")]
    [InlineData("""{"version":"1.0.0","anyOf":[],"allOf":[]}""", "unknown member \"allOf\"")]
    [InlineData("""{"version":"1.0.0","version":"1.0.0","anyOf":[]}""", "duplicate member \"version\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"allOf":[{"claim":"a","exists":true}]}]}""", "anyOf[0]: \"authority\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"not a url","allOf":[{"claim":"a","exists":true}]}]}""", "anyOf[0].authority: \"not a url\" is not an absolute http(s) URL")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"ftp://x","allOf":[{"claim":"a","exists":true}]}]}""", "not an absolute http(s) URL")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x"}]}""", "anyOf[0]: \"allOf\" or \"anyOf\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","exists":true}],"anyOf":[{"claim":"a","exists":true}]}]}""", "either \"allOf\" or \"anyOf\", not both")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[]}]}""", "anyOf[0].allOf: the list is empty")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a"}]}]}""", "anyOf[0].allOf[0]: an operator is required")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","equals":"b","notEquals":"c"}]}]}""", "one operator per condition")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","equal":"b"}]}]}""", "unknown member \"equal\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"","equals":"b"}]}]}""", "allOf[0].claim: a non-empty string")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a..b","equals":"b"}]}]}""", "empty path segment")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":5,"equals":"b"}]}]}""", "allOf[0].claim: a non-empty string")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","equals":null}]}]}""", "equals: a string, number or boolean is required, found null")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","equals":[1]}]}]}""", "found a list")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","less":"3"}]}]}""", "less: a number is required, found \"3\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","exists":"yes"}]}]}""", "exists: true or false is required")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"equals":"b"}]}]}""", "an operator needs a \"claim\"")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{}]}]}""", "a condition is")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":[{"claim":"a","exists":true,"allOf":[{"claim":"a","exists":true}]}]}]}""", "cannot also hold")]
    [InlineData("""{"version":"1.0.0","anyOf":[{"authority":"https://x","allOf":["a"]}]}""", "anyOf[0].allOf[0]: an object is required, found \"a\"")]
    public void Malformed_policies_fail_with_a_reason_naming_the_place(string json, string expected)
    {
        var e = Assert.Throws<ReleasePolicyException>(() => ReleasePolicy.Parse(json));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Nesting_is_bounded_and_size_is_bounded()
    {
        var condition = """{"claim":"a","exists":true}""";
        for (var i = 0; i < ReleasePolicy.MaxNesting + 1; i++)
        {
            condition = $$"""{"allOf":[{{condition}}]}""";
        }

        var e = Assert.Throws<ReleasePolicyException>(() => ReleasePolicy.Parse(Policy(condition)));
        Assert.Contains("nest deeper than", e.Message);

        var big = Policy(string.Join(",", Enumerable.Repeat("""{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}""", 400)));
        Assert.Contains("larger than", Assert.Throws<ReleasePolicyException>(() => ReleasePolicy.Parse(big)).Message);
    }

    [Fact]
    public void The_document_is_kept_as_given()
    {
        var json = Policy("""{"claim":"x-ms-attestation-type","equals":"sevsnpvm"}""");
        Assert.Equal(json, ReleasePolicy.Parse(json).Json);
    }
}
