using Google.Protobuf;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Contracts;

/// <summary>
/// Contract terms as a JSON file (what <c>mriseg keys import --contract</c> reads): the <c>ContractTerms</c> message of
/// keybroker.proto in protobuf's JSON mapping, field names in snake_case (camelCase is accepted too), unknown fields
/// refused, the expiry an RFC 3339 time:
/// <code>
/// { "contract_id": "brats-hospital-a-2026", "dataset_id": "brats-hospital-a", "owner": "hospital-a",
///   "allowed_consumers": ["consumer-x"], "expires": "2026-12-31T23:59:59Z",
///   "max_epsilon_per_run": 4, "max_epsilon_total": 8, "delta": 1e-5,
///   "allowed_pipeline_sha256": ["&lt;hex SHA-256 of the pipeline configuration&gt;"],
///   "constraints": { "require_patient_level_privacy": true, "max_epochs": 50, "allowed_architectures": ["unet2d"] } }
/// </code>
/// The broker checks the terms (<see cref="ContractTerms.FromRequest"/>); this only reads the file.
/// </summary>
public static class ContractJson
{
    private static readonly JsonParser Parser = new(JsonParser.Settings.Default.WithIgnoreUnknownFields(false));
    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithPreserveProtoFieldNames(true));

    /// <summary>Reads contract terms; <see cref="FormatException"/> with a one-line reason when the document is not one.</summary>
    public static V1.ContractTerms Parse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        if (string.IsNullOrWhiteSpace(json))
        {
            throw new FormatException("the contract is empty (a JSON object with contract_id, dataset_id, allowed_consumers, expires, max_epsilon_per_run, max_epsilon_total, delta, …)");
        }

        try
        {
            return Parser.Parse<V1.ContractTerms>(json);
        }
        catch (Exception e) when (e is InvalidProtocolBufferException or InvalidJsonException or FormatException or InvalidOperationException)
        {
            throw new FormatException("not a contract (keybroker.proto ContractTerms in JSON): " + e.Message.ReplaceLineEndings(" "), e);
        }
    }

    /// <summary>The terms as JSON with snake_case names (default values left out).</summary>
    public static string Format(V1.ContractTerms terms)
    {
        ArgumentNullException.ThrowIfNull(terms);
        return Formatter.Format(terms);
    }
}
