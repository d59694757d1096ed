namespace MriSeg.Imaging.Nifti;

/// <summary>
/// Reads the (possibly decompressed) bytes of a NIfTI file forward only, filling buffers completely unless the
/// data ends, and turning decompression failures into <see cref="NiftiFormatException"/>.
/// </summary>
internal sealed class SourceReader : IDisposable
{
    private readonly Stream _stream;
    private readonly string _name;
    private long _position;

    public SourceReader(Stream stream, string name, bool gzip, long? knownLength)
    {
        _stream = stream;
        _name = name;
        IsGzip = gzip;
        KnownLength = knownLength;
    }

    /// <summary>Whether the bytes are being decompressed.</summary>
    public bool IsGzip { get; }

    /// <summary>The total length of an uncompressed seekable file (null when compressed or unknown).</summary>
    public long? KnownLength { get; }

    /// <summary>Fills <paramref name="buffer"/>; returns fewer bytes only at the end of the data.</summary>
    public int Read(Span<byte> buffer)
    {
        var total = 0;
        while (total < buffer.Length)
        {
            int n;
            try
            {
                n = _stream.Read(buffer[total..]);
            }
            catch (InvalidDataException ex) when (IsGzip)
            {
                throw new NiftiFormatException(_name,
                    $"corrupt gzip stream (bad header, deflate data or CRC-32) after {_position + total} decompressed bytes; the decompressor says: {ex.Message}", ex);
            }

            if (n == 0)
            {
                break;
            }

            total += n;
        }

        _position += total;
        return total;
    }

    /// <summary>Skips up to <paramref name="count"/> bytes; returns how many were skipped.</summary>
    public long Skip(long count)
    {
        if (count <= 0)
        {
            return 0;
        }

        var buffer = new byte[(int)Math.Min(count, 64 * 1024)];
        long skipped = 0;
        while (skipped < count)
        {
            var n = Read(buffer.AsSpan(0, (int)Math.Min(buffer.Length, count - skipped)));
            skipped += n;
            if (n == 0)
            {
                break;
            }
        }

        return skipped;
    }

    /// <summary>"the file ends after N" or "the gzip stream ends after N decompressed" (then the caller adds "bytes").</summary>
    public string EndDescription(long atByte) =>
        IsGzip ? $"the gzip stream ends early, after {atByte} decompressed" : $"the file ends after {atByte}";

    /// <summary>
    /// Reads on past the voxels, at most <paramref name="maxBytes"/> decompressed bytes, so that a gzip member
    /// that ends there has its CRC-32 and size checked by the decompressor. A longer tail is left unread.
    /// </summary>
    public void VerifyGzipEnd(int maxBytes)
    {
        if (maxBytes <= 0)
        {
            return;
        }

        var buffer = new byte[Math.Min(maxBytes, 16 * 1024)];
        var read = 0;
        while (read < maxBytes)
        {
            int n;
            try
            {
                n = _stream.Read(buffer, 0, Math.Min(buffer.Length, maxBytes - read));
            }
            catch (InvalidDataException ex)
            {
                throw new NiftiFormatException(_name,
                    $"corrupt gzip stream: its end fails the CRC-32/length check, or what follows is a broken gzip member; the decompressor says: {ex.Message}", ex);
            }

            if (n == 0)
            {
                return;
            }

            read += n;
        }
    }

    public void Dispose() => _stream.Dispose();
}

/// <summary>A read-only stream that replays a few already-read bytes, then continues with the inner stream.</summary>
internal sealed class PrefixedStream(byte[] prefix, Stream inner) : Stream
{
    private int _prefixPosition;

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        if (buffer.IsEmpty)
        {
            return 0;
        }

        if (_prefixPosition < prefix.Length)
        {
            var n = Math.Min(buffer.Length, prefix.Length - _prefixPosition);
            prefix.AsSpan(_prefixPosition, n).CopyTo(buffer);
            _prefixPosition += n;
            return n;
        }

        return inner.Read(buffer);
    }

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        // The caller owns the inner stream.
        base.Dispose(disposing);
    }
}
