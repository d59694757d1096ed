using System.Text.Encodings.Web;
using System.Text.Json;

using MriSeg.KeyRelease.Storage;

namespace MriSeg.KeyRelease.Storage;

/// <summary>
/// How records are serialised: camelCase, and relaxed escaping, so that ε, σ or a non-ASCII policy take one character,
/// not six, of a table property's 64 KiB. (Never rendered as HTML.)
/// </summary>
internal static class StoreJson
{
    public static readonly JsonSerializerOptions Options = new(JsonSerializerDefaults.Web) { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}
