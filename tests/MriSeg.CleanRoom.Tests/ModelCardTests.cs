namespace MriSeg.CleanRoom.Tests;

public sealed class ModelCardTests
{
    private static ModelCard Card(SpentPrivacy? privacy) => new()
    {
        RunId = "run-1",
        Consumer = "tdc",
        Created = new DateTimeOffset(2026, 11, 27, 10, 0, 0, TimeSpan.Zero),
        Model = "unet2d, 2,164,145 parameters",
        Providers = [new("hospital-a", 20, 400, 150, "aa"), new("hospital-b", 30, 600, 250, "bb")],
        Privacy = privacy,
        Metrics = new(0.87, 0.78, 3.5, 12),
        TrainSeconds = 61.5,
        SamplesPerSecond = 40,
        Device = "cpu",
        CodeMeasurement = new string('c', 64),
        Attestation = "development (not hardware-backed)",
        PipelineSha256 = new string('p', 64),
    };

    [Fact]
    public void JsonRoundTripsAndUsesSnakeCase()
    {
        var card = Card(new SpentPrivacy(7.93, 1e-5, 1.1, 0.1, 300, "prv"));
        var json = card.ToJson();
        Assert.Contains("\"samples_per_second\"", json);
        Assert.Contains("\"sample_rate\"", json);
        var back = ModelCard.FromJson(json);
        Assert.Equal(card.Privacy, back.Privacy);
        Assert.Equal(card.Metrics, back.Metrics);
        Assert.Equal(card.Providers, back.Providers);
        Assert.Equal(card.CodeMeasurement, back.CodeMeasurement);
    }

    [Fact]
    public void MarkdownStatesTotalsPrivacyAndItsAbsence()
    {
        var md = Card(new SpentPrivacy(7.93, 1e-5, 1.1, 0.1, 300, "prv")).ToMarkdown();
        Assert.Contains("| **total** | 50 | 1,000 | 400 |", md);
        Assert.Contains("ε = 7.93", md);
        Assert.Contains("300 steps", md);

        var open = Card(null).ToMarkdown();
        Assert.Contains("without differential privacy", open);
    }
}
