using System.Buffers.Binary;
using System.Text;

namespace MriSeg.Learning.Torch;

/// <summary>
/// One <c>Vernaux</c> entry of <c>.gnu.version_r</c>: a symbol version that the file needs from
/// <see cref="Library"/>.
/// </summary>
/// <param name="Library">The needed library (<c>vn_file</c>), e.g. <c>libstdc++.so.6</c>.</param>
/// <param name="VersionName">The version (<c>vna_name</c>), e.g. <c>GLIBCXX_3.4.32</c>.</param>
/// <param name="Flags">The entry's <c>vna_flags</c>.</param>
/// <param name="FlagsOffset">File offset of the two-byte <c>vna_flags</c> field.</param>
public sealed record ElfVersionNeed(string Library, string VersionName, ushort Flags, long FlagsOffset)
{
    /// <summary>True when <c>VER_FLG_WEAK</c> is set: the dynamic loader tolerates the version's absence.</summary>
    public bool IsWeak => (Flags & ElfVersionPatcher.VerFlagWeak) != 0;
}

/// <summary>
/// The symbol-version tables of an ELF64 little-endian shared object: what it needs
/// (<c>.gnu.version_r</c>) and what it defines (<c>.gnu.version_d</c>). Pure managed parsing; every
/// read is bounds-checked and every chain walk is bounded, so a damaged file gives an
/// <see cref="ElfFormatException"/> rather than a crash or a hang.
/// </summary>
public sealed class ElfVersionInfo
{
    private ElfVersionInfo(string filePath, IReadOnlyList<ElfVersionNeed> needs, IReadOnlyList<string> definitions, string tableSource)
    {
        FilePath = filePath;
        Needs = needs;
        Definitions = definitions;
        TableSource = tableSource;
    }

    /// <summary>The file that was parsed.</summary>
    public string FilePath { get; }

    /// <summary>Every <c>Vernaux</c> entry, in file order.</summary>
    public IReadOnlyList<ElfVersionNeed> Needs { get; }

    /// <summary>The version names the file defines (the base entry, i.e. the soname, excluded).</summary>
    public IReadOnlyList<string> Definitions { get; }

    /// <summary>Where the tables were found: "section headers", "dynamic segment" or "none".</summary>
    public string TableSource { get; }

    /// <summary>Reads and parses <paramref name="path"/>.</summary>
    /// <exception cref="ElfFormatException">The file is not an ELF64 LE shared object or is inconsistent.</exception>
    public static ElfVersionInfo Read(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return Parse(path, File.ReadAllBytes(path));
    }

    /// <summary>Parses an in-memory image; <paramref name="path"/> is only used in messages.</summary>
    public static ElfVersionInfo Parse(string path, ReadOnlyMemory<byte> image) => new ElfParser(path, image).Parse();

    /// <summary>True when the file defines <paramref name="versionName"/> (e.g. libstdc++ defining GLIBCXX_3.4.32).</summary>
    public bool Defines(string versionName) => Definitions.Contains(versionName, StringComparer.Ordinal);

    /// <summary>True when some entry needs <paramref name="versionName"/>, weak or not.</summary>
    public bool Requires(string versionName) => Needs.Any(n => n.VersionName == versionName);

    /// <summary>True when some entry needs <paramref name="versionName"/> without the weak flag.</summary>
    public bool RequiresNonWeak(string versionName) => Needs.Any(n => n.VersionName == versionName && !n.IsWeak);

    private sealed class ElfParser(string path, ReadOnlyMemory<byte> image)
    {
        private const int ElfHeaderSize = 64;
        private const int SectionHeaderSize = 64;
        private const int ProgramHeaderSize = 56;
        private const int VerneedSize = 16;
        private const int VernauxSize = 16;
        private const int VerdefSize = 20;
        private const int VerdauxSize = 8;
        private const ushort EtDyn = 3;
        private const uint ShtNobits = 8;
        private const uint ShtGnuVerdef = 0x6ffffffd;
        private const uint ShtGnuVerneed = 0x6ffffffe;
        private const uint PtLoad = 1;
        private const uint PtDynamic = 2;
        private const long DtNull = 0;
        private const long DtStrtab = 5;
        private const long DtStrsz = 10;
        private const long DtVerdef = 0x6ffffffc;
        private const long DtVerdefnum = 0x6ffffffd;
        private const long DtVerneed = 0x6ffffffe;
        private const long DtVerneednum = 0x6fffffff;
        private const ushort VerFlgBase = 0x1;

        private ReadOnlySpan<byte> Data => image.Span;

        private long Length => image.Length;

        public ElfVersionInfo Parse()
        {
            CheckHeader();
            var tables = FromSectionHeaders();
            if (tables is null || (tables.Need is null && tables.Def is null))
            {
                tables = FromDynamicSegment() ?? tables;
            }

            if (tables is null)
            {
                return new ElfVersionInfo(path, [], [], "none");
            }

            var needs = tables.Need is { } n ? WalkNeeds(n) : [];
            var defs = tables.Def is { } d ? WalkDefinitions(d) : [];
            return new ElfVersionInfo(path, needs, defs, tables.Source);
        }

        private void CheckHeader()
        {
            if (Length < ElfHeaderSize)
            {
                throw Fail($"the file is {Length} bytes long, shorter than the 64-byte ELF64 header");
            }

            if (Data[0] != 0x7f || Data[1] != (byte)'E' || Data[2] != (byte)'L' || Data[3] != (byte)'F')
            {
                throw Fail("it does not start with the ELF magic number 7F 45 4C 46");
            }

            switch (Data[4])
            {
                case 2: break;
                case 1: throw Fail("it is a 32-bit ELF file (ELFCLASS32); only ELF64 is supported");
                default: throw Fail($"unknown ELF class {Data[4]}");
            }

            switch (Data[5])
            {
                case 1: break;
                case 2: throw Fail("it is big-endian (ELFDATA2MSB); only little-endian is supported");
                default: throw Fail($"unknown ELF data encoding {Data[5]}");
            }

            var type = U16(16, "e_type");
            if (type != EtDyn)
            {
                throw Fail($"it is not a shared object (e_type {type}, expected {EtDyn} ET_DYN)");
            }
        }

        private Tables? FromSectionHeaders()
        {
            var shoff = U64(40, "e_shoff");
            if (shoff == 0)
            {
                return null;
            }

            var shentsize = U16(58, "e_shentsize");
            if (shentsize != SectionHeaderSize)
            {
                throw Fail($"section header entries are {shentsize} bytes, expected {SectionHeaderSize}");
            }

            ulong count = U16(60, "e_shnum");
            if (count == 0)
            {
                // Extended numbering: the real count lives in section 0's sh_size.
                RequireRange(shoff, SectionHeaderSize, "section header 0");
                count = U64((long)shoff + 32, "section header 0 sh_size");
                if (count == 0)
                {
                    return null;
                }
            }

            RequireTable(shoff, count, SectionHeaderSize, "the section header table");
            Region? need = null, def = null;
            ulong needCount = 0, defCount = 0;
            Region needStrings = default, defStrings = default;
            for (ulong i = 0; i < count; i++)
            {
                var at = (long)(shoff + (i * SectionHeaderSize));
                var type = U32(at + 4, "sh_type");
                if (type != ShtGnuVerneed && type != ShtGnuVerdef)
                {
                    continue;
                }

                var name = type == ShtGnuVerneed ? ".gnu.version_r" : ".gnu.version_d";
                if ((type == ShtGnuVerneed && need is not null) || (type == ShtGnuVerdef && def is not null))
                {
                    throw Fail($"it has more than one {name} section");
                }

                var table = SectionRegion(at, $"section {i} ({name})");
                var link = U32(at + 40, "sh_link");
                if (link >= count)
                {
                    throw Fail($"{name} links to string table section {link}, but there are only {count} sections");
                }

                var strings = SectionRegion((long)(shoff + ((ulong)link * SectionHeaderSize)), $"string table section {link} of {name}");
                var entries = U32(at + 44, "sh_info");
                if (type == ShtGnuVerneed)
                {
                    (need, needCount, needStrings) = (table, entries, strings);
                }
                else
                {
                    (def, defCount, defStrings) = (table, entries, strings);
                }
            }

            return new Tables("section headers",
                need is { } n ? new VersionTable(".gnu.version_r", n, needCount, needStrings) : null,
                def is { } d ? new VersionTable(".gnu.version_d", d, defCount, defStrings) : null);
        }

        private Region SectionRegion(long headerAt, string what)
        {
            var type = U32(headerAt + 4, "sh_type");
            var offset = U64(headerAt + 24, "sh_offset");
            var size = U64(headerAt + 32, "sh_size");
            if (type == ShtNobits)
            {
                throw Fail($"{what} has no file contents (SHT_NOBITS)");
            }

            RequireRange(offset, size, what);
            return new Region((long)offset, (long)size);
        }

        private Tables? FromDynamicSegment()
        {
            var phoff = U64(32, "e_phoff");
            ulong phnum = U16(56, "e_phnum");
            if (phoff == 0 || phnum == 0)
            {
                return null;
            }

            var phentsize = U16(54, "e_phentsize");
            if (phentsize != ProgramHeaderSize)
            {
                throw Fail($"program header entries are {phentsize} bytes, expected {ProgramHeaderSize}");
            }

            RequireTable(phoff, phnum, ProgramHeaderSize, "the program header table");
            var loads = new List<(ulong Vaddr, ulong Offset, ulong FileSize)>();
            Region? dynamic = null;
            for (ulong i = 0; i < phnum; i++)
            {
                var at = (long)(phoff + (i * ProgramHeaderSize));
                var type = U32(at, "p_type");
                var offset = U64(at + 8, "p_offset");
                var vaddr = U64(at + 16, "p_vaddr");
                var filesz = U64(at + 32, "p_filesz");
                if (type == PtLoad)
                {
                    RequireRange(offset, filesz, $"loadable segment {i}");
                    loads.Add((vaddr, offset, filesz));
                }
                else if (type == PtDynamic)
                {
                    RequireRange(offset, filesz, "the dynamic segment");
                    dynamic = new Region((long)offset, (long)filesz);
                }
            }

            if (dynamic is not { } dyn)
            {
                return null;
            }

            ulong strtab = 0, strsz = 0, verneed = 0, verneednum = 0, verdef = 0, verdefnum = 0;
            for (long at = dyn.Offset; at + 16 <= dyn.End; at += 16)
            {
                var tag = (long)U64(at, "d_tag");
                var value = U64(at + 8, "d_val");
                if (tag == DtNull)
                {
                    break;
                }

                switch (tag)
                {
                    case DtStrtab: strtab = value; break;
                    case DtStrsz: strsz = value; break;
                    case DtVerneed: verneed = value; break;
                    case DtVerneednum: verneednum = value; break;
                    case DtVerdef: verdef = value; break;
                    case DtVerdefnum: verdefnum = value; break;
                    default: break;
                }
            }

            if (verneed == 0 && verdef == 0)
            {
                return new Tables("dynamic segment", null, null);
            }

            if (strtab == 0)
            {
                throw Fail("the dynamic segment has version tables but no DT_STRTAB");
            }

            var strOffset = ToFileOffset(loads, strtab, "DT_STRTAB", out _);
            RequireRange((ulong)strOffset, strsz, "the dynamic string table (DT_STRTAB/DT_STRSZ)");
            var strings = new Region(strOffset, (long)strsz);

            VersionTable? Table(ulong address, ulong entries, string name, string tag)
            {
                if (address == 0)
                {
                    return null;
                }

                // Without section headers the table's size is unknown: bound it by its segment.
                var offset = ToFileOffset(loads, address, tag, out var segmentEnd);
                return new VersionTable(name, new Region(offset, segmentEnd - offset), entries, strings);
            }

            return new Tables("dynamic segment",
                Table(verneed, verneednum, ".gnu.version_r", "DT_VERNEED"),
                Table(verdef, verdefnum, ".gnu.version_d", "DT_VERDEF"));
        }

        private long ToFileOffset(List<(ulong Vaddr, ulong Offset, ulong FileSize)> loads, ulong address, string what, out long segmentEnd)
        {
            foreach (var (vaddr, offset, fileSize) in loads)
            {
                if (address >= vaddr && address - vaddr < fileSize)
                {
                    segmentEnd = (long)(offset + fileSize);
                    return (long)(offset + (address - vaddr));
                }
            }

            throw Fail($"{what} address 0x{address:x} lies in no loadable segment's file contents");
        }

        private List<ElfVersionNeed> WalkNeeds(VersionTable t)
        {
            var result = new List<ElfVersionNeed>();
            CheckEntryCount(t, VerneedSize);
            var budget = t.Table.Size / VernauxSize; // no valid chain visits more entries than fit
            long at = t.Table.Offset;
            for (ulong i = 0; i < t.Count; i++)
            {
                RequireInTable(t, at, VerneedSize, $"Verneed entry {i}");
                var version = U16(at, "vn_version");
                if (version != 1)
                {
                    throw Fail($"Verneed entry {i} at 0x{at:x} has vn_version {version}, expected 1");
                }

                var auxCount = U16(at + 2, "vn_cnt");
                var library = String(t, U32(at + 4, "vn_file"), $"Verneed entry {i} vn_file");
                var aux = U32(at + 8, "vn_aux");
                var next = U32(at + 12, "vn_next");
                long a = at + aux;
                for (var j = 0; j < auxCount; j++)
                {
                    if (--budget < 0)
                    {
                        throw Fail($"the {t.Name} chains visit more entries than the table can hold (a loop or overlap)");
                    }

                    RequireInTable(t, a, VernauxSize, $"Vernaux entry {j} of Verneed entry {i} ({library})");
                    var flags = U16(a + 4, "vna_flags");
                    var name = String(t, U32(a + 8, "vna_name"), $"Vernaux entry {j} of {library}");
                    result.Add(new ElfVersionNeed(library, name, flags, a + 4));
                    var auxNext = U32(a + 12, "vna_next");
                    if (auxNext == 0)
                    {
                        if (j != auxCount - 1)
                        {
                            throw Fail($"the Vernaux chain of {library} ends after {j + 1} of its {auxCount} entries");
                        }

                        break;
                    }

                    a += auxNext;
                }

                if (next == 0)
                {
                    if (i != t.Count - 1)
                    {
                        throw Fail($"the Verneed chain ends after {i + 1} of its {t.Count} entries");
                    }

                    break;
                }

                at += next;
            }

            return result;
        }

        private List<string> WalkDefinitions(VersionTable t)
        {
            var result = new List<string>();
            CheckEntryCount(t, VerdefSize);
            long at = t.Table.Offset;
            for (ulong i = 0; i < t.Count; i++)
            {
                RequireInTable(t, at, VerdefSize, $"Verdef entry {i}");
                var version = U16(at, "vd_version");
                if (version != 1)
                {
                    throw Fail($"Verdef entry {i} at 0x{at:x} has vd_version {version}, expected 1");
                }

                var flags = U16(at + 2, "vd_flags");
                var auxCount = U16(at + 6, "vd_cnt");
                var aux = U32(at + 12, "vd_aux");
                var next = U32(at + 16, "vd_next");
                if (auxCount > 0 && (flags & VerFlgBase) == 0)
                {
                    // The first Verdaux names the version itself; later ones name its parents.
                    RequireInTable(t, at + aux, VerdauxSize, $"Verdaux of Verdef entry {i}");
                    result.Add(String(t, U32(at + aux, "vda_name"), $"Verdef entry {i}"));
                }

                if (next == 0)
                {
                    if (i != t.Count - 1)
                    {
                        throw Fail($"the Verdef chain ends after {i + 1} of its {t.Count} entries");
                    }

                    break;
                }

                at += next;
            }

            return result;
        }

        private void CheckEntryCount(VersionTable t, int entrySize)
        {
            if (t.Count > (ulong)(t.Table.Size / entrySize))
            {
                throw Fail($"{t.Name} claims {t.Count} entries but its {t.Table.Size} bytes hold at most {t.Table.Size / entrySize}");
            }
        }

        private void RequireInTable(VersionTable t, long at, int size, string what)
        {
            if (at < t.Table.Offset || at > t.Table.End - size)
            {
                throw Fail($"{what} at offset 0x{at:x} lies outside {t.Name} (0x{t.Table.Offset:x}..0x{t.Table.End:x})");
            }
        }

        private string String(VersionTable t, uint offset, string what)
        {
            if (offset >= t.Strings.Size)
            {
                throw Fail($"{what} names string offset {offset}, beyond the {t.Strings.Size}-byte string table of {t.Name}");
            }

            var span = Data.Slice((int)(t.Strings.Offset + offset), (int)(t.Strings.Size - offset));
            var end = span.IndexOf((byte)0);
            if (end < 0)
            {
                throw Fail($"{what} names an unterminated string at string table offset {offset}");
            }

            return Encoding.UTF8.GetString(span[..end]);
        }

        private void RequireTable(ulong offset, ulong count, int entrySize, string what)
        {
            if (count > (ulong)Length / (ulong)entrySize)
            {
                throw Fail($"{what} ({count} entries of {entrySize} bytes at 0x{offset:x}) is larger than the {Length}-byte file");
            }

            RequireRange(offset, count * (ulong)entrySize, what);
        }

        private void RequireRange(ulong offset, ulong size, string what)
        {
            if (offset > (ulong)Length || size > (ulong)Length - offset)
            {
                throw Fail($"{what} (0x{offset:x}+0x{size:x}) runs past the end of the {Length}-byte file; is it truncated?");
            }
        }

        private ushort U16(long at, string field)
        {
            Require(at, 2, field);
            return BinaryPrimitives.ReadUInt16LittleEndian(Data.Slice((int)at, 2));
        }

        private uint U32(long at, string field)
        {
            Require(at, 4, field);
            return BinaryPrimitives.ReadUInt32LittleEndian(Data.Slice((int)at, 4));
        }

        private ulong U64(long at, string field)
        {
            Require(at, 8, field);
            return BinaryPrimitives.ReadUInt64LittleEndian(Data.Slice((int)at, 8));
        }

        private void Require(long at, int size, string field)
        {
            if (at < 0 || at > Length - size)
            {
                throw Fail($"reading {field} at offset 0x{at:x} would run past the end of the {Length}-byte file; is it truncated?");
            }
        }

        private ElfFormatException Fail(string problem) => new(path, problem);
    }

    private readonly record struct Region(long Offset, long Size)
    {
        public long End => Offset + Size;
    }

    private sealed record VersionTable(string Name, Region Table, ulong Count, Region Strings);

    private sealed record Tables(string Source, VersionTable? Need, VersionTable? Def);
}
