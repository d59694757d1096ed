using System.Security.Cryptography;

namespace MriSeg.Sealing;

/// <summary>How the plaintext SHA-256 is computed while sealing or opening.</summary>
public enum HashingMode
{
    /// <summary>Pipelined for chunks of 64 KiB or more on a machine with more than one processor, inline otherwise.</summary>
    Auto,

    /// <summary>On the calling thread, before each chunk is encrypted or after it is decrypted.</summary>
    Inline,

    /// <summary>On a worker, in chunk order, overlapping the encryption or decryption of the following chunks.</summary>
    Pipelined,
}

/// <summary>
/// SHA-256 of the plaintext, fed chunk by chunk in order. In pipelined mode each region is hashed on the
/// thread pool after the previous one (a chain of continuations), and <see cref="Submit"/> returns the task
/// that completes when the region has been hashed: its buffer must not change until then.
/// </summary>
internal sealed class PlaintextHasher : IDisposable
{
    public const int PipelineThreshold = 64 * 1024;

    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private readonly bool _pipelined;
    private Task _tail = Task.CompletedTask;
    private bool _disposed;

    public PlaintextHasher(HashingMode mode, int chunkSize)
    {
        _pipelined = WouldPipeline(mode, chunkSize);
    }

    public static bool WouldPipeline(HashingMode mode, int chunkSize) => mode switch
    {
        HashingMode.Inline => false,
        HashingMode.Pipelined => true,
        _ => chunkSize >= PipelineThreshold && Environment.ProcessorCount > 1,
    };

    public bool Pipelined => _pipelined;

    public Task Submit(ReadOnlyMemory<byte> region)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_pipelined)
        {
            _hash.AppendData(region.Span);
            return Task.CompletedTask;
        }

        _tail = _tail.ContinueWith(
            static (previous, state) =>
            {
                previous.GetAwaiter().GetResult();
                var (hash, data) = ((IncrementalHash, ReadOnlyMemory<byte>))state!;
                hash.AppendData(data.Span);
            },
            (_hash, region),
            CancellationToken.None,
            TaskContinuationOptions.DenyChildAttach,
            TaskScheduler.Default);
        return _tail;
    }

    /// <summary>Waits until every submitted region has been hashed.</summary>
    public Task DrainAsync() => _tail;

    public async Task<byte[]> FinishAsync()
    {
        await _tail.ConfigureAwait(false);
        return _hash.GetHashAndReset();
    }

    /// <summary>Waits for outstanding work (buffers may be zeroed only afterwards), then releases the hash.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        try
        {
            _tail.Wait();
        }
        catch (AggregateException)
        {
            // Already reported, or irrelevant after another failure.
        }

        _hash.Dispose();
    }
}

/// <summary>A ring of chunk buffers, each reusable once the task last attached to it has completed.</summary>
internal sealed class BufferRing : IDisposable
{
    private readonly byte[][] _buffers;
    private readonly Task[] _pending;
    private int _next;

    public BufferRing(int count, int size)
    {
        _buffers = new byte[count][];
        _pending = new Task[count];
        for (var i = 0; i < count; i++)
        {
            _buffers[i] = new byte[size];
            _pending[i] = Task.CompletedTask;
        }
    }

    /// <summary>The next buffer in turn, once whatever used it last is done.</summary>
    public async ValueTask<int> NextAsync()
    {
        var index = _next;
        _next = (_next + 1) % _buffers.Length;
        await _pending[index].ConfigureAwait(false);
        return index;
    }

    public byte[] this[int index] => _buffers[index];

    public void SetPending(int index, Task task) => _pending[index] = task;

    /// <summary>Zeroes every buffer. Call after the hasher has been disposed (it waits for outstanding work).</summary>
    public void Dispose()
    {
        foreach (var buffer in _buffers)
        {
            CryptographicOperations.ZeroMemory(buffer);
        }
    }
}
