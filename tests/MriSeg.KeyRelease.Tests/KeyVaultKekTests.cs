using System.Security.Cryptography;
using System.Text.Json.Nodes;
using MriSeg.KeyRelease.Keys;
using MriSeg.KeyRelease.Storage;
using MriSeg.Sealing;

namespace MriSeg.KeyRelease.Tests;

/// <summary>
/// The Key Vault key-encryption key (<see cref="KeyVaultKeyEncryptionKeySource"/>) against an in-memory vault behind
/// <see cref="Azure.Security.KeyVault.Secrets.SecretClient"/>, and the broker keyring wrapped under it in table storage.
/// </summary>
public sealed class KeyVaultKekTests : IDisposable
{
    private const string Name = KeyEncryptionKeyOptions.DefaultSecretName;

    private readonly FakeTime time = new();
    private readonly InMemoryRecordStore store = new();
    private readonly FakeSecretClient vault = new();
    private readonly List<IDisposable> opened = [];

    public void Dispose()
    {
        foreach (var item in opened)
        {
            item.Dispose();
        }
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static string NewKek() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));

    private async Task<BrokerKeyMaterial> Open(bool createKek = false, bool createKeys = true, IRecordStore? on = null, FakeSecretClient? from = null)
    {
        var material = await BrokerKeyMaterial.LoadOrCreateAsync(new KeyVaultKeyEncryptionKeySource(from ?? vault, Name, createKek), on ?? store, createKeys, time, Ct);
        opened.Add(material);
        return material;
    }

    private async Task<string> KeyringData() => (await store.GetAsync(BrokerKeyring.Table, BrokerKeyring.Partition, BrokerKeyring.Row, Ct))!.Data;

    private static void SameKey(DataKey expected, DataKey actual) => Assert.Equal(expected.ExportKeyBytes(), actual.ExportKeyBytes());

    [Fact]
    public async Task Data_keys_wrap_under_the_current_secret_version_and_unwrap_by_its_id()
    {
        var kekValue = NewKek();
        var v1 = vault.AddVersion(Name, kekValue);
        var material = await Open();
        Assert.Equal(vault.IdOf(Name, v1), material.KekId);
        Assert.True(material.Created);
        Assert.Contains(vault.Vault.ToString(), material.KekDescription);

        using var key = DataKey.Generate();
        var encrypted = material.EncryptAtRest(key, "binding-1");
        using (var decrypted = await material.DecryptAtRestAsync(encrypted, "binding-1", material.KekId, Ct))
        {
            SameKey(key, decrypted);
        }

        Assert.Equal(KeyBrokerError.DataLoss, (await Assert.ThrowsAsync<KeyBrokerException>(() => material.DecryptAtRestAsync(encrypted, "binding-2", material.KekId, Ct))).Error);

        // The keyring in the table names the version it is wrapped under and holds no key in the clear.
        var keyring = JsonNode.Parse(await KeyringData())!;
        Assert.Equal(vault.IdOf(Name, v1), keyring["kekId"]!.GetValue<string>());
        Assert.Equal(material.WrapKeyId, keyring["wrapKeyId"]!.GetValue<string>());
        var text = await KeyringData();
        Assert.DoesNotContain(kekValue, text, StringComparison.Ordinal);
        Assert.DoesNotContain("PRIVATE KEY", text, StringComparison.Ordinal);
        Assert.DoesNotContain(Convert.ToBase64String(material.DeriveRecordMacKey()), text, StringComparison.Ordinal);

        // Another vault whose secret has the same name and version id but another value does not open that keyring.
        var impostor = new FakeSecretClient(vault.Vault);
        impostor.AddVersion(Name, NewKek());
        var e = await Assert.ThrowsAsync<KeyBrokerException>(() => Open(from: impostor));
        Assert.Equal(KeyBrokerError.DataLoss, e.Error);
        Assert.Contains("does not authenticate", e.Message);
    }

    [Fact]
    public async Task A_record_wrapped_under_v1_still_opens_after_the_vault_rotates_to_v2()
    {
        var v1 = vault.AddVersion(Name, NewKek());
        var first = await Open();
        using var oldKey = DataKey.Generate();
        var oldMaterial = first.EncryptAtRest(oldKey, "binding-old");
        var v1Id = first.KekId;
        var macKey = first.DeriveRecordMacKey();
        var wrapKeyId = first.WrapKeyId;

        var v2 = vault.AddVersion(Name, NewKek()); // the rotation
        vault.Calls.Clear();
        var second = await Open(createKeys: false);
        Assert.Equal(vault.IdOf(Name, v2), second.KekId);
        Assert.NotEqual(v1Id, second.KekId);
        Assert.False(second.Created);

        // The keyring stays pinned to v1 (read by its id): same import key, same record MAC key.
        Assert.Contains($"get {Name}/{v1}", vault.Calls);
        Assert.Equal(wrapKeyId, second.WrapKeyId);
        Assert.Equal(macKey, second.DeriveRecordMacKey());

        using (var opened = await second.DecryptAtRestAsync(oldMaterial, "binding-old", v1Id, Ct))
        {
            SameKey(oldKey, opened);
        }

        // New material goes under v2, and only v2 opens it.
        using var newKey = DataKey.Generate();
        var newMaterial = second.EncryptAtRest(newKey, "binding-new");
        using (var opened = await second.DecryptAtRestAsync(newMaterial, "binding-new", vault.IdOf(Name, v2), Ct))
        {
            SameKey(newKey, opened);
        }

        Assert.Equal(KeyBrokerError.DataLoss, (await Assert.ThrowsAsync<KeyBrokerException>(() => second.DecryptAtRestAsync(newMaterial, "binding-new", v1Id, Ct))).Error);
        Assert.Equal(KeyBrokerError.DataLoss, (await Assert.ThrowsAsync<KeyBrokerException>(() => second.DecryptAtRestAsync(oldMaterial, "binding-old", second.KekId, Ct))).Error);

        // Versions are read once.
        using (await second.DecryptAtRestAsync(oldMaterial, "binding-old", v1Id, Ct))
        {
        }

        Assert.Single(vault.Calls, c => c == $"get {Name}/{v1}");
    }

    [Fact]
    public async Task A_missing_secret_without_create_is_a_clear_startup_error_and_creates_nothing()
    {
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Open(createKek: false));
        Assert.Contains(vault.Vault.ToString(), e.Message);
        Assert.Contains($"'{Name}'", e.Message);
        Assert.Contains("does not exist", e.Message);
        Assert.Contains("KeyBroker:Kek:Create", e.Message);
        Assert.DoesNotContain(vault.Calls, c => c.StartsWith("set", StringComparison.Ordinal));
        Assert.Empty(vault.Versions(Name));
        Assert.Null(await store.GetAsync(BrokerKeyring.Table, BrokerKeyring.Partition, BrokerKeyring.Row, Ct));
    }

    [Fact]
    public async Task A_vault_that_refuses_or_gives_no_token_at_start_is_a_clear_startup_error()
    {
        vault.AddVersion(Name, NewKek());
        vault.FailWith = 403;
        var forbidden = await Assert.ThrowsAsync<InvalidOperationException>(() => Open());
        Assert.Contains("HTTP 403", forbidden.Message);
        Assert.Contains("Key Vault Secrets User", forbidden.Message);
        Assert.Contains($"'{Name}'", forbidden.Message);
        Assert.Contains(vault.Vault.ToString(), forbidden.Message);

        vault.FailWith = null;
        vault.Throw = new CredentialStandIn("ManagedIdentityCredential authentication unavailable.\nsecond line");
        var noToken = await Assert.ThrowsAsync<InvalidOperationException>(() => Open());
        Assert.Contains("CredentialStandIn: ManagedIdentityCredential authentication unavailable.", noToken.Message);
        Assert.DoesNotContain("second line", noToken.Message);
        Assert.Contains(vault.Vault.ToString(), noToken.Message);
        Assert.IsType<CredentialStandIn>(noToken.InnerException);
    }

    [Fact]
    public async Task Create_sets_one_random_256_bit_secret_and_later_starts_use_it()
    {
        var first = await Open(createKek: true);
        Assert.True(first.Created);
        var version = Assert.Single(vault.Versions(Name));
        Assert.Equal(32, Convert.FromBase64String(version.Value).Length);
        Assert.Equal(KeyVaultKeyEncryptionKeySource.ContentType, version.ContentType);
        Assert.Equal(vault.IdOf(Name, version.Version), first.KekId);

        var second = await Open(createKek: true);
        Assert.False(second.Created);
        Assert.Single(vault.Versions(Name));
        Assert.Single(vault.Calls, c => c == $"set {Name}");
        Assert.Equal(first.KekId, second.KekId);
        Assert.Equal(first.WrapKeyId, second.WrapKeyId);

        // Two fresh creations give different keys (random, not derived from anything).
        var other = new FakeSecretClient();
        using var otherMaterial = await BrokerKeyMaterial.LoadOrCreateAsync(new KeyVaultKeyEncryptionKeySource(other, Name, create: true), new InMemoryRecordStore(), true, time, Ct);
        Assert.NotEqual(version.Value, Assert.Single(other.Versions(Name)).Value);
    }

    [Theory]
    [InlineData("c2hvcnQ=", "decodes to 5 bytes")]
    [InlineData("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4v", "decodes to 48 bytes")]
    [InlineData("this is not a key at all", "not base64")]
    [InlineData("", "decodes to 0 bytes")]
    public async Task A_secret_that_is_not_a_base64_256_bit_key_is_refused_without_showing_it(string value, string why)
    {
        var v1 = vault.AddVersion(Name, value);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Open());
        Assert.Contains(why, e.Message);
        Assert.Contains("256-bit", e.Message);
        Assert.Contains($"'{Name}'", e.Message);
        Assert.Contains(v1, e.Message);
        Assert.Contains(vault.Vault.ToString(), e.Message);
        if (value.Length > 0)
        {
            Assert.DoesNotContain(value, e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_key_with_surrounding_white_space_is_accepted()
    {
        var value = NewKek();
        vault.AddVersion(Name, value + "\n");
        var material = await Open();
        var plain = new KeyVaultKeyEncryptionKeySource(vault, Name);
        using var same = await BrokerKeyMaterial.LoadOrCreateAsync(plain, store, false, time, Ct);
        Assert.Equal(material.WrapKeyId, same.WrapKeyId);
    }

    [Fact]
    public async Task An_old_version_that_is_gone_disabled_or_unreachable_is_reported_as_such()
    {
        var v1 = vault.AddVersion(Name, NewKek()); // the keyring's
        await Open();
        var v2 = vault.AddVersion(Name, NewKek());
        using var key = DataKey.Generate();
        var underV2 = (await Open()).EncryptAtRest(key, "b");
        var v2Id = vault.IdOf(Name, v2);
        vault.AddVersion(Name, NewKek()); // v3 is current now

        // Unreachable: UNAVAILABLE, and not remembered: the next attempt reads it.
        var third = await Open();
        vault.FailWith = 503;
        var down = await Assert.ThrowsAsync<KeyBrokerException>(() => third.DecryptAtRestAsync(underV2, "b", v2Id, Ct));
        Assert.Equal(KeyBrokerError.Unavailable, down.Error);
        Assert.Contains("503", down.Message);
        vault.FailWith = null;
        using (var opened = await third.DecryptAtRestAsync(underV2, "b", v2Id, Ct))
        {
            SameKey(key, opened);
        }

        // Disabled, then deleted: DATA_LOSS naming the version.
        vault.Disable(Name, v2);
        var fourth = await Open();
        var disabled = await Assert.ThrowsAsync<KeyBrokerException>(() => fourth.DecryptAtRestAsync(underV2, "b", v2Id, Ct));
        Assert.Equal(KeyBrokerError.DataLoss, disabled.Error);
        Assert.Contains("disabled", disabled.Message);
        Assert.Contains(v2, disabled.Message);

        vault.Delete(Name, v2);
        var fifth = await Open();
        var gone = await Assert.ThrowsAsync<KeyBrokerException>(() => fifth.DecryptAtRestAsync(underV2, "b", v2Id, Ct));
        Assert.Equal(KeyBrokerError.DataLoss, gone.Error);
        Assert.Contains("is not in Key Vault", gone.Message);

        var notAnId = await Assert.ThrowsAsync<KeyBrokerException>(() => fifth.DecryptAtRestAsync(underV2, "b", "0123456789abcdef0123456789abcdef", Ct));
        Assert.Equal(KeyBrokerError.DataLoss, notAnId.Error);

        // The keyring's own version gone: the broker does not start (DATA_LOSS), it does not make new keys.
        vault.Delete(Name, v1);
        Assert.Equal(KeyBrokerError.DataLoss, (await Assert.ThrowsAsync<KeyBrokerException>(() => Open())).Error);
    }

    [Fact]
    public async Task The_keyring_needs_create_keys_and_is_never_made_over_existing_state()
    {
        vault.AddVersion(Name, NewKek());
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => Open(createKeys: false));
        Assert.Contains("KeyBroker:CreateKeys", refused.Message);
        Assert.Contains(BrokerKeyring.Table, refused.Message);

        // A store with registered parties but no keyring (a deleted row, another KEK): refused, nothing written.
        var populated = new InMemoryRecordStore();
        await populated.InsertAsync(KeyBrokerTables.Parties, new StoredRecord("party", "hospital-a", "{}"), Ct);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => Open(on: populated));
        Assert.Contains("registered parties", e.Message);
        Assert.Contains("hospital-a", e.Message);
        Assert.Null(await populated.GetAsync(BrokerKeyring.Table, BrokerKeyring.Partition, BrokerKeyring.Row, Ct));
    }

    [Fact]
    public async Task Replicas_starting_together_share_one_keyring()
    {
        vault.AddVersion(Name, NewKek());
        var racing = new BarrierStore(store, 2);
        var both = await Task.WhenAll(Open(on: racing), Open(on: racing));
        Assert.Equal(both[0].WrapKeyId, both[1].WrapKeyId);
        Assert.Equal(both[0].DeriveRecordMacKey(), both[1].DeriveRecordMacKey());
        Assert.Equal(2, racing.KeyringMisses); // both found none and raced to insert
        Assert.Single(both, m => m.Created);
    }

    [Fact]
    public async Task A_keyring_with_swapped_or_altered_fields_does_not_open()
    {
        vault.AddVersion(Name, NewKek());
        await Open();
        var original = await KeyringData();
        store.Tamper(BrokerKeyring.Table, BrokerKeyring.Partition, BrokerKeyring.Row, data =>
        {
            var node = JsonNode.Parse(data)!;
            (node["wrapKey"], node["developmentSigningKey"]) = (node["developmentSigningKey"]!.GetValue<string>(), node["wrapKey"]!.GetValue<string>());
            return node.ToJsonString();
        });
        var swapped = await Assert.ThrowsAsync<KeyBrokerException>(() => Open());
        Assert.Equal(KeyBrokerError.DataLoss, swapped.Error);
        Assert.Contains("does not authenticate", swapped.Message);

        store.Tamper(BrokerKeyring.Table, BrokerKeyring.Partition, BrokerKeyring.Row, _ =>
        {
            var node = JsonNode.Parse(original)!;
            node["wrapKeyId"] = new string('0', 64);
            return node.ToJsonString();
        });
        Assert.Contains("does not match its key ids", (await Assert.ThrowsAsync<KeyBrokerException>(() => Open())).Message);
    }

    [Fact]
    public async Task The_development_signing_key_is_kept_in_the_keyring_and_the_file_source_keeps_none()
    {
        vault.AddVersion(Name, NewKek());
        using var first = (await Open()).CreateDevelopmentSigningKey();
        using var second = (await Open()).CreateDevelopmentSigningKey();
        Assert.NotNull(first);
        Assert.Equal(first.Thumbprint, second!.Thumbprint);

        using var file = BrokerKeyMaterial.CreateEphemeral();
        Assert.Null(file.CreateDevelopmentSigningKey());
    }

    [Fact]
    public void Settings_are_checked()
    {
        Assert.Equal(KeyEncryptionKeySourceKind.File, KeyEncryptionKeyOptions.ParseSource(null));
        Assert.Equal(KeyEncryptionKeySourceKind.File, KeyEncryptionKeyOptions.ParseSource("file"));
        Assert.Equal(KeyEncryptionKeySourceKind.KeyVault, KeyEncryptionKeyOptions.ParseSource("KeyVault"));
        Assert.Contains("file or keyvault", Assert.Throws<InvalidOperationException>(() => KeyEncryptionKeyOptions.ParseSource("hsm")).Message);

        Assert.Contains("VaultUri is required", Assert.Throws<InvalidOperationException>(() =>
            new KeyEncryptionKeyOptions { Source = KeyEncryptionKeySourceKind.KeyVault }.Validated()).Message);
        Assert.Contains("not an absolute https URL", Assert.Throws<InvalidOperationException>(() =>
            new KeyEncryptionKeyOptions { Source = KeyEncryptionKeySourceKind.KeyVault, VaultUri = new Uri("http://kv.vault.azure.net/") }.Validated()).Message);
        Assert.Contains("not a Key Vault secret name", Assert.Throws<InvalidOperationException>(() =>
            new KeyEncryptionKeyOptions { SecretName = "kek_with_underscores" }.Validated()).Message);

        var options = new KeyEncryptionKeyOptions { Source = KeyEncryptionKeySourceKind.KeyVault, VaultUri = new Uri("https://kv.vault.azure.net/") }.Validated();
        Assert.Equal(KeyEncryptionKeyOptions.DefaultSecretName, options.SecretName);
        Assert.False(options.Create);
    }

    /// <summary>Stands for Azure.Identity's AuthenticationFailedException: not a RequestFailedException.</summary>
    private sealed class CredentialStandIn(string message) : Exception(message);

    /// <summary>Holds the first <c>count</c> keyring reads until all have arrived (replicas starting together).</summary>
    private sealed class BarrierStore(IRecordStore inner, int count) : IRecordStore
    {
        private readonly TaskCompletionSource all = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int arrived;
        private int misses;

        public int KeyringMisses => misses;

        public async Task<StoredRecord?> GetAsync(string table, string partition, string row, CancellationToken cancellationToken)
        {
            var record = await inner.GetAsync(table, partition, row, cancellationToken);
            if (table == BrokerKeyring.Table && record is null && Interlocked.Increment(ref arrived) <= count)
            {
                Interlocked.Increment(ref misses);
                if (arrived == count)
                {
                    all.SetResult();
                }

                await all.Task.WaitAsync(TimeSpan.FromSeconds(10), cancellationToken);
            }

            return record;
        }

        public Task<string> InsertAsync(string table, StoredRecord record, CancellationToken cancellationToken) => inner.InsertAsync(table, record, cancellationToken);

        public Task<string> ReplaceAsync(string table, StoredRecord record, CancellationToken cancellationToken) => inner.ReplaceAsync(table, record, cancellationToken);

        public Task DeleteAsync(string table, string partition, string row, string etag, CancellationToken cancellationToken) =>
            inner.DeleteAsync(table, partition, row, etag, cancellationToken);

        public Task SubmitAsync(string table, IReadOnlyList<RecordWrite> writes, CancellationToken cancellationToken) => inner.SubmitAsync(table, writes, cancellationToken);

        public IAsyncEnumerable<StoredRecord> QueryAsync(string table, string partition, string? fromRow, CancellationToken cancellationToken) =>
            inner.QueryAsync(table, partition, fromRow, cancellationToken);
    }
}
