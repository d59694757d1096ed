namespace MriSeg.Imaging.Nifti;

/// <summary>
/// A NIfTI file (or stream) that cannot be read: malformed, truncated, corrupt, unsupported or over a limit.
/// The message always names the file and the problem.
/// </summary>
public sealed class NiftiFormatException : Exception
{
    /// <summary>Creates the exception; the message becomes "&lt;file&gt;: &lt;problem&gt;".</summary>
    public NiftiFormatException(string fileName, string problem, Exception? inner = null)
        : base($"{fileName}: {problem}", inner)
    {
        FileName = fileName;
        Problem = problem;
    }

    /// <summary>The file name (or the name given for a stream).</summary>
    public string FileName { get; }

    /// <summary>The problem alone, without the file name.</summary>
    public string Problem { get; }
}
