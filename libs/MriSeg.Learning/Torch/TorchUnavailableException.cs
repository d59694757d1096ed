namespace MriSeg.Learning.Torch;

/// <summary>
/// libtorch / TorchSharp could not be loaded or the requested device cannot be used. The message
/// says what was tried and how to fix it.
/// </summary>
public sealed class TorchUnavailableException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TorchUnavailableException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>Builds a message of the form: problem, what was tried, how to fix.</summary>
    internal static TorchUnavailableException Create(string problem, IEnumerable<string> tried, string fix, Exception? inner = null)
    {
        var lines = tried.Select(t => "  - " + t);
        var message = $"TorchSharp is not usable: {problem}{Environment.NewLine}" +
            $"What was tried:{Environment.NewLine}{string.Join(Environment.NewLine, lines)}{Environment.NewLine}" +
            $"How to fix: {fix}";
        return new TorchUnavailableException(message, inner);
    }
}
