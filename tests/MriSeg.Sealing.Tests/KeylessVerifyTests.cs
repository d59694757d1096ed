namespace MriSeg.Sealing.Tests;

/// <summary>
/// <see cref="SealedPackage.VerifyWithoutKeyAsync"/> (what a verifier without the data key can check),
/// <see cref="MeteredStream"/> and <see cref="SealedPackage.SealToFileAsync"/>.
/// </summary>
public sealed class KeylessVerifyTests : IDisposable
{
    private static readonly byte[] Plaintext = Packages.RandomBytes(2 * Packages.SmallChunk + 37, seed: 23);

    private readonly DataKey _key = DataKey.Generate();
    private readonly TempFolder _folder = new();
    private readonly byte[] _package;
    private readonly Packages.Layout _layout;

    public KeylessVerifyTests()
    {
        _package = Packages.Seal(Plaintext, _key);
        _layout = Packages.Parse(_package);
    }

    public void Dispose()
    {
        _key.Dispose();
        _folder.Dispose();
    }

    private static Task<PackageInfo> Verify(byte[] package, SignerCheck check) =>
        SealedPackage.VerifyWithoutKeyAsync(ForwardOnlyStream.Reader(package), check, TestContext.Current.CancellationToken);

    private async Task<SealedPackageException> Refused(byte[] package, SignerCheck? check = null) =>
        await Assert.ThrowsAsync<SealedPackageException>(() => Verify(package, check ?? Packages.ExpectOwner));

    private byte[] Flipped(int offset)
    {
        var copy = (byte[])_package.Clone();
        copy[offset] ^= 0x01;
        return copy;
    }

    [Fact]
    public async Task A_sound_package_verifies_forward_only_with_its_manifest_and_signer()
    {
        var info = await Verify(_package, Packages.ExpectOwner);

        Assert.True(info.SignatureVerified);
        Assert.Equal(_key.KeyId, info.KeyId);
        Assert.Equal(Plaintext.Length, info.Manifest.PlaintextLength);
        Assert.Equal(Packages.Sha256Hex(Plaintext), info.Manifest.PlaintextSha256);
        Assert.Equal(_package.Length, info.PackageLength);
        Assert.Equal(3, info.ChunkCount);
    }

    [Fact]
    public async Task Without_a_signer_check_it_says_the_signature_was_not_verified()
    {
        var info = await Verify(_package, SignerCheck.SkipSignatureVerification);
        Assert.False(info.SignatureVerified);
    }

    [Fact]
    public async Task Header_manifest_and_signature_alterations_and_framing_errors_are_refused()
    {
        Assert.Equal(SealingError.SignatureInvalid, (await Refused(Flipped(30))).Error);                       // key id
        Assert.Equal(SealingError.SignatureInvalid, (await Refused(Flipped(_layout.ManifestStart + 20))).Error); // plaintext SHA-256
        Assert.Equal(SealingError.SignatureInvalid, (await Refused(Flipped(_layout.SignatureStart + 5))).Error);
        Assert.Equal(SealingError.SignerMismatch, (await Refused(_package, SignerCheck.Expect(Packages.Stranger.PublicKey))).Error);
        Assert.Equal(SealingError.Malformed, (await Refused(Flipped(0))).Error);                                // magic
        Assert.Equal(SealingError.Malformed, (await Refused(Flipped(_layout.RecordStarts[1] + 3))).Error);      // a record longer than the chunk size
        Assert.Equal(SealingError.Truncated, (await Refused(_package[.._layout.RecordStarts[2]])).Error);
        Assert.Equal(SealingError.TrailingData, (await Refused([.. _package, 0])).Error);
        var lostChunk = Packages.Splice(_package[.._layout.RecordStarts[1]], _package[_layout.RecordStarts[2]..]);
        Assert.Equal(SealingError.ManifestInvalid, (await Refused(lostChunk)).Error);
    }

    [Fact]
    public async Task A_ciphertext_alteration_passes_without_the_key_but_changes_the_sealed_sha256()
    {
        // The limit of keyless verification: chunk ciphertexts and tags need the key. What binds them is a
        // digest of the sealed bytes recorded at sealing time.
        var altered = Flipped(_layout.RecordStarts[1] + 10);
        var info = await Verify(altered, Packages.ExpectOwner);
        Assert.True(info.SignatureVerified);

        await using var metered = MeteredStream.ForReading(new MemoryStream(altered), sha256: true);
        await SealedPackage.VerifyWithoutKeyAsync(metered, Packages.ExpectOwner, TestContext.Current.CancellationToken);
        Assert.Equal(altered.Length, metered.BytesTransferred);
        Assert.Equal(Packages.Sha256Hex(altered), metered.Sha256Hex);
        Assert.NotEqual(Packages.Sha256Hex(_package), metered.Sha256Hex);
    }

    [Fact]
    public async Task A_metered_writer_hashes_what_sealing_writes_and_reports_progress()
    {
        var reports = new List<long>();
        var sink = new MemoryStream();
        await using (var metered = MeteredStream.ForWriting(sink, sha256: true, (n, _) => { reports.Add(n); return ValueTask.CompletedTask; }, leaveOpen: true))
        {
            await SealedPackage.SealAsync(new MemoryStream(Plaintext), metered, _key, Packages.Owner, Packages.Options(), TestContext.Current.CancellationToken);
            Assert.Equal(Packages.Sha256Hex(sink.ToArray()), metered.Sha256Hex);
            Assert.False(metered.CanSeek);
        }

        Assert.Equal(sink.Length, reports[^1]);
        Assert.Equal(reports.Order(), reports);
    }

    [Fact]
    public async Task Sealing_a_stream_to_a_file_leaves_only_the_package_and_refuses_an_existing_one()
    {
        var path = _folder.File("p.sealed");
        await SealedPackage.SealToFileAsync(new MemoryStream(Plaintext), path, _key, Packages.Owner, Packages.Options(), cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(new[] { path }, _folder.Entries());
        using (var opened = Packages.OpenMemory(File.ReadAllBytes(path), _key, Packages.ExpectOwner, seekable: true))
        {
            Assert.Equal(Plaintext, opened.ToArray());
        }

        var e = await Assert.ThrowsAsync<SealedPackageException>(() =>
            SealedPackage.SealToFileAsync(new MemoryStream(Plaintext), path, _key, Packages.Owner, Packages.Options(), cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal(SealingError.DestinationExists, e.Error);
        Assert.Equal(new[] { path }, _folder.Entries());
    }
}
