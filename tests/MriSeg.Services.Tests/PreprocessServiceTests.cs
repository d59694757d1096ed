using System.Security.Cryptography;
using System.Text;
using Azure.Storage.Blobs;
using Grpc.Core;
using MriSeg.Imaging.Datasets;
using MriSeg.Preprocess;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The Preprocess service in-process against Azurite: phantoms into blobs, blobs into a shard.</summary>
public sealed class PreprocessServiceTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private readonly AzuriteFixture azurite;
    private readonly string keys = Directory.CreateTempSubdirectory("mriseg-pseudonym-keys-").FullName;
    private readonly string provider = "hospital-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4));
    private readonly ServiceHost<PreprocessService> host;
    private readonly V1.Preprocess.PreprocessClient client;

    public PreprocessServiceTests(AzuriteFixture azurite)
    {
        this.azurite = azurite;
        azurite.Require();
        host = new ServiceHost<PreprocessService>(new Dictionary<string, string>
        {
            ["ConnectionStrings:blobs"] = azurite.BlobConnectionString,
            ["ConnectionStrings:tables"] = azurite.TableConnectionString,
            ["Preprocess:PseudonymKeysDirectory"] = keys,
            ["Preprocess:CreatePseudonymKeys"] = "true",
            ["Preprocess:AllowLocalPaths"] = "false",
            ["Preprocess:ProgressIntervalMs"] = "0",
        });
        client = new V1.Preprocess.PreprocessClient(host.CreateChannel());
    }

    public void Dispose()
    {
        host.Dispose();
        Directory.Delete(keys, recursive: true);
    }

    private static async Task<List<V1.PreprocessProgress>> DrainAsync(AsyncServerStreamingCall<V1.PreprocessProgress> call)
    {
        var messages = new List<V1.PreprocessProgress>();
        await foreach (var m in call.ResponseStream.ReadAllAsync(Ct))
        {
            messages.Add(m);
        }

        return messages;
    }

    private async Task GeneratePhantomsAsync(string prefix, int patients)
    {
        using var call = client.GeneratePhantoms(new V1.GeneratePhantomsRequest
        {
            Patients = patients, Seed = 7, Size = 32,
            Output = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = prefix } },
        }, cancellationToken: Ct);
        var messages = await DrainAsync(call);
        Assert.Equal(V1.JobState.Succeeded, messages[^1].Progress.State);
    }

    [Fact]
    public async Task Phantoms_in_blobs_become_a_de_identified_shard_blob()
    {
        await GeneratePhantomsAsync("raw", 4);
        var output = new V1.BlobRef { Container = provider, Name = "shards/a.safetensors" };
        using var call = client.RunPreprocess(new V1.PreprocessRequest
        {
            ProviderId = provider,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "raw" } },
            Options = new V1.PreprocessOptions { SliceSize = 32, EmptySliceFraction = 0.5 },
            Output = new V1.Location { Blob = output },
        }, cancellationToken: Ct);
        var messages = await DrainAsync(call);

        var last = messages[^1];
        Assert.Equal(V1.JobState.Succeeded, last.Progress.State);
        Assert.Contains(messages, m => m.Progress.Step == "normalising");
        var summary = last.Summary;
        Assert.Equal(4, summary.Patients);
        Assert.Equal(["flair", "t1", "t1ce", "t2"], summary.Modalities);

        var blob = new BlobServiceClient(azurite.BlobConnectionString).GetBlobContainerClient(provider).GetBlobClient(output.Name);
        var bytes = (await blob.DownloadContentAsync(Ct)).Value.Content.ToArray();
        Assert.Equal(summary.Sha256, Convert.ToHexStringLower(SHA256.HashData(bytes)));
        var shard = DatasetShard.Read(bytes);
        Assert.Equal(summary.Slices, shard.Count);
        Assert.Equal(32, shard.Height);
        Assert.True(shard.TumourSlices > 0);
        // De-identified: pseudonyms, and no case name anywhere in the bytes.
        Assert.All(shard.PatientIds, id => Assert.Matches("^[0-9a-f]{32}$", id));
        Assert.DoesNotContain("Phantom_", Encoding.Latin1.GetString(bytes), StringComparison.Ordinal);

        // A shard is written once.
        using var again = client.RunPreprocess(new V1.PreprocessRequest
        {
            ProviderId = provider,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "raw" } },
            Options = new V1.PreprocessOptions { SliceSize = 32 },
            Output = new V1.Location { Blob = output },
        }, cancellationToken: Ct);
        var e = await Assert.ThrowsAsync<RpcException>(() => DrainAsync(again));
        Assert.Equal(StatusCode.AlreadyExists, e.StatusCode);
    }

    [Fact]
    public async Task A_recipes_choices_reach_the_shard_labels_channels_percentiles_and_slice_selection()
    {
        await GeneratePhantomsAsync("recipe", 2);
        var output = new V1.BlobRef { Container = provider, Name = "shards/recipe.safetensors" };
        var options = new V1.PreprocessOptions { SliceSize = 24, EmptySliceFraction = 1, Labels = "brats", LowerPercentile = 1, UpperPercentile = 99 };
        options.Modalities.AddRange(["t2", "flair"]);
        using var call = client.RunPreprocess(new V1.PreprocessRequest
        {
            ProviderId = provider,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "recipe" } },
            Options = options,
            Output = new V1.Location { Blob = output },
        }, cancellationToken: Ct);
        Assert.Equal(V1.JobState.Succeeded, (await DrainAsync(call))[^1].Progress.State);

        var bytes = (await new BlobServiceClient(azurite.BlobConnectionString).GetBlobContainerClient(provider).GetBlobClient(output.Name).DownloadContentAsync(Ct)).Value.Content.ToArray();
        var shard = DatasetShard.Read(bytes);
        Assert.Equal(["t2", "flair"], shard.Modalities);
        Assert.Equal(LabelScheme.BratsRegions, shard.Labels);
        Assert.Equal(3, shard.LabelChannels);
        Assert.Equal("zscore-brain-p1-p99", shard.Provenance.Normalisation);
        Assert.StartsWith("all-brain", shard.Provenance.SliceSelection, StringComparison.Ordinal);
        var recipe = new MriSeg.Learning.Training.PreprocessingConfig
        {
            Size = 24, Modalities = ["t2", "flair"], Labels = "brats", LowerPercentile = 1, UpperPercentile = 99, TumourFreeShare = 1,
        };
        Assert.Null(recipe.Mismatch(shard)); // what the clean room checks a recipe's shards with

        // An unknown label scheme: INVALID_ARGUMENT naming it.
        var wrong = new V1.PreprocessOptions { SliceSize = 24, Labels = "necrosis" };
        using var refused = client.RunPreprocess(new V1.PreprocessRequest
        {
            ProviderId = provider,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "recipe" } },
            Options = wrong,
            Output = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "shards/wrong.safetensors" } },
        }, cancellationToken: Ct);
        var e = await Assert.ThrowsAsync<RpcException>(() => DrainAsync(refused));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Contains("necrosis", e.Status.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Inspect_finds_the_layout_and_modalities_without_writing()
    {
        await GeneratePhantomsAsync("inspect", 2);
        var response = await client.InspectSourceAsync(new V1.InspectSourceRequest
        {
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "inspect" } },
        }, cancellationToken: Ct);
        Assert.Equal(2, response.Cases);
        Assert.Equal(V1.SourceLayout.BratsCases, response.Layout);
        Assert.Equal(["flair", "t1", "t1ce", "t2"], response.Modalities);
        Assert.Empty(response.Problems);
    }

    [Fact]
    public async Task Bad_requests_get_a_clear_status_and_a_failed_message()
    {
        using var missing = client.RunPreprocess(new V1.PreprocessRequest
        {
            ProviderId = provider,
            Source = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "nothing-here" } },
            Output = new V1.Location { Blob = new V1.BlobRef { Container = provider, Name = "x.safetensors" } },
        }, cancellationToken: Ct);
        var messages = new List<V1.PreprocessProgress>();
        var e = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            await foreach (var m in missing.ResponseStream.ReadAllAsync(Ct))
            {
                messages.Add(m);
            }
        });
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.Equal(V1.JobState.Failed, messages[^1].Progress.State);
        Assert.Contains("not found", messages[^1].Progress.Error);

        var local = await Assert.ThrowsAsync<RpcException>(() => client.InspectSourceAsync(
            new V1.InspectSourceRequest { Source = new V1.Location { LocalPath = "/etc" } }, cancellationToken: Ct).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, local.StatusCode);

        using var badProvider = client.RunPreprocess(new V1.PreprocessRequest { ProviderId = "A B", Source = new V1.Location { LocalPath = "/x" } }, cancellationToken: Ct);
        var invalid = await Assert.ThrowsAsync<RpcException>(() => DrainAsync(badProvider));
        Assert.Equal(StatusCode.InvalidArgument, invalid.StatusCode);
    }
}
