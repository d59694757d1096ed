namespace MriSeg.Learning.Torch;

/// <summary>
/// A file could not be read as an ELF64 little-endian shared object, or its version tables are
/// inconsistent. The message names the file and the problem.
/// </summary>
public sealed class ElfFormatException : IOException
{
    /// <summary>Creates the exception for <paramref name="filePath"/>.</summary>
    public ElfFormatException(string filePath, string problem)
        : base($"'{filePath}' is not a usable ELF64 shared object: {problem}")
    {
        FilePath = filePath;
        Problem = problem;
    }

    /// <summary>The file that was read.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong with it, without the file name.</summary>
    public string Problem { get; }
}
