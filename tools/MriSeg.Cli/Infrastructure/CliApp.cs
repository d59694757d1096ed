using System.CommandLine;

namespace MriSeg.Cli.Infrastructure;

/// <summary>
/// One command tree's shared parts: the global options and the environment. Command groups take it
/// in their <c>Create</c> and attach their work with <see cref="SetAction"/>, which gives every
/// command the same error handling and exit codes.
/// </summary>
internal sealed class CliApp(CliEnvironment environment)
{
    public CliEnvironment Environment { get; } = environment;
    public GlobalOptions Globals { get; } = new();

    /// <summary>
    /// Runs <paramref name="action"/> for <paramref name="command"/>; its return value is the exit code.
    /// A <see cref="CliException"/> becomes "error: message" on stderr; anything else too, with the stack
    /// trace only under --verbose.
    /// </summary>
    public void SetAction(Command command, Func<CommandContext, CancellationToken, Task<int>> action)
    {
        command.SetAction(async (parseResult, cancellationToken) =>
        {
            var context = new CommandContext(parseResult, this);
            try
            {
                return await action(context, cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                context.Output.Error("cancelled.");
                return ExitCodes.Cancelled;
            }
            catch (CliException e)
            {
                context.Output.Error(e.Message);
                return e.ExitCode;
            }
            catch (Exception e)
            {
                if (context.Output.IsVerbose)
                {
                    context.Output.Error(e.ToString());
                }
                else
                {
                    context.Output.Error($"{ErrorText.OneLine(e)} ({e.GetType().Name}; --verbose shows the stack trace)");
                }

                return ExitCodes.Failure;
            }
        });
    }
}
