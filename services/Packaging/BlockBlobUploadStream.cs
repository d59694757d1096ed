using System.Security.Cryptography;
using System.Text;
using Azure;
using Azure.Storage.Blobs.Models;
using Azure.Storage.Blobs.Specialized;

namespace MriSeg.Packaging;

/// <summary>
/// A write-only stream into a block blob that makes the blob appear only when <see cref="CommitAsync"/> is
/// called: bytes are staged as uncommitted blocks (one block uploading while the next fills), and the block
/// list is committed explicitly, with conditions. If the writer fails or is abandoned, nothing is committed and
/// the blob does not appear (storage discards uncommitted blocks after a week). So a sealing that fails
/// half-way leaves no half package in storage. Flush does not commit. Asynchronous writes only.
/// </summary>
public sealed class BlockBlobUploadStream : Stream
{
    /// <summary>Bytes per staged block.</summary>
    public const int DefaultBlockSize = 8 << 20;

    /// <summary>The most blocks a block blob may have.</summary>
    public const int MaxBlocks = 50_000;

    private readonly BlockBlobClient _blob;
    private readonly int _blockSize;
    private readonly string _uploadId = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
    private readonly List<string> _blockIds = [];
    private byte[] _buffer;
    private byte[] _spare;
    private int _filled;
    private Task? _staging;
    private bool _committed;

    public BlockBlobUploadStream(BlockBlobClient blob, int blockSize = DefaultBlockSize)
    {
        ArgumentNullException.ThrowIfNull(blob);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        _blob = blob;
        _blockSize = blockSize;
        _buffer = GC.AllocateUninitializedArray<byte>(blockSize);
        _spare = GC.AllocateUninitializedArray<byte>(blockSize);
    }

    /// <summary>Bytes written so far.</summary>
    public long BytesWritten { get; private set; }

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => !_committed;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) =>
        throw new NotSupportedException("BlockBlobUploadStream takes asynchronous writes only");

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        while (!buffer.IsEmpty)
        {
            var take = Math.Min(buffer.Length, _blockSize - _filled);
            buffer[..take].CopyTo(_buffer.AsMemory(_filled));
            _filled += take;
            BytesWritten += take;
            buffer = buffer[take..];
            if (_filled == _blockSize)
            {
                await StageFilledAsync(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Stages what is left and commits the block list: the blob appears, whole. <paramref name="options"/>
    /// carries the conditions (e.g. IfNoneMatch = * to never replace a blob), headers and metadata.
    /// </summary>
    public async Task<BlobContentInfo> CommitAsync(CommitBlockListOptions options, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_committed, this);
        if (_filled > 0)
        {
            await StageFilledAsync(cancellationToken).ConfigureAwait(false);
        }

        if (_staging is not null)
        {
            await _staging.ConfigureAwait(false);
            _staging = null;
        }

        var info = await _blob.CommitBlockListAsync(_blockIds, options, cancellationToken).ConfigureAwait(false);
        _committed = true;
        return info.Value;
    }

    public override async ValueTask DisposeAsync()
    {
        await ObserveStagingAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && _staging is { IsCompleted: false } staging)
        {
            // Nothing to wait for: an abandoned upload is never committed. Observe its outcome.
            staging.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }

        base.Dispose(disposing);
    }

    private async Task ObserveStagingAsync()
    {
        if (_staging is { } staging)
        {
            _staging = null;
            try
            {
                await staging.ConfigureAwait(false);
            }
            catch (Exception e) when (e is RequestFailedException or OperationCanceledException or IOException)
            {
                // The upload is abandoned; its failure is not the caller's error.
            }
        }
    }

    private async Task StageFilledAsync(CancellationToken cancellationToken)
    {
        if (_blockIds.Count >= MaxBlocks)
        {
            throw new InvalidOperationException($"the package is too large for one block blob ({MaxBlocks} blocks of {_blockSize} bytes)");
        }

        // One block uploads while the next fills: wait for the previous one before reusing its buffer.
        if (_staging is not null)
        {
            await _staging.ConfigureAwait(false);
            _staging = null;
        }

        var id = Convert.ToBase64String(Encoding.ASCII.GetBytes($"{_uploadId}-{_blockIds.Count:D6}"));
        _blockIds.Add(id);
        var content = new MemoryStream(_buffer, 0, _filled, writable: false);
        _staging = _blob.StageBlockAsync(id, content, new BlockBlobStageBlockOptions(), cancellationToken);
        (_buffer, _spare) = (_spare, _buffer);
        _filled = 0;
    }
}
