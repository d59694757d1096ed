using System.Buffers.Binary;
using System.Text;
using MriSeg.Imaging.Formats;

namespace MriSeg.Imaging.Tests;

/// <summary>The torch-free format code: no torch fixture needed.</summary>
public sealed class SafeTensorsTests
{
    private static byte[] File(string json, byte[] data, int? declaredLength = null)
    {
        var header = Encoding.UTF8.GetBytes(json);
        var bytes = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)(declaredLength ?? header.Length));
        header.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + header.Length);
        return bytes;
    }

    [Fact]
    public void Reads_a_hand_written_file_as_the_format_defines_it()
    {
        var data = new byte[16];
        for (var i = 0; i < 4; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(data.AsSpan(4 * i), i - 1);
        }

        var bytes = File("""{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]},"__metadata__":{"foo":"bar"}}   """, data);
        var file = SafeTensors.Parse(bytes);

        Assert.Equal("bar", file.Metadata["foo"]);
        var t = Assert.Single(file.Tensors);
        Assert.Equal("test", t.Name);
        Assert.Equal(SafeTensorDType.Int32, t.DType);
        Assert.Equal([2L, 2], t.Shape);
        Assert.Equal([-1, 0, 1, 2], t.ToArray<int>());
        Assert.Equal(8 + bytes.Length - 8 - 16, file.Header.DataStart);
    }

    [Fact]
    public void Every_dtype_round_trips_with_metadata_and_aligned_layout()
    {
        SafeTensor[] tensors =
        [
            SafeTensor.Create<byte>("u8", [1, 2, 255], 3),
            SafeTensor.Create("f32", new[] { 1.5f, -2.25f, float.MaxValue, float.Epsilon, 0f, -0f }, 2, 3),
            SafeTensor.Create("f16", new[] { (Half)1.5, (Half)(-0.25), Half.MaxValue }, 3),
            SafeTensor.Create("f64", new[] { Math.PI, -1e300 }, 2, 1),
            SafeTensor.Create("i32", new[] { int.MinValue, 7, int.MaxValue }, 3),
            SafeTensor.Create("i64", new[] { long.MinValue, long.MaxValue }, 2),
            SafeTensor.Create<sbyte>("i8", [-128, 127], 2),
            SafeTensor.Create<short>("i16", [-3, 3], 2),
            SafeTensor.Create<ushort>("u16", [65535], 1),
            SafeTensor.Create<uint>("u32", [uint.MaxValue], 1),
            SafeTensor.Create<ulong>("u64", [ulong.MaxValue], 1),
            SafeTensor.Create("bool", new[] { true, false, true }, 3),
            SafeTensor.Create("scalar", new[] { 42.0f }),
            SafeTensor.Create("empty", Array.Empty<float>(), 0, 4),
            new SafeTensor("bf16", SafeTensorDType.BFloat16, [2], new byte[] { 0x80, 0x3f, 0x00, 0xc0 }),
            new SafeTensor("f8", SafeTensorDType.Float8E4M3, [1], new byte[] { 0x38 }),
        ];
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ü + <json> \"quoted\"" };

        var bytes = SafeTensors.Serialize(tensors, metadata);
        var headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + headerLength) % 8);

        var file = SafeTensors.Parse(bytes);
        Assert.Equal(metadata, file.Metadata);
        Assert.Equal(tensors.Length, file.Tensors.Count);
        foreach (var t in tensors)
        {
            var read = file[t.Name];
            Assert.Equal(t.DType, read.DType);
            Assert.Equal(t.Shape, read.Shape);
            Assert.Equal(t.Data.ToArray(), read.Data.ToArray());
            var info = file.Header.Find(t.Name)!;
            Assert.Equal(0, (file.Header.DataStart + info.Begin) % t.DType.ElementSize());
        }

        Assert.Equal([1.5f, -2.25f, float.MaxValue, float.Epsilon, 0f, -0f], file["f32"].ToArray<float>());
        Assert.Equal([(Half)1.5, (Half)(-0.25), Half.MaxValue], file["f16"].ToArray<Half>());
        Assert.Equal([Math.PI, -1e300], file["f64"].ToArray<double>());
        Assert.Equal([long.MinValue, long.MaxValue], file["i64"].ToArray<long>());
        Assert.Equal([true, false, true], file["bool"].ToArray<bool>());
        Assert.Empty(file["scalar"].Shape);
        Assert.Equal(1, file["scalar"].ElementCount);
        Assert.Equal(0, file["empty"].ElementCount);
        Assert.Throws<InvalidOperationException>(() => file["f32"].ToArray<double>());

        // Stable order within an element size, largest elements first.
        Assert.Equal(["f64", "i64", "u64", "f32", "i32", "u32", "scalar", "empty", "f16", "i16", "u16", "bf16", "u8", "i8", "bool", "f8"],
            file.Tensors.Select(t => t.Name));
    }

    [Fact]
    public void Header_and_single_tensors_read_from_a_stream()
    {
        var bytes = SafeTensors.Serialize([SafeTensor.Create("a", new[] { 1f, 2f }, 2), SafeTensor.Create("b", new[] { 3L }, 1)]);
        using var stream = new MemoryStream(bytes);
        var header = SafeTensors.ReadHeader(stream);
        Assert.Equal(16, header.DataLength);
        Assert.Equal([3L], SafeTensors.ReadTensor(stream, header, "b").ToArray<long>());
        Assert.Equal([1f, 2f], SafeTensors.ReadTensor(stream, header, "a").ToArray<float>());
        Assert.Throws<KeyNotFoundException>(() => SafeTensors.ReadTensor(stream, header, "c"));
    }

    [Fact]
    public void Save_and_load_through_a_file()
    {
        using var folder = new TempFolder();
        var path = folder.File("x.safetensors");
        SafeTensors.Save(path, [SafeTensor.Create("w", new[] { 0.5, 0.25 }, 2)], new Dictionary<string, string> { ["k"] = "v" });
        var file = SafeTensors.Load(path);
        Assert.Equal([0.5, 0.25], file["w"].ToArray<double>());
        Assert.Equal("v", file.Metadata["k"]);
        Assert.Single(Directory.GetFiles(folder.Path));
    }

    public static TheoryData<string, byte[], string> Malformed => new()
    {
        { "short", new byte[] { 1, 2, 3 }, "shorter than the 8-byte" },
        { "length past end", File("{}", [], declaredLength: 1000), "runs past the end" },
        { "huge length", File("{}", [], declaredLength: int.MaxValue), "above the limit" },
        { "not json", File("{nope", []), "not valid UTF-8 JSON" },
        { "not an object", File("[1, 2]", []), "starting with '{'" },
        { "unknown dtype", File("""{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}""", new byte[16]), "unknown dtype \"F128\"" },
        { "size mismatch", File("""{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", new byte[8]), "is 12 bytes but data_offsets" },
        { "begin after end", File("""{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}""", new byte[8]), "begin <= end" },
        { "overlap", File("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", new byte[8]), "inside the previous tensor" },
        { "gap", File("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", new byte[8]), "leaving a gap" },
        { "trailing bytes", File("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", new byte[8]), "trailing bytes" },
        { "truncated", File("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", new byte[8]), "truncated" },
        { "duplicate tensor", File("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}""", new byte[2]), "names \"a\" twice" },
        { "metadata not strings", File("""{"__metadata__":{"n":1}}""", []), "metadata values must be strings" },
        { "negative dimension", File("""{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}""", []), "not a non-negative integer" },
        { "fractional offset", File("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1.5]}}""", new byte[1]), "not a non-negative integer" },
        { "overflowing shape", File("""{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}}""", new byte[8]), "overflows" },
        { "unknown field", File("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":0}}""", new byte[1]), "unknown field \"extra\"" },
        { "missing offsets", File("""{"a":{"dtype":"U8","shape":[1]}}""", new byte[1]), "missing data_offsets" },
        { "three offsets", File("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}""", new byte[1]), "at most 2" },
        { "entry not object", File("""{"a":5}""", []), "must be an object" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void Malformed_files_are_refused_with_a_clear_reason(string name, byte[] bytes, string reason)
    {
        var ex = Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.Parse(bytes));
        Assert.Contains(reason, ex.Message, StringComparison.Ordinal);
        Assert.StartsWith("safetensors: ", ex.Message, StringComparison.Ordinal);
        Assert.NotEmpty(name);

        // The stream reader applies the same checks.
        using var stream = new MemoryStream(bytes);
        Assert.Throws<SafeTensorsFormatException>(() => SafeTensors.ReadHeader(stream));
    }

    [Fact]
    public void Writer_refuses_duplicate_reserved_and_mis_sized_tensors()
    {
        var a = SafeTensor.Create("a", new[] { 1f }, 1);
        Assert.Contains("two tensors are named", Assert.Throws<ArgumentException>(() => SafeTensors.Serialize([a, a])).Message, StringComparison.Ordinal);
        Assert.Contains("reserved", Assert.Throws<ArgumentException>(
            () => SafeTensors.Serialize([SafeTensor.Create(SafeTensors.MetadataKey, new[] { 1f }, 1)])).Message, StringComparison.Ordinal);
        Assert.Contains("needs 8 bytes", Assert.Throws<ArgumentException>(
            () => new SafeTensor("b", SafeTensorDType.Float32, [2], new byte[4])).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => new SafeTensor("c", SafeTensorDType.Float32, [-1], Array.Empty<byte>()));
    }

    [Fact]
    public void Dtype_codes_match_the_format()
    {
        foreach (var (code, type, size) in new[] { ("F32", SafeTensorDType.Float32, 4), ("F16", SafeTensorDType.Float16, 2), ("F64", SafeTensorDType.Float64, 8),
            ("U8", SafeTensorDType.UInt8, 1), ("I32", SafeTensorDType.Int32, 4), ("I64", SafeTensorDType.Int64, 8), ("BF16", SafeTensorDType.BFloat16, 2),
            ("BOOL", SafeTensorDType.Bool, 1), ("F8_E5M2", SafeTensorDType.Float8E5M2, 1) })
        {
            Assert.Equal(code, type.Code());
            Assert.Equal(size, type.ElementSize());
            Assert.True(SafeTensorDTypes.TryParse(code, out var parsed));
            Assert.Equal(type, parsed);
        }

        Assert.False(SafeTensorDTypes.TryParse("f32", out _));
    }
}
