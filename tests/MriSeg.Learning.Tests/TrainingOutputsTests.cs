using System.Text.Json;
using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Tests.TestData;
using MriSeg.Learning.Training;
using SkiaSharp;

namespace MriSeg.Learning.Tests;

[Collection(TorchCollection.Name)]
public sealed class TrainingOutputsTests(TorchRuntimeFixture fixture)
{
    [Fact]
    public void A_run_writes_model_manifest_metrics_and_curves_that_load_back()
    {
        Assert.NotNull(fixture.Info);
        var data = TestSlices.Disks(patients: 40, slicesPerPatient: 2, seed: 31);
        var config = new TrainingConfig
        {
            Model = new UNetConfig { InChannels = 1, OutChannels = 1, Depth = 2, BaseWidth = 2, GroupNormGroups = 1 },
            Privacy = new PrivacyConfig { Mode = PrivacyMode.Dp, Epsilon = 8, Delta = 1e-3 },
            Epochs = 2,
            BatchSize = 10,
            Split = new SplitConfig { ValidationFraction = 0.1, TestFraction = 0.2 },
            Threads = 1,
        };
        var folder = Directory.CreateTempSubdirectory("mriseg-outputs-").FullName;
        try
        {
            using var run = LocalTraining.Run(data, config);
            var paths = TrainingOutputs.Write(folder, run);
            Assert.All(paths, p => Assert.True(File.Exists(p), p));

            using var metrics = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "metrics.json")));
            var m = metrics.RootElement;
            foreach (var key in new[] { "dice", "iou", "hd95", "epsilon", "delta", "sigma", "sample_rate", "steps", "train_seconds", "samples_per_second" })
            {
                Assert.True(m.TryGetProperty(key, out _), $"metrics.json lacks {key}");
            }

            Assert.Equal(run.Test!.Summary.Dice, m.GetProperty("dice").GetDouble(), 12);
            Assert.InRange(m.GetProperty("epsilon").GetDouble(), 0.1, 8);
            Assert.Equal(1e-3, m.GetProperty("delta").GetDouble());
            Assert.Equal(run.Training.Steps, m.GetProperty("steps").GetInt64());
            Assert.Equal(run.Split.Test.Count, m.GetProperty("test_patients").GetInt32());

            var manifest = TrainingOutputs.ReadManifest(folder)!;
            Assert.Equal(config.Model, manifest.Architecture);
            Assert.Equal(["flair"], manifest.Input.Modalities);
            Assert.Equal("dp", manifest.Training.Mode);
            Assert.Equal(config.Epochs, manifest.Training.Config.Epochs);
            Assert.True(manifest.Training.SecureRandomness);

            // The saved weights reproduce the test score.
            using var loaded = UNetModelFile.Load(folder);
            var rescored = SegmentationEvaluator.Evaluate(loaded, data.SelectPatients(run.Split.Test));
            Assert.Equal(run.Test.Summary.Dice, rescored.Summary.Dice, 6);

            var png = File.ReadAllBytes(Path.Combine(folder, "curves.png"));
            Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47 }, png[..4]);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Curves_render_three_panels_with_text()
    {
        var epochs = Enumerable.Range(1, 12)
            .Select(e => new EpochSummary(e, e * 5, 1.0 / e, 0.5 + (e * 0.03), 0.4, 0.6 * e, e * 2.0))
            .ToList();
        var png = TrainingCurves.RenderPng(epochs, "DP-SGD test");
        using var bitmap = SKBitmap.Decode(png);
        Assert.Equal(TrainingCurves.Width, bitmap.Width);
        Assert.Equal(TrainingCurves.Height, bitmap.Height);
        if (TrainingCurves.FontFile is null)
        {
            Assert.Skip("no TrueType font (DejaVu Sans, Liberation Sans) on this machine: curves.png has no readable text; install fonts-dejavu-core");
        }

        // Titles are drawn in the top strip of each panel: dark pixels there mean the font rendered.
        int DarkPixels(int x0, int x1, int y0, int y1)
        {
            var count = 0;
            for (var y = y0; y < y1; y++)
            {
                for (var x = x0; x < x1; x++)
                {
                    var c = bitmap.GetPixel(x, y);
                    count += c.Red + c.Green + c.Blue < 300 ? 1 : 0;
                }
            }

            return count;
        }

        var third = TrainingCurves.Width / 3;
        for (var panel = 0; panel < 3; panel++)
        {
            Assert.True(DarkPixels(panel * third, (panel + 1) * third, 0, 30) > 50, $"panel {panel} has no title text");
        }

        // The three series are drawn in their colours.
        int Coloured(Func<SKColor, bool> match)
        {
            var count = 0;
            for (var y = 0; y < bitmap.Height; y += 2)
            {
                for (var x = 0; x < bitmap.Width; x += 2)
                {
                    count += match(bitmap.GetPixel(x, y)) ? 1 : 0;
                }
            }

            return count;
        }

        Assert.True(Coloured(c => c.Blue > 150 && c.Red < 100) > 20, "no loss curve");
        Assert.True(Coloured(c => c.Green > 120 && c.Red < 80 && c.Blue < 120) > 20, "no Dice curve");
        Assert.True(Coloured(c => c.Red > 200 && c.Green < 120 && c.Blue < 60) > 20, "no epsilon curve");
    }
}
