using System.CommandLine;
using System.CommandLine.Invocation;
using MriSeg.Cli.Commands;
using MriSeg.Cli.Infrastructure;

namespace MriSeg.Cli;

/// <summary>The <c>mriseg</c> command: builds the command tree and runs one command line.</summary>
internal static class Cli
{
    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken = default) =>
        RunAsync(args, stdout, stderr, CliEnvironment.InProcess, cancellationToken);

    public static async Task<int> RunAsync(
        string[] args, TextWriter stdout, TextWriter stderr, CliEnvironment environment, CancellationToken cancellationToken = default)
    {
        var app = new CliApp(environment);
        var root = BuildRootCommand(app);
        var parseResult = root.Parse(args);

        // The parse error alone, on stderr: help (and typo suggestions, under --json) would go to stdout.
        if (parseResult.Action is ParseErrorAction parseError)
        {
            parseError.ShowHelp = false;
            parseError.ShowTypoCorrections = !parseResult.GetValue(app.Globals.Json);
        }

        var invocation = new InvocationConfiguration
        {
            Output = stdout,
            Error = stderr,
            ProcessTerminationTimeout = environment.HandleTermination ? TimeSpan.FromSeconds(2) : null,
        };
        return await parseResult.InvokeAsync(invocation, cancellationToken);
    }

    /// <summary>Every command group registers here; each lives in its own file under Commands/.</summary>
    public static RootCommand BuildRootCommand(CliApp app)
    {
        var root = new RootCommand("MriSeg: brain-tumour segmentation trained with differential privacy in a confidential clean room.");
        app.Globals.AddTo(root);

        root.Subcommands.Add(ServicesCommand.Create(app));
        root.Subcommands.Add(EndpointsCommand.Create(app));
        root.Subcommands.Add(DoctorCommand.Create(app));
        root.Subcommands.Add(AccountantCommand.Create(app));
        root.Subcommands.Add(PhantomsCommand.Create(app));
        root.Subcommands.Add(PreprocessCommand.Create(app));
        root.Subcommands.Add(KeygenCommand.Create(app));
        root.Subcommands.Add(SealCommand.Create(app));
        root.Subcommands.Add(OpenCommand.Create(app));
        root.Subcommands.Add(InspectCommand.Create(app));
        root.Subcommands.Add(KeysCommand.Create(app));
        root.Subcommands.Add(SelfcheckCommand.Create(app));
        root.Subcommands.Add(BenchCommand.Create(app));
        root.Subcommands.Add(TrainCommand.Create(app));
        root.Subcommands.Add(TrainCommand.CreateEvaluate(app));
        root.Subcommands.Add(ModelCommand.Create(app));
        root.Subcommands.Add(SegmentCommand.Create(app));
        root.Subcommands.Add(RunCommand.Create(app));
        root.Subcommands.Add(ScenarioCommand.Create(app));
        return root;
    }
}
