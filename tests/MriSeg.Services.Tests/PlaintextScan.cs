namespace MriSeg.Services.Tests;

/// <summary>
/// Finds files that contain any 64-byte window of given plaintexts (rolling hash over every offset of both). Windows of
/// low entropy (fewer than 24 distinct byte values, e.g. runs of zeros) are not indexed: they occur everywhere.
/// </summary>
public sealed class PlaintextScan
{
    public const int Window = 64;
    private const ulong Base = 1_099_511_628_211UL;
    private readonly HashSet<ulong> windows = [];
    private readonly ulong highPower;

    public PlaintextScan(IEnumerable<byte[]> plaintexts)
    {
        highPower = 1;
        for (var i = 0; i < Window - 1; i++)
        {
            highPower *= Base;
        }

        foreach (var p in plaintexts)
        {
            Roll(p, (hash, offset) =>
            {
                if (Distinct(p.AsSpan(offset, Window)) >= 24)
                {
                    windows.Add(hash);
                }

                return false;
            });
        }
    }

    public int IndexedWindows => windows.Count;

    /// <summary>Files below <paramref name="roots"/> (written at or after <paramref name="since"/>, up to 256 MiB) holding a plaintext window.</summary>
    public List<string> FindIn(IEnumerable<string> roots, DateTime since)
    {
        var hits = new List<string>();
        foreach (var root in roots.Where(Directory.Exists))
        {
            foreach (var file in Enumerate(root))
            {
                try
                {
                    var info = new FileInfo(file);
                    if (info.LinkTarget is not null || info.LastWriteTimeUtc < since || info.Length < Window || info.Length > 256L << 20)
                    {
                        continue;
                    }

                    if (Contains(File.ReadAllBytes(file)))
                    {
                        hits.Add(file);
                    }
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                }
            }
        }

        return hits;
    }

    public bool Contains(byte[] data) => Roll(data, (hash, _) => windows.Contains(hash));

    private static IEnumerable<string> Enumerate(string root)
    {
        try
        {
            return Directory.EnumerateFiles(root, "*", new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = FileAttributes.ReparsePoint }).ToList();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return [];
        }
    }

    private bool Roll(byte[] data, Func<ulong, int, bool> visit)
    {
        if (data.Length < Window)
        {
            return false;
        }

        ulong hash = 0;
        for (var i = 0; i < Window; i++)
        {
            hash = hash * Base + data[i];
        }

        if (visit(hash, 0))
        {
            return true;
        }

        for (var i = Window; i < data.Length; i++)
        {
            hash = (hash - data[i - Window] * highPower) * Base + data[i];
            if (visit(hash, i - Window + 1))
            {
                return true;
            }
        }

        return false;
    }

    private static int Distinct(ReadOnlySpan<byte> span)
    {
        Span<bool> seen = stackalloc bool[256];
        var n = 0;
        foreach (var b in span)
        {
            if (!seen[b])
            {
                seen[b] = true;
                n++;
            }
        }

        return n;
    }
}
