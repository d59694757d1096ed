using System.Net.Sockets;
using Grpc.Core;

namespace MriSeg.Cli.Infrastructure;

/// <summary>Turns exceptions into the one line a person reads: the innermost useful message, no newlines.</summary>
internal static class ErrorText
{
    public static string OneLine(Exception e)
    {
        var text = e switch
        {
            RpcException rpc => Rpc(rpc),
            AggregateException { InnerExceptions.Count: 1 } a => OneLine(a.InnerExceptions[0]),
            HttpRequestException { InnerException: SocketException s } => s.Message,
            _ => e.Message,
        };
        return Flatten(text);
    }

    private static string Rpc(RpcException e)
    {
        // Connection failures arrive as Unavailable with the socket error buried in DebugException.
        if (e.Status.DebugException is { } debug && Innermost(debug) is SocketException socket)
        {
            return $"{e.StatusCode}: {socket.Message}";
        }

        return string.IsNullOrWhiteSpace(e.Status.Detail) ? e.StatusCode.ToString() : $"{e.StatusCode}: {e.Status.Detail}";
    }

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }

        return e;
    }

    private static string Flatten(string text) =>
        string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
