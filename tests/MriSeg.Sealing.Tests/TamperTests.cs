namespace MriSeg.Sealing.Tests;

/// <summary>
/// The tamper suite: a small package (3 chunks of 64 bytes, the last one partial) altered every way the
/// format must detect, each opened four ways (memory and file, seekable and forward-only). Every alteration
/// must be refused on every path, leaving no output or temporary file.
/// </summary>
public sealed class TamperTests : IDisposable
{
    private static readonly byte[] Plaintext = Packages.RandomBytes(2 * Packages.SmallChunk + 37, seed: 17);

    private readonly DataKey _key = DataKey.Generate();
    private readonly TempFolder _folder = new();
    private readonly byte[] _package;
    private readonly Packages.Layout _layout;

    public TamperTests()
    {
        _package = Packages.Seal(Plaintext, _key);
        _layout = Packages.Parse(_package);
    }

    public void Dispose()
    {
        _key.Dispose();
        _folder.Dispose();
    }

    [Fact]
    public void The_untouched_package_opens_every_way()
    {
        Assert.Equal(3, _layout.RecordStarts.Length);
        var results = Rejection.TryAll(_package, _key, Packages.ExpectOwner, _folder);
        Assert.All(results, Assert.Null);
    }

    [Fact]
    public void Every_bit_flip_in_the_header_is_refused() =>
        FlipEveryBit(0, _layout.HeaderEnd, Packages.ExpectOwner);

    [Fact]
    public void Every_bit_flip_in_every_chunk_record_is_refused_and_named()
    {
        for (var chunk = 0; chunk < _layout.RecordStarts.Length; chunk++)
        {
            var start = _layout.RecordStarts[chunk];
            var errors = FlipEveryBit(start, start + _layout.RecordLengths[chunk], Packages.ExpectOwner);

            // A flip in the ciphertext or tag (past the record word) is an authentication failure of that chunk.
            foreach (var (offset, results) in errors.Where(e => e.Offset >= start + 4))
            {
                foreach (var e in results)
                {
                    Assert.Equal(SealingError.ChunkAuthenticationFailed, e.Error);
                    Assert.Equal(chunk, e.ChunkIndex);
                    Assert.StartsWith($"chunk {chunk}: authentication failed", e.Message, StringComparison.Ordinal);
                }
            }
        }
    }

    [Fact]
    public void Every_bit_flip_in_the_trailer_is_refused() =>
        FlipEveryBit(_layout.TrailerStart, _layout.End, Packages.ExpectOwner);

    [Fact]
    public void Without_a_signer_check_every_flip_outside_the_signature_is_still_refused()
    {
        // The data key alone authenticates header, chunks and manifest (the final chunk's associated data).
        FlipEveryBit(0, _layout.HeaderEnd, SignerCheck.SkipSignatureVerification);
        FlipEveryBit(_layout.TrailerStart, _layout.SignatureStart, SignerCheck.SkipSignatureVerification);
        FlipEveryBit(_layout.FooterStart, _layout.End, SignerCheck.SkipSignatureVerification);
        FlipEveryBit(_layout.RecordStarts[^1], _layout.TrailerStart, SignerCheck.SkipSignatureVerification);
    }

    [Fact]
    public void Manifest_flips_fail_the_signature_when_the_signer_is_checked()
    {
        // Past the signer thumbprint (offset 49..81 of the manifest), a flip can only be caught by the signature
        // (or, for the content type and lengths, by parsing first).
        var ownerOffset = _layout.ManifestStart + 81 + 2;
        var flipped = (byte[])_package.Clone();
        flipped[ownerOffset] ^= 0x01; // "hospital-a" -> "iospital-a"
        foreach (var e in Rejection.All(flipped, _key, Packages.ExpectOwner, _folder))
        {
            Assert.Equal(SealingError.SignatureInvalid, e.Error);
            Assert.Equal("signature does not verify against the expected signer", e.Message);
        }

        foreach (var e in Rejection.All(flipped, _key, SignerCheck.SkipSignatureVerification, _folder))
        {
            Assert.Equal(SealingError.ChunkAuthenticationFailed, e.Error);
            Assert.Equal(2, e.ChunkIndex);
        }
    }

    [Fact]
    public void Truncation_at_every_length_is_refused()
    {
        var accepted = new List<string>();
        for (var length = 0; length < _package.Length; length++)
        {
            var results = Rejection.TryAll(_package[..length], _key, Packages.ExpectOwner, _folder);
            for (var path = 0; path < results.Length; path++)
            {
                if (results[path] is null)
                {
                    accepted.Add($"{length}:{Rejection.Paths[path]}");
                }
                else
                {
                    Assert.Equal(SealingError.Truncated, results[path]!.Error);
                }
            }
        }

        Assert.Empty(accepted);
    }

    [Fact]
    public void Truncation_at_a_chunk_boundary_says_there_is_no_final_chunk()
    {
        // After chunk 0 and after chunk 1: what remains is a valid-looking prefix of whole chunks.
        foreach (var (boundary, chunks) in new[] { (_layout.RecordStarts[1], 1), (_layout.RecordStarts[2], 2) })
        {
            var results = Rejection.All(_package[..boundary], _key, Packages.ExpectOwner, _folder);
            Assert.All(results, e => Assert.Equal(SealingError.Truncated, e.Error));
            Assert.Equal($"truncated: no final chunk (the package ends after {chunks} chunk(s))", results[1].Message);
            Assert.Equal($"truncated: no final chunk (the package ends after {chunks} chunk(s))", results[3].Message);
        }

        // Cutting the trailer after the final chunk.
        var noTrailer = Rejection.All(_package[.._layout.TrailerStart], _key, Packages.ExpectOwner, _folder);
        Assert.Equal("truncated: trailer incomplete", noTrailer[1].Message);
    }

    [Fact]
    public void Trailing_bytes_are_refused()
    {
        var results = Rejection.All([.. _package, 0], _key, Packages.ExpectOwner, _folder);
        Assert.Equal(SealingError.TrailingData, results[1].Error);
        Assert.Equal(SealingError.TrailingData, results[3].Error);
    }

    [Fact]
    public void Swapped_duplicated_and_dropped_chunks_are_refused()
    {
        // Four chunks, three of them full, so whole records can be moved around without touching the record words.
        var plaintext = Packages.RandomBytes(3 * Packages.SmallChunk + 10, seed: 5);
        var package = Packages.Seal(plaintext, _key);
        var l = Packages.Parse(package);
        byte[] R(int i) => package[l.RecordStarts[i]..(l.RecordStarts[i] + l.RecordLengths[i])];
        var head = package[..l.HeaderEnd];
        var trailer = package[l.TrailerStart..];

        var cases = new Dictionary<string, (byte[] Package, long FailingChunk)>
        {
            ["swap 0 and 1"] = (Packages.Splice(head, R(1), R(0), R(2), R(3), trailer), 0),
            ["swap 1 and 2"] = (Packages.Splice(head, R(0), R(2), R(1), R(3), trailer), 1),
            ["chunk 0 twice instead of chunk 1"] = (Packages.Splice(head, R(0), R(0), R(2), R(3), trailer), 1),
            ["chunk 0 duplicated"] = (Packages.Splice(head, R(0), R(0), R(1), R(2), R(3), trailer), 1),
            ["chunk 1 dropped"] = (Packages.Splice(head, R(0), R(2), R(3), trailer), 1),
            ["final chunk replaced by chunk 2 marked final"] = (Packages.Splice(head, R(0), R(1), MarkFinal(R(2)), trailer), 2),
        };
        foreach (var (name, (tampered, failing)) in cases)
        {
            var results = Rejection.All(tampered, _key, Packages.ExpectOwner, _folder);

            // The forward-only paths read every chunk in order and name the first out-of-place one.
            Assert.True(results[1].Error == SealingError.ChunkAuthenticationFailed, $"{name}: {results[1].Message}");
            Assert.Equal(failing, results[1].ChunkIndex);
            Assert.Equal(failing, results[3].ChunkIndex);
        }
    }

    [Fact]
    public void Chunks_header_and_trailer_from_another_package_under_the_same_key_are_refused()
    {
        // Same key, same chunk size, same plaintext: only the random nonce prefix (and so the header digest) differs.
        var other = Packages.Seal(Plaintext, _key);
        var o = Packages.Parse(other);
        Assert.Equal(_layout.RecordStarts, o.RecordStarts);

        for (var chunk = 0; chunk < 3; chunk++)
        {
            var start = _layout.RecordStarts[chunk];
            var spliced = (byte[])_package.Clone();
            Array.Copy(other, start, spliced, start, _layout.RecordLengths[chunk]);
            foreach (var check in new[] { Packages.ExpectOwner, SignerCheck.SkipSignatureVerification })
            {
                var results = Rejection.All(spliced, _key, check, _folder);
                Assert.All(results, e => Assert.Equal(SealingError.ChunkAuthenticationFailed, e.Error));
                Assert.All(results, e => Assert.Equal(chunk, e.ChunkIndex));
            }
        }

        // Foreign header: the signature covers the header digest (checked first when the input is seekable;
        // a forward-only reader meets chunk 0 first); without a signer check, chunk 0 fails.
        var foreignHeader = Packages.Splice(other[..48], _package[48..]);
        ExpectSeekableThenForwardOnly(Rejection.All(foreignHeader, _key, Packages.ExpectOwner, _folder), SealingError.SignatureInvalid, 0);
        Assert.All(Rejection.All(foreignHeader, _key, SignerCheck.SkipSignatureVerification, _folder), e => Assert.Equal(0, e.ChunkIndex));

        // Foreign trailer: the other package's manifest and signature; that signature is over the other header.
        var foreignTrailer = Packages.Splice(_package[.._layout.TrailerStart], other[o.TrailerStart..]);
        Assert.All(Rejection.All(foreignTrailer, _key, Packages.ExpectOwner, _folder), e => Assert.Equal(SealingError.SignatureInvalid, e.Error));
    }

    [Fact]
    public void A_wrong_data_key_is_named_as_such()
    {
        using var wrong = DataKey.Generate();
        foreach (var e in Rejection.All(_package, wrong, Packages.ExpectOwner, _folder))
        {
            Assert.Equal(SealingError.WrongDataKey, e.Error);
            Assert.Equal($"wrong data key: the package is sealed under key id {_key.KeyId}, the given key has id {wrong.KeyId}", e.Message);
        }
    }

    [Fact]
    public void Rewriting_the_key_id_to_the_wrong_key_does_not_help()
    {
        using var wrong = DataKey.Generate();
        var forged = (byte[])_package.Clone();
        Convert.FromHexString(wrong.KeyId).CopyTo(forged, 20);
        ExpectSeekableThenForwardOnly(Rejection.All(forged, wrong, Packages.ExpectOwner, _folder), SealingError.SignatureInvalid, 0);
        Assert.All(Rejection.All(forged, wrong, SignerCheck.SkipSignatureVerification, _folder), e =>
        {
            Assert.Equal(SealingError.ChunkAuthenticationFailed, e.Error);
            Assert.Equal(0, e.ChunkIndex);
        });
    }

    [Fact]
    public void A_wrong_signer_is_refused()
    {
        var results = Rejection.All(_package, _key, SignerCheck.Expect(Packages.Stranger.PublicKey), _folder);
        Assert.All(results, e => Assert.Equal(SealingError.SignerMismatch, e.Error));
        Assert.StartsWith("signer mismatch: the package names signer ", results[0].Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_key_holder_cannot_pass_off_a_package_as_the_owners()
    {
        // Whoever holds the data key (the clean room, the key broker) seals other content claiming the owner's
        // name and, after the fact, the owner's thumbprint: the owner's key check refuses both.
        var forgedContent = Packages.RandomBytes(Plaintext.Length, seed: 99);
        var byStranger = Packages.Seal(forgedContent, _key, signer: Packages.Stranger);
        Assert.All(Rejection.All(byStranger, _key, Packages.ExpectOwner, _folder), e => Assert.Equal(SealingError.SignerMismatch, e.Error));

        var l = Packages.Parse(byStranger);
        var withOwnersThumbprint = (byte[])byStranger.Clone();
        Convert.FromHexString(Packages.Owner.Thumbprint).CopyTo(withOwnersThumbprint, l.ManifestStart + 49);
        Assert.All(Rejection.All(withOwnersThumbprint, _key, Packages.ExpectOwner, _folder), e => Assert.Equal(SealingError.SignatureInvalid, e.Error));
    }

    /// <summary>Seekable paths check the trailer before decrypting; forward-only ones fail at the first chunk.</summary>
    private static void ExpectSeekableThenForwardOnly(SealedPackageException[] results, SealingError seekable, long forwardOnlyChunk)
    {
        Assert.Equal(seekable, results[0].Error);
        Assert.Equal(seekable, results[2].Error);
        Assert.Equal(SealingError.ChunkAuthenticationFailed, results[1].Error);
        Assert.Equal(SealingError.ChunkAuthenticationFailed, results[3].Error);
        Assert.Equal(forwardOnlyChunk, results[1].ChunkIndex);
        Assert.Equal(forwardOnlyChunk, results[3].ChunkIndex);
    }

    private static byte[] MarkFinal(byte[] record)
    {
        var copy = (byte[])record.Clone();
        copy[0] |= 0x80;
        return copy;
    }

    /// <summary>Flips every bit of [from, to) one at a time; asserts each flip is refused on every path.</summary>
    private List<(int Offset, SealedPackageException[] Errors)> FlipEveryBit(int from, int to, SignerCheck check)
    {
        var accepted = new List<string>();
        var all = new List<(int, SealedPackageException[])>();
        for (var offset = from; offset < to; offset++)
        {
            var errors = new List<SealedPackageException>();
            for (var bit = 0; bit < 8; bit++)
            {
                var tampered = (byte[])_package.Clone();
                tampered[offset] ^= (byte)(1 << bit);
                var results = Rejection.TryAll(tampered, _key, check, _folder);
                for (var path = 0; path < results.Length; path++)
                {
                    if (results[path] is { } e)
                    {
                        errors.Add(e);
                    }
                    else
                    {
                        accepted.Add($"offset {offset} bit {bit} via {Rejection.Paths[path]}");
                    }
                }
            }

            all.Add((offset, errors.ToArray()));
        }

        Assert.True(accepted.Count == 0, "accepted: " + string.Join("; ", accepted.Take(20)));
        return all;
    }
}
