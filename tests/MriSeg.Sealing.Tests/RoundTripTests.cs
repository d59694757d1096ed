using System.Security.Cryptography;

namespace MriSeg.Sealing.Tests;

/// <summary>Seal then open, over sizes around chunk boundaries, every way of opening, both hashing modes.</summary>
public sealed class RoundTripTests : IDisposable
{
    private readonly DataKey _key = DataKey.Generate();
    private readonly TempFolder _folder = new();

    public void Dispose()
    {
        _key.Dispose();
        _folder.Dispose();
    }

    public static TheoryData<int, HashingMode> ChunkSizesAndModes() => new()
    {
        { 16, HashingMode.Inline },
        { 64, HashingMode.Inline },
        { 64, HashingMode.Pipelined },
        { 100, HashingMode.Pipelined },
    };

    [Theory]
    [MemberData(nameof(ChunkSizesAndModes))]
    public void Sizes_around_chunk_boundaries_round_trip(int chunk, HashingMode hashing)
    {
        var sizes = new List<int> { 0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk - 1, 2 * chunk, 2 * chunk + 1, 3 * chunk, 5 * chunk + 7 };
        var random = new Random(20251126 + chunk);
        for (var i = 0; i < 12; i++)
        {
            sizes.Add(random.Next(0, 12 * chunk));
        }

        foreach (var size in sizes)
        {
            RoundTrip(Packages.RandomBytes(size, seed: size * 31 + chunk), chunk, hashing);
        }
    }

    [Fact]
    public void Default_chunk_size_round_trips_pipelined_with_a_partial_last_chunk()
    {
        var plaintext = Packages.RandomBytes(2 * PackageFormat.DefaultChunkSize + 12345, seed: 3);
        RoundTrip(plaintext, PackageFormat.DefaultChunkSize, HashingMode.Auto);
    }

    [Fact]
    public void Default_chunk_size_round_trips_an_exact_multiple()
    {
        var plaintext = Packages.RandomBytes(2 * PackageFormat.DefaultChunkSize, seed: 4);
        RoundTrip(plaintext, PackageFormat.DefaultChunkSize, HashingMode.Pipelined);
    }

    [Fact]
    public void Package_sizes_follow_the_format()
    {
        foreach (var size in new[] { 0, 1, 64, 65, 640 })
        {
            var package = Packages.Seal(new byte[size], _key);
            var layout = Packages.Parse(package);
            Assert.Equal(PackageFormat.ChunkCount(size, 64), layout.RecordStarts.Length);
            Assert.Equal(PackageFormat.PackageLength(size, 64, layout.ManifestLength), package.Length);
        }

        Assert.Equal(1, PackageFormat.ChunkCount(0, 64));
        Assert.Equal(1, PackageFormat.ChunkCount(64, 64));
        Assert.Equal(2, PackageFormat.ChunkCount(65, 64));
    }

    [Fact]
    public void Every_content_type_and_unicode_metadata_survive()
    {
        foreach (var type in Enum.GetValues<ContentType>())
        {
            var options = new SealOptions
            {
                ContentType = type,
                Owner = "Hôpital Universitaire — Genève",
                ChunkSize = 64,
                Metadata = new Dictionary<string, string>
                {
                    ["zeta"] = "last",
                    ["Ärzte"] = "umlaut key",
                    ["emoji 🧠"] = "astral-plane key",
                    ["a"] = "",
                    ["\uE000 private use"] = "sorts after the emoji in UTF-16, before it in UTF-8",
                },
            };
            var package = Packages.Seal([1, 2, 3], _key, options);
            using var opened = Packages.OpenMemory(package, _key, Packages.ExpectOwner, seekable: false);
            var m = opened.Info.Manifest;
            Assert.Equal(type, m.ContentType);
            Assert.Equal(options.Owner, m.Owner);
            Assert.Equal(options.Metadata.OrderBy(p => p.Key, Utf8Order.Instance), m.Metadata);
        }
    }

    [Fact]
    public async Task Sealing_reads_one_chunk_ahead_and_never_seeks()
    {
        var plaintext = Packages.RandomBytes(300, seed: 8);
        var input = ForwardOnlyStream.Reader(plaintext);
        var output = ForwardOnlyStream.Writer();
        var info = await SealedPackage.SealAsync(input, output, _key, Packages.Owner, Packages.Options(), TestContext.Current.CancellationToken);
        Assert.Equal(300, info.Manifest.PlaintextLength);
        Assert.Equal(output.Written.Length, info.PackageLength);
        using var opened = Packages.OpenMemory(output.Written, _key, Packages.ExpectOwner, seekable: true);
        Assert.Equal(plaintext, opened.ToArray());
    }

    [Fact]
    public void Opening_without_a_signer_check_is_explicit_and_reported()
    {
        var package = Packages.Seal([42], _key);
        using var opened = Packages.OpenMemory(package, _key, SignerCheck.SkipSignatureVerification, seekable: true);
        Assert.False(opened.Info.SignatureVerified);
        Assert.Equal([42], opened.ToArray());
        Assert.Throws<ArgumentNullException>(() => SignerCheck.Expect(null!));
    }

    [Fact]
    public void Disposing_an_opened_package_zeroes_the_plaintext()
    {
        var plaintext = Packages.RandomBytes(200, seed: 9);
        var opened = Packages.OpenMemory(Packages.Seal(plaintext, _key), _key, Packages.ExpectOwner, seekable: true);
        var view = opened.Plaintext;
        Assert.Equal(plaintext, view.ToArray());
        opened.Dispose();
        Assert.All(view.ToArray(), b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task One_signing_key_and_one_data_key_serve_concurrent_packages()
    {
        var ct = TestContext.Current.CancellationToken;
        var plaintexts = Enumerable.Range(0, 16).Select(i => Packages.RandomBytes(1000 + 97 * i, seed: 100 + i)).ToArray();
        var packages = await Task.WhenAll(plaintexts.Select(p => Task.Run(async () =>
        {
            var output = new MemoryStream();
            await SealedPackage.SealAsync(new MemoryStream(p), output, _key, Packages.Owner, Packages.Options(hashing: HashingMode.Pipelined), ct);
            return output.ToArray();
        }, ct)));
        var opened = await Task.WhenAll(packages.Select(p => Task.Run(async () =>
        {
            using var o = await SealedPackage.OpenToMemoryAsync(new MemoryStream(p), _key, Packages.ExpectOwner, cancellationToken: ct);
            return o.ToArray();
        }, ct)));
        Assert.Equal(plaintexts, opened);
    }

    private void RoundTrip(byte[] plaintext, int chunk, HashingMode hashing)
    {
        var options = Packages.Options(chunk, hashing);
        var package = Packages.Seal(plaintext, _key, options);
        var expectedSha = Packages.Sha256Hex(plaintext);
        foreach (var seekable in new[] { true, false })
        {
            using var opened = Packages.OpenMemory(package, _key, Packages.ExpectOwner, seekable, hashing);
            Assert.True(plaintext.AsSpan().SequenceEqual(opened.Plaintext.Span), $"size {plaintext.Length}, chunk {chunk}, seekable {seekable}");
            var info = opened.Info;
            Assert.True(info.SignatureVerified);
            Assert.Equal(plaintext.Length, info.Manifest.PlaintextLength);
            Assert.Equal(expectedSha, info.Manifest.PlaintextSha256);
            Assert.Equal(chunk, info.ChunkSize);
            Assert.Equal(_key.KeyId, info.KeyId);
            Assert.Equal(package.Length, info.PackageLength);
            Assert.Equal(PackageFormat.ChunkCount(plaintext.Length, chunk), info.ChunkCount);
            Assert.Equal(options.CreatedAt, info.Manifest.CreatedAt);
            Assert.Equal("hospital-a", info.Manifest.Owner);
            Assert.Equal(Packages.Owner.Thumbprint, info.Manifest.SignerThumbprint);

            var destination = _folder.File($"out-{plaintext.Length}-{seekable}.bin");
            Stream input = seekable ? new MemoryStream(package, writable: false) : ForwardOnlyStream.Reader(package);
            var fileInfo = SealedPackage.OpenToFileAsync(input, destination, _key, Packages.ExpectOwner, new OpenOptions { Hashing = hashing }).GetAwaiter().GetResult();
            Assert.Equal(plaintext, File.ReadAllBytes(destination));
            Assert.Equal(expectedSha, fileInfo.Manifest.PlaintextSha256);
            File.Delete(destination);
            Assert.Empty(_folder.Entries());
        }
    }

    private sealed class Utf8Order : IComparer<string>
    {
        public static readonly Utf8Order Instance = new();

        public int Compare(string? x, string? y) =>
            System.Text.Encoding.UTF8.GetBytes(x!).AsSpan().SequenceCompareTo(System.Text.Encoding.UTF8.GetBytes(y!));
    }
}
