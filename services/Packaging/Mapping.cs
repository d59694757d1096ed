using Google.Protobuf.WellKnownTypes;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.Packaging;

/// <summary>Between the sealing library's types and the contract's messages.</summary>
internal static class Mapping
{
    public static ContentType? ToLibrary(V1.ContentType type) => type switch
    {
        V1.ContentType.Dataset => ContentType.Dataset,
        V1.ContentType.Model => ContentType.Model,
        V1.ContentType.Pipeline => ContentType.Pipeline,
        V1.ContentType.Output => ContentType.Output,
        V1.ContentType.Checkpoint => ContentType.Checkpoint,
        _ => null,
    };

    public static V1.ContentType ToContract(ContentType type) => type switch
    {
        ContentType.Dataset => V1.ContentType.Dataset,
        ContentType.Model => V1.ContentType.Model,
        ContentType.Pipeline => V1.ContentType.Pipeline,
        ContentType.Output => V1.ContentType.Output,
        ContentType.Checkpoint => V1.ContentType.Checkpoint,
        _ => V1.ContentType.Unspecified,
    };

    /// <summary>The purpose of the key of a package of <paramref name="type"/> (whose owner role registers with the KeyBroker).</summary>
    public static V1.KeyPurpose PurposeOf(ContentType type) => type switch
    {
        ContentType.Dataset => V1.KeyPurpose.Dataset,
        ContentType.Model or ContentType.Pipeline => V1.KeyPurpose.Model,
        _ => V1.KeyPurpose.Output,
    };

    public static V1.PackageManifest ToContract(PackageInfo info)
    {
        var m = info.Manifest;
        var manifest = new V1.PackageManifest
        {
            ContentType = ToContract(m.ContentType),
            Owner = m.Owner,
            Created = Timestamp.FromDateTimeOffset(m.CreatedAt),
            PlaintextLength = m.PlaintextLength,
            PlaintextSha256 = m.PlaintextSha256,
            KeyId = info.KeyId,
            ChunkSize = info.ChunkSize,
            FormatVersion = info.FormatVersion,
        };
        foreach (var (key, value) in m.Metadata)
        {
            manifest.Metadata[key] = value;
        }

        return manifest;
    }
}
