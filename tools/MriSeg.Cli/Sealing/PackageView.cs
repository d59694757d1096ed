using System.Globalization;
using MriSeg.Cli.Infrastructure;
using MriSeg.Sealing;
using Spectre.Console;

namespace MriSeg.Cli.Sealing;

/// <summary>The manifest of a sealed package as the CLI shows it (JSON and people).</summary>
internal sealed record ManifestView(
    ContentType ContentType,
    string Owner,
    DateTimeOffset CreatedAt,
    long PlaintextLength,
    string PlaintextSha256,
    string SignerThumbprint,
    IReadOnlyDictionary<string, string> Metadata)
{
    public static ManifestView From(PackageManifest m) =>
        new(m.ContentType, m.Owner, m.CreatedAt, m.PlaintextLength, m.PlaintextSha256, m.SignerThumbprint, m.Metadata);
}

/// <summary>Header facts and the manifest of a package.</summary>
internal sealed record PackageView(
    int FormatVersion,
    int ChunkSize,
    long ChunkCount,
    string KeyId,
    long PackageLength,
    bool SignatureVerified,
    ManifestView Manifest)
{
    public static PackageView From(PackageInfo info) =>
        new(info.FormatVersion, info.ChunkSize, info.ChunkCount, info.KeyId, info.PackageLength, info.SignatureVerified, ManifestView.From(info.Manifest));

    /// <summary>The grid people read; strings from the manifest are escaped (the format already forbids control characters).</summary>
    public static Grid Render(PackageView p)
    {
        var grid = new Grid().AddColumn(new GridColumn().NoWrap()).AddColumn();
        grid.AddRow("content type", Text(p.Manifest.ContentType.ToString().ToLowerInvariant()));
        grid.AddRow("owner", Text(p.Manifest.Owner));
        grid.AddRow("created", Text(p.Manifest.CreatedAt.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss.fff 'UTC'", CultureInfo.InvariantCulture)));
        grid.AddRow("plaintext", Text($"{Output.Bytes(p.Manifest.PlaintextLength)} ({p.Manifest.PlaintextLength.ToString(CultureInfo.InvariantCulture)} bytes)"));
        grid.AddRow("plaintext SHA-256", Text(p.Manifest.PlaintextSha256));
        grid.AddRow("key id", Text(p.KeyId));
        grid.AddRow("signer", Text(p.Manifest.SignerThumbprint) + (p.SignatureVerified
            ? " [green](signature verified)[/]"
            : " [yellow](signature not checked: give --signer-pub to check it)[/]"));
        grid.AddRow("format", Text($"version {p.FormatVersion}, {p.ChunkCount.ToString(CultureInfo.InvariantCulture)} chunk(s) of {Output.Bytes(p.ChunkSize)}, {p.PackageLength.ToString(CultureInfo.InvariantCulture)} bytes in all"));
        foreach (var (key, value) in p.Manifest.Metadata)
        {
            grid.AddRow(Text("meta " + key), Text(value));
        }

        return grid;
    }

    private static string Text(string s) => Markup.Escape(s);
}
