using System.Text.Json.Nodes;

namespace MriSeg.Scenario;

/// <summary>One hospital of the scenario: its owner id and, for real data, the folder its Preprocess service reads.</summary>
/// <param name="Id">Owner id (3 to 63 letters, digits and hyphens; names its blob container).</param>
/// <param name="DataPath">A data folder on the Preprocess service's machine (any ingestion layout); null: generated phantoms.</param>
public sealed record ScenarioHospital(string Id, string? DataPath = null);

/// <summary>What the scenario plays. The defaults are the documented main job: three phantom hospitals, ε = 8.</summary>
public sealed record ScenarioOptions
{
    /// <summary>The hospitals (data providers).</summary>
    public IReadOnlyList<ScenarioHospital> Hospitals { get; init; } =
        [new("hospital-a"), new("hospital-b"), new("hospital-c")];

    /// <summary>The model consumer's party id; the ModelVault must serve the same consumer (<c>ModelVault:Consumer</c>).</summary>
    public string Consumer { get; init; } = "tdc";

    /// <summary>
    /// The consumer's party key (PKCS#8 PEM) that signs the scenario's calls to the ModelVault; null: the consumer's key in
    /// the development key folder (<c>.mriseg/keys/&lt;consumer&gt;.key</c>, which Packaging makes at the consumer's first hand-off).
    /// </summary>
    public string? ConsumerKeyPath { get; init; }

    /// <summary>Generated patients per phantom hospital.</summary>
    public int PatientsPerHospital { get; init; } = 300;

    /// <summary>Phantom volume side (in-plane voxels; multiple of 16).</summary>
    public int VolumeSize { get; init; } = 64;

    /// <summary>Axial slices per phantom volume.</summary>
    public int VolumeDepth { get; init; } = 16;

    /// <summary>Slice size of the shards (the model's input); 0: the volume size.</summary>
    public int SliceSize { get; init; }

    /// <summary>Seed of the generated data (each hospital derives its own).</summary>
    public ulong Seed { get; init; } = 2021;

    /// <summary>The run's privacy budget ε (declared in the pipeline, capped by each contract).</summary>
    public double Epsilon { get; init; } = 8;

    /// <summary>δ of the run and the contracts.</summary>
    public double Delta { get; init; } = 1e-5;

    /// <summary>The pipeline configuration (a training config JSON); null: the shipped phantom recipe with <see cref="Epsilon"/> and <see cref="Delta"/>.</summary>
    public string? PipelineJson { get; init; }

    /// <summary>
    /// The consumer's pre-trained base model (a model folder, as <c>mriseg train</c> writes it), sealed as the run's initial
    /// weights; null: the pipeline's architecture with its seeded initial weights. The CLI takes a <c>--pipeline</c>'s own
    /// <c>base_model</c> (the BraTS recipes' phantom base) unless <c>--base-model</c> says otherwise.
    /// </summary>
    public string? BaseModelDirectory { get; init; }

    /// <summary>Overrides of the pipeline (for small test runs): epochs; null keeps the recipe's.</summary>
    public int? Epochs { get; init; }

    /// <summary>A case folder to segment at the end (on this machine); null: a generated phantom of a hospital that did not train.</summary>
    public string? SegmentCase { get; init; }

    /// <summary>Where the local outputs go (<c>&lt;dir&gt;/&lt;run-id&gt;/</c>).</summary>
    public string OutputDirectory { get; init; } = "output";

    /// <summary>The run id; null: <c>scenario-&lt;utc time&gt;-&lt;random&gt;</c>.</summary>
    public string? RunId { get; init; }

    /// <summary>Keep the plaintext staging blobs (generated volumes, shards, the TDC's model and pipeline) after sealing.</summary>
    public bool KeepPlaintext { get; init; }

    /// <summary>The pipeline JSON this scenario seals: <see cref="PipelineJson"/> or the shipped recipe, with the overrides applied.</summary>
    public string ResolvePipeline()
    {
        string text;
        if (PipelineJson is { } given)
        {
            text = given;
        }
        else
        {
            using var stream = typeof(ScenarioOptions).Assembly.GetManifestResourceStream("MriSeg.Scenario.phantoms-eps8.json")
                ?? throw new InvalidOperationException("the shipped phantom recipe is not embedded");
            using var reader = new StreamReader(stream);
            text = reader.ReadToEnd();
        }

        var node = JsonNode.Parse(text)?.AsObject() ?? throw new ArgumentException("the pipeline is not a JSON object");
        var privacy = node["privacy"] as JsonObject;
        if (PipelineJson is null && privacy is not null)
        {
            privacy["epsilon"] = Epsilon;
            privacy["delta"] = Delta;
        }

        if (privacy is not null && (string?)privacy["mode"] == "dp")
        {
            // The KeyBroker checks a run's ε against each contract with the RDP accountant; planning with the (tighter) PRV
            // accountant would declare an ε the broker computes as over the cap.
            privacy["accountant"] = "rdp";
        }

        if (Epochs is { } epochs)
        {
            node["epochs"] = epochs;
        }

        // The base model travels sealed (BaseModelDirectory), not as a path on the consumer's machine.
        node.Remove("base_model");

        return node.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Checks the options; throws <see cref="ArgumentException"/> with the reason.</summary>
    public void Validate()
    {
        if (Hospitals.Count is < 1 or > 16)
        {
            throw new ArgumentException("the scenario needs 1 to 16 hospitals");
        }

        if (Hospitals.Select(h => h.Id.ToLowerInvariant()).Distinct().Count() != Hospitals.Count || Hospitals.Any(h => h.Id.Equals(Consumer, StringComparison.OrdinalIgnoreCase)))
        {
            throw new ArgumentException("hospital ids must differ from each other and from the consumer");
        }

        if (PatientsPerHospital is < 4 or > 10_000)
        {
            throw new ArgumentException($"patients per hospital must be 4 to 10000, got {PatientsPerHospital}");
        }

        if (VolumeSize is < 32 or > 512 || VolumeSize % 16 != 0 || VolumeDepth < 16 || VolumeDepth > VolumeSize)
        {
            throw new ArgumentException($"phantom volumes are 32..512 (multiple of 16) wide and 16..width deep, got {VolumeSize}x{VolumeSize}x{VolumeDepth}");
        }

        if (!(Epsilon > 0 && Epsilon <= 100) || !(Delta > 0 && Delta < 1))
        {
            throw new ArgumentException($"ε must be in (0, 100] and δ in (0, 1), got ε = {Epsilon}, δ = {Delta}");
        }
    }
}
