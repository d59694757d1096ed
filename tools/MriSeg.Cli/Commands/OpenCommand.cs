using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg open</c>: decrypts and verifies a sealed package into a file. The plaintext appears only once
/// every check passed (the library writes a 0600 temporary file and renames it at the end); any failure is a
/// non-zero exit, one line on stderr, and no output file. Not checking who sealed the package must be asked
/// for (<c>--no-signer-check</c>).
/// </summary>
internal static class OpenCommand
{
    public static Command Create(CliApp app)
    {
        var input = new Option<string>("--in") { Description = "The sealed package.", HelpName = "FILE.sealed", Required = true };
        var output = new Option<string>("--out") { Description = "Where to write the plaintext.", HelpName = "FILE", Required = true };
        var keyFile = new Option<string>("--key") { Description = "The package's data key file (from `mriseg seal --key-out`).", HelpName = "KEYFILE" };
        var wrappedKey = new Option<string>("--wrapped-key")
        {
            Description = "Instead of --key: a data key wrapped to you (JSON, e.g. from the Packaging service); needs --recipient-key.",
            HelpName = "FILE",
        };
        var recipientKey = new Option<string>("--recipient-key")
        {
            Description = "Your recipient private key (from `mriseg keygen --recipient`) that unwraps --wrapped-key.",
            HelpName = "FILE",
        };
        var signerPub = new Option<string>("--signer-pub") { Description = "The owner's public key: the package must be signed by it.", HelpName = "FILE" };
        var noSignerCheck = new Option<bool>("--no-signer-check")
        {
            Description = "Open without checking who sealed the package (the data key still authenticates every byte but the signature).",
        };
        var force = new Option<bool>("--force") { Description = "Replace an existing output file (only once everything verified)." };

        var command = new Command("open", "Verify and decrypt a sealed package into a file.");
        foreach (var option in new Option[] { input, output, keyFile, wrappedKey, recipientKey, signerPub, noSignerCheck, force })
        {
            command.Options.Add(option);
        }

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var skipSigner = context.GetValue(noSignerCheck);
            var signerPath = context.GetValue(signerPub);
            if (signerPath is null && !skipSigner)
            {
                throw new CliException("say whose signature to expect: --signer-pub FILE (the owner's public key), or --no-signer-check to open without checking who sealed the package");
            }

            if (signerPath is not null && skipSigner)
            {
                throw new CliException("--signer-pub and --no-signer-check exclude each other");
            }

            var overwrite = context.GetValue(force);
            var inPath = KeyFiles.RequireFile(context.GetValue(input)!, "--in");
            var outPath = KeyFiles.RequireDestination(context.GetValue(output)!, "--out", overwrite);
            KeyFiles.RequireDistinct(("--in", inPath), ("--out", outPath));

            using var key = LoadKey(context, keyFile, wrappedKey, recipientKey, outPath);
            using var signer = signerPath is null ? null : KeyFiles.LoadSignerPublicKey(signerPath, "--signer-pub");
            var check = signer is null ? SignerCheck.SkipSignatureVerification : SignerCheck.Expect(signer);

            PackageInfo info;
            try
            {
                var length = new FileInfo(inPath).Length;
                info = await context.Output.ProgressAsync("opening", length, async report =>
                {
                    var file = new FileStream(inPath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan);
                    await using var metered = MeteredStream.ForReading(file, progress: (n, _) =>
                    {
                        report(n);
                        return ValueTask.CompletedTask;
                    });
                    return await SealedPackage.OpenToFileAsync(metered, outPath, key, check, new OpenOptions { Overwrite = overwrite }, cancellationToken);
                });
            }
            catch (SealedPackageException e)
            {
                throw new CliException(e.Message, e);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CliException(e.Message, e);
            }

            context.Output.WriteResult(new OpenResult(outPath, PackageView.From(info)), Render);
            if (!info.SignatureVerified)
            {
                context.Output.Warn("the signer was not checked (--no-signer-check): nothing proves who sealed this package.");
            }

            return ExitCodes.Success;
        });
        return command;
    }

    internal sealed record OpenResult(string Output, PackageView Info);

    private static DataKey LoadKey(CommandContext context, Option<string> keyFile, Option<string> wrappedKey, Option<string> recipientKey, string outPath)
    {
        var keyPath = context.GetValue(keyFile);
        var wrappedPath = context.GetValue(wrappedKey);
        var recipientPath = context.GetValue(recipientKey);
        if (keyPath is not null)
        {
            if (wrappedPath is not null || recipientPath is not null)
            {
                throw new CliException("give either --key or --wrapped-key with --recipient-key, not both");
            }

            KeyFiles.RequireDistinct(("--key", Path.GetFullPath(keyPath)), ("--out", outPath));
            return KeyFiles.LoadDataKey(keyPath, "--key");
        }

        if (wrappedPath is null || recipientPath is null)
        {
            throw new CliException(wrappedPath is null && recipientPath is null
                ? "give the data key: --key KEYFILE, or --wrapped-key FILE with --recipient-key FILE"
                : "--wrapped-key and --recipient-key go together");
        }

        var wrapped = KeyFiles.LoadWrappedKey(wrappedPath, "--wrapped-key");
        using var recipient = KeyFiles.LoadRecipientKey(recipientPath, "--recipient-key");
        try
        {
            return KeyWrap.Unwrap(wrapped, recipient);
        }
        catch (SealedPackageException e)
        {
            throw new CliException($"--wrapped-key {wrappedPath}: {e.Message}", e);
        }
    }

    private static void Render(IAnsiConsole console, OpenResult r)
    {
        console.MarkupLine($"opened into [bold]{Markup.Escape(r.Output)}[/] [green](every chunk, the length and the SHA-256 verified)[/]");
        console.Write(PackageView.Render(r.Info));
    }
}
