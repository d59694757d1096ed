using System.Security.Cryptography;
using System.Text.Json;

namespace MriSeg.Cli.Tests;

/// <summary><c>keygen</c>, <c>seal</c>, <c>inspect</c>, <c>open</c> and <c>bench seal</c>, in-process.</summary>
public sealed class SealingCommandTests : IDisposable
{
    private readonly TempFolder temp = new();
    private readonly byte[] plaintext = RandomNumberGenerator.GetBytes(50_000);

    public SealingCommandTests() => File.WriteAllBytes(P("data.bin"), plaintext);

    public void Dispose() => temp.Dispose();

    private string P(string name) => Path.Combine(temp.Path, name);

    private string[] Files() => Directory.GetFiles(temp.Path).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;

    /// <summary>keygen owner + seal data.bin into data.sealed with data.key (4 KiB chunks: 13 of them).</summary>
    private async Task SealAsync()
    {
        var keygen = await CliRun.RunAsync("keygen", "--out", P("owner"));
        Assert.True(keygen.ExitCode == 0, keygen.ToString());
        var seal = await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("data.sealed"), "--type", "dataset",
            "--owner", "hospital-a", "--key-out", P("data.key"), "--signing-key", P("owner.key"), "--chunk-size", "4096",
            "--meta", "shard=1/3", "--meta", "site=A", "--json");
        Assert.True(seal.ExitCode == 0, seal.ToString());
    }

    private static void AssertOwnerOnly(string path)
    {
        if (!OperatingSystem.IsWindows())
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        }
    }

    /// <summary>A failure: exit 1, nothing on stdout, exactly one line on stderr, which is returned.</summary>
    private static string OneLineFailure(CliRun run)
    {
        Assert.True(run.ExitCode == 1, run.ToString());
        Assert.Equal("", run.Stdout);
        var line = Assert.Single(run.StderrLines);
        Assert.StartsWith("error: ", line, StringComparison.Ordinal);
        return line;
    }

    [Fact]
    public async Task Keygen_seal_inspect_open_round_trip()
    {
        var keygen = await CliRun.RunAsync("keygen", "--out", P("owner"), "--json");
        Assert.True(keygen.ExitCode == 0, keygen.ToString());
        Assert.Equal(64, keygen.Json().GetProperty("thumbprint").GetString()!.Length);
        Assert.Contains("-----BEGIN PRIVATE KEY-----", File.ReadAllText(P("owner.key")));
        Assert.Contains("-----BEGIN PUBLIC KEY-----", File.ReadAllText(P("owner.pub")));
        AssertOwnerOnly(P("owner.key"));

        var seal = await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("data.sealed"), "--type", "dataset",
            "--owner", "hospital-a", "--key-out", P("data.key"), "--signing-key", P("owner.key"), "--chunk-size", "4096",
            "--meta", "shard=1/3", "--meta", "site=A", "--json");
        Assert.True(seal.ExitCode == 0, seal.ToString());
        AssertOwnerOnly(P("data.key"));
        var sealedKeyId = seal.Json().GetProperty("info").GetProperty("keyId").GetString();

        var inspect = await CliRun.RunAsync("inspect", P("data.sealed"), "--signer-pub", P("owner.pub"), "--json");
        Assert.True(inspect.ExitCode == 0, inspect.ToString());
        var package = inspect.Json().GetProperty("package");
        Assert.Equal("sealed-package", inspect.Json().GetProperty("kind").GetString());
        Assert.True(package.GetProperty("signatureVerified").GetBoolean());
        Assert.Equal(sealedKeyId, package.GetProperty("keyId").GetString());
        Assert.Equal(13, package.GetProperty("chunkCount").GetInt64());
        var manifest = package.GetProperty("manifest");
        Assert.Equal("dataset", manifest.GetProperty("contentType").GetString());
        Assert.Equal("hospital-a", manifest.GetProperty("owner").GetString());
        Assert.Equal(plaintext.Length, manifest.GetProperty("plaintextLength").GetInt64());
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(plaintext)), manifest.GetProperty("plaintextSha256").GetString());
        Assert.Equal("1/3", manifest.GetProperty("metadata").GetProperty("shard").GetString());

        var open = await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("data.key"), "--out", P("data.out"),
            "--signer-pub", P("owner.pub"), "--json");
        Assert.True(open.ExitCode == 0, open.ToString());
        Assert.Equal("", open.Stderr);
        Assert.True(open.Json().GetProperty("info").GetProperty("signatureVerified").GetBoolean());
        Assert.Equal(plaintext, File.ReadAllBytes(P("data.out")));
    }

    [Fact]
    public async Task Keygen_refuses_to_overwrite_without_force()
    {
        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--out", P("owner"))).ExitCode);
        var before = File.ReadAllText(P("owner.key"));

        var again = OneLineFailure(await CliRun.RunAsync("keygen", "--out", P("owner")));
        Assert.Contains("exists (--force replaces it)", again);
        Assert.Equal(before, File.ReadAllText(P("owner.key")));

        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--out", P("owner"), "--force")).ExitCode);
        Assert.NotEqual(before, File.ReadAllText(P("owner.key")));
    }

    [Fact]
    public async Task A_tampered_byte_fails_with_one_line_and_leaves_no_output_file()
    {
        await SealAsync();
        var bytes = File.ReadAllBytes(P("data.sealed"));
        bytes[48 + 4 + 4096 + 16 + 4 + 100] ^= 0x20; // inside chunk 1's ciphertext
        File.WriteAllBytes(P("data.sealed"), bytes);
        var before = Files();

        var line = OneLineFailure(await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("data.key"),
            "--out", P("data.out"), "--signer-pub", P("owner.pub")));

        Assert.Equal("error: chunk 1: authentication failed", line);
        Assert.Equal(before, Files());
    }

    [Fact]
    public async Task A_wrong_key_file_is_named_as_such_before_decrypting()
    {
        await SealAsync();
        Assert.Equal(0, (await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("other.sealed"), "--type", "model",
            "--owner", "hospital-a", "--key-out", P("other.key"), "--signing-key", P("owner.key"))).ExitCode);

        var line = OneLineFailure(await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("other.key"),
            "--out", P("data.out"), "--signer-pub", P("owner.pub")));

        Assert.StartsWith("error: wrong data key: the package is sealed under key id ", line, StringComparison.Ordinal);
        Assert.False(File.Exists(P("data.out")));
    }

    [Fact]
    public async Task A_wrong_signer_is_refused()
    {
        await SealAsync();
        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--out", P("stranger"))).ExitCode);

        var line = OneLineFailure(await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("data.key"),
            "--out", P("data.out"), "--signer-pub", P("stranger.pub")));

        Assert.StartsWith("error: signer mismatch", line, StringComparison.Ordinal);
        Assert.False(File.Exists(P("data.out")));

        var inspect = OneLineFailure(await CliRun.RunAsync("inspect", P("data.sealed"), "--signer-pub", P("stranger.pub")));
        Assert.StartsWith("error: signer mismatch", inspect, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Opening_without_a_signer_check_must_be_asked_for()
    {
        await SealAsync();

        var line = OneLineFailure(await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("data.key"), "--out", P("data.out")));
        Assert.Contains("--signer-pub FILE", line);
        Assert.Contains("--no-signer-check", line);
        Assert.False(File.Exists(P("data.out")));

        var open = await CliRun.RunAsync("open", "--in", P("data.sealed"), "--key", P("data.key"), "--out", P("data.out"), "--no-signer-check", "--json");
        Assert.True(open.ExitCode == 0, open.ToString());
        Assert.False(open.Json().GetProperty("info").GetProperty("signatureVerified").GetBoolean());
        Assert.StartsWith("warning: the signer was not checked", Assert.Single(open.StderrLines), StringComparison.Ordinal);
        Assert.Equal(plaintext, File.ReadAllBytes(P("data.out")));
    }

    [Fact]
    public async Task Seal_leaves_nothing_behind_when_it_fails()
    {
        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--out", P("owner"))).ExitCode);
        var before = Files();

        var badOwner = OneLineFailure(await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("data.sealed"), "--type", "dataset",
            "--owner", "bad\u0007owner", "--key-out", P("data.key"), "--signing-key", P("owner.key")));
        Assert.Contains("owner", badOwner);
        Assert.Equal(before, Files());

        var badMeta = OneLineFailure(await CliRun.RunAsync("seal", "--in", P("data.bin"), "--out", P("data.sealed"), "--type", "dataset",
            "--owner", "hospital-a", "--key-out", P("data.key"), "--signing-key", P("owner.key"), "--meta", "=x"));
        Assert.Contains("--meta '=x'", badMeta);
        Assert.Equal(before, Files());
    }

    [Fact]
    public async Task Open_takes_a_data_key_wrapped_to_a_recipient_key_from_keygen()
    {
        await SealAsync();
        Assert.Equal(0, (await CliRun.RunAsync("keygen", "--recipient", "--out", P("me"))).ExitCode);
        using (var key = MriSeg.Sealing.DataKey.Load(P("data.key")))
        {
            var wrapped = MriSeg.Sealing.KeyWrap.Wrap(key, MriSeg.Sealing.RecipientPublicKey.Load(P("me.pub")));
            File.WriteAllText(P("data.wrapped.json"), wrapped.ToJson());
        }

        var open = await CliRun.RunAsync("open", "--in", P("data.sealed"), "--wrapped-key", P("data.wrapped.json"),
            "--recipient-key", P("me.key"), "--out", P("data.out"), "--signer-pub", P("owner.pub"));
        Assert.True(open.ExitCode == 0, open.ToString());
        Assert.Equal(plaintext, File.ReadAllBytes(P("data.out")));

        // The signing key is not a recipient key.
        var line = OneLineFailure(await CliRun.RunAsync("open", "--in", P("data.sealed"), "--wrapped-key", P("data.wrapped.json"),
            "--recipient-key", P("owner.key"), "--out", P("other.out"), "--signer-pub", P("owner.pub")));
        Assert.Contains("wrong private key", line);
    }

    [Fact]
    public async Task Inspect_says_what_a_file_is_not()
    {
        File.WriteAllText(P("notes.txt"), "hello");
        var line = OneLineFailure(await CliRun.RunAsync("inspect", P("notes.txt")));
        Assert.Contains("is not a sealed package", line);

        var nifti = new byte[352];
        BitConverter.GetBytes(348).CopyTo(nifti, 0);
        "n+1\0"u8.CopyTo(nifti.AsSpan(344));
        File.WriteAllBytes(P("brain.nii"), nifti);
        // Recognised as NIfTI by its magic and handed to the NIfTI reader, whose complaint names the file.
        Assert.Contains("brain.nii: dim[", OneLineFailure(await CliRun.RunAsync("inspect", P("brain.nii"))));
    }

    [Fact]
    public async Task Bench_seal_json_ends_with_a_line_holding_the_ratios()
    {
        var run = await CliRun.RunAsync("bench", "seal", "--size", "0.25", "--chunk-size", "65536", "--iterations", "1", "--json");

        Assert.True(run.ExitCode == 0, run.ToString());
        var last = run.Stdout.TrimEnd().Split('\n')[^1];
        var json = JsonDocument.Parse(last).RootElement;
        Assert.True(json.GetProperty("seal_ratio").GetDouble() > 0);
        Assert.True(json.GetProperty("open_ratio").GetDouble() > 0);
        Assert.True(json.GetProperty("sha256_ceiling_ratio").GetDouble() > 0);
        Assert.Equal(262144, json.GetProperty("size_bytes").GetInt64());
    }
}
