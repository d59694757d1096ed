using System.Diagnostics.CodeAnalysis;
using MriSeg.Contracts;

namespace MriSeg.Cli.Endpoints;

/// <summary>One <c>--endpoint NAME=URL</c>: the gRPC address to use for one service.</summary>
internal sealed record EndpointOverride(string Service, Uri Address)
{
    public static bool TryParse(string text, [NotNullWhen(true)] out EndpointOverride? value, [NotNullWhen(false)] out string? error)
    {
        value = null;
        var example = $"e.g. {ServiceCatalog.Trainer}=http://localhost:{ServiceCatalog.Get(ServiceCatalog.Trainer).DevGrpcPort}";
        var equals = text.IndexOf('=', StringComparison.Ordinal);
        if (equals <= 0 || equals == text.Length - 1)
        {
            error = $"--endpoint '{text}': expected NAME=URL, {example}.";
            return false;
        }

        var name = text[..equals].Trim();
        var url = text[(equals + 1)..].Trim();
        var service = ServiceCatalog.All.FirstOrDefault(s => string.Equals(s.Name, name, StringComparison.OrdinalIgnoreCase));
        if (service is null)
        {
            error = $"--endpoint '{text}': unknown service '{name}' (known: {string.Join(", ", ServiceCatalog.All.Select(s => s.Name))}).";
            return false;
        }

        if (!GrpcAddress.TryParse(url, out var address))
        {
            error = $"--endpoint '{text}': '{url}' is not an absolute http:// or https:// URL, {example}.";
            return false;
        }

        value = new EndpointOverride(service.Name, address);
        error = null;
        return true;
    }
}

internal static class GrpcAddress
{
    /// <summary>
    /// An absolute http(s) URL with a host. Checked by hand because <see cref="Uri"/> happily reads
    /// "localhost:5141" as scheme "localhost".
    /// </summary>
    public static bool TryParse(string? text, [NotNullWhen(true)] out Uri? address)
    {
        address = null;
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri)
            || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps)
            || string.IsNullOrEmpty(uri.Host))
        {
            return false;
        }

        address = uri;
        return true;
    }

    /// <summary>For people: no trailing slash on a bare host and port.</summary>
    public static string Display(Uri address) =>
        address.PathAndQuery == "/" ? address.GetLeftPart(UriPartial.Authority) : address.ToString();
}
