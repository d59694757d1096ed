using System.CommandLine;
using MriSeg.Cli.Infrastructure;
using MriSeg.Cli.Sealing;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary>
/// <c>mriseg keygen --out PREFIX</c>: an owner's ECDSA P-256 signing key pair, PREFIX.key (PKCS#8 PEM, mode
/// 0600) and PREFIX.pub (SubjectPublicKeyInfo PEM, the key to register). With <c>--recipient</c>, a P-256 key
/// pair for receiving wrapped data keys (ECDH-ES+A256GCM) instead: a separate key, never the signing key.
/// </summary>
internal static class KeygenCommand
{
    public static Command Create(CliApp app)
    {
        var outOption = new Option<string>("--out")
        {
            Description = "Path prefix: writes PREFIX.key (private, mode 0600) and PREFIX.pub (public).",
            HelpName = "PREFIX",
            Required = true,
        };
        var force = new Option<bool>("--force") { Description = "Replace existing PREFIX.key and PREFIX.pub." };
        var recipient = new Option<bool>("--recipient")
        {
            Description = "Make a key pair for receiving wrapped data keys (P-256 ECDH) instead of a signing key pair.",
        };

        var command = new Command("keygen", "Make a signing key pair (PREFIX.key, PREFIX.pub) for sealing packages.");
        command.Options.Add(outOption);
        command.Options.Add(force);
        command.Options.Add(recipient);
        app.SetAction(command, (context, _) =>
        {
            var prefix = context.GetValue(outOption)!;
            var overwrite = context.GetValue(force);
            var privatePath = KeyFiles.RequireDestination(prefix + ".key", "--out", overwrite);
            var publicPath = KeyFiles.RequireDestination(prefix + ".pub", "--out", overwrite);

            KeygenResult result;
            try
            {
                if (context.GetValue(recipient))
                {
                    using var key = RecipientPrivateKey.GenerateEcP256();
                    key.Save(privatePath, overwrite);
                    File.WriteAllText(publicPath, key.PublicKey.ExportPem() + "\n");
                    result = new KeygenResult("recipient", privatePath, publicPath, key.PublicKey.Thumbprint);
                }
                else
                {
                    using var key = SigningKey.Generate();
                    key.Save(privatePath, overwrite);
                    key.PublicKey.Save(publicPath, overwrite);
                    result = new KeygenResult("signing", privatePath, publicPath, key.Thumbprint);
                }
            }
            catch (Exception e) when (e is SealedPackageException or IOException or UnauthorizedAccessException)
            {
                throw new CliException($"--out {prefix}: {e.Message}", e);
            }

            context.Output.WriteResult(result, Render);
            return Task.FromResult(ExitCodes.Success);
        });
        return command;
    }

    internal sealed record KeygenResult(string Kind, string PrivateKey, string PublicKey, string Thumbprint);

    private static void Render(IAnsiConsole console, KeygenResult r)
    {
        console.MarkupLine($"{Markup.Escape(r.Kind)} key pair, thumbprint [bold]{Markup.Escape(r.Thumbprint)}[/]");
        console.MarkupLine($"  private: {Markup.Escape(r.PrivateKey)} [grey](mode 0600; keep it to yourself)[/]");
        console.MarkupLine($"  public:  {Markup.Escape(r.PublicKey)} [grey](give this one out)[/]");
    }
}
