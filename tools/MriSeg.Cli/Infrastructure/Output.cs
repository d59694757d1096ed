using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace MriSeg.Cli.Infrastructure;

/// <summary>
/// Where a command writes. The rule every command follows: its result goes through
/// <see cref="WriteResult{T}"/> (JSON with --json, a Spectre rendering otherwise) and everything
/// else (progress, warnings, errors) goes to stderr, so that <c>--json</c> output stays parseable.
/// </summary>
internal sealed partial class Output
{
    public static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) },
    };

    // ANSI SGR colour codes for stderr lines.
    private const string Red = "31", Yellow = "33", Grey = "90";

    // Wide enough that a table piped to a file or grep keeps one row per line.
    private const int RedirectedWidth = 200;

    private readonly TextWriter stdout;
    private readonly TextWriter stderr;
    private readonly bool stderrIsTerminal;
    private readonly Lazy<IAnsiConsole> human;
    private readonly Lazy<IAnsiConsole> progress;

    public Output(TextWriter stdout, TextWriter stderr, bool json, bool verbose, bool stdoutIsTerminal, bool stderrIsTerminal)
    {
        this.stdout = stdout;
        this.stderr = stderr;
        this.stderrIsTerminal = stderrIsTerminal;
        Json = json;
        IsVerbose = verbose;
        human = new(() => CreateConsole(stdout, stdoutIsTerminal));
        progress = new(() => CreateConsole(stderr, stderrIsTerminal));
    }

    public bool Json { get; }
    public bool IsVerbose { get; }

    /// <summary>Spectre console on stdout for human output; using it under --json is a bug.</summary>
    public IAnsiConsole Console => Json
        ? throw new InvalidOperationException("Human output was written under --json; route results through WriteResult.")
        : human.Value;

    /// <summary>The command's result: JSON under --json, else <paramref name="render"/> on the Spectre console.</summary>
    public void WriteResult<T>(T result, Action<IAnsiConsole, T> render) => WriteResult(result, render, JsonOptions);

    /// <summary>
    /// As <see cref="WriteResult{T}(T, Action{IAnsiConsole, T})"/>, with the command's own JSON shape (e.g. one
    /// line of snake_case keys for a benchmark that scripts read with <c>tail -1</c>).
    /// </summary>
    public void WriteResult<T>(T result, Action<IAnsiConsole, T> render, JsonSerializerOptions jsonOptions)
    {
        if (Json)
        {
            stdout.WriteLine(JsonSerializer.Serialize(result, jsonOptions));
            stdout.Flush();
        }
        else
        {
            render(human.Value, result);
        }
    }

    /// <summary>A progress or status line on stderr.</summary>
    public void Progress(string message) => WriteErrorLine(message, null);

    /// <summary>Only with --verbose.</summary>
    public void Verbose(string message)
    {
        if (IsVerbose)
        {
            WriteErrorLine(message, Grey);
        }
    }

    public void Warn(string message) => WriteErrorLine("warning: " + message, Yellow);

    public void Error(string message) => WriteErrorLine("error: " + message, Red);

    /// <summary>
    /// Runs <paramref name="work"/> with a spinner on stderr when it is a terminal; otherwise the
    /// status text goes to stderr as a line each time it changes.
    /// </summary>
    public async Task<T> StatusAsync<T>(string initial, Func<Action<string>, Task<T>> work)
    {
        if (stderrIsTerminal)
        {
            return await progress.Value.Status().StartAsync(Markup.Escape(initial), ctx => work(text => ctx.Status(Markup.Escape(text))));
        }

        string? last = null;
        void Update(string text)
        {
            if (text != last)
            {
                last = text;
                Progress(text);
            }
        }

        Update(initial);
        return await work(Update);
    }

    /// <summary>
    /// Runs <paramref name="work"/>, which reports how many of <paramref name="total"/> bytes it has done, with a
    /// progress bar on stderr when it is a terminal. Otherwise only long work shows: a plain line on stderr
    /// after 2 s and then every 5 s (short work, and a failure, stay one line).
    /// </summary>
    public async Task<T> ProgressAsync<T>(string description, long total, Func<Action<long>, Task<T>> work)
    {
        if (stderrIsTerminal)
        {
            return await progress.Value.Progress()
                .AutoClear(true)
                .HideCompleted(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .StartAsync(async context =>
                {
                    var task = context.AddTask(Markup.Escape(description), maxValue: Math.Max(1, total));
                    var result = await work(done => task.Value = Math.Min(done, task.MaxValue));
                    task.Value = task.MaxValue;
                    return result;
                });
        }

        var watch = Stopwatch.StartNew();
        var next = TimeSpan.FromSeconds(2);
        void Report(long done)
        {
            if (watch.Elapsed < next)
            {
                return;
            }

            next = watch.Elapsed + TimeSpan.FromSeconds(5);
            var percent = total > 0 ? (100.0 * done / total).ToString("0", CultureInfo.InvariantCulture) + " %" : "?";
            Progress($"{description}: {percent} ({Bytes(done)} of {Bytes(total)})");
        }

        return await work(Report);
    }

    /// <summary>
    /// Runs <paramref name="work"/>, which reports (items done, status text), with a progress bar over
    /// <paramref name="total"/> items on stderr when it is a terminal. Otherwise, as <see cref="ProgressAsync{T}"/>,
    /// a plain line after 2 s and then every 5 s. The report may be called from any thread.
    /// </summary>
    public async Task<T> CountProgressAsync<T>(string description, int total, Func<Action<int, string>, Task<T>> work)
    {
        if (stderrIsTerminal)
        {
            return await progress.Value.Progress()
                .AutoClear(true)
                .HideCompleted(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                .StartAsync(async context =>
                {
                    var task = context.AddTask(Markup.Escape(description), maxValue: Math.Max(1, total));
                    var gate = new object();
                    var result = await work((done, status) =>
                    {
                        lock (gate)
                        {
                            task.Value = Math.Min(done, task.MaxValue);
                            task.Description = Markup.Escape($"{description}: {status}");
                        }
                    });
                    task.Value = task.MaxValue;
                    return result;
                });
        }

        var watch = Stopwatch.StartNew();
        var next = TimeSpan.FromSeconds(2);
        var lineGate = new object();
        void Report(int done, string status)
        {
            lock (lineGate)
            {
                if (watch.Elapsed < next)
                {
                    return;
                }

                next = watch.Elapsed + TimeSpan.FromSeconds(5);
                Progress($"{description}: {done} of {total}, {status}");
            }
        }

        return await work(Report);
    }

    /// <summary>A byte count for people: "512 B", "3.2 MiB".</summary>
    public static string Bytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (value >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }

        return unit == 0
            ? $"{bytes} B"
            : value.ToString(value >= 100 ? "0" : "0.0", CultureInfo.InvariantCulture) + " " + units[unit];
    }

    private void WriteErrorLine(string message, string? sgr)
    {
        // Plain writes, not Spectre: Spectre wraps at the console width and a reason must stay one line.
        if (sgr is not null && stderrIsTerminal && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("NO_COLOR")))
        {
            stderr.WriteLine($"\u001b[{sgr}m{message}\u001b[0m");
        }
        else
        {
            stderr.WriteLine(message);
        }

        stderr.Flush();
    }

    private static IAnsiConsole CreateConsole(TextWriter writer, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (!terminal)
        {
            console.Profile.Width = RedirectedWidth;
        }

        return console;
    }
}
