using System.Buffers.Binary;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

namespace MriSeg.Imaging.Slices;

/// <summary>A slice image that cannot be read: not a PNG, the wrong size, not grey, corrupt. Names the file.</summary>
public sealed class SliceFormatException : Exception
{
    /// <summary>Creates the exception; the message becomes "&lt;file&gt;: &lt;problem&gt;".</summary>
    public SliceFormatException(string fileName, string problem, Exception? inner = null)
        : base($"{fileName}: {problem}", inner)
    {
        FileName = fileName;
        Problem = problem;
    }

    /// <summary>The file (or stream name).</summary>
    public string FileName { get; }

    /// <summary>The problem alone.</summary>
    public string Problem { get; }
}

/// <summary>An 8-bit greyscale 2-D image, row by row from the top, x fastest.</summary>
public sealed class GraySlice
{
    /// <summary>Creates a slice over the given pixels (not copied).</summary>
    public GraySlice(byte[] pixels, int width, int height)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        if (pixels.Length != width * height)
        {
            throw new ArgumentException($"{pixels.Length} pixels do not make a {width}x{height} image", nameof(pixels));
        }

        Pixels = pixels;
        Width = width;
        Height = height;
    }

    /// <summary>The pixels, index = x + width · y (y = 0 is the top row).</summary>
    public byte[] Pixels { get; }

    /// <summary>Width in pixels.</summary>
    public int Width { get; }

    /// <summary>Height in pixels.</summary>
    public int Height { get; }

    /// <summary>The pixel at (x, y).</summary>
    public byte this[int x, int y] => Pixels[x + (Width * y)];

    /// <summary>How many pixels are above <paramref name="threshold"/>.</summary>
    public int CountAbove(byte threshold)
    {
        var n = 0;
        foreach (var p in Pixels)
        {
            if (p > threshold)
            {
                n++;
            }
        }

        return n;
    }
}

/// <summary>
/// Reads the 2-D slice PNGs of the BraTS 2020 slice layout: 240 × 240, stored as 8-bit RGBA with R = G = B
/// (also accepted: any PNG colour type whose pixels are grey), decoded to 8-bit grey. The PNG signature and
/// the IHDR size are checked before any pixel is decoded.
/// </summary>
public static class PngSliceReader
{
    /// <summary>The BraTS slice size (240 × 240).</summary>
    public const int BratsSize = 240;

    private const long MaxFileBytes = 64L * 1024 * 1024;

    private static ReadOnlySpan<byte> Signature => [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>Reads a slice; it must be <paramref name="width"/> × <paramref name="height"/>.</summary>
    public static GraySlice Read(string path, int width = BratsSize, int height = BratsSize)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var length = new FileInfo(path).Length;
        if (length > MaxFileBytes)
        {
            throw new SliceFormatException(path, $"the file has {length} bytes, more than a {width}x{height} slice can need ({MaxFileBytes})");
        }

        var bytes = File.ReadAllBytes(path);
        return Read(bytes, path, width, height);
    }

    /// <summary>Reads a slice from bytes (<paramref name="name"/> names it in errors).</summary>
    public static GraySlice Read(byte[] png, string name, int width = BratsSize, int height = BratsSize)
    {
        ArgumentNullException.ThrowIfNull(png);
        ArgumentNullException.ThrowIfNull(name);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        if (png.Length < 8 || !png.AsSpan(0, 8).SequenceEqual(Signature))
        {
            throw new SliceFormatException(name, "not a PNG file (the 8-byte PNG signature is missing)");
        }

        // IHDR must be the first chunk: length 13, type, width, height.
        if (png.Length < 8 + 8 + 13 || !png.AsSpan(12, 4).SequenceEqual("IHDR"u8) || BinaryPrimitives.ReadInt32BigEndian(png.AsSpan(8)) != 13)
        {
            throw new SliceFormatException(name, "corrupt PNG: the IHDR chunk is missing or malformed");
        }

        var w = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(16));
        var h = BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(20));
        if (w != width || h != height)
        {
            throw new SliceFormatException(name, $"the slice is {w}x{h}, expected {width}x{height}");
        }

        Image<Rgba32> image;
        try
        {
            image = Image.Load<Rgba32>(png, new PngDecoder());
        }
        catch (Exception ex) when (ex is ImageFormatException or InvalidImageContentException or UnknownImageFormatException or NotSupportedException)
        {
            throw new SliceFormatException(name, $"corrupt PNG: {ex.Message}", ex);
        }

        using (image)
        {
            if (image.Width != width || image.Height != height)
            {
                throw new SliceFormatException(name, $"the slice decodes to {image.Width}x{image.Height}, expected {width}x{height}");
            }

            var rgba = new Rgba32[width * height];
            image.CopyPixelDataTo(rgba);
            var pixels = new byte[rgba.Length];
            for (var i = 0; i < rgba.Length; i++)
            {
                var p = rgba[i];
                if (p.R != p.G || p.G != p.B)
                {
                    throw new SliceFormatException(name,
                        $"pixel ({i % width}, {i / width}) is not grey (R={p.R}, G={p.G}, B={p.B}); slices must have R = G = B");
                }

                pixels[i] = p.R;
            }

            return new GraySlice(pixels, width, height);
        }
    }
}

/// <summary>
/// One case of the 2-D slice layout: a folder &lt;case&gt;/ holding &lt;case&gt;_{flair,t1,t1ce,t2,seg}.png.
/// Only "tumour versus background" (seg &gt; 0) is reliable in this layout: each PNG was min-max scaled on its own.
/// </summary>
public sealed class BratsSliceCase
{
    private readonly GraySlice[] _images;

    private BratsSliceCase(string caseId, GraySlice[] images, GraySlice seg)
    {
        CaseId = caseId;
        _images = images;
        Seg = seg;
    }

    /// <summary>The case name (the folder name).</summary>
    public string CaseId { get; }

    /// <summary>The label image (min-max scaled; only &gt; 0 is meaningful).</summary>
    public GraySlice Seg { get; }

    /// <summary>One modality.</summary>
    public GraySlice Image(Modality modality) => _images[(int)modality];

    /// <summary>The whole-tumour mask: 1 where seg &gt; 0, else 0.</summary>
    public byte[] WholeTumourMask() => Array.ConvertAll(Seg.Pixels, p => p > 0 ? (byte)1 : (byte)0);

    /// <summary>Whole-tumour pixels.</summary>
    public int WholeTumourPixels => Seg.CountAbove(0);

    /// <summary>Reads a case folder (the case name is the folder's name).</summary>
    public static BratsSliceCase Load(string caseFolder, int size = PngSliceReader.BratsSize)
    {
        ArgumentException.ThrowIfNullOrEmpty(caseFolder);
        var caseId = Path.GetFileName(Path.TrimEndingDirectorySeparator(caseFolder));
        string FileOf(string suffix)
        {
            var path = Path.Combine(caseFolder, $"{caseId}_{suffix}.png");
            if (!File.Exists(path))
            {
                throw new FileNotFoundException($"{caseFolder}: missing {caseId}_{suffix}.png", path);
            }

            return path;
        }

        var images = Brats.Modalities.Select(m => PngSliceReader.Read(FileOf(Brats.Suffix(m)), size, size)).ToArray();
        var seg = PngSliceReader.Read(FileOf(Brats.SegSuffix), size, size);
        return new BratsSliceCase(caseId, images, seg);
    }

    /// <summary>The case folders (named BraTS20_Training_*) directly under <paramref name="root"/>, sorted.</summary>
    public static IReadOnlyList<string> FindCases(string root, string pattern = "BraTS20_Training_*")
    {
        ArgumentException.ThrowIfNullOrEmpty(root);
        return Directory.GetDirectories(root, pattern).Order(StringComparer.Ordinal).ToArray();
    }
}
