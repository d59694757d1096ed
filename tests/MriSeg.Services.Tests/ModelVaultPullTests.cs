using System.Security.Cryptography;
using Azure.Data.Tables;
using MriSeg.CleanRoom.Consumer;
using MriSeg.Imaging;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.KeyRelease.Attestation;
using Xunit;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>The consumer's side over a real clean-room run: pull, verify, decrypt, register; refusals; segmentation with the pulled model.</summary>
public sealed class ModelVaultPullTests : IClassFixture<AzuriteFixture>, IDisposable
{
    private readonly CleanRoomWorld env;
    private readonly AzuriteFixture azurite;
    private readonly string measurement = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
    private readonly string models = Directory.CreateTempSubdirectory("mriseg-modelvault-").FullName;

    public ModelVaultPullTests(AzuriteFixture azurite)
    {
        azurite.Require();
        this.azurite = azurite;
        env = new CleanRoomWorld(azurite);
    }

    public void Dispose()
    {
        env.Dispose();
        Directory.Delete(models, recursive: true);
    }

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private ModelPuller Puller(CleanRoomWorld.World world, ModelRegistry registry, params string[] allowed) =>
        new(env.Blobs, (id, ct) => env.Party(world.Consumer).ReleaseOwnOutputKeyAsync(id, ct),
            new ProvenanceVerifier(
                new AttestationOptions { Authorities = [new TrustedAuthority(CleanRoomWorld.Issuer, requireAudience: false, allowHttp: true)] },
                new OpenIdIssuerKeyCache(env.Http, new IssuerKeyCacheOptions(), TimeProvider.System),
                new ProvenancePolicy { AllowedMeasurements = allowed }),
            registry);

    [Fact]
    public async Task A_real_runs_outputs_are_pulled_verified_registered_refused_when_tampered_or_from_other_code_and_segment_a_phantom()
    {
        var world = await env.NewWorldAsync(measurement, Ct);
        var run = await env.Runner(world).ExecuteAsync(world.Spec("run-mv"), null, Ct);
        var tables = new TableServiceClient(azurite.TableConnectionString);
        var registry = new ModelRegistry(tables, models, "mv" + world.Suffix);

        // 1. Tampered: the same six outputs copied elsewhere, one ciphertext byte of the weights flipped.
        var container = env.Blobs.GetBlobContainerClient(world.Consumer);
        var tampered = new List<V1.SealedPackageRef>();
        foreach (var output in run.Outputs)
        {
            var bytes = (await container.GetBlobClient(output.Blob.Name).DownloadContentAsync(Ct)).Value.Content.ToArray();
            if (output.Blob.Name.EndsWith("model.safetensors.sealed", StringComparison.Ordinal))
            {
                bytes[^40] ^= 0x01;
            }

            var name = "tampered/" + output.Blob.Name;
            await container.GetBlobClient(name).UploadAsync(BinaryData.FromBytes(bytes), Ct);
            tampered.Add(new V1.SealedPackageRef { Blob = new V1.BlobRef { Container = world.Consumer, Name = name } });
        }

        var refused = await Assert.ThrowsAsync<ModelPullException>(() =>
            Puller(world, registry, measurement).PullAsync(new PullRequest { RunId = "run-mv", Consumer = world.Consumer, Outputs = tampered }, cancellationToken: Ct));
        Assert.Equal(PullFailure.TamperedPackage, refused.Failure);
        Assert.Contains("model.safetensors", refused.Message, StringComparison.Ordinal);
        Assert.Empty(await registry.ListAsync(Ct));

        // 2. A token naming another measurement than the allowed one (and than the one asked for) is refused.
        var other = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));
        var notAllowed = await Assert.ThrowsAsync<ModelPullException>(() =>
            Puller(world, registry, other).PullAsync(new PullRequest { RunId = "run-mv", Consumer = world.Consumer }, cancellationToken: Ct));
        Assert.Equal(PullFailure.AttestationRefused, notAllowed.Failure);
        Assert.Contains("not an allowed trainer measurement", notAllowed.Message, StringComparison.Ordinal);
        var notExpected = await Assert.ThrowsAsync<ModelPullException>(() =>
            Puller(world, registry, measurement, other).PullAsync(new PullRequest { RunId = "run-mv", Consumer = world.Consumer, ExpectedMeasurement = other }, cancellationToken: Ct));
        Assert.Equal(PullFailure.AttestationRefused, notExpected.Failure);
        Assert.Empty(await registry.ListAsync(Ct));
        Assert.Empty(Directory.EnumerateFileSystemEntries(models));

        // 3. The real outputs: verified, decrypted, registered with the run's privacy and providers.
        var record = await Puller(world, registry, measurement).PullAsync(new PullRequest { RunId = "run-mv", Consumer = world.Consumer, ExpectedMeasurement = measurement }, cancellationToken: Ct);
        Assert.Equal("run-mv", record.RunId);
        Assert.Equal(measurement, record.CodeMeasurement);
        Assert.Equal(run.Spent.Epsilon, record.Privacy.Epsilon, 9);
        Assert.Equal(run.Spent.Delta, record.Privacy.Delta, 12);
        Assert.Equal([world.ProviderA, world.ProviderB], record.Datasets.Select(d => d.Provider));
        Assert.True(record.Metrics.ContainsKey("dice"));
        var folder = registry.FolderOf(record.ModelId);
        Assert.Equal(record.ModelSha256, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(folder, "model.safetensors")))));
        var listed = Assert.Single(await registry.ListAsync(Ct));
        Assert.Equal(record, listed);

        // 4. Segment a phantom case (flair + t1, like the model) with the pulled model: the mask has the input's geometry.
        var phantoms = Directory.CreateTempSubdirectory("mriseg-mv-phantom-").FullName;
        try
        {
            var generator = new PhantomGenerator(PhantomOptions.Default with { Size = new GridSize(48, 40, 12) });
            var info = generator.WriteCase(generator.Generate(0, 0), phantoms);
            using var segmenter = new Segmenter(folder);
            var inputs = segmenter.ResolveInputs(info.Folder);
            var maskPath = Path.Combine(phantoms, "mask.nii.gz");
            var overlay = Path.Combine(phantoms, "overlay.png");
            var result = await segmenter.SegmentAsync(inputs, maskPath, overlay, cancellationToken: Ct);
            var input = NiftiReader.Read(inputs[0], new NiftiReadOptions { Canonicalize = false });
            var mask = NiftiReader.Read(maskPath, new NiftiReadOptions { Canonicalize = false });
            Assert.Equal(input.Size, mask.Size);
            Assert.True(input.Affine.ApproximatelyEquals(mask.Affine, 1e-6));
            var voxels = mask.Data.LongCount(v => v != 0);
            var region = Assert.Single(result.Regions);
            Assert.Equal(voxels, region.Voxels);
            Assert.Equal(voxels * input.Spacing.X * input.Spacing.Y * input.Spacing.Z, region.CubicMillimetres, 6);
            var header = File.ReadAllBytes(overlay)[..8];
            Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, header);
        }
        finally
        {
            Directory.Delete(phantoms, recursive: true);
        }
    }
}
