using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg inspect FILE</c>: what a file is and what it holds, without any key. The file's first bytes
/// choose the reader (<see cref="Kinds"/>): sealed packages now; NIfTI images and dataset shards get a
/// reader here when their libraries land (their magic is already recognised, so the error says what the
/// file is).
/// </summary>
internal static class InspectCommand
{
    /// <summary>Bytes read to tell file kinds apart (a NIfTI-1 magic sits at offset 344).</summary>
    private const int SniffLength = 352;

    /// <param name="Name">What the file is, for messages ("a sealed package").</param>
    /// <param name="Matches">Whether the file's first bytes (up to <see cref="SniffLength"/>) are of this kind.</param>
    /// <param name="Inspect">The reader; null: recognised, not readable yet.</param>
    private sealed record FileKind(string Name, Func<byte[], bool> Matches, Func<CommandContext, string, string?, Task<int>>? Inspect);

    private static readonly FileKind[] Kinds =
    [
        new("a sealed package", b => b.AsSpan().StartsWith(PackageFormat.HeaderMagic), InspectPackageAsync),
        new("a NIfTI-1 image", b => b.Length >= 348 && b.AsSpan(344, 4).SequenceEqual("n+1\0"u8), null),
        new("a NIfTI-2 image", b => b.Length >= 12 && b.AsSpan(4, 4).SequenceEqual("n+2\0"u8), null),
        new("a gzip file (a compressed NIfTI image?)", b => b.Length >= 2 && b[0] == 0x1F && b[1] == 0x8B, null),
    ];

    public static Command Create(CliApp app)
    {
        var file = new Argument<string>("FILE") { Description = "The file to inspect." };
        var signerPub = new Option<string>("--signer-pub")
        {
            Description = "The owner's public key: verify the package's signature (header and manifest are then authenticated).",
            HelpName = "FILE",
        };

        var command = new Command("inspect", "Show what a file is and holds (a sealed package's header and manifest), no key needed.");
        command.Arguments.Add(file);
        command.Options.Add(signerPub);
        app.SetAction(command, (context, _) =>
        {
            var path = context.GetValue(file)!;
            var full = KeyFiles.RequireFile(path, "FILE");
            var head = ReadHead(full, path);
            var kind = Kinds.FirstOrDefault(k => k.Matches(head));
            if (kind is null)
            {
                throw new CliException($"{path} is not a sealed package (it does not start with \"MRISEGPK\"), nor a NIfTI image or gzip file: inspect does not know this kind of file");
            }

            if (kind.Inspect is null)
            {
                throw new CliException($"{path} looks like {kind.Name}, not a sealed package: inspect reads only sealed packages so far");
            }

            return kind.Inspect(context, full, context.GetValue(signerPub));
        });
        return command;
    }

    private static byte[] ReadHead(string full, string path)
    {
        try
        {
            using var stream = File.OpenRead(full);
            var buffer = new byte[SniffLength];
            var read = stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
            return buffer[..read];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"{path}: cannot read: {e.Message}", e);
        }
    }

    private static Task<int> InspectPackageAsync(CommandContext context, string full, string? signerPath)
    {
        using var signer = signerPath is null ? null : KeyFiles.LoadSignerPublicKey(signerPath, "--signer-pub");
        PackageInfo info;
        try
        {
            info = SealedPackage.Inspect(full, signer is null ? SignerCheck.SkipSignatureVerification : SignerCheck.Expect(signer));
        }
        catch (SealedPackageException e)
        {
            throw new CliException(e.Message, e);
        }

        context.Output.WriteResult(new InspectResult("sealed-package", full, PackageView.From(info)), (console, r) =>
        {
            console.MarkupLine($"sealed package [bold]{Markup.Escape(r.File)}[/]");
            console.Write(PackageView.Render(r.Package));
        });
        return Task.FromResult(ExitCodes.Success);
    }

    internal sealed record InspectResult(string Kind, string File, PackageView Package);
}
