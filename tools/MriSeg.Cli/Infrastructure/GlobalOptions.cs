using System.CommandLine;
using System.CommandLine.Parsing;
using MriSeg.Cli.Endpoints;

namespace MriSeg.Cli.Infrastructure;

/// <summary>
/// Options every command takes. Recursive, so they may stand before or after the command name.
/// A fresh set per command tree: System.CommandLine symbols remember their parents.
/// </summary>
internal sealed class GlobalOptions
{
    public Option<bool> Json { get; } = new("--json")
    {
        Description = "Write the result as JSON on stdout (and nothing else there); messages go to stderr.",
        Recursive = true,
    };

    public Option<bool> Verbose { get; } = new("--verbose")
    {
        Description = "Show details and, on unexpected errors, the stack trace.",
        Recursive = true,
    };

    public Option<IReadOnlyList<EndpointOverride>> Endpoint { get; } = new("--endpoint")
    {
        Description = "Use URL as the gRPC address of service NAME (repeatable), e.g. trainer=http://localhost:5141.",
        HelpName = "NAME=URL",
        Recursive = true,
        Arity = ArgumentArity.ZeroOrMore,
        DefaultValueFactory = _ => [],
        CustomParser = ParseEndpoints,
    };

    public void AddTo(Command root)
    {
        root.Options.Add(Json);
        root.Options.Add(Verbose);
        root.Options.Add(Endpoint);
    }

    private static IReadOnlyList<EndpointOverride> ParseEndpoints(ArgumentResult result)
    {
        var parsed = new List<EndpointOverride>();
        foreach (var token in result.Tokens)
        {
            if (!EndpointOverride.TryParse(token.Value, out var value, out var error))
            {
                result.AddError(error);
            }
            else if (parsed.Any(p => p.Service == value.Service))
            {
                result.AddError($"--endpoint names '{value.Service}' more than once.");
            }
            else
            {
                parsed.Add(value);
            }
        }

        return parsed;
    }
}
