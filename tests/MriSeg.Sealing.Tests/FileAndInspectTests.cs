using System.Text;

namespace MriSeg.Sealing.Tests;

/// <summary>Opening to files (temporary file, mode, rename, overwrite), sealing files, inspecting without a key.</summary>
public sealed class FileAndInspectTests : IDisposable
{
    private readonly DataKey _key = DataKey.Generate();
    private readonly TempFolder _folder = new();

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public void Dispose()
    {
        _key.Dispose();
        _folder.Dispose();
    }

    [Fact]
    public void Inspect_without_a_key_shows_the_manifest()
    {
        var plaintext = Packages.RandomBytes(1000, seed: 1);
        var path = _folder.File("shard.mspk");
        File.WriteAllBytes(path, Packages.Seal(plaintext, _key, Packages.Options(chunkSize: 128)));

        var unverified = SealedPackage.Inspect(path, SignerCheck.SkipSignatureVerification);
        Assert.False(unverified.SignatureVerified);
        Assert.Equal(ContentType.Dataset, unverified.Manifest.ContentType);
        Assert.Equal("hospital-a", unverified.Manifest.Owner);
        Assert.Equal(1000, unverified.Manifest.PlaintextLength);
        Assert.Equal(Packages.Sha256Hex(plaintext), unverified.Manifest.PlaintextSha256);
        Assert.Equal("3/8", unverified.Manifest.Metadata["shard"]);
        Assert.Equal(new DateTimeOffset(2025, 11, 26, 12, 0, 0, 123, TimeSpan.Zero), unverified.Manifest.CreatedAt);
        Assert.Equal(_key.KeyId, unverified.KeyId);
        Assert.Equal(128, unverified.ChunkSize);
        Assert.Equal(8, unverified.ChunkCount);
        Assert.Equal(new FileInfo(path).Length, unverified.PackageLength);

        var verified = SealedPackage.Inspect(path, Packages.ExpectOwner);
        Assert.True(verified.SignatureVerified);

        var e = Assert.Throws<SealedPackageException>(() => SealedPackage.Inspect(path, SignerCheck.Expect(Packages.Stranger.PublicKey)));
        Assert.Equal(SealingError.SignerMismatch, e.Error);
    }

    [Fact]
    public void Inspect_refuses_forward_only_streams_and_damaged_packages()
    {
        var package = Packages.Seal(Packages.RandomBytes(300, seed: 2), _key);
        var e = Assert.Throws<SealedPackageException>(() => SealedPackage.Inspect(ForwardOnlyStream.Reader(package), SignerCheck.SkipSignatureVerification));
        Assert.Equal(SealingError.NotSeekable, e.Error);

        // A chunk dropped from the middle: the trailer is intact but the length no longer matches the manifest.
        var l = Packages.Parse(package);
        var dropped = Packages.Splice(package[..l.RecordStarts[1]], package[l.RecordStarts[2]..]);
        e = Assert.Throws<SealedPackageException>(() => SealedPackage.Inspect(new MemoryStream(dropped), SignerCheck.SkipSignatureVerification));
        Assert.Equal(SealingError.Truncated, e.Error);

        e = Assert.Throws<SealedPackageException>(() => SealedPackage.Inspect(new MemoryStream(package[..^1]), SignerCheck.SkipSignatureVerification));
        Assert.Equal(SealingError.Truncated, e.Error);

        e = Assert.Throws<SealedPackageException>(() => SealedPackage.Inspect(new MemoryStream(Encoding.ASCII.GetBytes("not a package at all, not at all, not at all, no")), SignerCheck.SkipSignatureVerification));
        Assert.Equal(SealingError.Malformed, e.Error);
        Assert.Equal("not a sealed package: bad header magic", e.Message);
    }

    [Fact]
    public async Task Opening_to_a_file_writes_a_0600_temporary_file_beside_the_destination_and_renames_it()
    {
        var plaintext = Packages.RandomBytes(500, seed: 3);
        var package = Packages.Seal(plaintext, _key);
        var destination = _folder.File("opened.bin");
        var spy = new SpyStream(package, atOffset: package.Length - 10, () =>
        {
            // Mid-open: only the temporary file exists, hidden, beside the destination, owner-only.
            var entries = _folder.Entries();
            var temp = Assert.Single(entries);
            Assert.StartsWith(".opened.bin.", Path.GetFileName(temp), StringComparison.Ordinal);
            Assert.EndsWith(".partial", temp, StringComparison.Ordinal);
            if (!OperatingSystem.IsWindows())
            {
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(temp));
            }

            Assert.False(File.Exists(destination));
        });

        await SealedPackage.OpenToFileAsync(spy, destination, _key, Packages.ExpectOwner, cancellationToken: Ct);
        Assert.True(spy.Fired);
        Assert.Equal(plaintext, File.ReadAllBytes(destination));
        Assert.Equal([destination], _folder.Entries());
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(destination));
        }
    }

    [Fact]
    public async Task An_existing_destination_is_refused_or_replaced_only_after_verification()
    {
        var package = Packages.Seal([1, 2, 3], _key);
        var destination = _folder.File("existing.bin");
        File.WriteAllText(destination, "keep me");

        var e = await Assert.ThrowsAsync<SealedPackageException>(() =>
            SealedPackage.OpenToFileAsync(new MemoryStream(package), destination, _key, Packages.ExpectOwner, cancellationToken: Ct));
        Assert.Equal(SealingError.DestinationExists, e.Error);
        Assert.Equal("keep me", File.ReadAllText(destination));

        var tampered = (byte[])package.Clone();
        tampered[60] ^= 1;
        var overwrite = new OpenOptions { Overwrite = true };
        await Assert.ThrowsAsync<SealedPackageException>(() =>
            SealedPackage.OpenToFileAsync(ForwardOnlyStream.Reader(tampered), destination, _key, Packages.ExpectOwner, overwrite, Ct));
        Assert.Equal("keep me", File.ReadAllText(destination));
        Assert.Single(_folder.Entries());

        await SealedPackage.OpenToFileAsync(ForwardOnlyStream.Reader(package), destination, _key, Packages.ExpectOwner, overwrite, Ct);
        Assert.Equal([1, 2, 3], File.ReadAllBytes(destination));
    }

    [Fact]
    public async Task Sealing_a_file_round_trips_and_leaves_nothing_on_failure()
    {
        var plaintext = Packages.RandomBytes(5000, seed: 4);
        var input = _folder.File("in.bin");
        File.WriteAllBytes(input, plaintext);
        var packagePath = _folder.File("in.mspk");
        var info = await SealedPackage.SealFileAsync(input, packagePath, _key, Packages.Owner, Packages.Options(chunkSize: 1024), cancellationToken: Ct);
        Assert.Equal(new FileInfo(packagePath).Length, info.PackageLength);
        Assert.Equal(info.Manifest.PlaintextSha256, SealedPackage.Inspect(packagePath, Packages.ExpectOwner).Manifest.PlaintextSha256);
        await using (var stream = File.OpenRead(packagePath))
        using (var opened = await SealedPackage.OpenToMemoryAsync(stream, _key, Packages.ExpectOwner, cancellationToken: Ct))
        {
            Assert.Equal(plaintext, opened.ToArray());
        }

        var e = await Assert.ThrowsAsync<SealedPackageException>(() =>
            SealedPackage.SealFileAsync(input, packagePath, _key, Packages.Owner, Packages.Options(), cancellationToken: Ct));
        Assert.Equal(SealingError.DestinationExists, e.Error);

        var bad = new SealOptions { ContentType = ContentType.Model, Owner = "evil\u001b[2Jowner" };
        e = await Assert.ThrowsAsync<SealedPackageException>(() =>
            SealedPackage.SealFileAsync(input, _folder.File("bad.mspk"), _key, Packages.Owner, bad, cancellationToken: Ct));
        Assert.Equal(SealingError.InvalidArgument, e.Error);
        Assert.Equal(["in.bin", "in.mspk"], _folder.Entries().Select(Path.GetFileName).Order(StringComparer.Ordinal));
    }

    [Fact]
    public async Task A_failing_input_stops_sealing_with_its_own_exception()
    {
        var output = ForwardOnlyStream.Writer();
        var input = new FailingStream(after: 200);
        await Assert.ThrowsAsync<IOException>(() =>
            SealedPackage.SealAsync(input, output, _key, Packages.Owner, Packages.Options(), Ct));
    }

    [Theory]
    [InlineData(15)]
    [InlineData(PackageFormat.MaxChunkSize + 1)]
    public void Chunk_sizes_out_of_range_are_refused(int chunkSize)
    {
        var e = Assert.Throws<SealedPackageException>(() => Packages.Seal([1], _key, Packages.Options(chunkSize)));
        Assert.Equal(SealingError.InvalidArgument, e.Error);
    }

    [Fact]
    public void Manifest_rules_are_enforced_when_sealing()
    {
        SealOptions With(string owner, Dictionary<string, string>? metadata = null) =>
            new() { ContentType = ContentType.Output, Owner = owner, Metadata = metadata, ChunkSize = 64 };

        foreach (var options in new[]
        {
            With(""),
            With(new string('x', 1025)),
            With("line\nbreak"),
            With("ok", new() { [""] = "empty key" }),
            With("ok", new() { ["key\tTab"] = "x" }),
            With("ok", new() { ["k"] = "escape \u001b[31m" }),
            With("ok", new() { ["k"] = new string('v', 65536) }),
            With("ok", Enumerable.Range(0, 1025).ToDictionary(i => $"k{i}", i => "v")),
            With("lone \ud800 surrogate"),
        })
        {
            var e = Assert.Throws<SealedPackageException>(() => Packages.Seal([1], _key, options));
            Assert.Equal(SealingError.InvalidArgument, e.Error);
        }

        // Values may hold line breaks and tabs.
        Packages.Seal([1], _key, With("ok", new() { ["k"] = "a\tb\r\nc" }));
    }

    /// <summary>Reads a byte array and runs a callback once reading passes an offset.</summary>
    private sealed class SpyStream(byte[] data, int atOffset, Action callback) : Stream
    {
        private readonly MemoryStream _inner = new(data, writable: false);

        public bool Fired { get; private set; }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (!Fired && _inner.Position >= atOffset)
            {
                Fired = true;
                callback();
            }

            return _inner.Read(buffer, offset, count);
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private sealed class FailingStream(int after) : Stream
    {
        private int _read;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (_read >= after)
            {
                throw new IOException("disk on fire");
            }

            var n = Math.Min(count, after - _read);
            Array.Fill(buffer, (byte)7, offset, n);
            _read += n;
            return n;
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
