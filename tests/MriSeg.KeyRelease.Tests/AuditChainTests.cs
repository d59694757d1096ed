using System.Text.Json;
using MriSeg.KeyRelease.Audit;
using MriSeg.KeyRelease.Parties;
using MriSeg.KeyRelease.Storage;

namespace MriSeg.KeyRelease.Tests;

public sealed class AuditChainTests
{
    private const string KeyId = "0123456789abcdef0123456789abcdef";
    private static readonly PartyPrincipal Owner = new("hospital-a", PartyRole.DataProvider, new string('e', 64));
    private static readonly PartyPrincipal CleanRoom = new("cleanroom-a", PartyRole.CleanRoom, new string('f', 64));

    private readonly FakeTime time = new();
    private readonly InMemoryRecordStore store = new();
    private readonly AuditLog log;

    public AuditChainTests() => log = new AuditLog(store, time);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private async Task AppendFiveAsync()
    {
        await log.AppendAsync(KeyId, Owner, "import", true, "imported", Ct);
        time.Advance(TimeSpan.FromSeconds(1));
        await log.AppendAsync(KeyId, CleanRoom, "deny", false, "release policy not satisfied", Ct);
        await log.AppendAsync(KeyId, CleanRoom, "release", true, "released", Ct);
        await log.AppendAsync(KeyId, Owner, "update", true, "version 2", Ct);
        await log.AppendAsync(KeyId, Owner, "revoke", true, "revoked", Ct);
    }

    [Fact]
    public async Task Records_chain_by_hash_and_verify()
    {
        await AppendFiveAsync();
        var (entries, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.True(verification.Intact, verification.Problem);
        Assert.Equal(5, verification.VerifiedCount);
        Assert.Equal([1L, 2, 3, 4, 5], entries.Select(e => e.Sequence));
        Assert.Equal(AuditChain.GenesisHash, entries[0].PreviousHash);
        for (var i = 1; i < entries.Count; i++)
        {
            Assert.Equal(entries[i - 1].Hash, entries[i].PreviousHash);
            Assert.Equal(AuditChain.ComputeHash(entries[i]), entries[i].Hash);
        }

        Assert.False(entries[1].Allowed);
        Assert.Equal("cleanroom-a", entries[1].Actor);
        Assert.Equal(PartyRole.CleanRoom, entries[1].ActorRole);
    }

    [Theory]
    [InlineData("reason")]
    [InlineData("allowed")]
    [InlineData("actor")]
    [InlineData("at")]
    public async Task Tampering_with_a_stored_record_breaks_the_chain_at_that_record(string field)
    {
        await AppendFiveAsync();
        store.Tamper(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(2), data =>
        {
            var record = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(data)!;
            var changed = field switch
            {
                "reason" => JsonSerializer.SerializeToElement("released"),
                "allowed" => JsonSerializer.SerializeToElement(true),
                "actor" => JsonSerializer.SerializeToElement("cleanroom-b"),
                _ => JsonSerializer.SerializeToElement(time.Now.AddDays(-1)),
            };
            record[field] = changed;
            return JsonSerializer.Serialize(record);
        });

        var (_, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.False(verification.Intact);
        Assert.Equal(2, verification.BrokenAt);
        Assert.Equal(1, verification.VerifiedCount);
        Assert.Contains("record 2 was altered", verification.Problem);
    }

    [Fact]
    public async Task Rewriting_a_record_with_a_recomputed_hash_breaks_the_link_of_the_next()
    {
        await AppendFiveAsync();
        store.Tamper(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(3), data =>
        {
            var entry = JsonSerializer.Deserialize<AuditEntry>(data, new JsonSerializerOptions(JsonSerializerDefaults.Web))! with { Reason = "nothing happened" };
            entry = entry with { Hash = AuditChain.ComputeHash(entry) };
            return JsonSerializer.Serialize(entry, new JsonSerializerOptions(JsonSerializerDefaults.Web));
        });
        var (_, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.False(verification.Intact);
        Assert.Equal(4, verification.BrokenAt);
        Assert.Contains("does not link", verification.Problem);
    }

    [Fact]
    public async Task Removing_the_last_records_is_caught_by_the_head()
    {
        await AppendFiveAsync();
        var last = (await store.GetAsync(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(5), Ct))!;
        await store.DeleteAsync(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(5), last.ETag!, Ct);
        var (_, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.False(verification.Intact);
        Assert.Contains("head names record 5", verification.Problem);
        Assert.Equal(4, verification.VerifiedCount);
    }

    [Fact]
    public async Task Removing_a_middle_record_is_caught()
    {
        await AppendFiveAsync();
        var record = (await store.GetAsync(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(3), Ct))!;
        await store.DeleteAsync(KeyBrokerTables.Audit, KeyId, AuditLog.RowOf(3), record.ETag!, Ct);
        var (_, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.False(verification.Intact);
        Assert.Equal(3, verification.BrokenAt);
        Assert.Contains("record 3 is missing", verification.Problem);
    }

    [Fact]
    public async Task Concurrent_appends_serialise_into_one_chain()
    {
        await Task.WhenAll(Enumerable.Range(0, 12).Select(i => Task.Run(() => log.AppendAsync(KeyId, Owner, "update", true, "concurrent " + i, Ct), Ct)));
        var (entries, verification) = await log.ReadAsync(KeyId, Ct);
        Assert.True(verification.Intact, verification.Problem);
        Assert.Equal(12, entries.Count);
    }
}
