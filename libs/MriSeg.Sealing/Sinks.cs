using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>Where an opener puts verified chunks until the whole package has verified.</summary>
internal interface IPlaintextSink : IAsyncDisposable
{
    /// <summary>Called once the header is read, before the first chunk.</summary>
    void Begin(int chunkSize);

    /// <summary>A hint: the plaintext length the (not yet verified) manifest states.</summary>
    void Reserve(long length);

    /// <summary>A buffer of <paramref name="length"/> bytes to decrypt the next chunk into.</summary>
    ValueTask<Memory<byte>> NextAsync(int length, PlaintextHasher hasher);

    /// <summary>The chunk in the buffer from <see cref="NextAsync"/> verified; <paramref name="hashed"/> completes when it has been hashed.</summary>
    ValueTask CommitAsync(Memory<byte> region, Task hashed, CancellationToken cancellationToken);
}

/// <summary>
/// Opening into memory: one growing (or, when the length is known in advance, exact) buffer, zeroed unless
/// handed over after full verification.
/// </summary>
internal sealed class MemorySink : IPlaintextSink
{
    private int _chunkSize = PackageFormat.MinChunkSize;
    private byte[] _buffer = [];
    private int _length;
    private bool _handedOver;

    public void Begin(int chunkSize) => _chunkSize = chunkSize;

    public void Reserve(long length)
    {
        if (length > Array.MaxLength)
        {
            throw TooLarge(length);
        }

        if (_length == 0 && length > _buffer.Length)
        {
            _buffer = GC.AllocateUninitializedArray<byte>((int)length);
        }
    }

    public async ValueTask<Memory<byte>> NextAsync(int length, PlaintextHasher hasher)
    {
        var needed = (long)_length + length;
        if (needed > _buffer.Length)
        {
            if (needed > Array.MaxLength)
            {
                throw TooLarge(needed);
            }

            // The hasher may still be reading the old buffer.
            await hasher.DrainAsync().ConfigureAwait(false);
            var capacity = Math.Max(needed, Math.Min(Array.MaxLength, Math.Max((long)_buffer.Length * 2, Math.Max(_chunkSize, 4096))));
            var bigger = GC.AllocateUninitializedArray<byte>((int)capacity);
            _buffer.AsSpan(0, _length).CopyTo(bigger);
            CryptographicOperations.ZeroMemory(_buffer);
            _buffer = bigger;
        }

        return _buffer.AsMemory(_length, length);
    }

    public ValueTask CommitAsync(Memory<byte> region, Task hashed, CancellationToken cancellationToken)
    {
        _length += region.Length;
        return ValueTask.CompletedTask;
    }

    public OpenedPackage HandOver(PackageInfo info)
    {
        _handedOver = true;
        return new OpenedPackage(info, _buffer, _length);
    }

    public ValueTask DisposeAsync()
    {
        if (!_handedOver)
        {
            CryptographicOperations.ZeroMemory(_buffer);
        }

        return ValueTask.CompletedTask;
    }

    private static SealedPackageException TooLarge(long length) =>
        new(SealingError.TooLargeForMemory, $"plaintext of {length} bytes is too large to open into memory (at most {Array.MaxLength}); open it to a file");
}

/// <summary>
/// Opening to a file: a temporary file (mode 0600) beside the destination, renamed onto it only by
/// <see cref="CompleteAsync"/>; deleted on dispose otherwise.
/// </summary>
internal sealed class FileSink : IPlaintextSink
{
    private readonly string _destination;
    private readonly bool _overwrite;
    private readonly FileStream _stream;
    private BufferRing? _ring;
    private int _current = -1;
    private bool _completed;
    private bool _streamClosed;

    public FileSink(string destination, bool overwrite)
    {
        _destination = destination;
        _overwrite = overwrite;
        TemporaryPath = SecureFile.TemporaryPathBeside(destination);
        _stream = SecureFile.CreateNew(TemporaryPath, asynchronous: true);
    }

    public string TemporaryPath { get; }

    public void Begin(int chunkSize) => _ring ??= new BufferRing(4, chunkSize);

    public void Reserve(long length)
    {
    }

    public async ValueTask<Memory<byte>> NextAsync(int length, PlaintextHasher hasher)
    {
        var ring = _ring ?? throw new InvalidOperationException("Begin was not called");
        _current = await ring.NextAsync().ConfigureAwait(false);
        return ring[_current].AsMemory(0, length);
    }

    public async ValueTask CommitAsync(Memory<byte> region, Task hashed, CancellationToken cancellationToken)
    {
        _ring!.SetPending(_current, hashed);
        await _stream.WriteAsync(region, cancellationToken).ConfigureAwait(false);
    }

    public async Task CompleteAsync(CancellationToken cancellationToken)
    {
        await _stream.FlushAsync(cancellationToken).ConfigureAwait(false);
        _stream.Flush(flushToDisk: true);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _streamClosed = true;
        try
        {
            File.Move(TemporaryPath, _destination, _overwrite);
        }
        catch (IOException e) when (!_overwrite && File.Exists(_destination))
        {
            throw new SealedPackageException(SealingError.DestinationExists, $"destination exists: {_destination}", innerException: e);
        }

        _completed = true;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_streamClosed)
        {
            await _stream.DisposeAsync().ConfigureAwait(false);
        }

        if (!_completed)
        {
            SecureFile.DeleteQuietly(TemporaryPath);
        }

        _ring?.Dispose();
    }
}
