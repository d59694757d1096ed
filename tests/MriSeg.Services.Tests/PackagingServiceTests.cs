using System.Buffers.Binary;
using System.Security.Cryptography;
using Azure.Data.Tables;
using Azure.Storage.Blobs;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;
using MriSeg.Packaging;
using MriSeg.Sealing;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The Packaging service in-process against a real (Azurite) blob and table storage.</summary>
public sealed class PackagingServiceTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly AzuriteFixture azurite;
    private readonly string keys = Directory.CreateTempSubdirectory("mriseg-packaging-keys-").FullName;
    private readonly string owner = "hospital-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    private readonly RecipientPrivateKey recipient = RecipientPrivateKey.GenerateEcP256();
    private readonly ServiceHost<PackagingService> host;
    private readonly V1.Packaging.PackagingClient client;

    public PackagingServiceTests(AzuriteFixture azurite)
    {
        this.azurite = azurite;
        azurite.Require();
        host = new ServiceHost<PackagingService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["Packaging:KeysDirectory"] = keys,
            ["Packaging:CreateOwnerKeys"] = "true",
            ["Packaging:AllowLocalPaths"] = "false",
            ["Packaging:ProgressIntervalMs"] = "0",
        });
        client = new V1.Packaging.PackagingClient(host.CreateChannel());
    }

    public void Dispose()
    {
        host.Dispose();
        recipient.Dispose();
        Directory.Delete(keys, recursive: true);
    }

    private BlobServiceClient Blobs => new(azurite.BlobConnectionString);

    private async Task<V1.BlobRef> UploadAsync(string container, string name, byte[] data)
    {
        var blobContainer = Blobs.GetBlobContainerClient(container);
        await blobContainer.CreateIfNotExistsAsync(cancellationToken: Ct);
        await blobContainer.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(data), overwrite: true, Ct);
        return new V1.BlobRef { Container = container, Name = name };
    }

    private async Task<byte[]> DownloadAsync(V1.BlobRef blob) =>
        (await Blobs.GetBlobContainerClient(blob.Container).GetBlobClient(blob.Name).DownloadContentAsync(Ct)).Value.Content.ToArray();

    private V1.SealRequest Request(V1.BlobRef source) => new()
    {
        Owner = owner,
        Source = new V1.Location { Blob = source },
        ContentType = V1.ContentType.Dataset,
        ChunkSize = 16 * 1024,
        RecipientPublicKeyPem = recipient.PublicKey.ExportPem(),
        Metadata = { ["shard"] = "1/3" },
    };

    private async Task<List<V1.SealProgress>> SealAsync(V1.SealRequest request)
    {
        using var call = client.Seal(request, cancellationToken: Ct);
        var messages = new List<V1.SealProgress>();
        await foreach (var message in call.ResponseStream.ReadAllAsync(Ct))
        {
            messages.Add(message);
        }

        return messages;
    }

    private async Task<(V1.SealResult Result, byte[] Plaintext)> SealNewAsync()
    {
        var plaintext = RandomNumberGenerator.GetBytes(100_000);
        var source = await UploadAsync("uploads", owner + "/scan.bin", plaintext);
        return ((await SealAsync(Request(source)))[^1].Result, plaintext);
    }

    private static async Task<RpcException> Fails(Func<Task> call) => await Assert.ThrowsAsync<RpcException>(call);

    [Fact]
    public async Task Seal_streams_progress_and_the_sealed_blob_opens_with_the_unwrapped_key_and_the_registered_owner_key()
    {
        var plaintext = RandomNumberGenerator.GetBytes(300_000);
        var source = await UploadAsync("uploads", owner + "/scan.bin", plaintext);

        var messages = await SealAsync(Request(source));

        // Progress: RUNNING messages counting plaintext bytes up to the total, then SUCCEEDED with the result.
        Assert.True(messages.Count >= 3, $"{messages.Count} message(s)");
        Assert.All(messages[..^1], m => Assert.Equal(V1.JobState.Running, m.Progress.State));
        Assert.All(messages, m => Assert.Equal(plaintext.Length, m.Progress.Total));
        Assert.All(messages, m => Assert.Equal("bytes", m.Progress.Unit));
        var done = messages.Select(m => m.Progress.Done).ToList();
        Assert.Equal(done.Order(), done);
        Assert.Contains(done, d => d > 0 && d < plaintext.Length);
        var last = messages[^1];
        Assert.Equal(V1.JobState.Succeeded, last.Progress.State);
        Assert.Equal(plaintext.Length, last.Progress.Done);
        var result = last.Result;

        // Where it went and what it says.
        Assert.Equal(owner, result.Package.Blob.Container);
        Assert.Equal(owner + "/scan.bin.sealed", result.Package.Blob.Name);
        Assert.Equal(owner, result.Manifest.Owner);
        Assert.Equal(V1.ContentType.Dataset, result.Manifest.ContentType);
        Assert.Equal(plaintext.Length, result.Manifest.PlaintextLength);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(plaintext)), result.Manifest.PlaintextSha256);
        Assert.Equal("1/3", result.Manifest.Metadata["shard"]);
        Assert.Equal("ECDH-ES+A256GCM", result.WrapAlgorithm);

        var sealedBytes = await DownloadAsync(result.Package.Blob);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(sealedBytes)), result.Package.SealedSha256);

        // The owner's key: in the key folder (0600) and registered in the parties table.
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(keys, owner + ".key")));
        }

        var party = (await new TableServiceClient(azurite.TableConnectionString).GetTableClient(PartyRegistry.TableName)
            .GetEntityAsync<TableEntity>(PartyRegistry.OwnerPartition, owner, cancellationToken: Ct)).Value;
        using var ownerKey = SignerPublicKey.FromPem(party.GetString("PublicKeyPem"));
        Assert.Equal(ownerKey.Thumbprint, party.GetString("Thumbprint"));
        Assert.Equal(SignerPublicKey.Load(Path.Combine(keys, owner + ".pub")).Thumbprint, ownerKey.Thumbprint);

        // The recipient unwraps the data key and opens the package: the same bytes.
        using var key = KeyWrap.Unwrap(WrappedKey.FromJson(result.WrappedDataKey.ToStringUtf8()), recipient);
        Assert.Equal(result.Package.KeyId, key.KeyId);
        using var opened = await SealedPackage.OpenToMemoryAsync(new MemoryStream(sealedBytes), key, SignerCheck.Expect(ownerKey), cancellationToken: Ct);
        Assert.True(opened.Info.SignatureVerified);
        Assert.Equal(plaintext, opened.ToArray());
    }

    [Fact]
    public async Task Sealing_the_same_source_again_gets_a_new_name_and_an_explicit_existing_destination_is_refused()
    {
        var (first, _) = await SealNewAsync();
        var (second, _) = await SealNewAsync();
        Assert.NotEqual(first.Package.Blob.Name, second.Package.Blob.Name);
        Assert.EndsWith(".sealed", second.Package.Blob.Name, StringComparison.Ordinal);

        var request = Request(await UploadAsync("uploads", owner + "/other.bin", [1, 2, 3]));
        request.Destination = first.Package.Blob;
        var e = await Fails(() => SealAsync(request));
        Assert.Equal(StatusCode.AlreadyExists, e.StatusCode);
        Assert.Contains("never replaced", e.Status.Detail);
    }

    [Fact]
    public async Task Verify_accepts_the_sealed_blob_and_checks_the_ciphertext_when_given_the_sealed_sha256()
    {
        var (result, plaintext) = await SealNewAsync();

        var response = await client.VerifyAsync(new V1.VerifyRequest { Package = result.Package }, cancellationToken: Ct);

        Assert.True(response.Valid, response.Failure);
        Assert.True(response.CiphertextChecked);
        Assert.Equal("", response.Failure);
        Assert.Equal(result.Package.SealedSha256, response.SealedSha256);
        Assert.Equal(owner, response.Manifest.Owner);
        Assert.Equal(plaintext.Length, response.Manifest.PlaintextLength);
        var party = await host.Services.GetRequiredService<PartyRegistry>().FindAsync(owner, Ct);
        Assert.Equal(party!.Thumbprint, response.Signer);
    }

    [Fact]
    public async Task Verify_refuses_a_tampered_blob_with_the_reason()
    {
        var (result, _) = await SealNewAsync();
        var original = await DownloadAsync(result.Package.Blob);

        // A byte of chunk 1's ciphertext: only the sealed SHA-256 can tell without the key.
        var ciphertext = (byte[])original.Clone();
        ciphertext[48 + 4 + 16 * 1024 + 16 + 4 + 7] ^= 0x01;
        var ciphertextRef = result.Package.Clone();
        ciphertextRef.Blob = await UploadAsync(owner, "tampered-ciphertext.sealed", ciphertext);

        var withDigest = await client.VerifyAsync(new V1.VerifyRequest { Package = ciphertextRef }, cancellationToken: Ct);
        Assert.False(withDigest.Valid);
        Assert.Contains("sealed SHA-256", withDigest.Failure);
        Assert.False(withDigest.CiphertextChecked);

        ciphertextRef.SealedSha256 = "";
        var withoutDigest = await client.VerifyAsync(new V1.VerifyRequest { Package = ciphertextRef }, cancellationToken: Ct);
        Assert.True(withoutDigest.Valid); // the documented limit: ciphertext needs the key or the sealed SHA-256
        Assert.False(withoutDigest.CiphertextChecked);

        // A byte of the manifest (its plaintext SHA-256): the signature fails, with or without the digest.
        var manifest = (byte[])original.Clone();
        var trailerLength = (int)BinaryPrimitives.ReadUInt32BigEndian(manifest.AsSpan(manifest.Length - 12));
        manifest[manifest.Length - trailerLength + 4 + 20] ^= 0x01;
        var manifestRef = result.Package.Clone();
        manifestRef.SealedSha256 = "";
        manifestRef.Blob = await UploadAsync(owner, "tampered-manifest.sealed", manifest);
        var signature = await client.VerifyAsync(new V1.VerifyRequest { Package = manifestRef }, cancellationToken: Ct);
        Assert.False(signature.Valid);
        Assert.Equal("signature does not verify against the expected signer", signature.Failure);

        // Truncated: structure.
        var truncatedRef = result.Package.Clone();
        truncatedRef.SealedSha256 = "";
        truncatedRef.Blob = await UploadAsync(owner, "truncated.sealed", original[..^100]);
        var truncated = await client.VerifyAsync(new V1.VerifyRequest { Package = truncatedRef }, cancellationToken: Ct);
        Assert.False(truncated.Valid);
        Assert.StartsWith("truncated", truncated.Failure, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bad_inputs_get_clear_statuses()
    {
        var unregistered = await Fails(() => client.VerifyAsync(new V1.VerifyRequest
        {
            Package = new V1.SealedPackageRef { Owner = owner, Blob = new V1.BlobRef { Container = owner, Name = "absent.sealed" } },
        }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.FailedPrecondition, unregistered.StatusCode); // nobody sealed for this owner yet
        Assert.Contains("no registered signing key", unregistered.Status.Detail);

        var missing = await Fails(() => SealAsync(Request(new V1.BlobRef { Container = "uploads", Name = owner + "/absent.bin" })));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        Assert.Contains($"source blob uploads/{owner}/absent.bin", missing.Status.Detail);

        var source = await UploadAsync("uploads", owner + "/scan.bin", [1, 2, 3]);
        var badOwner = Request(source);
        badOwner.Owner = "St Mary's";
        var e = await Fails(() => SealAsync(badOwner));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("owner 'St Mary's' is not a valid owner id", e.Status.Detail);

        var noRecipient = Request(source);
        noRecipient.RecipientPublicKeyPem = "";
        e = await Fails(() => SealAsync(noRecipient));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("recipient_public_key_pem is required", e.Status.Detail);

        var noType = Request(source);
        noType.ContentType = V1.ContentType.Unspecified;
        Assert.Equal(StatusCode.InvalidArgument, (await Fails(() => SealAsync(noType))).StatusCode);

        var local = Request(source);
        local.Source = new V1.Location { LocalPath = "/etc/hostname" };
        e = await Fails(() => SealAsync(local));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("Packaging:AllowLocalPaths", e.Status.Detail);

        await SealAsync(Request(source)); // registers the owner
        e = await Fails(() => client.VerifyAsync(new V1.VerifyRequest
        {
            Package = new V1.SealedPackageRef { Owner = owner, Blob = new V1.BlobRef { Container = owner, Name = "absent.sealed" } },
        }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, e.StatusCode);

        e = await Fails(() => client.VerifyAsync(new V1.VerifyRequest
        {
            Package = new V1.SealedPackageRef { Blob = new V1.BlobRef { Container = owner, Name = "x.sealed" } },
        }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("package.owner is required", e.Status.Detail);
    }
}

/// <summary>Packaging without storage: what fails before storage is reached.</summary>
public sealed class PackagingWithoutKeysTests
{
    [Fact]
    public async Task Outside_Development_a_missing_key_folder_is_failed_precondition_naming_the_setting()
    {
        using var recipient = RecipientPrivateKey.GenerateEcP256();
        using var host = new ServiceHost<PackagingService>();
        var client = new V1.Packaging.PackagingClient(host.CreateChannel());
        using var call = client.Seal(new V1.SealRequest
        {
            Owner = "hospital-a",
            Source = new V1.Location { Blob = new V1.BlobRef { Container = "uploads", Name = "x.bin" } },
            ContentType = V1.ContentType.Dataset,
            RecipientPublicKeyPem = recipient.PublicKey.ExportPem(),
        }, cancellationToken: TestContext.Current.CancellationToken);

        var e = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext(TestContext.Current.CancellationToken));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.Contains("Packaging:KeysDirectory", e.Status.Detail);
    }
}
