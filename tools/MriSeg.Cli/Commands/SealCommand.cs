using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg seal</c>: encrypts a file into a sealed package under a fresh data key, signed with the owner's
/// signing key; the data key goes to its own file (mode 0600). Nothing is left behind on failure: the
/// package is written through a temporary file, and the key file appears only once the package is complete.
/// </summary>
internal static class SealCommand
{
    internal static readonly string[] ContentTypes = ["dataset", "model", "pipeline", "output", "checkpoint"];

    public static Command Create(CliApp app)
    {
        var input = new Option<string>("--in") { Description = "The file to seal.", HelpName = "FILE", Required = true };
        var output = new Option<string>("--out") { Description = "The sealed package to write.", HelpName = "FILE.sealed", Required = true };
        var type = new Option<string>("--type") { Description = "What the package holds.", Required = true };
        type.AcceptOnlyFromAmong(ContentTypes);
        var owner = new Option<string>("--owner") { Description = "The owner recorded in the manifest (who the data belongs to).", HelpName = "NAME", Required = true };
        var keyOut = new Option<string>("--key-out") { Description = "Where to write the fresh data key (JSON, mode 0600).", HelpName = "KEYFILE", Required = true };
        var signingKey = new Option<string>("--signing-key") { Description = "The owner's signing key (PKCS#8 PEM, from `mriseg keygen`).", HelpName = "FILE", Required = true };
        var chunkSize = new Option<int>("--chunk-size")
        {
            Description = $"Plaintext bytes per chunk ({PackageFormat.MinChunkSize} to {PackageFormat.MaxChunkSize}).",
            HelpName = "BYTES",
            DefaultValueFactory = _ => PackageFormat.DefaultChunkSize,
        };
        var meta = new Option<string[]>("--meta")
        {
            Description = "Metadata recorded (in the clear, signed) in the manifest; repeatable.",
            HelpName = "KEY=VALUE",
            Arity = ArgumentArity.ZeroOrMore,
            DefaultValueFactory = _ => [],
        };
        var force = new Option<bool>("--force") { Description = "Replace an existing package and key file." };

        var command = new Command("seal", "Encrypt and sign a file into a sealed package under a fresh data key.");
        foreach (var option in new Option[] { input, output, type, owner, keyOut, signingKey, chunkSize, meta, force })
        {
            command.Options.Add(option);
        }

        app.SetAction(command, async (context, cancellationToken) =>
        {
            var overwrite = context.GetValue(force);
            var inPath = KeyFiles.RequireFile(context.GetValue(input)!, "--in");
            var outPath = KeyFiles.RequireDestination(context.GetValue(output)!, "--out", overwrite);
            var keyPath = KeyFiles.RequireDestination(context.GetValue(keyOut)!, "--key-out", overwrite);
            KeyFiles.RequireDistinct(("--in", inPath), ("--out", outPath), ("--key-out", keyPath));
            var chunk = context.GetValue(chunkSize);
            if (chunk < PackageFormat.MinChunkSize || chunk > PackageFormat.MaxChunkSize)
            {
                throw new CliException($"--chunk-size {chunk}: must be between {PackageFormat.MinChunkSize} and {PackageFormat.MaxChunkSize} bytes");
            }

            var options = new SealOptions
            {
                ContentType = ParseContentType(context.GetValue(type)!),
                Owner = context.GetValue(owner)!,
                ChunkSize = chunk,
                Metadata = ParseMetadata(context.GetValue(meta) ?? []),
            };
            using var signer = KeyFiles.LoadSigningKey(context.GetValue(signingKey)!, "--signing-key");
            using var key = DataKey.Generate();

            // The key goes to a temporary file first and takes its name only once the package is complete, so a
            // failure leaves neither, and --force never destroys an old key for a package that was not made.
            var keyTemp = KeyFiles.TemporaryBeside(keyPath);
            var packageWritten = false;
            var done = false;
            try
            {
                key.Save(keyTemp);
                var length = new FileInfo(inPath).Length;
                var info = await context.Output.ProgressAsync("sealing", length, async report =>
                {
                    var file = new FileStream(inPath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan);
                    await using var metered = MeteredStream.ForReading(file, progress: (n, _) =>
                    {
                        report(n);
                        return ValueTask.CompletedTask;
                    });
                    return await SealedPackage.SealToFileAsync(metered, outPath, key, signer, options, overwrite, cancellationToken);
                });
                packageWritten = true;
                File.Move(keyTemp, keyPath, overwrite);
                done = true;
                context.Output.WriteResult(new SealResult(outPath, keyPath, PackageView.From(info)), Render);
                return ExitCodes.Success;
            }
            catch (SealedPackageException e)
            {
                throw new CliException(e.Message, e);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CliException(e.Message, e);
            }
            finally
            {
                if (!done)
                {
                    KeyFiles.DeleteQuietly(keyTemp);
                    if (packageWritten)
                    {
                        // A package whose key could not be kept can never be opened.
                        KeyFiles.DeleteQuietly(outPath);
                    }
                }
            }
        });
        return command;
    }

    internal sealed record SealResult(string Package, string KeyFile, PackageView Info);

    internal static ContentType ParseContentType(string text) => text switch
    {
        "dataset" => ContentType.Dataset,
        "model" => ContentType.Model,
        "pipeline" => ContentType.Pipeline,
        "output" => ContentType.Output,
        "checkpoint" => ContentType.Checkpoint,
        _ => throw new CliException($"--type {text}: expected one of {string.Join(", ", ContentTypes)}"),
    };

    private static Dictionary<string, string> ParseMetadata(string[] entries)
    {
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            var equals = entry.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0)
            {
                throw new CliException($"--meta '{entry}': expected KEY=VALUE with a non-empty KEY");
            }

            var key = entry[..equals];
            if (!metadata.TryAdd(key, entry[(equals + 1)..]))
            {
                throw new CliException($"--meta: the key '{key}' is given more than once");
            }
        }

        return metadata;
    }

    private static void Render(IAnsiConsole console, SealResult r)
    {
        console.MarkupLine($"sealed [bold]{Markup.Escape(r.Package)}[/]");
        console.MarkupLine($"data key: {Markup.Escape(r.KeyFile)} [grey](mode 0600; whoever holds it can decrypt the package)[/]");
        console.Write(PackageView.Render(r.Info));
    }
}
