using Microsoft.Extensions.Logging;
using MriSeg.Learning.Torch;

namespace MriSeg.Learning.Tests;

/// <summary>Initialises the torch runtime once for the process, capturing what it logs.</summary>
public sealed class TorchRuntimeFixture
{
    public TorchRuntimeFixture()
    {
        Logger = new ListLogger();
        Info = TorchRuntime.Initialize(Logger);
    }

    public ListLogger Logger { get; }

    public TorchBackendInfo Info { get; }
}

[CollectionDefinition(Name)]
public sealed class TorchCollection : ICollectionFixture<TorchRuntimeFixture>
{
    public const string Name = "torch runtime";
}

public sealed class ListLogger : ILogger
{
    private readonly List<(LogLevel Level, string Message)> _entries = [];

    public IReadOnlyList<(LogLevel Level, string Message)> Entries
    {
        get
        {
            lock (_entries)
            {
                return [.. _entries];
            }
        }
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (_entries)
        {
            _entries.Add((logLevel, formatter(state, exception)));
        }
    }
}
