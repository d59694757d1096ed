using System.Text.Json;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Contracts;
using MriSeg.KeyRelease.Policy;
using MriSeg.Testing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Tests;

/// <summary>The contract file format of <c>mriseg keys import --contract</c>, the documented example files, and the audit reader's own check.</summary>
public sealed class ContractJsonTests
{
    private static string Example(string name) => File.ReadAllText(Path.Combine(RepositoryLayout.Root, "docs", "examples", "keybroker", name));

    [Fact]
    public void The_example_contract_reads_into_valid_terms()
    {
        var contract = ContractJson.Parse(Example("contract.json"));

        var terms = ContractTerms.FromRequest(contract, "hospital-a", dataset: true, new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));
        Assert.Equal("brats-hospital-a-2027", terms.ContractId);
        Assert.Equal(["consumer-x"], terms.AllowedConsumers);
        Assert.Equal(new DateTimeOffset(2027, 12, 31, 23, 59, 59, TimeSpan.Zero), terms.Expires);
        Assert.Equal((4.0, 8.0, 1e-5), (terms.MaxEpsilonPerRun, terms.MaxEpsilonTotal, terms.Delta));
        Assert.Single(terms.AllowedPipelineSha256);
        Assert.Equal((true, 50, 0), (terms.Limits!.RequirePatientLevelPrivacy, terms.Limits.MaxEpochs, terms.Limits.MaxSlicesPerPatient));
        Assert.Equal(["unet2d"], terms.Limits.AllowedArchitectures);

        // Another owner's contract file is refused by the broker's rule.
        var e = Assert.Throws<KeyBrokerException>(() => ContractTerms.FromRequest(contract, "hospital-b", dataset: true, DateTimeOffset.UnixEpoch));
        Assert.Equal(KeyBrokerError.PermissionDenied, e.Error);
    }

    [Theory]
    [InlineData("release-policy.development.json", "http://localhost:5132/dev-attestation")]
    [InlineData("release-policy.maa.json", "https://sharedeus.eus.attest.azure.net")]
    public void The_example_policies_parse(string file, string authority)
    {
        var policy = ReleasePolicy.Parse(Example(file));
        Assert.Equal([authority], policy.AuthorityNames);
    }

    [Fact]
    public void The_example_development_policy_accepts_its_measurement_and_no_other()
    {
        var policy = ReleasePolicy.Parse(Example("release-policy.development.json"));
        var measurement = JsonDocument.Parse(Example("release-policy.development.json")).RootElement
            .GetProperty("anyOf")[0].GetProperty("allOf")[2].GetProperty("equals").GetString()!;
        JsonElement Claims(string m) => JsonDocument.Parse($$"""
            { "x-ms-attestation-type": "mriseg-development", "x-ms-compliance-status": "mriseg-development-not-hardware-backed", "x-mriseg-measurement": "{{m}}" }
            """).RootElement.Clone();

        Assert.True(policy.Evaluate("http://localhost:5132/dev-attestation", Claims(measurement)).Allowed);
        Assert.False(policy.Evaluate("http://localhost:5132/dev-attestation", Claims(new string('0', 64))).Allowed);
    }

    [Fact]
    public void Camel_case_names_are_read_too_and_the_snake_case_format_round_trips()
    {
        var camel = ContractJson.Parse("""{ "contractId": "c-1", "allowedConsumers": ["consumer-x"], "maxEpsilonPerRun": 2, "expires": "2030-01-01T00:00:00Z" }""");
        Assert.Equal(("c-1", 2.0), (camel.ContractId, camel.MaxEpsilonPerRun));

        var formatted = ContractJson.Format(camel);
        Assert.Contains("\"contract_id\": \"c-1\"", formatted);
        Assert.Equal(camel, ContractJson.Parse(formatted));
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("[1, 2]", "not a contract")]
    [InlineData("""{ "contract_id": "c", "epsilon": 3 }""", "epsilon")]
    [InlineData("""{ "contract_id": "c", "expires": "next year" }""", "not a contract")]
    [InlineData("""{ "contract_id": "c", "max_epsilon_total": "eight" }""", "not a contract")]
    public void Malformed_contract_files_are_refused_with_one_line(string json, string expected)
    {
        var e = Assert.Throws<FormatException>(() => ContractJson.Parse(json));
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void The_audit_reader_recomputes_the_chain_and_finds_an_altered_record()
    {
        var first = new Audit.AuditEntry(1, DateTimeOffset.FromUnixTimeMilliseconds(1_700_000_000_123), "hospital-a", Parties.PartyRole.DataProvider,
            "import", new string('a', 32), true, "imported", Audit.AuditChain.GenesisHash, "");
        first = first with { Hash = Audit.AuditChain.ComputeHash(first) };
        var second = new Audit.AuditEntry(2, first.At.AddSeconds(1), "cleanroom-a", Parties.PartyRole.CleanRoom, "deny", first.KeyId, false, "expired",
            first.Hash, "");
        second = second with { Hash = Audit.AuditChain.ComputeHash(second) };
        V1.AuditRecord ToRecord(Audit.AuditEntry e) => new()
        {
            Sequence = e.Sequence,
            At = Google.Protobuf.WellKnownTypes.Timestamp.FromDateTimeOffset(e.At),
            Actor = e.Actor,
            ActorRole = (V1.Party)(int)e.ActorRole!.Value,
            Action = e.Action,
            KeyId = e.KeyId,
            Allowed = e.Allowed,
            Reason = e.Reason,
            PreviousHash = e.PreviousHash,
            Hash = e.Hash,
        };

        var records = new List<V1.AuditRecord> { ToRecord(first), ToRecord(second) };
        Assert.True(AuditReading.VerifyHere(records).Intact);

        records[1].Reason = "granted";
        var altered = AuditReading.VerifyHere(records);
        Assert.False(altered.Intact);
        Assert.Equal(2, altered.BrokenAt);
        Assert.False(new AuditReading(records, null, altered).Intact);
        Assert.Contains("record 2", new AuditReading(records, null, altered).Problem);
    }
}
