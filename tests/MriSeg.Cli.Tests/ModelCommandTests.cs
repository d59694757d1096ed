using System.IO.Compression;
using System.Net;
using Google.Protobuf;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using MriSeg.Imaging;
using MriSeg.Imaging.Nifti;
using MriSeg.Imaging.Phantoms;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using MriSeg.Testing.Models;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Cli.Tests;

/// <summary>
/// `mriseg segment` with a model folder (here, with the Segmenter library) and with a registered model (a stand-in ModelVault
/// on Kestrel that checks what the CLI sends), `mriseg model pull|list|show` against the stand-in, and argument errors.
/// </summary>
public sealed class ModelCommandTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private readonly string _partyKey;

    public ModelCommandTests()
    {
        // The consumer's party key: the CLI signs every ModelVault call with it (the vault authenticates its callers).
        _partyKey = Path.Combine(_temp.Path, "tdc.key");
        using var key = SigningKey.Generate();
        key.Save(_partyKey);
    }

    public void Dispose() => _temp.Dispose();

    private string ModelFolder()
    {
        var folder = Path.Combine(_temp.Path, "model");
        TinyModelFolder.Write(folder, ["flair", "t1"]);
        return folder;
    }

    private string PhantomCase()
    {
        var generator = new PhantomGenerator(PhantomOptions.Default with { Size = new GridSize(40, 36, 10) });
        return generator.WriteCase(generator.Generate(0, 0), Path.Combine(_temp.Path, "phantoms")).Folder;
    }

    private static string Png(string path, int width, int height, int channel)
    {
        using var image = new Image<L8>(width, height);
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                var (dx, dy) = ((x - (width / 2.0)) / (width * 0.4), (y - (height / 2.0)) / (height * 0.4));
                image[x, y] = new L8((dx * dx) + (dy * dy) < 1 ? (byte)(80 + (channel * 40) + ((x * 7 + y * 3) % 50)) : (byte)0);
            }
        }

        image.SaveAsPng(path);
        return path;
    }

    [Fact]
    public async Task Segment_with_a_model_folder_writes_a_mask_in_the_inputs_grid_and_its_volume_without_a_service()
    {
        var model = ModelFolder();
        var caseFolder = PhantomCase();
        var mask = Path.Combine(_temp.Path, "mask.nii.gz");
        var overlay = Path.Combine(_temp.Path, "overlay.png");

        // A closed port for every service: nothing is called.
        var run = await CliRun.RunAsync("segment", "--model", model, "--input", caseFolder, "--out", mask, "--overlay", overlay, "--json",
            "--endpoint", $"modelvault=http://127.0.0.1:{Ports.Closed()}");

        Assert.True(run.ExitCode == 0, run.ToString());
        var json = run.Json();
        Assert.Equal(mask, json.GetProperty("mask").GetString());
        Assert.Equal(overlay, json.GetProperty("overlay").GetString());
        var region = Assert.Single(json.GetProperty("regions").EnumerateArray());
        Assert.Equal("WT", region.GetProperty("region").GetString());

        var flair = NiftiReader.Read(Directory.GetFiles(caseFolder, "*_flair.nii.gz").Single(), new NiftiReadOptions { Canonicalize = false });
        var written = NiftiReader.Read(mask, new NiftiReadOptions { Canonicalize = false });
        Assert.Equal(flair.Size, written.Size);
        Assert.True(flair.Affine.ApproximatelyEquals(written.Affine, 1e-6));
        var voxels = written.Data.LongCount(v => v != 0);
        Assert.Equal(voxels, region.GetProperty("voxels").GetInt64());
        Assert.Equal(voxels * flair.Spacing.X * flair.Spacing.Y * flair.Spacing.Z / 1000, region.GetProperty("millilitres").GetDouble(), 9);
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, File.ReadAllBytes(overlay)[..4]);

        // PNG slices, comma-separated in the model's channel order: a PNG mask of the slice's size.
        var a = Png(Path.Combine(_temp.Path, "a_flair.png"), 44, 38, 0);
        var b = Png(Path.Combine(_temp.Path, "a_t1.png"), 44, 38, 1);
        var pngMask = Path.Combine(_temp.Path, "mask.png");
        var slices = await CliRun.RunAsync("segment", "--model", model, "--input", $"{a},{b}", "--out", pngMask, "--threshold", "0.3");
        Assert.True(slices.ExitCode == 0, slices.ToString());
        Assert.Contains("WT:", slices.Stdout, StringComparison.Ordinal);
        using var image = Image.Load<L8>(pngMask);
        Assert.Equal((44, 38), (image.Width, image.Height));
    }

    [Fact]
    public async Task Segment_removes_the_regions_the_models_recipe_calls_too_small()
    {
        // A model that predicts every pixel: on the model's 32x32 grid each slice is one region of 1,024 pixels.
        var caseFolder = PhantomCase();
        async Task<long> VoxelsAsync(int minRegionPixels)
        {
            var model = Path.Combine(_temp.Path, $"model-{minRegionPixels}");
            TinyModelFolder.Write(model, ["flair", "t1"], headBias: 100, evaluation: new() { MinRegionPixels = minRegionPixels });
            var run = await CliRun.RunAsync("segment", "--model", model, "--input", caseFolder, "--out", Path.Combine(_temp.Path, $"mask-{minRegionPixels}.nii.gz"), "--json");
            Assert.True(run.ExitCode == 0, run.ToString());
            return Assert.Single(run.Json().GetProperty("regions").EnumerateArray()).GetProperty("voxels").GetInt64();
        }

        Assert.True(await VoxelsAsync(1024) > 0);
        Assert.Equal(0, await VoxelsAsync(1025));
    }

    [Fact]
    public async Task Segment_refuses_bad_arguments_in_one_line_before_doing_any_work()
    {
        var model = ModelFolder();
        var caseFolder = PhantomCase();
        var mask = Path.Combine(_temp.Path, "mask.nii.gz");

        async Task Refused(string expected, params string[] args)
        {
            var run = await CliRun.RunAsync(["segment", .. args]);
            Assert.True(run.ExitCode == 1, run.ToString());
            Assert.Empty(run.Stdout);
            Assert.Contains(expected, run.Stderr, StringComparison.Ordinal);
        }

        await Refused("--threshold 1.5: must be in (0, 1)", "--model", model, "--input", caseFolder, "--out", mask, "--threshold", "1.5");
        await Refused("no such model folder", "--model", Path.Combine(_temp.Path, "nowhere", "model"), "--input", caseFolder, "--out", mask);
        await Refused("not a model folder", "--model", _temp.Path, "--input", caseFolder, "--out", mask);
        await Refused("no such file or folder", "--model", model, "--input", Path.Combine(_temp.Path, "missing"), "--out", mask);
        await Refused("name it .nii.gz or .nii", "--model", model, "--input", caseFolder, "--out", Path.Combine(_temp.Path, "mask.png"));
        await Refused("name it .png", "--model", model, "--input", caseFolder, "--out", mask, "--overlay", Path.Combine(_temp.Path, "overlay.jpg"));
        await Refused("the folder does not exist", "--model", model, "--input", caseFolder, "--out", Path.Combine(_temp.Path, "no", "mask.nii.gz"));
        await Refused("1 files given; the model takes 2 channels (flair, t1)", "--model", model, "--input",
            Directory.GetFiles(caseFolder, "*_flair.nii.gz").Single() + ",", "--out", mask);
        await Refused("--out", "--model", model, "--input", caseFolder);
        Assert.False(File.Exists(mask));

        // A file that is not a NIfTI volume, named as one.
        var bogus = Path.Combine(_temp.Path, "bogus");
        Directory.CreateDirectory(bogus);
        File.WriteAllText(Path.Combine(bogus, "x_flair.nii.gz"), "not a volume");
        File.WriteAllText(Path.Combine(bogus, "x_t1.nii.gz"), "not a volume");
        var run = await CliRun.RunAsync("segment", "--model", model, "--input", bogus, "--out", mask);
        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.Empty(run.Stdout);
        Assert.StartsWith("error: ", run.StderrLines[^1], StringComparison.Ordinal);
        Assert.Contains("x_flair.nii.gz", run.StderrLines[^1], StringComparison.Ordinal);
        Assert.False(File.Exists(mask));
    }

    [Fact]
    public async Task Segment_with_a_model_id_sends_the_cases_channels_inline_in_the_models_order_and_writes_what_the_vault_answers()
    {
        var caseFolder = PhantomCase();
        await using var vault = await FakeVault.StartAsync();
        var mask = Path.Combine(_temp.Path, "mask.nii");
        var overlay = Path.Combine(_temp.Path, "overlay.png");

        var run = await CliRun.RunAsync("segment", "--model", "tiny-1", "--input", caseFolder, "--out", mask, "--overlay", overlay, "--threshold", "0.4",
            "--endpoint", $"modelvault={vault.Address}", "--party-key", _partyKey, "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var request = Assert.Single(vault.Segments);
        Assert.Equal("tiny-1", request.ModelId);
        Assert.Equal(File.ReadAllBytes(Directory.GetFiles(caseFolder, "*_flair.nii.gz").Single()), request.Data.ToByteArray());
        Assert.Equal(File.ReadAllBytes(Directory.GetFiles(caseFolder, "*_t1.nii.gz").Single()), Assert.Single(request.ExtraChannels).ToByteArray());
        Assert.Equal(V1.ImageFormat.Nifti, request.Format);
        Assert.Equal(0.4, request.Threshold);
        Assert.True(request.Overlay);

        // The vault's gzip mask is written plain for a .nii name; the overlay as sent; the regions as answered.
        Assert.Equal(FakeVault.MaskPlain, File.ReadAllBytes(mask));
        Assert.Equal(FakeVault.OverlayBytes, File.ReadAllBytes(overlay));
        var region = Assert.Single(run.Json().GetProperty("regions").EnumerateArray());
        Assert.Equal(1234, region.GetProperty("voxels").GetInt64());
        Assert.Equal(1.5, region.GetProperty("millilitres").GetDouble());

        // An unknown model: the vault's NOT_FOUND in one line, with the way to list models.
        var unknown = await CliRun.RunAsync("segment", "--model", "other", "--input", caseFolder, "--out", mask, "--endpoint", $"modelvault={vault.Address}", "--party-key", _partyKey);
        Assert.Equal(1, unknown.ExitCode);
        Assert.Contains("NotFound", unknown.Stderr, StringComparison.Ordinal);
        Assert.Contains("mriseg model list", unknown.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Model_pull_shows_progress_and_prints_the_record_and_list_and_show_read_the_registry()
    {
        await using var vault = await FakeVault.StartAsync();
        var endpoint = $"modelvault={vault.Address}";
        var measurement = new string('a', 64);

        var pull = await CliRun.RunAsync("model", "pull", "--run", "run-7", "--expect-measurement", measurement, "--endpoint", endpoint, "--party-key", _partyKey, "--json");
        Assert.True(pull.ExitCode == 0, pull.ToString());
        Assert.Equal(measurement, Assert.Single(vault.Pulls).ExpectedCodeMeasurement);
        Assert.Contains("verifying the attestation token", pull.Stderr, StringComparison.Ordinal);
        var record = pull.Json();
        Assert.Equal("tiny-1", record.GetProperty("modelId").GetString());
        Assert.Equal(3.5, record.GetProperty("privacy").GetProperty("epsilon").GetDouble());
        Assert.Equal("hospital-a", record.GetProperty("datasets")[0].GetProperty("provider").GetString());
        Assert.Equal(0.7, record.GetProperty("metrics").GetProperty("dice").GetDouble());
        Assert.Equal(2, record.GetProperty("architecture").GetProperty("in_channels").GetInt32());

        var list = await CliRun.RunAsync("model", "list", "--endpoint", endpoint, "--party-key", _partyKey, "--json");
        Assert.True(list.ExitCode == 0, list.ToString());
        Assert.Equal("tiny-1", Assert.Single(list.Json().GetProperty("models").EnumerateArray()).GetProperty("modelId").GetString());

        // Every call carried a fresh token of the consumer for the vault's audience, signed by the --party-key.
        using (var key = SigningKey.Load(_partyKey))
        {
            Assert.Equal(2, vault.Tokens.Count);
            Assert.Equal(2, vault.Tokens.Select(t => t.Id).Distinct().Count());
            Assert.All(vault.Tokens, t =>
            {
                Assert.Equal("tdc", t.Subject);
                Assert.Equal(PartyTokens.ModelVaultAudience, Assert.Single(t.Audiences));
                Assert.Equal(key.Thumbprint, t.Kid);
            });
        }

        // Without a readable key nothing is sent: one line naming --party-key.
        var keyless = await CliRun.RunAsync("model", "list", "--endpoint", endpoint, "--party-key", Path.Combine(_temp.Path, "absent.key"));
        Assert.Equal(1, keyless.ExitCode);
        Assert.Contains("--party-key", keyless.Stderr, StringComparison.Ordinal);
        Assert.Equal(2, vault.Tokens.Count);
        var table = await CliRun.RunAsync("model", "list", "--endpoint", endpoint, "--party-key", _partyKey);
        Assert.Contains("tiny-1", table.Stdout, StringComparison.Ordinal);
        Assert.Contains("hospital-a", table.Stdout, StringComparison.Ordinal);

        var show = await CliRun.RunAsync("model", "show", "tiny-1", "--endpoint", endpoint, "--party-key", _partyKey);
        Assert.True(show.ExitCode == 0, show.ToString());
        Assert.Contains("ε = 3.5", show.Stdout, StringComparison.Ordinal);
        Assert.Contains("flair, t1 -> WT", show.Stdout, StringComparison.Ordinal);

        // Refusals: the vault's reason in one line; a run id that cannot be one; no vault listening.
        var refused = await CliRun.RunAsync("model", "pull", "--run", "refused-run", "--endpoint", endpoint, "--party-key", _partyKey);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("FailedPrecondition: refused: attestation", refused.Stderr, StringComparison.Ordinal);
        Assert.Equal(1, (await CliRun.RunAsync("model", "pull", "--run", "../x", "--endpoint", endpoint, "--party-key", _partyKey)).ExitCode);
        Assert.Equal(1, (await CliRun.RunAsync("model", "pull", "--endpoint", endpoint, "--party-key", _partyKey)).ExitCode);
        var down = await CliRun.RunAsync("model", "list", "--endpoint", $"modelvault=http://127.0.0.1:{Ports.Closed()}", "--party-key", _partyKey);
        Assert.Equal(1, down.ExitCode);
        Assert.Contains("is the AppHost running?", down.Stderr, StringComparison.Ordinal);
    }

    /// <summary>A stand-in ModelVault on Kestrel (cleartext HTTP/2): one registered model "tiny-1"; it records what it is sent.</summary>
    private sealed class FakeVault : V1.ModelVault.ModelVaultBase, IAsyncDisposable
    {
        public static readonly byte[] MaskPlain = [.. Enumerable.Range(0, 400).Select(i => (byte)(i % 7))];
        public static readonly byte[] OverlayBytes = [0x89, 0x50, 0x4E, 0x47, 1, 2, 3];

        private WebApplication? _app;

        public Uri Address { get; private set; } = null!;

        public List<V1.SegmentRequest> Segments { get; } = [];

        public List<V1.PullModelRequest> Pulls { get; } = [];

        /// <summary>The bearer tokens of the calls, in order.</summary>
        public List<Microsoft.IdentityModel.JsonWebTokens.JsonWebToken> Tokens { get; } = [];

        private void Remember(ServerCallContext context)
        {
            var token = PartyTokens.FromAuthorization(context.RequestHeaders.GetValue(PartyTokens.AuthorizationHeader))
                ?? throw new RpcException(new Status(StatusCode.Unauthenticated, "no token"));
            lock (Tokens)
            {
                Tokens.Add(new Microsoft.IdentityModel.JsonWebTokens.JsonWebToken(token));
            }
        }

        public static V1.ModelRecord Record { get; } = new()
        {
            ModelId = "tiny-1",
            RunId = "run-7",
            Registered = Timestamp.FromDateTimeOffset(new DateTimeOffset(2025, 1, 2, 3, 4, 5, TimeSpan.Zero)),
            Metrics = { ["dice"] = 0.7 },
            Privacy = new V1.PrivacyParameters { Epsilon = 3.5, Delta = 1e-3, Sigma = 1.1, SampleRate = 0.2, Steps = 40, Accountant = "rdp" },
            Datasets = { new V1.DatasetProvenance { DatasetId = "sha256:00", Provider = "hospital-a", Patients = 12, Slices = 24 } },
            ModelSha256 = new string('0', 64),
            CodeMeasurement = new string('a', 64),
            Architecture = """{"in_channels":2,"out_channels":1}""",
            Modalities = { "flair", "t1" },
            LabelChannels = { "WT" },
        };

        public static async Task<FakeVault> StartAsync()
        {
            var vault = new FakeVault();
            var builder = WebApplication.CreateSlimBuilder();
            builder.Logging.ClearProviders();
            builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http2));
            builder.Services.AddGrpc(o => o.MaxReceiveMessageSize = 64 * 1024 * 1024);
            builder.Services.AddSingleton(vault);
            var app = builder.Build();
            app.MapGrpcService<FakeVault>();
            await app.StartAsync(TestContext.Current.CancellationToken);
            vault._app = app;
            vault.Address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single());
            return vault;
        }

        public async ValueTask DisposeAsync()
        {
            if (_app is not null)
            {
                await _app.StopAsync();
                await _app.DisposeAsync();
            }
        }

        public override async Task PullModel(V1.PullModelRequest request, IServerStreamWriter<V1.PullModelProgress> responseStream, ServerCallContext context)
        {
            Remember(context);
            lock (Pulls)
            {
                Pulls.Add(request);
            }

            await responseStream.WriteAsync(new V1.PullModelProgress { Progress = new V1.JobProgress { State = V1.JobState.Running, Step = "verifying", Message = "verifying the attestation token" } });
            if (request.RunId == "refused-run")
            {
                throw new RpcException(new Status(StatusCode.FailedPrecondition, "refused: attestation token names code measurement 1234…, which is not an allowed trainer measurement"));
            }

            await responseStream.WriteAsync(new V1.PullModelProgress { Progress = new V1.JobProgress { State = V1.JobState.Succeeded, Step = "registered", Message = "registered model tiny-1" }, Model = Record });
        }

        public override Task<V1.ListModelsResponse> ListModels(V1.ListModelsRequest request, ServerCallContext context)
        {
            Remember(context);
            return Task.FromResult(new V1.ListModelsResponse { Models = { Record } });
        }

        public override Task<V1.ModelRecord> GetModel(V1.GetModelRequest request, ServerCallContext context) =>
            request.ModelId == Record.ModelId ? Task.FromResult(Record)
            : throw new RpcException(new Status(StatusCode.NotFound, $"no model '{request.ModelId}' is registered"));

        public override Task<V1.SegmentResponse> Segment(V1.SegmentRequest request, ServerCallContext context)
        {
            lock (Segments)
            {
                Segments.Add(request);
            }

            using var gz = new MemoryStream();
            using (var zip = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true))
            {
                zip.Write(MaskPlain);
            }

            return Task.FromResult(new V1.SegmentResponse
            {
                Mask = ByteString.CopyFrom(gz.ToArray()),
                MaskFormat = V1.ImageFormat.Nifti,
                OverlayPng = ByteString.CopyFrom(OverlayBytes),
                Regions = { new V1.RegionVolume { Region = "WT", Voxels = 1234, Millilitres = 1.5 } },
                Slices = 3,
            });
        }
    }
}
