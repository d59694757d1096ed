using System.Buffers.Binary;
using MriSeg.Learning.Torch;

namespace MriSeg.Learning.Tests;

[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class ElfVersionPatcherTests : IDisposable
{
    private const string Glibcxx332 = "GLIBCXX_3.4.32";

    // From `readelf -S -V` on TorchSharp 0.107.0's libLibTorchSharp.so: .gnu.version_r is section 6 at
    // file offset 0x3f8f0; the GLIBCXX_3.4.32 Vernaux entry is at +0x140, its vna_flags at +4.
    private const long ExpectedFlagsOffset = 0x3f8f0 + 0x140 + 4;
    private const int VersionRSectionIndex = 6;

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void Real_shim_needs_GLIBCXX_3_4_32_from_libstdcxx_non_weak()
    {
        var shim = _temp.CopyPristineShim();

        var info = ElfVersionInfo.Read(shim);

        Assert.Equal("section headers", info.TableSource);
        var need = Assert.Single(info.Needs, n => n.VersionName == Glibcxx332);
        Assert.Equal("libstdc++.so.6", need.Library);
        Assert.False(need.IsWeak);
        Assert.Equal(ExpectedFlagsOffset, need.FlagsOffset);
        Assert.True(ElfVersionPatcher.RequiresNonWeak(shim, Glibcxx332));
        Assert.Contains(info.Needs, n => n.Library == "libc.so.6" && n.VersionName == "GLIBC_2.2.5");
        Assert.Contains(info.Needs, n => n.Library == "libstdc++.so.6" && n.VersionName == "CXXABI_1.3");
        Assert.DoesNotContain(info.Needs, n => n.IsWeak);
        Assert.False(info.Requires("GLIBCXX_9.9.9"));
    }

    [Fact]
    public void Patching_sets_the_weak_flag_and_changes_only_that_field()
    {
        var shim = _temp.CopyPristineShim();
        File.SetUnixFileMode(shim, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        var modeBefore = File.GetUnixFileMode(shim);
        var before = File.ReadAllBytes(shim);

        var outcome = ElfVersionPatcher.MarkWeak(shim, Glibcxx332);

        Assert.Equal(WeakPatchOutcome.Patched, outcome);
        var after = File.ReadAllBytes(shim);
        Assert.Equal(before.Length, after.Length);
        var changed = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToList();
        var only = Assert.Single(changed);
        Assert.InRange(only, ExpectedFlagsOffset, ExpectedFlagsOffset + 1);
        Assert.Equal(ElfVersionPatcher.VerFlagWeak, BinaryPrimitives.ReadUInt16LittleEndian(after.AsSpan((int)ExpectedFlagsOffset, 2)));

        var info = ElfVersionInfo.Read(shim);
        Assert.True(info.Requires(Glibcxx332));
        Assert.False(info.RequiresNonWeak(Glibcxx332));
        Assert.True(Assert.Single(info.Needs, n => n.VersionName == Glibcxx332).IsWeak);
        Assert.Equal(modeBefore, File.GetUnixFileMode(shim));
        Assert.Equal([shim], Directory.GetFiles(_temp.Path)); // no temporary file left behind
    }

    [Fact]
    public void Patching_twice_changes_nothing_the_second_time()
    {
        var shim = _temp.CopyPristineShim();
        Assert.Equal(WeakPatchOutcome.Patched, ElfVersionPatcher.MarkWeak(shim, Glibcxx332));
        var once = File.ReadAllBytes(shim);
        var modified = new FileInfo(shim).LastWriteTimeUtc;

        Assert.Equal(WeakPatchOutcome.AlreadyWeak, ElfVersionPatcher.MarkWeak(shim, Glibcxx332));

        Assert.Equal(once, File.ReadAllBytes(shim));
        Assert.Equal(modified, new FileInfo(shim).LastWriteTimeUtc);
    }

    [Fact]
    public void Patching_a_version_that_is_not_needed_writes_nothing()
    {
        var shim = _temp.CopyPristineShim();
        var before = File.ReadAllBytes(shim);

        Assert.Equal(WeakPatchOutcome.NotRequired, ElfVersionPatcher.MarkWeak(shim, "GLIBCXX_9.9.9"));

        Assert.Equal(before, File.ReadAllBytes(shim));
    }

    [Fact]
    public void Dynamic_segment_gives_the_same_needs_as_the_section_headers()
    {
        var shim = _temp.CopyPristineShim();
        var bytes = File.ReadAllBytes(shim);
        var fromSections = ElfVersionInfo.Parse(shim, bytes);

        // Drop the section header table (e_shoff, e_shnum): only DT_VERNEED is left to find it.
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(40), 0);
        BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(60), 0);
        var fromDynamic = ElfVersionInfo.Parse(shim, bytes);

        Assert.Equal("dynamic segment", fromDynamic.TableSource);
        Assert.Equal(fromSections.Needs, fromDynamic.Needs);
        Assert.True(fromDynamic.RequiresNonWeak(Glibcxx332));
    }

    [Fact]
    public void Empty_file_throws_a_clear_exception()
    {
        var path = _temp.File("empty.so");
        File.WriteAllBytes(path, []);

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionPatcher.MarkWeak(path, Glibcxx332));

        Assert.Equal(path, ex.FilePath);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("0 bytes", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Random_bytes_throw_a_clear_exception()
    {
        var path = _temp.File("random.so");
        var bytes = new byte[64 * 1024];
        new Random(1234).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionInfo.Read(path));

        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("magic", ex.Message, StringComparison.Ordinal);
        Assert.Equal(bytes, File.ReadAllBytes(path));
    }

    [Theory]
    [InlineData(40)]
    [InlineData(4096)]
    [InlineData(0x3f900)] // inside .gnu.version_r
    [InlineData(1_200_000)]
    public void Truncated_copy_throws_a_clear_exception(int length)
    {
        var shim = _temp.CopyPristineShim();
        var path = _temp.File($"truncated-{length}.so");
        File.WriteAllBytes(path, File.ReadAllBytes(shim)[..length]);

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionPatcher.MarkWeak(path, Glibcxx332));

        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Matches("truncated|shorter than", ex.Message);
    }

    [Fact]
    public void Thirty_two_bit_elf_is_rejected_by_name()
    {
        var bytes = File.ReadAllBytes(_temp.CopyPristineShim());
        bytes[4] = 1; // ELFCLASS32
        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionInfo.Parse("x.so", bytes));
        Assert.Contains("32-bit", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Entry_count_larger_than_the_section_is_rejected()
    {
        var bytes = File.ReadAllBytes(_temp.CopyPristineShim());
        var header = VersionRSectionHeader(bytes);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(header + 44), 1_000_000_000); // sh_info

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionInfo.Parse("x.so", bytes));

        Assert.Contains("claims 1000000000 entries", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Chain_pointer_leaving_the_section_is_rejected()
    {
        var bytes = File.ReadAllBytes(_temp.CopyPristineShim());
        var header = VersionRSectionHeader(bytes);
        var table = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(header + 24));
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(table + 12), 0x7fff_0000); // first vn_next

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionInfo.Parse("x.so", bytes));

        Assert.Contains("outside .gnu.version_r", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Name_offset_outside_the_string_table_is_rejected()
    {
        var bytes = File.ReadAllBytes(_temp.CopyPristineShim());
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan((int)ExpectedFlagsOffset + 4), uint.MaxValue); // vna_name

        var ex = Assert.Throws<ElfFormatException>(() => ElfVersionInfo.Parse("x.so", bytes));

        Assert.Contains("string table", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Patching_a_damaged_file_leaves_it_untouched()
    {
        var path = _temp.CopyPristineShim();
        var bytes = File.ReadAllBytes(path);
        var damaged = bytes[..(bytes.Length / 2)];
        File.WriteAllBytes(path, damaged);

        Assert.Throws<ElfFormatException>(() => ElfVersionPatcher.MarkWeak(path, Glibcxx332));

        Assert.Equal(damaged, File.ReadAllBytes(path));
        Assert.Single(Directory.GetFiles(_temp.Path));
    }

    [Fact]
    public void System_libstdcxx_is_found_and_its_versions_read()
    {
        var finding = SystemLibStdCxx.Probe();

        Assert.NotNull(finding.Path);
        Assert.Null(finding.Error);
        Assert.Contains("GLIBCXX_3.4", finding.Versions);
        Assert.Contains("GLIBCXX_3.4.21", finding.Versions);
        Assert.StartsWith("GLIBCXX_3.4.", finding.NewestGlibcxx, StringComparison.Ordinal);
        Assert.Equal(finding.Versions.Contains(Glibcxx332), finding.Defines(Glibcxx332));
    }

    private static int VersionRSectionHeader(byte[] bytes)
    {
        var shoff = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(40));
        var header = shoff + (VersionRSectionIndex * 64);
        Assert.Equal(0x6ffffffeu, BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(header + 4))); // SHT_GNU_verneed
        return header;
    }
}
