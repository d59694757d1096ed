using System.Text.Json;

namespace MriSeg.Privacy.Tests;

public sealed class FacadeTests
{
    [Fact]
    public void Epsilon_report_serialises_for_the_cli()
    {
        var rdp = PrivacyAccounting.ComputeEpsilon(0.01, 1.0, 1000, 1e-5);
        string json = rdp.ToJson();
        Assert.StartsWith("{\"epsilon\":", json);
        using var doc = JsonDocument.Parse(json);
        Assert.Equal(rdp.Epsilon, doc.RootElement.GetProperty("epsilon").GetDouble());
        Assert.Equal("rdp", doc.RootElement.GetProperty("accountant").GetString());
        Assert.Equal(7.8, doc.RootElement.GetProperty("order").GetDouble());
        Assert.False(doc.RootElement.TryGetProperty("note", out _));

        var prv = PrivacyAccounting.ComputeEpsilon(0.01, 1.0, 1000, 1e-5, AccountantKinds.Parse("PRV"));
        using var prvDoc = JsonDocument.Parse(prv.ToJson());
        Assert.Equal("prv", prvDoc.RootElement.GetProperty("accountant").GetString());
        Assert.True(prvDoc.RootElement.GetProperty("epsilonEstimate").GetDouble() < prv.Epsilon);
    }

    [Fact]
    public void Noise_report_serialises_for_the_cli()
    {
        var report = PrivacyAccounting.CalibrateNoise(3.0, 0.01, 1000, 1e-5);
        string json = report.ToJson();
        Assert.StartsWith("{\"sigma\":", json);
        using var doc = JsonDocument.Parse(json);
        Assert.Equal(report.Sigma, doc.RootElement.GetProperty("sigma").GetDouble());
        Assert.True(doc.RootElement.GetProperty("epsilon").GetDouble() <= 3.0);
        Assert.Equal(3.0, doc.RootElement.GetProperty("targetEpsilon").GetDouble());
    }

    [Fact]
    public void Steps_report_and_infinite_values_serialise()
    {
        var steps = PrivacyAccounting.MaxSteps(3.0, 0.01, 1.0, 1e-5);
        Assert.StartsWith("{\"steps\":", steps.ToJson());
        Assert.True(steps.Epsilon <= 3.0);

        var infinite = PrivacyAccounting.ComputeEpsilon(0.1, 0.0, 10, 1e-5);
        Assert.Contains("\"epsilon\":\"Infinity\"", infinite.ToJson());
    }

    [Fact]
    public void Accountant_names_parse()
    {
        Assert.Equal(AccountantKind.Rdp, AccountantKinds.Parse("rdp"));
        Assert.Equal(AccountantKind.Prv, AccountantKinds.Parse(" Prv "));
        Assert.False(AccountantKinds.TryParse("gdp", out _));
        Assert.Throws<FormatException>(() => AccountantKinds.Parse("gdp"));
        Assert.Equal("prv", AccountantKind.Prv.ToName());
    }
}
