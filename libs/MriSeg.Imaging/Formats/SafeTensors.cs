using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace MriSeg.Imaging.Formats;

/// <summary>Element types of the safetensors format (the codes are the format's strings).</summary>
public enum SafeTensorDType
{
    /// <summary>BOOL, one byte.</summary>
    Bool,

    /// <summary>U8.</summary>
    UInt8,

    /// <summary>I8.</summary>
    Int8,

    /// <summary>F8_E4M3 (raw bytes only).</summary>
    Float8E4M3,

    /// <summary>F8_E5M2 (raw bytes only).</summary>
    Float8E5M2,

    /// <summary>U16.</summary>
    UInt16,

    /// <summary>I16.</summary>
    Int16,

    /// <summary>F16 (IEEE half).</summary>
    Float16,

    /// <summary>BF16 (raw bytes only).</summary>
    BFloat16,

    /// <summary>U32.</summary>
    UInt32,

    /// <summary>I32.</summary>
    Int32,

    /// <summary>F32.</summary>
    Float32,

    /// <summary>U64.</summary>
    UInt64,

    /// <summary>I64.</summary>
    Int64,

    /// <summary>F64.</summary>
    Float64,
}

/// <summary>Codes and sizes of <see cref="SafeTensorDType"/>.</summary>
public static class SafeTensorDTypes
{
    private static readonly (SafeTensorDType Type, string Code, int Size)[] Table =
    [
        (SafeTensorDType.Bool, "BOOL", 1), (SafeTensorDType.UInt8, "U8", 1), (SafeTensorDType.Int8, "I8", 1),
        (SafeTensorDType.Float8E4M3, "F8_E4M3", 1), (SafeTensorDType.Float8E5M2, "F8_E5M2", 1),
        (SafeTensorDType.UInt16, "U16", 2), (SafeTensorDType.Int16, "I16", 2), (SafeTensorDType.Float16, "F16", 2),
        (SafeTensorDType.BFloat16, "BF16", 2), (SafeTensorDType.UInt32, "U32", 4), (SafeTensorDType.Int32, "I32", 4),
        (SafeTensorDType.Float32, "F32", 4), (SafeTensorDType.UInt64, "U64", 8), (SafeTensorDType.Int64, "I64", 8),
        (SafeTensorDType.Float64, "F64", 8),
    ];

    /// <summary>The format's code, e.g. "F32".</summary>
    public static string Code(this SafeTensorDType type) => Entry(type).Code;

    /// <summary>Bytes per element.</summary>
    public static int ElementSize(this SafeTensorDType type) => Entry(type).Size;

    /// <summary>Parses a format code (case-sensitive, as the format is).</summary>
    public static bool TryParse(string code, out SafeTensorDType type)
    {
        foreach (var e in Table)
        {
            if (e.Code == code)
            {
                type = e.Type;
                return true;
            }
        }

        type = default;
        return false;
    }

    /// <summary>The dtype that stores .NET type <typeparamref name="T"/>, or null.</summary>
    public static SafeTensorDType? For<T>()
        where T : unmanaged => typeof(T) switch
        {
            var t when t == typeof(float) => SafeTensorDType.Float32,
            var t when t == typeof(double) => SafeTensorDType.Float64,
            var t when t == typeof(Half) => SafeTensorDType.Float16,
            var t when t == typeof(byte) => SafeTensorDType.UInt8,
            var t when t == typeof(sbyte) => SafeTensorDType.Int8,
            var t when t == typeof(bool) => SafeTensorDType.Bool,
            var t when t == typeof(short) => SafeTensorDType.Int16,
            var t when t == typeof(ushort) => SafeTensorDType.UInt16,
            var t when t == typeof(int) => SafeTensorDType.Int32,
            var t when t == typeof(uint) => SafeTensorDType.UInt32,
            var t when t == typeof(long) => SafeTensorDType.Int64,
            var t when t == typeof(ulong) => SafeTensorDType.UInt64,
            _ => null,
        };

    private static (SafeTensorDType Type, string Code, int Size) Entry(SafeTensorDType type) =>
        Array.Find(Table, e => e.Type == type) is { Code: not null } e ? e : throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype.");
}

/// <summary>A safetensors file or header that breaks the format; the message names the problem.</summary>
public sealed class SafeTensorsFormatException : FormatException
{
    /// <summary>Creates the exception.</summary>
    public SafeTensorsFormatException(string message)
        : base("safetensors: " + message)
    {
    }

    /// <summary>Creates the exception with a cause.</summary>
    public SafeTensorsFormatException(string message, Exception inner)
        : base("safetensors: " + message, inner)
    {
    }

    /// <summary>Creates the exception.</summary>
    public SafeTensorsFormatException()
        : base("safetensors: invalid file")
    {
    }
}

/// <summary>One named tensor: dtype, shape and its raw little-endian, row-major bytes.</summary>
public sealed class SafeTensor
{
    private readonly long[] _shape;

    /// <summary>Creates a tensor over existing bytes (not copied).</summary>
    /// <exception cref="ArgumentException">The byte count does not match dtype and shape.</exception>
    public SafeTensor(string name, SafeTensorDType dtype, IReadOnlyList<long> shape, ReadOnlyMemory<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        _shape = [.. shape];
        var bytes = SafeTensors.ByteLength(dtype, _shape) ?? throw new ArgumentException($"tensor {name}: shape [{string.Join(", ", _shape)}] is negative or too large.");
        if (bytes != data.Length)
        {
            throw new ArgumentException($"tensor {name}: {dtype.Code()} [{string.Join(", ", _shape)}] needs {bytes} bytes, got {data.Length}.");
        }

        Name = name;
        DType = dtype;
        Data = data;
    }

    /// <summary>Name (key in the header).</summary>
    public string Name { get; }

    /// <summary>Element type.</summary>
    public SafeTensorDType DType { get; }

    /// <summary>Shape, outermost first; empty for a scalar.</summary>
    public IReadOnlyList<long> Shape => _shape;

    /// <summary>Number of elements.</summary>
    public long ElementCount => _shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The raw bytes: little-endian elements in row-major order.</summary>
    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>Creates a tensor from values (copied; stored little-endian whatever the host).</summary>
    public static SafeTensor Create<T>(string name, ReadOnlySpan<T> values, params long[] shape)
        where T : unmanaged
    {
        var dtype = SafeTensorDTypes.For<T>() ?? throw new ArgumentException($"no safetensors dtype stores {typeof(T).Name}.");
        var bytes = MemoryMarshal.AsBytes(values).ToArray();
        SafeTensors.ToLittleEndian(bytes, dtype.ElementSize());
        return new SafeTensor(name, dtype, shape, bytes);
    }

    /// <summary>The values as <typeparamref name="T"/>, which must be the dtype's .NET type (e.g. float for F32).</summary>
    public T[] ToArray<T>()
        where T : unmanaged
    {
        if (SafeTensorDTypes.For<T>() != DType)
        {
            throw new InvalidOperationException($"tensor {Name} is {DType.Code()}; it cannot be read as {typeof(T).Name}.");
        }

        var values = new T[ElementCount];
        var bytes = MemoryMarshal.AsBytes(values.AsSpan());
        Data.Span.CopyTo(bytes);
        SafeTensors.ToLittleEndian(bytes, DType.ElementSize());
        return values;
    }
}

/// <summary>Where one tensor lies in a file's data section.</summary>
/// <param name="Name">Header key.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Shape.</param>
/// <param name="Begin">Start offset, relative to the data section.</param>
/// <param name="End">End offset (exclusive), relative to the data section.</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, IReadOnlyList<long> Shape, long Begin, long End)
{
    /// <summary>End − Begin.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>A validated header: tensors in data order, metadata, and where the data section starts.</summary>
/// <param name="Tensors">Tensors sorted by offset; they tile the data section exactly.</param>
/// <param name="Metadata">The "__metadata__" string map (empty when absent).</param>
/// <param name="HeaderLength">N, the JSON header's length in bytes.</param>
/// <param name="DataLength">Bytes of the data section.</param>
public sealed record SafeTensorsHeader(IReadOnlyList<SafeTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata, long HeaderLength, long DataLength)
{
    /// <summary>File offset of the data section: 8 + N.</summary>
    public long DataStart => 8 + HeaderLength;

    /// <summary>The named tensor's entry, or null.</summary>
    public SafeTensorInfo? Find(string name) => Tensors.FirstOrDefault(t => t.Name == name);
}

/// <summary>A whole safetensors file in memory; tensors are slices of the file's bytes.</summary>
public sealed class SafeTensorsFile
{
    private readonly Dictionary<string, SafeTensor> _byName;

    internal SafeTensorsFile(SafeTensorsHeader header, IReadOnlyList<SafeTensor> tensors)
    {
        Header = header;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>The validated header.</summary>
    public SafeTensorsHeader Header { get; }

    /// <summary>The metadata map.</summary>
    public IReadOnlyDictionary<string, string> Metadata => Header.Metadata;

    /// <summary>Tensors in data order.</summary>
    public IReadOnlyList<SafeTensor> Tensors { get; }

    /// <summary>The named tensor.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor.</exception>
    public SafeTensor this[string name] => _byName.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"safetensors: no tensor named \"{name}\".");

    /// <summary>Looks a tensor up by name.</summary>
    public bool TryGet(string name, out SafeTensor tensor) => _byName.TryGetValue(name, out tensor!);
}

/// <summary>
/// Reader and writer of the safetensors format: an 8-byte little-endian header length N, N bytes of
/// UTF-8 JSON (name → {dtype, shape, data_offsets}, plus an optional "__metadata__" string map),
/// then the data section, which the tensors must tile exactly. Torch-free, for model files and dataset shards.
/// </summary>
public static class SafeTensors
{
    /// <summary>The metadata key.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderLength = 100_000_000;

    private const int MaxRank = 64;

    /// <summary>Serialises tensors and metadata to a byte array.</summary>
    public static byte[] Serialize(IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var stream = new MemoryStream();
        Write(stream, tensors, metadata);
        return stream.ToArray();
    }

    /// <summary>Writes a safetensors file to a file path (via a temporary file, then a rename).</summary>
    public static void Save(string path, IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        var temporary = path + ".tmp-" + Guid.NewGuid().ToString("N");
        try
        {
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                Write(stream, tensors, metadata);
            }

            File.Move(temporary, path, overwrite: true);
        }
        finally
        {
            File.Delete(temporary);
        }
    }

    /// <summary>
    /// Writes tensors and metadata. Tensors are laid out by decreasing element size (so every tensor
    /// is aligned to its element size) and otherwise in the given order; the header is padded with
    /// spaces to a multiple of 8 bytes, as the reference writer does.
    /// </summary>
    /// <exception cref="ArgumentException">Duplicate or reserved names.</exception>
    public static void Write(Stream destination, IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var t in list)
        {
            if (t.Name == MetadataKey)
            {
                throw new ArgumentException($"\"{MetadataKey}\" is reserved and cannot name a tensor.");
            }

            if (!names.Add(t.Name))
            {
                throw new ArgumentException($"two tensors are named \"{t.Name}\".");
            }
        }

        var ordered = list.Select((t, i) => (t, i)).OrderByDescending(x => x.t.DType.ElementSize()).ThenBy(x => x.i).Select(x => x.t).ToList();
        var header = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(header, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(MetadataKey);
                foreach (var (key, value) in metadata)
                {
                    json.WriteString(key, value);
                }

                json.WriteEndObject();
            }

            long offset = 0;
            foreach (var t in ordered)
            {
                json.WriteStartObject(t.Name);
                json.WriteString("dtype", t.DType.Code());
                json.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                offset += t.Data.Length;
                json.WriteNumberValue(offset);
                json.WriteEndArray();
                json.WriteEndObject();
            }

            json.WriteEndObject();
        }

        var headerBytes = header.WrittenSpan.ToArray();
        var padded = (headerBytes.Length + 7) / 8 * 8;
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        destination.Write(length);
        destination.Write(headerBytes);
        for (var i = headerBytes.Length; i < padded; i++)
        {
            destination.WriteByte((byte)' ');
        }

        foreach (var t in ordered)
        {
            destination.Write(t.Data.Span);
        }
    }

    /// <summary>Parses and validates a whole file held in memory; tensors are slices of <paramref name="file"/>.</summary>
    /// <exception cref="SafeTensorsFormatException">The file breaks the format.</exception>
    public static SafeTensorsFile Parse(ReadOnlyMemory<byte> file)
    {
        var header = ReadHeader(file.Span);
        var data = file[(int)header.DataStart..];
        var tensors = header.Tensors.Select(t => new SafeTensor(t.Name, t.DType, t.Shape, data[(int)t.Begin..(int)t.End])).ToList();
        return new SafeTensorsFile(header, tensors);
    }

    /// <summary>Reads and validates a whole file.</summary>
    /// <exception cref="SafeTensorsFormatException">The file breaks the format.</exception>
    public static SafeTensorsFile Load(string path)
    {
        var length = new FileInfo(path).Length;
        if (length > Array.MaxLength)
        {
            throw new SafeTensorsFormatException($"{path} is {length} bytes, too large to load whole; read its header and tensors one by one.");
        }

        return Parse(File.ReadAllBytes(path));
    }

    /// <summary>Reads and validates the header at the start of <paramref name="file"/>, whose length is the file's.</summary>
    /// <exception cref="SafeTensorsFormatException">The header breaks the format or does not fit the file.</exception>
    public static SafeTensorsHeader ReadHeader(ReadOnlySpan<byte> file)
    {
        if (file.Length < 8)
        {
            throw new SafeTensorsFormatException($"the file is {file.Length} bytes, shorter than the 8-byte header length.");
        }

        var n = CheckHeaderLength(BinaryPrimitives.ReadUInt64LittleEndian(file), file.Length);
        return ParseHeader(file.Slice(8, (int)n), file.Length - 8 - (long)n);
    }

    /// <summary>Reads and validates the header of a seekable stream positioned anywhere; the stream's length bounds the data.</summary>
    /// <exception cref="SafeTensorsFormatException">The header breaks the format or does not fit the stream.</exception>
    public static SafeTensorsHeader ReadHeader(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanSeek || !stream.CanRead)
        {
            throw new ArgumentException("the stream must be readable and seekable.", nameof(stream));
        }

        var total = stream.Length;
        stream.Position = 0;
        Span<byte> prefix = stackalloc byte[8];
        if (total < 8 || stream.ReadAtLeast(prefix, 8, throwOnEndOfStream: false) < 8)
        {
            throw new SafeTensorsFormatException($"the stream is {total} bytes, shorter than the 8-byte header length.");
        }

        var n = CheckHeaderLength(BinaryPrimitives.ReadUInt64LittleEndian(prefix), total);
        var json = new byte[n];
        stream.ReadExactly(json);
        return ParseHeader(json, total - 8 - (long)n);
    }

    /// <summary>Reads one tensor's bytes from a stream whose header is <paramref name="header"/>.</summary>
    public static SafeTensor ReadTensor(Stream stream, SafeTensorsHeader header, string name)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(header);
        var info = header.Find(name) ?? throw new KeyNotFoundException($"safetensors: no tensor named \"{name}\".");
        if (info.ByteLength > Array.MaxLength)
        {
            throw new SafeTensorsFormatException($"tensor {name} is {info.ByteLength} bytes, too large for one array.");
        }

        var bytes = new byte[info.ByteLength];
        stream.Position = header.DataStart + info.Begin;
        stream.ReadExactly(bytes);
        return new SafeTensor(info.Name, info.DType, info.Shape, bytes);
    }

    /// <summary>Bytes of a tensor of this dtype and shape, or null when a dimension is negative or the size overflows.</summary>
    public static long? ByteLength(SafeTensorDType dtype, IReadOnlyList<long> shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        long count = 1;
        foreach (var d in shape)
        {
            if (d < 0)
            {
                return null;
            }

            try
            {
                count = checked(count * d);
            }
            catch (OverflowException)
            {
                return null;
            }
        }

        try
        {
            return checked(count * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            return null;
        }
    }

    /// <summary>Swaps each element of <paramref name="bytes"/> between native and little-endian order, in place (a no-op on little-endian machines).</summary>
    public static void ToLittleEndian(Span<byte> bytes, int elementSize)
    {
        // The format is little-endian; on a big-endian host each element's bytes are reversed.
        if (BitConverter.IsLittleEndian || elementSize == 1)
        {
            return;
        }

        for (var i = 0; i + elementSize <= bytes.Length; i += elementSize)
        {
            bytes.Slice(i, elementSize).Reverse();
        }
    }

    private static ulong CheckHeaderLength(ulong n, long fileLength)
    {
        if (n > MaxHeaderLength)
        {
            throw new SafeTensorsFormatException($"the header length {n} is above the limit of {MaxHeaderLength} bytes (not a safetensors file, or a corrupt one).");
        }

        if ((long)n > fileLength - 8)
        {
            throw new SafeTensorsFormatException($"the header length {n} runs past the end of the file ({fileLength} bytes): the file is truncated or not safetensors.");
        }

        return n;
    }

    private static SafeTensorsHeader ParseHeader(ReadOnlySpan<byte> json, long dataLength)
    {
        if (json.Length == 0 || json[0] != (byte)'{')
        {
            throw new SafeTensorsFormatException("the header must be a JSON object starting with '{'.");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException ex)
        {
            throw new SafeTensorsFormatException("the header is not valid UTF-8 JSON: " + ex.Message, ex);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new SafeTensorsFormatException("the header must be a JSON object.");
            }

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new List<SafeTensorInfo>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                {
                    throw new SafeTensorsFormatException($"the header names \"{property.Name}\" twice.");
                }

                if (property.Name == MetadataKey)
                {
                    ReadMetadata(property.Value, metadata);
                }
                else
                {
                    tensors.Add(ReadInfo(property.Name, property.Value));
                }
            }

            // The tensors must tile the data section: no gaps, no overlaps, nothing left over.
            tensors.Sort((a, b) => a.Begin != b.Begin ? a.Begin.CompareTo(b.Begin) : a.End.CompareTo(b.End));
            long expected = 0;
            foreach (var t in tensors)
            {
                if (t.Begin != expected)
                {
                    throw new SafeTensorsFormatException(t.Begin < expected
                        ? $"tensor {t.Name} starts at {t.Begin}, inside the previous tensor (which ends at {expected})."
                        : $"tensor {t.Name} starts at {t.Begin}, leaving a gap after offset {expected}.");
                }

                expected = t.End;
            }

            if (expected != dataLength)
            {
                throw new SafeTensorsFormatException(expected > dataLength
                    ? $"the tensors need {expected} data bytes but the file has {dataLength}: it is truncated."
                    : $"the tensors cover {expected} data bytes but the file has {dataLength}: trailing bytes belong to no tensor.");
            }

            return new SafeTensorsHeader(tensors, metadata, json.Length, dataLength);
        }
    }

    private static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException($"\"{MetadataKey}\" must be an object of strings.");
        }

        foreach (var entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new SafeTensorsFormatException($"metadata \"{entry.Name}\" is a {entry.Value.ValueKind}; metadata values must be strings.");
            }

            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
            {
                throw new SafeTensorsFormatException($"metadata names \"{entry.Name}\" twice.");
            }
        }
    }

    private static SafeTensorInfo ReadInfo(string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new SafeTensorsFormatException($"tensor {name}: the entry must be an object with dtype, shape and data_offsets.");
        }

        string? code = null;
        long[]? shape = null;
        long[]? offsets = null;
        foreach (var field in value.EnumerateObject())
        {
            switch (field.Name)
            {
                case "dtype" when code is null:
                    code = field.Value.ValueKind == JsonValueKind.String ? field.Value.GetString() : throw new SafeTensorsFormatException($"tensor {name}: dtype must be a string.");
                    break;
                case "shape" when shape is null:
                    shape = ReadNumbers(name, "shape", field.Value, MaxRank);
                    break;
                case "data_offsets" when offsets is null:
                    offsets = ReadNumbers(name, "data_offsets", field.Value, 2);
                    break;
                case "dtype" or "shape" or "data_offsets":
                    throw new SafeTensorsFormatException($"tensor {name}: {field.Name} is given twice.");
                default:
                    throw new SafeTensorsFormatException($"tensor {name}: unknown field \"{field.Name}\" (expected dtype, shape, data_offsets).");
            }
        }

        if (code is null || shape is null || offsets is null)
        {
            throw new SafeTensorsFormatException($"tensor {name}: missing {(code is null ? "dtype" : shape is null ? "shape" : "data_offsets")}.");
        }

        if (!SafeTensorDTypes.TryParse(code, out var dtype))
        {
            throw new SafeTensorsFormatException($"tensor {name}: unknown dtype \"{code}\".");
        }

        if (offsets.Length != 2 || offsets[0] > offsets[1])
        {
            throw new SafeTensorsFormatException($"tensor {name}: data_offsets must be [begin, end] with begin <= end.");
        }

        var bytes = ByteLength(dtype, shape) ?? throw new SafeTensorsFormatException($"tensor {name}: shape [{string.Join(", ", shape)}] overflows.");
        if (bytes != offsets[1] - offsets[0])
        {
            throw new SafeTensorsFormatException(
                $"tensor {name}: {code} [{string.Join(", ", shape)}] is {bytes} bytes but data_offsets [{offsets[0]}, {offsets[1]}] span {offsets[1] - offsets[0]}.");
        }

        return new SafeTensorInfo(name, dtype, shape, offsets[0], offsets[1]);
    }

    private static long[] ReadNumbers(string name, string field, JsonElement value, int maxCount)
    {
        if (value.ValueKind != JsonValueKind.Array || value.GetArrayLength() > maxCount)
        {
            throw new SafeTensorsFormatException($"tensor {name}: {field} must be an array of at most {maxCount} non-negative integers.");
        }

        var result = new long[value.GetArrayLength()];
        var i = 0;
        foreach (var item in value.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetUInt64(out var n) || n > long.MaxValue)
            {
                throw new SafeTensorsFormatException($"tensor {name}: {field} holds {item.GetRawText()}, not a non-negative integer.");
            }

            result[i++] = (long)n;
        }

        return result;
    }
}
