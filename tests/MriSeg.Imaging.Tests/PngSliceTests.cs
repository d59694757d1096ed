using MriSeg.Imaging.Slices;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

namespace MriSeg.Imaging.Tests;

public sealed class PngSliceTests
{
    /// <summary>A PNG like the BraTS 2020 slices: 8-bit RGBA, R = G = B, alpha 255.</summary>
    private static byte[] GreyRgbaPng(int width, int height, Func<int, int, byte> value, Func<int, int, Rgba32>? overrideAt = null)
    {
        using var image = new Image<Rgba32>(width, height);
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                var v = value(x, y);
                image[x, y] = overrideAt?.Invoke(x, y) ?? new Rgba32(v, v, v, 255);
            }
        }

        var ms = new MemoryStream();
        image.SaveAsPng(ms, new PngEncoder { ColorType = PngColorType.RgbWithAlpha, BitDepth = PngBitDepth.Bit8 });
        return ms.ToArray();
    }

    private static byte Pattern(int x, int y) => (byte)((x + (3 * y)) % 256);

    [Fact]
    public void Grey_rgba_slices_decode_to_their_grey_values()
    {
        var slice = PngSliceReader.Read(GreyRgbaPng(240, 240, Pattern), "slice.png");
        Assert.Equal((240, 240), (slice.Width, slice.Height));
        Assert.Equal(Pattern(17, 3), slice[17, 3]);
        Assert.Equal(Pattern(239, 239), slice.Pixels[^1]);
        for (var i = 0; i < slice.Pixels.Length; i++)
        {
            Assert.Equal(Pattern(i % 240, i / 240), slice.Pixels[i]);
        }
    }

    [Fact]
    public void Native_greyscale_pngs_are_accepted_too()
    {
        using var image = new Image<L8>(240, 240);
        image[5, 6] = new L8(200);
        var ms = new MemoryStream();
        image.SaveAsPng(ms);
        var slice = PngSliceReader.Read(ms.ToArray(), "l8.png");
        Assert.Equal(200, slice[5, 6]);
        Assert.Equal(1, slice.CountAbove(0));
    }

    [Fact]
    public void A_file_that_is_not_a_png_is_rejected()
    {
        var e = Assert.Throws<SliceFormatException>(() => PngSliceReader.Read("GIF89a not a png"u8.ToArray(), "x.png"));
        Assert.Equal("x.png: not a PNG file (the 8-byte PNG signature is missing)", e.Message);
        Assert.Throws<SliceFormatException>(() => PngSliceReader.Read([], "empty.png"));
    }

    [Fact]
    public void A_wrong_sized_slice_is_rejected_before_decoding()
    {
        var e = Assert.Throws<SliceFormatException>(() => PngSliceReader.Read(GreyRgbaPng(100, 120, Pattern), "small.png"));
        Assert.Equal("small.png: the slice is 100x120, expected 240x240", e.Message);

        // A custom expected size is honoured.
        Assert.Equal(100, PngSliceReader.Read(GreyRgbaPng(100, 120, Pattern), "small.png", 100, 120).Width);
    }

    [Fact]
    public void A_coloured_pixel_is_rejected()
    {
        var png = GreyRgbaPng(240, 240, Pattern, (x, y) => x == 10 && y == 20 ? new Rgba32(10, 20, 30, 255) : new Rgba32(Pattern(x, y), Pattern(x, y), Pattern(x, y), 255));
        var e = Assert.Throws<SliceFormatException>(() => PngSliceReader.Read(png, "colour.png"));
        Assert.Contains("pixel (10, 20) is not grey (R=10, G=20, B=30)", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_truncated_png_is_rejected_as_corrupt()
    {
        var png = GreyRgbaPng(240, 240, Pattern);
        var e = Assert.Throws<SliceFormatException>(() => PngSliceReader.Read(png[..(png.Length / 2)], "cut.png"));
        Assert.StartsWith("cut.png: corrupt PNG", e.Message, StringComparison.Ordinal);
        var e2 = Assert.Throws<SliceFormatException>(() => PngSliceReader.Read(png[..20], "header-only.png"));
        Assert.Contains("IHDR", e2.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_slice_case_folder_is_read_with_its_whole_tumour_mask()
    {
        using var temp = new TempFolder();
        var folder = Path.Combine(temp.Path, "BraTS20_Training_042");
        Directory.CreateDirectory(folder);
        foreach (var suffix in new[] { "flair", "t1", "t1ce", "t2" })
        {
            File.WriteAllBytes(Path.Combine(folder, $"BraTS20_Training_042_{suffix}.png"), GreyRgbaPng(240, 240, Pattern));
        }

        // Labels min-max scaled as in the real slices: {0, 63, 127, 255}.
        File.WriteAllBytes(Path.Combine(folder, "BraTS20_Training_042_seg.png"),
            GreyRgbaPng(240, 240, (x, y) => x < 10 && y < 10 ? (byte)63 : x >= 200 && y >= 230 ? (byte)255 : (byte)0));
        var c = BratsSliceCase.Load(folder);
        Assert.Equal("BraTS20_Training_042", c.CaseId);
        Assert.Equal(100 + (40 * 10), c.WholeTumourPixels);
        Assert.Equal(c.WholeTumourPixels, c.WholeTumourMask().Count(b => b == 1));
        Assert.Equal(Pattern(1, 2), c.Image(Modality.T1ce)[1, 2]);
        Assert.Equal([folder], BratsSliceCase.FindCases(temp.Path));

        File.Delete(Path.Combine(folder, "BraTS20_Training_042_t2.png"));
        var e = Assert.Throws<FileNotFoundException>(() => BratsSliceCase.Load(folder));
        Assert.Contains("BraTS20_Training_042_t2.png", e.Message, StringComparison.Ordinal);
    }
}
