using System.CommandLine;
using MriSeg.Cli.Endpoints;
using MriSeg.Cli.Infrastructure;
using MriSeg.Contracts;
using Spectre.Console;

namespace MriSeg.Cli.Commands;

/// <summary><c>mriseg endpoints</c>: the address each service would be reached at, and why.</summary>
internal static class EndpointsCommand
{
    public static Command Create(CliApp app)
    {
        var command = new Command("endpoints", "Show the gRPC address used for each service and where it came from.");
        app.SetAction(command, (context, _) =>
        {
            var resolution = context.ResolveEndpoints();
            context.Output.WriteResult(new EndpointsResult(resolution.File, resolution.FileState, resolution.Endpoints), Render);
            return Task.FromResult(ExitCodes.Success);
        });
        return command;
    }

    internal sealed record EndpointsResult(string? File, EndpointsFileState FileState, IReadOnlyList<ResolvedEndpoint> Endpoints);

    private static void Render(IAnsiConsole console, EndpointsResult result)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("Service").AddColumn("gRPC service").AddColumn("Address").AddColumn("From");
        foreach (var e in result.Endpoints)
        {
            table.AddRow(Markup.Escape(e.Service), Markup.Escape(e.GrpcService), Markup.Escape(GrpcAddress.Display(e.Address)), Markup.Escape(ServicesCommand.Text(e.Source)));
        }

        console.Write(table);
        console.MarkupLine(result.File is null
            ? $"[grey]No endpoints file: not inside a MriSeg repository and {EndpointsFile.EnvironmentVariable} is not set.[/]"
            : $"[grey]Endpoints file: {Markup.Escape(result.File)} ({Describe(result.FileState)}).[/]");
    }

    private static string Describe(EndpointsFileState state) => state switch
    {
        EndpointsFileState.Used => "used",
        EndpointsFileState.Stale => "used, but the AppHost that wrote it is gone",
        EndpointsFileState.Missing => "absent: is the AppHost running?",
        EndpointsFileState.NotRead => "not read: every service was given with --endpoint",
        _ => "none",
    };
}
