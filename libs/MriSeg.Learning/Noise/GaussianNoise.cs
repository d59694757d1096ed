using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace MriSeg.Learning.Noise;

/// <summary>
/// Gaussian noise for DP-SGD from an AES-256-CTR keystream (a CSPRNG): 64-bit words of the keystream become
/// uniforms with 52 random bits, and pairs of uniforms become standard normals by Box–Muller in float64
/// (rounded to float32 for float32 destinations).
/// </summary>
/// <remarks>
/// <para>
/// <see cref="CreateSecure"/> (the default everywhere) takes a fresh 256-bit key and 64-bit nonce from the OS
/// CSPRNG (<see cref="RandomNumberGenerator"/>); nothing about them is stored or logged, so the noise of a run
/// cannot be reproduced, by design. <see cref="CreateInsecureSeeded"/> derives the key from a number: the same
/// code path with a guessable key, for reproducible tests only.
/// </para>
/// <para>
/// Counter block i is nonce ‖ i (big-endian); AES-256 of it gives 16 keystream bytes, two 64-bit words, one
/// normal pair. Every draw reserves fresh blocks, and each value depends only on the key and its position in
/// the draw, so the output does not depend on how the work is split between threads (chunks of
/// <see cref="ChunkValues"/> values run in parallel). The vectorised Box–Muller (log, sin, cos of .NET's
/// <see cref="Vector256"/>) keeps a 2.2-million-value
/// draw to a few milliseconds.
/// </para>
/// <para>
/// Limits, as in any floating-point Gaussian sampler: uniforms have 52 bits, so |z| &lt; 8.5 (the mass beyond is
/// about 2e-17), and values are rounded doubles, not an exact discrete Gaussian; the floating-point attacks of
/// Jin et al. (2022) on textbook samplers are not specifically defended against beyond computing in float64.
/// </para>
/// </remarks>
public sealed class GaussianNoise : IDisposable
{
    /// <summary>Values per parallel work item (and per AES call): 16,384 values = 128 KiB of keystream.</summary>
    public const int ChunkValues = 1 << 14;

    private const int BlocksPerChunk = ChunkValues / 2;
    private readonly byte[] _key;
    private readonly ulong _nonce;
    private readonly Lock _gate = new();
    private readonly ConcurrentBag<Worker> _workers = [];
    private ulong _nextBlock;
    private Tensor? _staging;
    private bool _disposed;

    private GaussianNoise(byte[] key, ulong nonce, bool cryptographic)
    {
        _key = key;
        _nonce = nonce;
        IsCryptographicallySecure = cryptographic;
    }

    /// <summary>True for <see cref="CreateSecure"/>; false for the seeded test generator.</summary>
    public bool IsCryptographicallySecure { get; }

    /// <summary>A short description for logs and summaries ("aes-256-ctr, OS CSPRNG key" or the insecure variant).</summary>
    public string Description => IsCryptographicallySecure
        ? "aes-256-ctr keystream, key from the OS CSPRNG, Box-Muller in float64"
        : "INSECURE: aes-256-ctr keystream under a key derived from a fixed seed (tests only)";

    /// <summary>Normals drawn so far.</summary>
    public long ValuesDrawn
    {
        get
        {
            lock (_gate)
            {
                return checked((long)_nextBlock * 2);
            }
        }
    }

    /// <summary>A generator keyed from the operating system's CSPRNG: the one to use for DP training.</summary>
    public static GaussianNoise CreateSecure()
    {
        var key = RandomNumberGenerator.GetBytes(32);
        var nonce = BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8));
        return new GaussianNoise(key, nonce, cryptographic: true);
    }

    /// <summary>
    /// INSECURE: a generator whose key is SHA-256 of a fixed label and <paramref name="seed"/>, so anyone who
    /// knows or guesses the seed can subtract the noise. For reproducible tests and benchmarks only; never for
    /// a model that leaves the machine.
    /// </summary>
    public static GaussianNoise CreateInsecureSeeded(ulong seed) => new(InsecureKey(seed), InsecureNonce(seed), cryptographic: false);

    /// <summary>The key of <see cref="CreateInsecureSeeded"/>: SHA-256 of a fixed label and the seed.</summary>
    internal static byte[] InsecureKey(ulong seed)
    {
        Span<byte> input = stackalloc byte[40];
        "mriseg-insecure-test-noise-v1\0\0\0"u8.CopyTo(input);
        BinaryPrimitives.WriteUInt64LittleEndian(input[32..], seed);
        return SHA256.HashData(input);
    }

    /// <summary>The nonce of <see cref="CreateInsecureSeeded"/>.</summary>
    internal static ulong InsecureNonce(ulong seed) => seed ^ 0x9E3779B97F4A7C15UL;

    /// <summary>Fills <paramref name="destination"/> with independent N(0, std²) values.</summary>
    public void Fill(Span<double> destination, double std)
    {
        CheckStd(std);
        var first = Reserve(destination.Length);
        Generate(destination, std, first);
    }

    /// <summary>Fills <paramref name="destination"/> with independent N(0, std²) values (computed in float64, then rounded).</summary>
    public void Fill(Span<float> destination, double std)
    {
        CheckStd(std);
        var first = Reserve(destination.Length);
        Generate(destination, std, first);
    }

    /// <summary>
    /// Fills a contiguous float32 or float64 tensor with N(0, std²) values. A CPU tensor is written in place; a
    /// tensor on another device through a reused CPU staging buffer and one copy.
    /// </summary>
    public void Fill(Tensor destination, double std)
    {
        ArgumentNullException.ThrowIfNull(destination);
        CheckStd(std);
        if (destination.dtype is not (ScalarType.Float32 or ScalarType.Float64))
        {
            throw new ArgumentException($"noise goes into float32 or float64 tensors, not {destination.dtype}.", nameof(destination));
        }

        if (!destination.is_contiguous())
        {
            throw new ArgumentException("the noise destination must be contiguous.", nameof(destination));
        }

        if (destination.device_type == DeviceType.CPU)
        {
            FillCpu(destination, std);
            return;
        }

        var n = destination.numel();
        if (_staging is null || _staging.numel() < n || _staging.dtype != destination.dtype)
        {
            _staging?.Dispose();
            _staging = empty(n, destination.dtype, CPU).DetachFromDisposeScope();
        }

        using var part = _staging.narrow(0, 0, n);
        FillCpu(part, std);
        using var shaped = part.view(destination.shape);
        destination.copy_(shaped);
    }

    /// <summary>
    /// The raw keystream of blocks [<paramref name="firstBlock"/>, +<paramref name="blocks"/>) under a given key and
    /// nonce, through the same code as the noise (for the AES-CTR known-answer test).
    /// </summary>
    internal static byte[] Keystream(byte[] key, ulong nonce, ulong firstBlock, int blocks)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan(blocks, BlocksPerChunk);
        using var worker = new Worker(key, nonce);
        return worker.Keystream(firstBlock, blocks).ToArray();
    }

    private void FillCpu(Tensor destination, double std)
    {
        var bytes = destination.bytes;
        if (destination.dtype == ScalarType.Float32)
        {
            Fill(MemoryMarshal.Cast<byte, float>(bytes), std);
        }
        else
        {
            Fill(MemoryMarshal.Cast<byte, double>(bytes), std);
        }
    }

    private static void CheckStd(double std)
    {
        if (!(std >= 0) || !double.IsFinite(std))
        {
            throw new ArgumentOutOfRangeException(nameof(std), std, "the standard deviation must be finite and not negative.");
        }
    }

    /// <summary>Reserves counter blocks for <paramref name="values"/> values (an odd count wastes half a block).</summary>
    private ulong Reserve(int values)
    {
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var first = _nextBlock;
            _nextBlock = checked(_nextBlock + (ulong)((values + 1) / 2));
            return first;
        }
    }

    private void Generate<T>(Span<T> destination, double std, ulong firstBlock)
        where T : unmanaged
    {
        var n = destination.Length;
        if (n == 0)
        {
            return;
        }

        var chunks = (n + ChunkValues - 1) / ChunkValues;
        if (chunks == 1)
        {
            var worker = Rent();
            worker.Run(destination, std, firstBlock);
            _workers.Add(worker);
            return;
        }

        // Span cannot cross into the parallel lambdas: go through the pinned address.
        unsafe
        {
            fixed (T* pointer = destination)
            {
                var address = (nint)pointer;
                Parallel.For(
                    0,
                    chunks,
                    Rent,
                    (c, _, worker) =>
                    {
                        var start = c * ChunkValues;
                        var length = Math.Min(ChunkValues, n - start);
                        var part = new Span<T>((T*)address + start, length);
                        worker.Run(part, std, firstBlock + (ulong)(start / 2));
                        return worker;
                    },
                    _workers.Add);
            }
        }
    }

    private Worker Rent() => _workers.TryTake(out var worker) ? worker : new Worker(_key, _nonce);

    /// <inheritdoc/>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            CryptographicOperations.ZeroMemory(_key);
            while (_workers.TryTake(out var worker))
            {
                worker.Dispose();
            }

            _staging?.Dispose();
        }
    }

    /// <summary>One thread's AES instance and buffers.</summary>
    private sealed class Worker : IDisposable
    {
        private readonly Aes _aes;
        private readonly byte[] _counters = new byte[BlocksPerChunk * 16];
        private readonly byte[] _stream = new byte[BlocksPerChunk * 16];
        private readonly double[] _normals = new double[ChunkValues];

        public Worker(byte[] key, ulong nonce)
        {
            _aes = Aes.Create();
            _aes.Key = key;

            // The nonce half of every counter block never changes.
            for (var i = 0; i < BlocksPerChunk; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(_counters.AsSpan(i * 16), nonce);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public Span<byte> Keystream(ulong firstBlock, int blocks)
        {
            var counters = _counters.AsSpan(0, blocks * 16);
            for (var i = 0; i < blocks; i++)
            {
                BinaryPrimitives.WriteUInt64BigEndian(counters.Slice((i * 16) + 8, 8), firstBlock + (ulong)i);
            }

            var stream = _stream.AsSpan(0, blocks * 16);
            _aes.EncryptEcb(counters, stream, PaddingMode.None);
            return stream;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run<T>(Span<T> destination, double std, ulong firstBlock)
            where T : unmanaged
        {
            var blocks = (destination.Length + 1) / 2;
            var stream = Keystream(firstBlock, blocks);
            var normals = _normals.AsSpan(0, blocks * 2);
            BoxMuller(MemoryMarshal.Cast<byte, ulong>(stream), normals, std);
            CryptographicOperations.ZeroMemory(stream);
            if (typeof(T) == typeof(double))
            {
                normals[..destination.Length].CopyTo(MemoryMarshal.Cast<T, double>(destination));
            }
            else
            {
                Narrow(normals[..destination.Length], MemoryMarshal.Cast<T, float>(destination));
            }

            CryptographicOperations.ZeroMemory(MemoryMarshal.AsBytes(normals));
        }

        public void Dispose() => _aes.Dispose();
    }

    /// <summary>
    /// Keystream words → normals·std by Box–Muller: in each group of 8 words (4 AES blocks), words 0-3 give the
    /// radii r = √(−2 ln(1 − U)) and words 4-7 the angles θ = 2π·U, and outputs 0-3 are r·cos θ, 4-7 r·sin θ; a
    /// last partial group pairs words (2i, 2i+1) → outputs (2i, 2i+1). U(x) = the top 52 bits of x as a fraction
    /// in [0, 1), so 1 − U is in (0, 1] and the logarithm is finite.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void BoxMuller(ReadOnlySpan<ulong> words, Span<double> normals, double std)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256.Create(1.0);
            var exponent = Vector256.Create(0x3FF0000000000000UL);
            var minusTwo = Vector256.Create(-2.0);
            var twoPi = Vector256.Create(2 * Math.PI);
            var scale = Vector256.Create(std);
            for (; i + 8 <= words.Length; i += 8)
            {
                var ua = (Vector256.ShiftRightLogical(Vector256.Create(words.Slice(i, 4)), 12) | exponent).AsDouble() - one;
                var ub = (Vector256.ShiftRightLogical(Vector256.Create(words.Slice(i + 4, 4)), 12) | exponent).AsDouble() - one;
                var r = Vector256.Sqrt(minusTwo * Log(one - ua)) * scale;
                var (s, c) = Vector256.SinCos(twoPi * ub);
                (r * c).CopyTo(normals.Slice(i, 4));
                (r * s).CopyTo(normals.Slice(i + 4, 4));
            }
        }
        else
        {
            for (; i + 8 <= words.Length; i += 8)
            {
                for (var k = 0; k < 4; k++)
                {
                    var (s, c) = Pair(words[i + k], words[i + 4 + k], std);
                    normals[i + k] = c;
                    normals[i + 4 + k] = s;
                }
            }
        }

        for (; i + 2 <= words.Length; i += 2)
        {
            var (s, c) = Pair(words[i], words[i + 1], std);
            normals[i] = c;
            normals[i + 1] = s;
        }
    }

    /// <summary>
    /// ln x for positive normal doubles, four at a time (.NET's Vector256.Log for double is not vectorised and
    /// costs about 50 ns a value). x = m·2^e with m in [√½, √2); ln m = 2·atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.172,
    /// by its odd series to s^21 (truncation below 1e-17 relative); ln 2 is split in two for the e·ln 2 term.
    /// Agrees with Math.Log to a few ulp (the unit test checks 2e-16 relative).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<double> Log(Vector256<double> x)
    {
        var bits = x.AsUInt64();
        var one = Vector256.Create(1.0);

        // The biased exponent as an exact double: (2^52 + E) − 2^52.
        var exponent = ((bits >> 52) | Vector256.Create(0x4330000000000000UL)).AsDouble() - Vector256.Create(4503599627370496.0) - Vector256.Create(1023.0);
        var mantissa = ((bits & Vector256.Create(0x000FFFFFFFFFFFFFUL)) | Vector256.Create(0x3FF0000000000000UL)).AsDouble();
        var big = Vector256.GreaterThan(mantissa, Vector256.Create(Math.Sqrt(2)));
        mantissa = Vector256.ConditionalSelect(big, mantissa * 0.5, mantissa);
        exponent += one & big;
        var f = mantissa - one;
        var s = f / (Vector256.Create(2.0) + f);
        var z = s * s;
        var series = Vector256.Create(1.0 / 21);
        for (var k = 19; k >= 3; k -= 2)
        {
            series = Vector256.FusedMultiplyAdd(series, z, Vector256.Create(1.0 / k));
        }

        // ln m = 2s + 2s·z·series; e·ln2 with ln2 = hi + lo (hi has 32 significant bits, so e·hi is exact).
        const double ln2Hi = 6.93147180369123816490e-01, ln2Lo = 1.90821492927058770002e-10;
        var twoS = s + s;
        var low = Vector256.FusedMultiplyAdd(twoS * z, series, exponent * ln2Lo);
        return Vector256.FusedMultiplyAdd(exponent, Vector256.Create(ln2Hi), twoS + low);
    }

    private static (double Sin, double Cos) Pair(ulong radius, ulong angle, double std)
    {
        var r = Math.Sqrt(-2 * Math.Log(1 - Unit(radius))) * std;
        var (s, c) = Math.SinCos(2 * Math.PI * Unit(angle));
        return (r * s, r * c);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Narrow(ReadOnlySpan<double> source, Span<float> destination)
    {
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= source.Length; i += 8)
            {
                Vector256.Narrow(Vector256.Create(source.Slice(i, 4)), Vector256.Create(source.Slice(i + 4, 4))).CopyTo(destination.Slice(i, 8));
            }
        }

        for (; i < source.Length; i++)
        {
            destination[i] = (float)source[i];
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double Unit(ulong word) => BitConverter.UInt64BitsToDouble((word >> 12) | 0x3FF0000000000000UL) - 1.0;
}
