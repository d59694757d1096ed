using MriSeg.Cli;

return await Cli.RunAsync(args, Console.Out, Console.Error, CliEnvironment.Process);
