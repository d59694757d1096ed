using Spectre.Console;

namespace MriSeg.Cli.Infrastructure;

/// <summary>Reports of long step-wise work (training): a bar position and status, and log lines above the bar.</summary>
internal interface IStepReporter
{
    /// <summary>Moves the bar to <paramref name="done"/> steps and shows <paramref name="status"/> beside it.</summary>
    void Update(long done, string status);

    /// <summary>A log line (stderr): printed above the bar on a terminal, plainly otherwise.</summary>
    void Line(string text);
}

internal sealed partial class Output
{
    /// <summary>
    /// Runs step-wise work with a progress bar over <paramref name="total"/> steps on stderr when it is a terminal, its
    /// log lines printed above the bar; otherwise the log lines alone go to stderr. The reporter may be called from any thread.
    /// </summary>
    public async Task<T> StepsAsync<T>(string description, long total, Func<IStepReporter, Task<T>> work)
    {
        if (!stderrIsTerminal)
        {
            return await work(new PlainSteps(this));
        }

        var console = progress.Value;
        return await console.Progress()
            .AutoClear(true)
            .HideCompleted(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .StartAsync(async context =>
            {
                var task = context.AddTask(Markup.Escape(description), maxValue: Math.Max(1, total));
                var result = await work(new BarSteps(console, task, description));
                task.Value = task.MaxValue;
                return result;
            });
    }

    private sealed class PlainSteps(Output output) : IStepReporter
    {
        public void Update(long done, string status)
        {
        }

        public void Line(string text) => output.Progress(text);
    }

    private sealed class BarSteps(IAnsiConsole console, ProgressTask task, string description) : IStepReporter
    {
        private readonly Lock _gate = new();

        public void Update(long done, string status)
        {
            lock (_gate)
            {
                task.Value = Math.Min(done, task.MaxValue);
                task.Description = Markup.Escape($"{description} {status}");
            }
        }

        // Spectre's live display re-renders below whatever is written through the same console.
        public void Line(string text)
        {
            lock (_gate)
            {
                console.MarkupLine(Markup.Escape(text));
            }
        }
    }
}
