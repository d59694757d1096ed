using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text.Json;

namespace MriSeg.KeyRelease.Attestation;

/// <summary>One TPM 2.0 command in, its response out (the bytes of TPM 2.0 Part 3, big-endian).</summary>
public interface ITpmTransport
{
    /// <summary>Sends <paramref name="command"/> and returns the whole response.</summary>
    /// <exception cref="MaaAttestationException">The TPM cannot be reached.</exception>
    Task<byte[]> ExecuteAsync(ReadOnlyMemory<byte> command, CancellationToken cancellationToken);
}

/// <summary>
/// A TPM character device: <c>/dev/tpmrm0</c> (the kernel's resource manager) by default. Each command is one
/// write() of the whole command and one read() of the whole response, as the Linux TPM driver expects.
/// </summary>
public sealed class TpmDevice(string path = TpmDevice.DefaultPath) : ITpmTransport
{
    /// <summary>The kernel's TPM resource manager, which the Trainer's container is given (<c>--device /dev/tpmrm0</c>).</summary>
    public const string DefaultPath = "/dev/tpmrm0";

    private const int MaxResponse = 8192;

    /// <summary>The device path.</summary>
    public string Path => path;

    /// <inheritdoc />
    public Task<byte[]> ExecuteAsync(ReadOnlyMemory<byte> command, CancellationToken cancellationToken) =>
        Task.Run(() => Execute(command.Span), cancellationToken);

    private byte[] Execute(ReadOnlySpan<byte> command)
    {
        FileStream device;
        try
        {
            device = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, bufferSize: 0);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MaaAttestationException(MaaAttestationStage.Vtpm,
                $"the vTPM {path} cannot be opened ({OneLine(e.Message)}): the Trainer must run on an Azure confidential VM with the device passed to its container", e);
        }

        using (device)
        {
            try
            {
                device.Write(command);
                var response = new byte[MaxResponse];
                var read = 0;
                do
                {
                    var n = device.Read(response, read, response.Length - read);
                    if (n == 0)
                    {
                        break;
                    }

                    read += n;
                }
                while (read < 10 || read < BinaryPrimitives.ReadInt32BigEndian(response.AsSpan(2)));

                return response[..read];
            }
            catch (IOException e)
            {
                throw new MaaAttestationException(MaaAttestationStage.Vtpm, $"the vTPM {path} failed a command: {OneLine(e.Message)}", e);
            }
        }
    }

    private static string OneLine(string text) => text.ReplaceLineEndings(" ");
}

/// <summary>
/// An Azure confidential VM's attestation report through its vTPM. The paravisor (HCL) keeps an "HCL report" in NV index
/// <see cref="HclReportIndex"/>: the AMD SEV-SNP report whose REPORT_DATA is the hash of the paravisor's runtime data (a
/// JSON document: the vTPM's keys, the VM's configuration and 64 bytes of user data). The guest chooses the user data
/// by writing NV index <see cref="UserDataIndex"/>; reading the report index then yields a fresh report carrying it.
/// Layout and procedure as in Microsoft's <c>Azure/cvm-attestation-tools</c> (<c>cvm-attestation/src/tpm_wrapper.py</c>:
/// the user-data index defined with owner/auth read and write, 64 bytes; the report read in 1024-byte chunks with owner
/// authorisation; <c>report_parser.py</c>: the offsets) and <c>kinvolk/azure-cvm-tooling</c> (<c>az-cvm-vtpm/src/hcl</c>).
/// Only the few TPM 2.0 commands this needs are marshalled here (NV_ReadPublic, NV_UndefineSpace, NV_DefineSpace,
/// NV_Write, NV_Read, with an empty-password session for the owner hierarchy).
/// </summary>
public sealed class AzureVtpm(ITpmTransport tpm)
{
    /// <summary>NV index of the HCL report.</summary>
    public const uint HclReportIndex = 0x01400001;

    /// <summary>NV index of the guest's user data (64 bytes).</summary>
    public const uint UserDataIndex = 0x01400002;

    // The report index is VM-wide state: a second attestation writing its user data between this one's write and read
    // would swap the reports. One at a time in this process (the Trainer is the VM's only workload).
    private static readonly SemaphoreSlim Gate = new(1, 1);

    private const ushort StNoSessions = 0x8001;
    private const ushort StSessions = 0x8002;
    private const uint CcNvUndefineSpace = 0x122;
    private const uint CcNvDefineSpace = 0x12A;
    private const uint CcNvWrite = 0x137;
    private const uint CcNvRead = 0x14E;
    private const uint CcNvReadPublic = 0x169;
    private const uint RhOwner = 0x40000001;
    private const uint RsPassword = 0x40000009;
    private const ushort AlgSha256 = 0x000B;
    private const int ReadChunk = 1024;

    /// <summary>TPMA_NV of the user-data index: OWNERWRITE | AUTHWRITE | OWNERREAD | AUTHREAD.</summary>
    internal const uint UserDataAttributes = 0x00000002 | 0x00000004 | 0x00020000 | 0x00040000;

    /// <summary>How often the report is read again when it does not yet carry the user data just written.</summary>
    public int ReportAttempts { get; init; } = 5;

    /// <summary>The pause between such reads.</summary>
    public TimeSpan ReportRetryDelay { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// Writes <paramref name="userData"/> (exactly 64 bytes) and reads the HCL report that carries it: an SEV-SNP report
    /// whose runtime data's <c>user-data</c> is that data and whose REPORT_DATA is the runtime data's hash (both checked).
    /// </summary>
    /// <exception cref="MaaAttestationException">The vTPM fails, or the report is not such a report.</exception>
    public async Task<HclReport> GetReportAsync(ReadOnlyMemory<byte> userData, CancellationToken cancellationToken)
    {
        if (userData.Length != RuntimeKeys.UserDataSize)
        {
            throw new ArgumentException($"the user data must be {RuntimeKeys.UserDataSize} bytes", nameof(userData));
        }

        await Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await WriteUserDataAsync(userData, cancellationToken).ConfigureAwait(false);
            for (var attempt = 1; ; attempt++)
            {
                var report = HclReport.Parse(await ReadIndexAsync(HclReportIndex, cancellationToken).ConfigureAwait(false));
                if (report.UserData is { } carried && carried.AsSpan().SequenceEqual(userData.Span))
                {
                    return report;
                }

                if (attempt >= ReportAttempts)
                {
                    throw new MaaAttestationException(MaaAttestationStage.Vtpm,
                        $"the vTPM's HCL report does not carry the user data just written to NV index 0x{UserDataIndex:x8} (after {attempt} reads): the paravisor did not refresh it");
                }

                await Task.Delay(ReportRetryDelay, cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            Gate.Release();
        }
    }

    private async Task WriteUserDataAsync(ReadOnlyMemory<byte> userData, CancellationToken cancellationToken)
    {
        var size = await ReadPublicSizeAsync(UserDataIndex, cancellationToken).ConfigureAwait(false);
        if (size != RuntimeKeys.UserDataSize)
        {
            if (size is not null)
            {
                await RunAsync("NV_UndefineSpace", CcNvUndefineSpace, [RhOwner, UserDataIndex], _ => { }, cancellationToken).ConfigureAwait(false);
            }

            await RunAsync("NV_DefineSpace", CcNvDefineSpace, [RhOwner], w =>
            {
                w.U16(0); // auth: empty
                w.U16(14); // TPM2B_NV_PUBLIC size
                w.U32(UserDataIndex);
                w.U16(AlgSha256);
                w.U32(UserDataAttributes);
                w.U16(0); // authPolicy: empty
                w.U16(RuntimeKeys.UserDataSize);
            }, cancellationToken).ConfigureAwait(false);
        }

        await RunAsync("NV_Write", CcNvWrite, [RhOwner, UserDataIndex], w =>
        {
            w.U16((ushort)userData.Length);
            w.Bytes(userData.Span);
            w.U16(0); // offset
        }, cancellationToken).ConfigureAwait(false);
    }

    private async Task<byte[]> ReadIndexAsync(uint index, CancellationToken cancellationToken)
    {
        var size = await ReadPublicSizeAsync(index, cancellationToken).ConfigureAwait(false)
            ?? throw new MaaAttestationException(MaaAttestationStage.Vtpm, $"the vTPM has no NV index 0x{index:x8}: not an Azure confidential VM (or its paravisor offers no HCL report)");
        var data = new byte[size];
        for (var offset = 0; offset < size;)
        {
            var chunk = (ushort)Math.Min(ReadChunk, size - offset);
            var at = (ushort)offset;
            var response = await RunAsync("NV_Read", CcNvRead, [RhOwner, index], w =>
            {
                w.U16(chunk);
                w.U16(at);
            }, cancellationToken).ConfigureAwait(false);

            // parameterSize (sessions), then TPM2B_MAX_NV_BUFFER.
            var reader = new Reader(response, 10);
            reader.U32();
            var bytes = reader.Sized();
            if (bytes.Length != chunk)
            {
                throw new MaaAttestationException(MaaAttestationStage.Vtpm, $"the vTPM's NV_Read of 0x{index:x8} returned {bytes.Length} bytes, not {chunk}");
            }

            bytes.CopyTo(data.AsSpan(offset));
            offset += chunk;
        }

        return data;
    }

    // The data size of an NV index, or null when it is not defined.
    private async Task<int?> ReadPublicSizeAsync(uint index, CancellationToken cancellationToken)
    {
        var command = new Writer();
        command.U16(StNoSessions);
        command.U32(0);
        command.U32(CcNvReadPublic);
        command.U32(index);
        var response = await ExecuteAsync(command.Finish(), cancellationToken).ConfigureAwait(false);
        var code = ResponseCode(response);
        if (code != 0)
        {
            // TPM_RC_HANDLE (format 1, any handle number): the index is not defined.
            if ((code & 0x80) != 0 && (code & 0x3F) == 0x0B)
            {
                return null;
            }

            throw Failed("NV_ReadPublic", code);
        }

        var reader = new Reader(response, 10);
        var nvPublic = new Reader(reader.Sized().ToArray(), 0);
        nvPublic.U32(); // nvIndex
        nvPublic.U16(); // nameAlg
        nvPublic.U32(); // attributes
        nvPublic.Sized(); // authPolicy
        return nvPublic.U16();
    }

    // A command with handles, one empty-password session authorising the first handle, and parameters.
    private async Task<byte[]> RunAsync(string name, uint commandCode, uint[] handles, Action<Writer> parameters, CancellationToken cancellationToken)
    {
        var command = new Writer();
        command.U16(StSessions);
        command.U32(0);
        command.U32(commandCode);
        foreach (var handle in handles)
        {
            command.U32(handle);
        }

        command.U32(9); // authorizationSize: one password session
        command.U32(RsPassword);
        command.U16(0); // nonceCaller
        command.U8(0); // sessionAttributes
        command.U16(0); // hmac: the empty password
        parameters(command);
        var response = await ExecuteAsync(command.Finish(), cancellationToken).ConfigureAwait(false);
        var code = ResponseCode(response);
        return code == 0 ? response : throw Failed(name, code);
    }

    private async Task<byte[]> ExecuteAsync(byte[] command, CancellationToken cancellationToken)
    {
        var response = await tpm.ExecuteAsync(command, cancellationToken).ConfigureAwait(false);
        if (response.Length < 10 || BinaryPrimitives.ReadUInt32BigEndian(response.AsSpan(2)) != response.Length)
        {
            throw new MaaAttestationException(MaaAttestationStage.Vtpm, $"the vTPM answered a malformed response ({response.Length} bytes)");
        }

        return response;
    }

    private static uint ResponseCode(byte[] response) => BinaryPrimitives.ReadUInt32BigEndian(response.AsSpan(6));

    private static MaaAttestationException Failed(string command, uint code) =>
        new(MaaAttestationStage.Vtpm, $"the vTPM refused {command}: TPM response code 0x{code:x3}{((code & 0x80) != 0 && (code & 0x3F) is 0x0E or 0x22 ? " (authorisation failed: the owner hierarchy must have an empty password)" : "")}");

    private sealed class Writer
    {
        private readonly MemoryStream _buffer = new();

        public void U8(byte value) => _buffer.WriteByte(value);

        public void U16(ushort value)
        {
            Span<byte> b = stackalloc byte[2];
            BinaryPrimitives.WriteUInt16BigEndian(b, value);
            _buffer.Write(b);
        }

        public void U32(uint value)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32BigEndian(b, value);
            _buffer.Write(b);
        }

        public void Bytes(ReadOnlySpan<byte> value) => _buffer.Write(value);

        public byte[] Finish()
        {
            var bytes = _buffer.ToArray();
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(2), (uint)bytes.Length);
            return bytes;
        }
    }

    private sealed class Reader(byte[] bytes, int offset)
    {
        private int _at = offset;

        public ushort U16() => BinaryPrimitives.ReadUInt16BigEndian(Take(2));

        public uint U32() => BinaryPrimitives.ReadUInt32BigEndian(Take(4));

        public ReadOnlySpan<byte> Sized() => Take(U16());

        private ReadOnlySpan<byte> Take(int count)
        {
            if (_at + count > bytes.Length)
            {
                throw new MaaAttestationException(MaaAttestationStage.Vtpm, $"the vTPM answered a truncated response ({bytes.Length} bytes)");
            }

            var span = bytes.AsSpan(_at, count);
            _at += count;
            return span;
        }
    }
}

/// <summary>
/// An HCL report (see <see cref="AzureVtpm"/>): a 32-byte header, the 1184-byte SEV-SNP report, then the IGVM request
/// data (data size, version, report type 2 = SNP, hash type, runtime-data size: five little-endian uint32) and the
/// runtime data (JSON).
/// </summary>
/// <param name="SnpReport">The AMD SEV-SNP attestation report (1184 bytes).</param>
/// <param name="RuntimeData">The paravisor's runtime data (UTF-8 JSON), hashed into the report's REPORT_DATA.</param>
/// <param name="UserData">The runtime data's <c>user-data</c> (64 bytes), or null when it has none.</param>
public sealed record HclReport(byte[] SnpReport, byte[] RuntimeData, byte[]? UserData)
{
    /// <summary>Size of an SEV-SNP attestation report.</summary>
    public const int SnpReportSize = 1184;

    /// <summary>Offset of the SNP report in the HCL report.</summary>
    public const int SnpReportOffset = 32;

    /// <summary>Offset of the IGVM request data (after the SNP report).</summary>
    public const int RequestDataOffset = SnpReportOffset + SnpReportSize;

    /// <summary>Offset of the runtime data.</summary>
    public const int RuntimeDataOffset = RequestDataOffset + 20;

    /// <summary>Offset of REPORT_DATA (64 bytes) in the SNP report.</summary>
    public const int ReportDataOffset = 0x50;

    /// <summary>The IGVM report type of an SEV-SNP report.</summary>
    public const uint SnpReportType = 2;

    /// <summary>Parses and checks an HCL report: an SNP report whose REPORT_DATA begins with the hash of the runtime data.</summary>
    /// <exception cref="MaaAttestationException">It is not one.</exception>
    public static HclReport Parse(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < RuntimeDataOffset)
        {
            throw Bad($"is {bytes.Length} bytes, shorter than its fixed part ({RuntimeDataOffset})");
        }

        var type = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(RequestDataOffset + 8)..]);
        if (type != SnpReportType)
        {
            throw Bad($"holds a report of type {type}, not an SEV-SNP report ({SnpReportType}; TDX confidential VMs are not supported)");
        }

        var hashType = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(RequestDataOffset + 12)..]);
        var size = BinaryPrimitives.ReadUInt32LittleEndian(bytes[(RequestDataOffset + 16)..]);
        if (size == 0 || size > bytes.Length - RuntimeDataOffset)
        {
            throw Bad($"says its runtime data is {size} bytes, but {bytes.Length - RuntimeDataOffset} follow");
        }

        var snp = bytes.Slice(SnpReportOffset, SnpReportSize).ToArray();
        var runtime = bytes.Slice(RuntimeDataOffset, (int)size).ToArray();
        byte[] digest = hashType switch
        {
            1 => SHA256.HashData(runtime),
            2 => SHA384.HashData(runtime),
            3 => SHA512.HashData(runtime),
            _ => throw Bad($"names report-data hash type {hashType} (1, 2 or 3: SHA-256, -384, -512)"),
        };
        if (!snp.AsSpan(ReportDataOffset, digest.Length).SequenceEqual(digest))
        {
            throw Bad("has runtime data whose hash is not the SNP report's REPORT_DATA");
        }

        return new HclReport(snp, runtime, ReadUserData(runtime));
    }

    private static byte[]? ReadUserData(byte[] runtime)
    {
        try
        {
            using var doc = JsonDocument.Parse(runtime);
            return doc.RootElement.ValueKind == JsonValueKind.Object
                   && doc.RootElement.TryGetProperty("user-data", out var value)
                   && value.ValueKind == JsonValueKind.String
                   && value.GetString() is { Length: RuntimeKeys.UserDataSize * 2 } hex
                   && hex.All(char.IsAsciiHexDigit)
                ? Convert.FromHexString(hex)
                : null;
        }
        catch (JsonException e)
        {
            throw Bad("has runtime data that is not JSON", e);
        }
    }

    private static MaaAttestationException Bad(string problem, Exception? inner = null) =>
        new(MaaAttestationStage.Vtpm, "the vTPM's HCL report " + problem, inner);
}
