using System.Text.Json;
using MriSeg.Imaging.Datasets;
using MriSeg.Learning.Tests.TestData;

namespace MriSeg.Cli.Tests;

/// <summary>`mriseg train` and `mriseg evaluate` on small synthetic shards with a small U-Net.</summary>
public sealed class TrainCommandTests : IDisposable
{
    private const string SmallModel = """
        {
          "model": { "in_channels": 1, "out_channels": 1, "depth": 2, "base_width": 2, "group_norm_groups": 1 },
          "max_slices_per_patient": 2,
          "optimizer": { "kind": "adam", "learning_rate": 0.01 },
          "split": { "validation_fraction": 0.1, "test_fraction": 0.2 },
          "threads": 1
        }
        """;

    private readonly TempFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    /// <summary>Two providers' shards (ids never collide) and the small recipe.</summary>
    private (string Data, string Config) Inputs()
    {
        var a = Path.Combine(_folder.Path, "a.safetensors");
        var b = Path.Combine(_folder.Path, "b.safetensors");
        DatasetShard.Save(a, TestSlices.Disks(patients: 30, slicesPerPatient: 2, seed: 1, idPrefix: "A"));
        DatasetShard.Save(b, TestSlices.Disks(patients: 30, slicesPerPatient: 2, seed: 2, idPrefix: "B"));
        var config = Path.Combine(_folder.Path, "small.json");
        File.WriteAllText(config, SmallModel);
        return ($"{a},{b}", config);
    }

    [Fact]
    public async Task Dp_training_writes_the_outputs_and_evaluate_scores_every_patient()
    {
        var (data, config) = Inputs();
        var output = Path.Combine(_folder.Path, "model");
        var train = await CliRun.RunAsync("train", "--data", data, "--out", output, "--epsilon", "8", "--delta", "1e-3",
            "--epochs", "2", "--batch", "12", "--config", config, "--seed", "3", "--device", "cpu", "--json");

        Assert.True(train.ExitCode == 0, train.ToString());
        foreach (var file in new[] { "model.safetensors", "config.json", "model.json", "metrics.json", "curves.png" })
        {
            Assert.True(File.Exists(Path.Combine(output, file)), $"{file} missing\n{train}");
        }

        // stdout is the metrics (as metrics.json), stderr the plan and the step and epoch lines.
        var metrics = train.Json();
        using var file0 = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "metrics.json")));
        foreach (var key in new[] { "dice", "iou", "hd95", "epsilon", "delta", "sigma", "sample_rate", "steps", "train_seconds", "samples_per_second" })
        {
            Assert.True(metrics.TryGetProperty(key, out var value), $"no {key} in {train.Stdout}");
            Assert.Equal(file0.RootElement.GetProperty(key).GetRawText(), value.GetRawText());
        }

        Assert.InRange(metrics.GetProperty("epsilon").GetDouble(), 0.5, 8.0);
        Assert.Equal(1e-3, metrics.GetProperty("delta").GetDouble());
        Assert.True(metrics.GetProperty("sigma").GetDouble() > 0);
        Assert.Equal(12.0 / metrics.GetProperty("training_patients").GetInt32(), metrics.GetProperty("sample_rate").GetDouble(), 12);
        Assert.Equal(60, metrics.GetProperty("training_patients").GetInt32() + metrics.GetProperty("validation_patients").GetInt32()
            + metrics.GetProperty("test_patients").GetInt32());
        Assert.Contains(train.StderrLines, l => l.StartsWith("plan: DP-SGD", StringComparison.Ordinal));
        Assert.Contains(train.StderrLines, l => l.StartsWith("step ", StringComparison.Ordinal) && l.Contains("eps", StringComparison.Ordinal));
        Assert.Contains(train.StderrLines, l => l.StartsWith("epoch 2 ", StringComparison.Ordinal) && l.Contains("validation Dice", StringComparison.Ordinal));

        var evaluate = await CliRun.RunAsync("evaluate", "--model", output, "--data", data, "--json");
        Assert.True(evaluate.ExitCode == 0, evaluate.ToString());
        var scores = evaluate.Json();
        Assert.Equal(60, scores.GetProperty("patients").GetInt32());
        Assert.Equal(120, scores.GetProperty("slices").GetInt32());
        Assert.InRange(scores.GetProperty("dice").GetDouble(), 0, 1);
        Assert.InRange(scores.GetProperty("iou").GetDouble(), 0, scores.GetProperty("dice").GetDouble());
        Assert.True(scores.GetProperty("hd95").GetDouble() >= 0);
    }

    [Fact]
    public async Task Non_private_training_reports_no_privacy_and_learns()
    {
        var (data, config) = Inputs();
        var output = Path.Combine(_folder.Path, "plain");
        var run = await CliRun.RunAsync("train", "--data", data, "--out", output, "--non-private", "--epochs", "6", "--batch", "6",
            "--config", config, "--json");
        Assert.True(run.ExitCode == 0, run.ToString());
        var metrics = run.Json();
        Assert.Equal(JsonValueKind.Null, metrics.GetProperty("epsilon").ValueKind);
        Assert.Equal(0, metrics.GetProperty("sigma").GetDouble());
        Assert.Equal("non_private", metrics.GetProperty("mode").GetString());
        Assert.True(metrics.GetProperty("dice").GetDouble() > 0.6, run.Stdout);
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(output, "model.json")));
        Assert.Equal("mriseg.model", manifest.RootElement.GetProperty("format").GetString());
        Assert.Equal("non_private", manifest.RootElement.GetProperty("training").GetProperty("mode").GetString());
        Assert.Equal(2, manifest.RootElement.GetProperty("architecture").GetProperty("base_width").GetInt32());
    }

    [Theory]
    [InlineData("both", "not both")]
    [InlineData("missing", "no such file")]
    [InlineData("bad-config", "'epoch'")]
    [InlineData("delta", "1/N")]
    public async Task Bad_training_input_fails_with_one_line(string kind, string expected)
    {
        var (data, config) = Inputs();
        var output = Path.Combine(_folder.Path, "never");
        var bad = Path.Combine(_folder.Path, "bad.json");
        File.WriteAllText(bad, """{ "epoch": 3 }""");
        string[] args = kind switch
        {
            "both" => ["train", "--data", data, "--out", output, "--epsilon", "8", "--non-private"],
            "missing" => ["train", "--data", Path.Combine(_folder.Path, "nope.safetensors"), "--out", output],
            "bad-config" => ["train", "--data", data, "--out", output, "--config", bad],
            _ => ["train", "--data", data, "--out", output, "--config", config, "--epsilon", "8", "--delta", "0.1"],
        };
        var run = await CliRun.RunAsync(args);
        Assert.Equal(1, run.ExitCode);
        var line = Assert.Single(run.StderrLines, l => l.StartsWith("error:", StringComparison.Ordinal));
        Assert.Contains(expected, line, StringComparison.OrdinalIgnoreCase);
        Assert.False(Directory.Exists(output));
    }

    [Fact]
    public async Task Evaluate_refuses_a_folder_without_a_model()
    {
        var (data, _) = Inputs();
        var run = await CliRun.RunAsync("evaluate", "--model", _folder.Path, "--data", data, "--json");
        Assert.Equal(1, run.ExitCode);
        Assert.Contains("not a model folder", Assert.Single(run.StderrLines), StringComparison.Ordinal);
        Assert.Empty(run.Stdout);
    }
}
