using ScottPlot;

namespace MriSeg.Learning.Training;

/// <summary>
/// curves.png of a run: training loss, validation Dice and ε spent, each per epoch, side by side (ScottPlot 5 on
/// SkiaSharp; text is drawn with a font file found on the machine, see <see cref="FontFile"/>).
/// </summary>
public static class TrainingCurves
{
    /// <summary>Image width in pixels.</summary>
    public const int Width = 1500;

    /// <summary>Image height in pixels.</summary>
    public const int Height = 460;

    private static readonly string[] FontCandidates =
    [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
        "/System/Library/Fonts/Supplemental/Arial.ttf",
        "C:\\Windows\\Fonts\\arial.ttf",
    ];

    private static readonly Lock FontGate = new();
    private static bool s_fontAdded;

    /// <summary>
    /// The font file the labels are drawn with: SkiaSharp's Linux "NoDependencies" build has no fontconfig and finds no
    /// system font by name, so a known TrueType file (DejaVu Sans, Liberation Sans, Arial) is registered with ScottPlot.
    /// Null when none exists (the plot then has no readable text).
    /// </summary>
    public static string? FontFile { get; } = FontCandidates.FirstOrDefault(File.Exists);

    /// <summary>Renders the curves as PNG bytes.</summary>
    /// <param name="epochs">The run's history.</param>
    /// <param name="title">A caption for the loss panel (e.g. "DP-SGD, ε = 8").</param>
    public static byte[] RenderPng(IReadOnlyList<EpochSummary> epochs, string title)
    {
        ArgumentNullException.ThrowIfNull(epochs);
        ArgumentNullException.ThrowIfNull(title);
        var font = RegisterFont();
        var multiplot = new Multiplot { Layout = new ScottPlot.MultiplotLayouts.Columns() };
        multiplot.AddPlots(3);
        var (loss, dice, epsilon) = (multiplot.GetPlot(0), multiplot.GetPlot(1), multiplot.GetPlot(2));

        double[] x = [.. epochs.Select(e => (double)e.Epoch)];
        AddLine(loss, x, [.. epochs.Select(e => e.MeanLoss)], Colors.SteelBlue);
        Label(loss, title, "training loss (not DP)", font);

        var validated = epochs.Where(e => e.ValidationDice is not null).ToList();
        AddLine(dice, [.. validated.Select(e => (double)e.Epoch)], [.. validated.Select(e => e.ValidationDice!.Value)], Colors.SeaGreen);
        Label(dice, validated.Count == 0 ? "no validation patients" : "validation", "Dice", font);
        if (validated.Count > 0)
        {
            dice.Axes.SetLimitsY(0, 1);
        }

        var spent = epochs.Where(e => e.Epsilon is not null).ToList();
        AddLine(epsilon, [.. spent.Select(e => (double)e.Epoch)], [.. spent.Select(e => e.Epsilon!.Value)], Colors.OrangeRed);
        Label(epsilon, spent.Count == 0 ? "non-private: no privacy" : "privacy spent", "ε", font);
        if (spent.Count > 0)
        {
            epsilon.Axes.SetLimitsY(0, spent.Max(e => e.Epsilon!.Value) * 1.1);
        }

        return multiplot.Render(Width, Height).GetImageBytes(ImageFormat.Png);
    }

    /// <summary>Writes curves.png.</summary>
    public static void Save(string path, IReadOnlyList<EpochSummary> epochs, string title) => File.WriteAllBytes(path, RenderPng(epochs, title));

    private static void AddLine(Plot plot, double[] x, double[] y, Color color)
    {
        if (x.Length == 0)
        {
            return;
        }

        var line = plot.Add.Scatter(x, y, color);
        line.LineWidth = 2;
        line.MarkerSize = x.Length <= 40 ? 5 : 0;
    }

    private static void Label(Plot plot, string title, string yLabel, string? font)
    {
        plot.Title(title, size: 16);
        plot.XLabel("epoch", size: 14);
        plot.YLabel(yLabel, size: 14);
        if (font is not null)
        {
            plot.Font.Set(font);
        }
    }

    /// <summary>Registers <see cref="FontFile"/> with ScottPlot once and returns the family name to use.</summary>
    private static string? RegisterFont()
    {
        if (FontFile is null)
        {
            return null;
        }

        const string family = "MriSeg Sans";
        lock (FontGate)
        {
            if (!s_fontAdded)
            {
                Fonts.AddFontFile(family, FontFile);
                s_fontAdded = true;
            }
        }

        return family;
    }
}
