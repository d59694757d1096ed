using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Services.Tests;

/// <summary>A party listed in a test vault's ModelVault:Callers (an ML engineer of the consumer, with a key of its own) and clients signed by it.</summary>
internal sealed class TestVaultCaller : IDisposable
{
    public const string Party = "ml-engineer";

    private readonly string folder = Directory.CreateTempSubdirectory("mriseg-vault-caller-").FullName;

    public TestVaultCaller()
    {
        PublicKeyPath = Path.Combine(folder, Party + ".pub");
        File.WriteAllText(PublicKeyPath, Key.PublicKey.ExportPem());
    }

    public SigningKey Key { get; } = SigningKey.Generate();

    public string PublicKeyPath { get; }

    /// <summary>The settings that list this caller.</summary>
    public Dictionary<string, string> With(Dictionary<string, string> settings)
    {
        settings["ModelVault:Callers:0:Party"] = Party;
        settings["ModelVault:Callers:0:PublicKeyPath"] = PublicKeyPath;
        return settings;
    }

    /// <summary>A client whose every call carries a fresh token of this caller.</summary>
    public V1.ModelVault.ModelVaultClient Client(ServiceHost<MriSeg.ModelVault.ModelVaultService> host) => new(host.CreateChannel().WithPartyTokens(Key, Party, PartyTokens.ModelVaultAudience));

    public void Dispose()
    {
        Key.Dispose();
        Directory.Delete(folder, recursive: true);
    }
}
