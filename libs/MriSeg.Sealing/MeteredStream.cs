using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>
/// A pass-through stream for streaming packages to and from storage: counts the bytes that go through it,
/// optionally computes their SHA-256 (the sealed SHA-256 of a package as uploaded or downloaded), and
/// optionally reports progress. It reads or writes, never both. With hashing it is forward-only
/// (<see cref="CanSeek"/> is false); without, seeking passes through to the inner stream (then
/// <see cref="BytesTransferred"/> counts every byte read, the re-reads of a seekable opener included).
/// The progress callback runs after each read or write, on the caller's flow, so it may write to a
/// response stream without racing the next read (sealing and opening read and write sequentially).
/// </summary>
public sealed class MeteredStream : Stream
{
    private readonly Stream _inner;
    private readonly bool _write;
    private readonly bool _leaveOpen;
    private readonly IncrementalHash? _hash;
    private readonly Func<long, CancellationToken, ValueTask>? _progress;
    private byte[]? _digest;

    private MeteredStream(Stream inner, bool write, bool sha256, Func<long, CancellationToken, ValueTask>? progress, bool leaveOpen)
    {
        ArgumentNullException.ThrowIfNull(inner);
        if (write ? !inner.CanWrite : !inner.CanRead)
        {
            throw new ArgumentException(write ? "the inner stream is not writable" : "the inner stream is not readable", nameof(inner));
        }

        _inner = inner;
        _write = write;
        _leaveOpen = leaveOpen;
        _hash = sha256 ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
        _progress = progress;
    }

    /// <summary>Reads from <paramref name="inner"/>.</summary>
    /// <param name="inner">The stream to read.</param>
    /// <param name="sha256">Compute the SHA-256 of the bytes read (makes the stream forward-only).</param>
    /// <param name="progress">Called with the bytes read so far after each read.</param>
    /// <param name="leaveOpen">Leave <paramref name="inner"/> open on dispose.</param>
    public static MeteredStream ForReading(Stream inner, bool sha256 = false, Func<long, CancellationToken, ValueTask>? progress = null, bool leaveOpen = false) =>
        new(inner, write: false, sha256, progress, leaveOpen);

    /// <summary>Writes to <paramref name="inner"/>.</summary>
    /// <param name="inner">The stream to write.</param>
    /// <param name="sha256">Compute the SHA-256 of the bytes written.</param>
    /// <param name="progress">Called with the bytes written so far after each write.</param>
    /// <param name="leaveOpen">Leave <paramref name="inner"/> open on dispose.</param>
    public static MeteredStream ForWriting(Stream inner, bool sha256 = false, Func<long, CancellationToken, ValueTask>? progress = null, bool leaveOpen = false) =>
        new(inner, write: true, sha256, progress, leaveOpen);

    /// <summary>Bytes read or written so far.</summary>
    public long BytesTransferred { get; private set; }

    /// <summary>
    /// The SHA-256 (lowercase hex) of every byte read or written, once the transfer is over (the first call
    /// ends the hashing; later reads or writes throw). Null when the stream was made without hashing.
    /// </summary>
    public string? Sha256Hex
    {
        get
        {
            if (_hash is null)
            {
                return null;
            }

            _digest ??= _hash.GetHashAndReset();
            return Convert.ToHexStringLower(_digest);
        }
    }

    /// <inheritdoc />
    public override bool CanRead => !_write;

    /// <inheritdoc />
    public override bool CanWrite => _write;

    /// <inheritdoc />
    public override bool CanSeek => _hash is null && _inner.CanSeek;

    /// <inheritdoc />
    public override long Length => CanSeek ? _inner.Length : throw new NotSupportedException();

    /// <inheritdoc />
    public override long Position
    {
        get => CanSeek ? _inner.Position : throw new NotSupportedException();
        set
        {
            if (!CanSeek)
            {
                throw new NotSupportedException();
            }

            _inner.Position = value;
        }
    }

    /// <inheritdoc />
    public override long Seek(long offset, SeekOrigin origin) => CanSeek ? _inner.Seek(offset, origin) : throw new NotSupportedException();

    /// <inheritdoc />
    public override void SetLength(long value) => throw new NotSupportedException();

    /// <inheritdoc />
    public override void Flush() => _inner.Flush();

    /// <inheritdoc />
    public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);

    /// <inheritdoc />
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    /// <inheritdoc />
    public override int Read(Span<byte> buffer)
    {
        RequireRead();
        var read = _inner.Read(buffer);
        Account(buffer[..read]);
        // A synchronous read cannot await the callback; only the asynchronous path reports progress.
        return read;
    }

    /// <inheritdoc />
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        RequireRead();
        var read = await _inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        Account(buffer.Span[..read]);
        if (read > 0 && _progress is not null)
        {
            await _progress(BytesTransferred, cancellationToken).ConfigureAwait(false);
        }

        return read;
    }

    /// <inheritdoc />
    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    /// <inheritdoc />
    public override void Write(ReadOnlySpan<byte> buffer)
    {
        RequireWrite();
        _inner.Write(buffer);
        Account(buffer);
    }

    /// <inheritdoc />
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <inheritdoc />
    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        RequireWrite();
        await _inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        Account(buffer.Span);
        if (!buffer.IsEmpty && _progress is not null)
        {
            await _progress(BytesTransferred, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _hash?.Dispose();
            if (!_leaveOpen)
            {
                _inner.Dispose();
            }
        }

        base.Dispose(disposing);
    }

    private void Account(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty)
        {
            return;
        }

        if (_digest is not null)
        {
            throw new InvalidOperationException("the SHA-256 was already taken: no more bytes may pass");
        }

        _hash?.AppendData(bytes);
        BytesTransferred += bytes.Length;
    }

    private void RequireRead()
    {
        if (_write)
        {
            throw new NotSupportedException("this stream writes");
        }
    }

    private void RequireWrite()
    {
        if (!_write)
        {
            throw new NotSupportedException("this stream reads");
        }
    }
}
