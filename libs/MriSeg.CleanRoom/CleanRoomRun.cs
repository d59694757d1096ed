using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Grpc.Core;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Formats;
using MriSeg.KeyRelease.Client;
using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Torch;
using MriSeg.Learning.Training;
using MriSeg.Privacy;
using MriSeg.Sealing;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.CleanRoom;

/// <summary>How the clean room executes runs (not part of a run's request).</summary>
public sealed record CleanRoomRunOptions
{
    /// <summary>"auto" (the runtime's choice: CUDA when available and allowed, MRISEG_DEVICE), "cpu" or "cuda".</summary>
    public string Device { get; init; } = "auto";

    /// <summary>The software measurement the attestation states (the model card's code measurement).</summary>
    public required string CodeMeasurement { get; init; }

    /// <summary>How the attestation is described on the model card.</summary>
    public string AttestationDescription { get; init; } = "development authority (not hardware-backed)";

    /// <summary>Torch intra-op threads for the run; null leaves the pipeline's setting.</summary>
    public int? Threads { get; init; }
}

/// <summary>
/// One clean-room run (phase 5), in order: attest (ephemeral key pairs: one to receive keys, one to sign outputs, the
/// latter bound into an attestation token) → fetch every package and verify it without keys (sealed SHA-256, manifest,
/// signer = the owner's registered key) → obtain the pipeline key, open the pipeline, check it → declare the run's
/// privacy (from the pipeline and the providers' signed patient counts) and obtain the dataset, base model and output
/// keys → open every package in memory only → join the shards → split, train with DP-SGD, evaluate → seal the outputs
/// under the consumer's output key, signed with the attested key → settle the spend → upload. Nothing decrypted is
/// written to disk; a failure releases nothing and ends with <see cref="CleanRoomRunException"/>.
/// </summary>
public sealed class CleanRoomRun(IPackageSource packages, ISignerDirectory signers, IKeySource keys, IOutputSink outputs, CleanRoomRunOptions options, TimeProvider? time = null)
{
    /// <summary>Metadata key of the signed manifest in which a provider states its shard's patient count.</summary>
    public const string PatientCountMetadataKey = "patient_count";

    /// <summary>Output names, in upload order.</summary>
    public static IReadOnlyList<string> OutputNames { get; } =
        [UNetModelFile.WeightsFileName, TrainingOutputs.ManifestFileName, TrainingOutputs.MetricsFileName, "model-card.json", "model-card.md", TrainingOutputs.CurvesFileName];

    /// <summary>The ActivitySource of the run's phases ("MriSeg.CleanRoom").</summary>
    public static ActivitySource Activities { get; } = new("MriSeg.CleanRoom");

    private readonly TimeProvider _time = time ?? TimeProvider.System;

    /// <summary>Executes <paramref name="spec"/>; progress goes to <paramref name="progress"/> (keep it quick).</summary>
    /// <exception cref="CleanRoomRunException">The run failed; nothing was released.</exception>
    public async Task<CleanRoomRunResult> ExecuteAsync(CleanRoomRunSpec spec, Action<RunProgressEvent>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var state = new RunState(spec, progress ?? (_ => { }));
        try
        {
            return await ExecuteCoreAsync(state, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not CleanRoomRunException)
        {
            throw Classify(e, cancellationToken);
        }
        finally
        {
            if (state.Reserved.Count > 0)
            {
                // A failed run settles what it spent (0 steps before training) so the reservation does not stay in full.
                await TrySettleAsync(state).ConfigureAwait(false);
            }

            state.Dispose();
        }
    }

    private async Task<CleanRoomRunResult> ExecuteCoreAsync(RunState s, CancellationToken ct)
    {
        var spec = s.Spec;
        Validate(spec);

        // 1. Attest: the ephemeral signing key of the outputs is bound into a token now, before anything is fetched.
        string attestationToken;
        using (Phase(s, V1.RunPhase.Attesting, "attesting the clean room (ephemeral key pairs)"))
        {
            var runtimeKey = RecipientPublicKey.FromPem(s.Signing.PublicKey.ExportPem());
            attestationToken = await Refusable(() => keys.AttestAsync(spec.RunId, runtimeKey, ct), "attestation").ConfigureAwait(false);
        }

        // 2. Fetch and verify every package without keys: a missing or altered package ends the run before any budget is reserved.
        var pipelineRef = spec.Pipeline;
        using (Phase(s, V1.RunPhase.LoadingPackages, $"fetching and verifying {spec.Datasets.Count + (spec.BaseModel is null ? 1 : 2)} sealed packages"))
        {
            s.PipelinePackage = await FetchVerifiedAsync(pipelineRef, ContentType.Pipeline, "pipeline", ct).ConfigureAwait(false);
            foreach (var d in spec.Datasets)
            {
                s.DatasetPackages.Add(await FetchVerifiedAsync(d, ContentType.Dataset, "dataset", ct).ConfigureAwait(false));
            }

            if (spec.BaseModel is { } baseModelRef)
            {
                s.BaseModelPackage = await FetchVerifiedAsync(baseModelRef, ContentType.Model, "base model", ct).ConfigureAwait(false);
            }
        }

        // 3. The pipeline key, then the pipeline: it fixes what the run declares.
        var pipelineSha = s.PipelinePackage.Info.Manifest.PlaintextSha256;
        TrainingConfig config;
        TrainingPlan declaredPlan;
        using (Phase(s, V1.RunPhase.ObtainingKeys, "obtaining the pipeline key"))
        {
            var release = new ReleaseRun(spec.RunId, spec.ContractId, spec.Consumer, pipelineSha, null);
            using var key = await ReleaseAsync(s, pipelineRef.KeyId, release, "pipeline", ct).ConfigureAwait(false);
            using var opened = await OpenAsync(s.PipelinePackage, key.Key, "pipeline", ct).ConfigureAwait(false);
            try
            {
                config = TrainingConfig.FromJson(Encoding.UTF8.GetString(opened.Plaintext.Span));
            }
            catch (Exception e) when (e is FormatException or ArgumentException)
            {
                throw new CleanRoomRunException(RunFailure.PipelineRefused, $"the pipeline configuration is invalid: {e.Message}", e);
            }
        }

        using (Phase(s, V1.RunPhase.CheckingPipeline, "checking the pipeline against the contract"))
        {
            if (PipelineCheck.Problem(config, null) is { } problem)
            {
                throw new CleanRoomRunException(RunFailure.PipelineRefused, problem);
            }

            var patients = 0;
            foreach (var p in s.DatasetPackages)
            {
                patients += StatedPatients(p);
            }

            var lower = PrivacyDeclaration.TrainingPatientsLowerBound(patients, config.Split);
            try
            {
                declaredPlan = SegmentationTrainer.Plan(config, lower);
            }
            catch (ArgumentException e)
            {
                throw new CleanRoomRunException(RunFailure.PipelineRefused, $"the pipeline cannot run on {lower} training patients: {e.Message}", e);
            }

            s.Declared = new V1.PrivacyParameters
            {
                Epsilon = declaredPlan.PlannedEpsilon ?? 0,
                Delta = declaredPlan.Delta ?? 0,
                Sigma = declaredPlan.NoiseMultiplier,
                SampleRate = declaredPlan.SampleRate,
                Steps = declaredPlan.PlannedSteps,
                Accountant = declaredPlan.Accountant.ToName(),
            };
            s.Report(V1.RunPhase.CheckingPipeline,
                $"declaring q {declaredPlan.SampleRate:G4}, σ {declaredPlan.NoiseMultiplier:G4}, {declaredPlan.PlannedSteps} steps for at least {lower} training patients of {patients}",
                steps: declaredPlan.PlannedSteps, epsilonTarget: config.Privacy.Epsilon, delta: config.Privacy.Delta);
        }

        // 4. The other keys with the declaration, then open everything in memory.
        var shards = new List<ProviderShard>();
        UNet2d? baseModel = null;
        try
        {
            using (Phase(s, V1.RunPhase.ObtainingKeys, "obtaining the dataset, model and output keys"))
            {
                var declaredRun = new ReleaseRun(spec.RunId, spec.ContractId, spec.Consumer, pipelineSha, s.Declared);
                foreach (var keyId in spec.Datasets.Select(d => d.KeyId).Distinct(StringComparer.Ordinal))
                {
                    var contract = spec.ContractFor(keyId);
                    s.Keys[keyId] = await ReleaseAsync(s, keyId, declaredRun with { ContractId = contract }, "dataset", ct).ConfigureAwait(false);
                    s.Reserved.Add(contract);
                }

                if (spec.BaseModel is { } bm && !s.Keys.ContainsKey(bm.KeyId))
                {
                    s.Keys[bm.KeyId] = await ReleaseAsync(s, bm.KeyId, declaredRun with { Declared = null }, "base model", ct).ConfigureAwait(false);
                }

                s.OutputKey = await ReleaseAsync(s, spec.OutputKeyId, declaredRun with { Declared = null }, "output", ct).ConfigureAwait(false);
            }

            using (Phase(s, V1.RunPhase.LoadingPackages, "opening the packages in memory"))
            {
                foreach (var (package, i) in s.DatasetPackages.Select((p, i) => (p, i)))
                {
                    using var opened = await OpenAsync(package, s.Keys[package.Ref.KeyId].Key, "dataset", ct).ConfigureAwait(false);
                    SliceDataset data;
                    try
                    {
                        data = DatasetShard.Read(opened.Plaintext, $"dataset {i + 1} of {package.Ref.Owner}");
                    }
                    catch (DatasetSchemaException e)
                    {
                        throw new CleanRoomRunException(RunFailure.SchemaMismatch, e.Message, e);
                    }

                    if (data.PatientIds.Count != StatedPatients(package))
                    {
                        throw new CleanRoomRunException(RunFailure.TamperedPackage,
                            $"the dataset of {package.Ref.Owner} holds {data.PatientIds.Count} patients, its signed manifest states {StatedPatients(package)}");
                    }

                    shards.Add(new ProviderShard(package.Info.Manifest.Owner, data, opened.Info.Manifest.PlaintextSha256));
                }

                if (s.BaseModelPackage is { } bmp)
                {
                    using var opened = await OpenAsync(bmp, s.Keys[bmp.Ref.KeyId].Key, "base model", ct).ConfigureAwait(false);
                    try
                    {
                        var file = SafeTensors.Parse(opened.ToArray());
                        var modelConfig = config.Model ?? (file.Metadata.TryGetValue(UNetModelFile.ConfigMetadataKey, out var embedded)
                            ? UNetConfig.FromJson(embedded)
                            : throw new FormatException("the base model states no architecture and the pipeline names none"));
                        baseModel = UNetModelFile.FromSafeTensors(file, modelConfig);
                        config = config with { Model = modelConfig };
                    }
                    catch (Exception e) when (e is FormatException or SafeTensorsFormatException or ArgumentException)
                    {
                        throw new CleanRoomRunException(RunFailure.PipelineRefused, $"the base model does not fit the pipeline: {e.Message}", e);
                    }
                }
            }

            // 5. Join.
            JoinedDataset joined;
            using (Phase(s, V1.RunPhase.Joining, $"joining {shards.Count} shards"))
            {
                try
                {
                    joined = ShardJoin.Join(shards);
                }
                catch (DatasetSchemaException e)
                {
                    throw new CleanRoomRunException(RunFailure.SchemaMismatch, e.Message, e);
                }
            }

            // 6. Split, train, evaluate.
            LocalTrainingResult trained;
            using (Phase(s, V1.RunPhase.Training, "training with patient-level DP-SGD"))
            {
                trained = await TrainAsync(s, joined.Dataset, config, declaredPlan, baseModel, ct).ConfigureAwait(false);
            }

            using (trained)
            {
                var (files, card) = BuildOutputs(s, trained, joined, pipelineSha);
                var spent = new V1.PrivacyParameters
                {
                    // Settled with the declared q and σ (an upper bound of the q used), the steps taken.
                    Epsilon = trained.Training.Privacy!.Epsilon,
                    Delta = s.Declared.Delta,
                    Sigma = s.Declared.Sigma,
                    SampleRate = s.Declared.SampleRate,
                    Steps = trained.Training.Steps,
                    Accountant = s.Declared.Accountant,
                };

                // 7. Seal every output under the consumer's output key, signed by the attested ephemeral key.
                var sealedFiles = new List<(string Name, byte[] Bytes, PackageInfo Info)>();
                using (Phase(s, V1.RunPhase.SealingOutputs, $"sealing {files.Count} outputs"))
                {
                    foreach (var (name, bytes) in files)
                    {
                        using var destination = new MemoryStream();
                        using var source = new MemoryStream(bytes, writable: false);
                        var info = await SealedPackage.SealAsync(source, destination, s.OutputKey!.Key, s.Signing, new SealOptions
                        {
                            ContentType = name == UNetModelFile.WeightsFileName ? ContentType.Model : ContentType.Output,
                            Owner = keys.PartyId,
                            CreatedAt = _time.GetUtcNow(),
                            Metadata = new Dictionary<string, string>
                            {
                                ["mriseg.run_id"] = spec.RunId,
                                ["mriseg.consumer"] = spec.Consumer,
                                ["mriseg.file"] = name,
                                ["mriseg.attestation_token"] = attestationToken,
                                ["mriseg.signer_public_key"] = s.Signing.PublicKey.ExportPem(),
                                ["mriseg.code_measurement"] = options.CodeMeasurement,
                                ["mriseg.pipeline_sha256"] = pipelineSha,
                            },
                        }, ct).ConfigureAwait(false);
                        CryptographicOperations.ZeroMemory(bytes);
                        sealedFiles.Add((name, destination.ToArray(), info));
                    }
                }

                // 8. Settle, then upload (a failed upload removes what it put there).
                foreach (var contract in s.Reserved.ToList())
                {
                    await keys.SettleAsync(spec.RunId, contract, spent, ct).ConfigureAwait(false);
                    s.Reserved.Remove(contract);
                }

                var uploaded = new List<V1.SealedPackageRef>();
                using (Phase(s, V1.RunPhase.Uploading, $"uploading {sealedFiles.Count} sealed outputs"))
                {
                    var container = spec.OutputContainer ?? spec.Consumer.ToLowerInvariant();
                    var prefix = spec.OutputPrefix ?? $"outputs/{spec.RunId}/";
                    try
                    {
                        foreach (var (name, bytes, info) in sealedFiles)
                        {
                            var blob = await outputs.UploadAsync(container, prefix + name + ".sealed", bytes, ct).ConfigureAwait(false);
                            uploaded.Add(new V1.SealedPackageRef
                            {
                                Blob = blob,
                                KeyId = info.KeyId,
                                ContentType = (V1.ContentType)(int)info.Manifest.ContentType,
                                Owner = info.Manifest.Owner,
                                SealedSha256 = Convert.ToHexStringLower(SHA256.HashData(bytes)),
                            });
                        }
                    }
                    catch
                    {
                        foreach (var blob in uploaded)
                        {
                            await outputs.DeleteAsync(blob.Blob, CancellationToken.None).ConfigureAwait(false);
                        }

                        throw;
                    }
                }

                s.Report(V1.RunPhase.Done, $"done: {uploaded.Count} sealed outputs, ε {spent.Epsilon:0.###}", step: spent.Steps, steps: declaredPlan.PlannedSteps,
                    epsilon: trained.Training.Privacy.Epsilon, epsilonTarget: config.Privacy.Epsilon, delta: spent.Delta);
                return new CleanRoomRunResult(uploaded, card, spent, attestationToken, s.Signing.PublicKey.ExportPem());
            }
        }
        finally
        {
            baseModel?.Dispose();
        }
    }

    private async Task<LocalTrainingResult> TrainAsync(RunState s, SliceDataset data, TrainingConfig config, TrainingPlan declared, UNet2d? baseModel, CancellationToken ct)
    {
        var info = TorchRuntime.Initialize();
        var device = options.Device switch
        {
            "cpu" => new TorchSharp.torch.Device("cpu"),
            _ => info.CreateDevice(),
        };
        s.DeviceName = device.ToString();
        if (options.Threads is { } threads)
        {
            config = config with { Threads = threads };
        }

        var split = PatientSplit.Create(data, config.Split.ValidationFraction, config.Split.TestFraction, config.Seed, config.Split.Stratify);
        var train = data.SelectPatients(split.Train);
        var trainingPatients = train.SlicesByPatient().Count(p => p.Length > 0);
        var (bound, plan) = PrivacyDeclaration.Bind(config, declared, trainingPatients);
        var epochs = (int)Math.Ceiling((double)plan.PlannedSteps / plan.StepsPerEpoch);
        double? lastLoss = null, lastDice = null;
        var trainingOptions = new TrainingOptions
        {
            Device = device,
            CancellationToken = ct,
            InitialModel = baseModel,
            Progress = p =>
            {
                s.StepsTaken = p.Step;
                if (p.Kind == TrainingEventKind.Epoch)
                {
                    lastLoss = p.Loss;
                    lastDice = p.ValidationDice ?? lastDice;
                }

                s.Report(V1.RunPhase.Training, p.Kind == TrainingEventKind.Epoch ? $"epoch {p.Epoch} done" : $"step {p.Step}",
                    p.Epoch, epochs, p.Step, plan.PlannedSteps, lastLoss, lastDice, p.Epsilon, bound.Privacy.Epsilon, bound.Privacy.Delta, p.SamplesPerSecond);
            },
        };

        return await Task.Run(() =>
        {
            var validation = split.Validation.Count > 0 ? data.SelectPatients(split.Validation) : null;
            var training = SegmentationTrainer.Train(train, validation, bound, trainingOptions);
            try
            {
                s.Report(V1.RunPhase.Evaluating, $"evaluating on {split.Test.Count} held-out patients", epochs, epochs, training.Steps, plan.PlannedSteps,
                    lastLoss, lastDice, training.Privacy?.Epsilon, bound.Privacy.Epsilon, bound.Privacy.Delta, training.SamplesPerSecond);
                using var activity = Activities.StartActivity("cleanroom.evaluating");
                var test = split.Test.Count > 0 ? SegmentationEvaluator.Evaluate(training.Model, data.SelectPatients(split.Test)) : null;
                return new LocalTrainingResult(training, split, test, DatasetSchema.Of(data));
            }
            catch
            {
                training.Dispose();
                throw;
            }
        }, ct).ConfigureAwait(false);
    }

    private (List<(string Name, byte[] Bytes)> Files, ModelCard Card) BuildOutputs(RunState s, LocalTrainingResult run, JoinedDataset joined, string pipelineSha)
    {
        var summary = TrainingOutputs.Summary(run);
        var metrics = TrainingOutputs.Metrics(run);
        var t = run.Training;
        var p = t.Privacy!;
        var inv = CultureInfo.InvariantCulture;
        var weights = UNetModelFile.SerializeWeights(t.Model, new Dictionary<string, string>
        {
            ["mriseg.training_mode"] = summary.Mode,
            ["mriseg.epsilon"] = p.Epsilon.ToString("R", inv),
            ["mriseg.delta"] = p.Delta.ToString("R", inv),
            ["mriseg.modalities"] = string.Join(',', run.Data.Modalities),
            ["mriseg.run_id"] = s.Spec.RunId,
        });
        var manifest = new ModelManifest(TrainingOutputs.ManifestFormat, TrainingOutputs.ManifestVersion, t.Model.Config, run.Data, summary);
        var test = run.Test?.Summary;
        var card = new ModelCard
        {
            RunId = s.Spec.RunId,
            Consumer = s.Spec.Consumer,
            Created = _time.GetUtcNow(),
            Model = string.Create(inv, $"{t.Model.Config.Architecture}, {t.Model.ParameterCount:N0} parameters"),
            Providers = joined.Contributions,
            Privacy = new SpentPrivacy(p.Epsilon, p.Delta, p.NoiseMultiplier, p.SampleRate, p.Steps, p.Accountant),
            Metrics = new HeldOutMetrics(test?.Dice ?? double.NaN, test?.IoU ?? double.NaN, test?.Hd95 ?? double.NaN, test?.Patients ?? 0),
            TrainSeconds = t.TrainSeconds,
            SamplesPerSecond = t.SamplesPerSecond,
            Device = s.DeviceName,
            CodeMeasurement = options.CodeMeasurement,
            Attestation = options.AttestationDescription,
            PipelineSha256 = pipelineSha,
        };
        var title = string.Create(inv, $"DP-SGD: ε = {p.Epsilon:0.##} of {p.TargetEpsilon:0.##}, δ = {p.Delta:G2}, σ = {p.NoiseMultiplier:0.###}");
        var files = new List<(string, byte[])>
        {
            (UNetModelFile.WeightsFileName, weights),
            (TrainingOutputs.ManifestFileName, JsonSerializer.SerializeToUtf8Bytes(manifest, TrainingOutputs.JsonOptions)),
            (TrainingOutputs.MetricsFileName, JsonSerializer.SerializeToUtf8Bytes(metrics, TrainingOutputs.JsonOptions)),
            ("model-card.json", Encoding.UTF8.GetBytes(JsonSafe(card).ToJson())),
            ("model-card.md", Encoding.UTF8.GetBytes(card.ToMarkdown())),
            (TrainingOutputs.CurvesFileName, TrainingCurves.RenderPng(t.Epochs, title)),
        };
        return (files, card);
    }

    // System.Text.Json refuses NaN by default: a card without test patients states 0 for its metrics' values and 0 patients.
    private static ModelCard JsonSafe(ModelCard card) => double.IsFinite(card.Metrics.Dice) && double.IsFinite(card.Metrics.Hd95) && double.IsFinite(card.Metrics.Iou)
        ? card
        : card with { Metrics = new HeldOutMetrics(Finite(card.Metrics.Dice), Finite(card.Metrics.Iou), Finite(card.Metrics.Hd95), card.Metrics.Patients) };

    private static double Finite(double v) => double.IsFinite(v) ? v : -1;

    private async Task<FetchedPackage> FetchVerifiedAsync(V1.SealedPackageRef reference, ContentType expected, string what, CancellationToken ct)
    {
        var blob = reference.Blob;
        var bytes = await packages.FetchAsync(blob, ct).ConfigureAwait(false)
            ?? throw new CleanRoomRunException(RunFailure.MissingPackage, $"the {what} package {blob.Container}/{blob.Name} of {reference.Owner} does not exist");
        var sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (!string.Equals(sha, reference.SealedSha256, StringComparison.OrdinalIgnoreCase))
        {
            throw new CleanRoomRunException(RunFailure.TamperedPackage,
                $"the {what} package {blob.Container}/{blob.Name} has sealed SHA-256 {sha[..16]}…, the run names {Short(reference.SealedSha256)}: it was altered");
        }

        var signer = await signers.FindAsync(reference.Owner, ct).ConfigureAwait(false)
            ?? throw new CleanRoomRunException(RunFailure.PolicyRefused, $"owner '{reference.Owner}' of the {what} package has no registered signing key");
        PackageInfo info;
        try
        {
            info = SealedPackage.Inspect(new MemoryStream(bytes, writable: false), SignerCheck.Expect(signer));
        }
        catch (SealedPackageException e)
        {
            signer.Dispose();
            throw new CleanRoomRunException(RunFailure.TamperedPackage, $"the {what} package {blob.Container}/{blob.Name}: {e.Message}", e);
        }

        var m = info.Manifest;
        if (m.ContentType != expected || m.Owner != reference.Owner || info.KeyId != reference.KeyId)
        {
            signer.Dispose();
            throw new CleanRoomRunException(RunFailure.TamperedPackage,
                $"the {what} package {blob.Container}/{blob.Name} holds a {m.ContentType} of '{m.Owner}' under key {info.KeyId}; the run names a {expected} of '{reference.Owner}' under key {reference.KeyId}");
        }

        return new FetchedPackage(reference, bytes, info, signer);
    }

    private static async Task<OpenedPackage> OpenAsync(FetchedPackage package, DataKey key, string what, CancellationToken ct)
    {
        try
        {
            return await SealedPackage.OpenToMemoryAsync(new MemoryStream(package.Bytes, writable: false), key, SignerCheck.Expect(package.Signer), cancellationToken: ct).ConfigureAwait(false);
        }
        catch (SealedPackageException e)
        {
            throw new CleanRoomRunException(RunFailure.TamperedPackage, $"the {what} package {package.Ref.Blob.Container}/{package.Ref.Blob.Name}: {e.Message}", e);
        }
    }

    private async Task<ReleasedKey> ReleaseAsync(RunState s, string keyId, ReleaseRun run, string what, CancellationToken ct)
    {
        s.Report(V1.RunPhase.ObtainingKeys, $"obtaining the {what} key {Short(keyId)}");
        return await Refusable(() => keys.ReleaseAsync(keyId, run, s.Ephemeral, ct), $"the {what} key {Short(keyId)}").ConfigureAwait(false);
    }

    private static async Task<T> Refusable<T>(Func<Task<T>> call, string what)
    {
        try
        {
            return await call().ConfigureAwait(false);
        }
        catch (RpcException e) when (e.StatusCode is StatusCode.PermissionDenied or StatusCode.FailedPrecondition or StatusCode.NotFound or StatusCode.InvalidArgument or StatusCode.Unauthenticated)
        {
            throw new CleanRoomRunException(RunFailure.PolicyRefused, $"{what}: the KeyBroker refused ({e.StatusCode}): {e.Status.Detail}", e);
        }
        catch (InvalidOperationException e)
        {
            throw new CleanRoomRunException(RunFailure.PolicyRefused, $"{what}: {e.Message}", e);
        }
    }

    private static int StatedPatients(FetchedPackage package) =>
        package.Info.Manifest.Metadata.TryGetValue(PatientCountMetadataKey, out var text) && int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n > 0
            ? n
            : throw new CleanRoomRunException(RunFailure.SchemaMismatch,
                $"the dataset package {package.Ref.Blob.Container}/{package.Ref.Blob.Name} of {package.Ref.Owner} states no '{PatientCountMetadataKey}' in its signed manifest: the clean room must declare its privacy before it may open the data");

    private async Task TrySettleAsync(RunState s)
    {
        foreach (var contract in s.Reserved.ToList())
        {
            try
            {
                await SettleFailedAsync(s, contract).ConfigureAwait(false);
                s.Reserved.Remove(contract);
            }
            catch (Exception e) when (e is RpcException or InvalidOperationException or ArgumentException)
            {
                // The reservation stays in full: conservative.
            }
        }
    }

    private async Task SettleFailedAsync(RunState s, string contract)
    {
        {
            await keys.SettleAsync(s.Spec.RunId, contract, new V1.PrivacyParameters
            {
                Epsilon = s.StepsTaken == 0 ? 0 : PrivacyAccounting.ComputeEpsilon(s.Declared!.SampleRate, s.Declared.Sigma, s.StepsTaken, s.Declared.Delta, AccountantKinds.Parse(s.Declared.Accountant)).Epsilon,
                Delta = s.Declared!.Delta,
                Sigma = s.Declared.Sigma,
                SampleRate = s.Declared.SampleRate,
                Steps = s.StepsTaken,
                Accountant = s.Declared.Accountant,
            }, CancellationToken.None).ConfigureAwait(false);
        }
    }

    private static CleanRoomRunException Classify(Exception e, CancellationToken ct) => e switch
    {
        OperationCanceledException when ct.IsCancellationRequested => new CleanRoomRunException(RunFailure.Cancelled, "the run was cancelled", e),
        DatasetSchemaException => new CleanRoomRunException(RunFailure.SchemaMismatch, e.Message, e),
        SealedPackageException => new CleanRoomRunException(RunFailure.TamperedPackage, e.Message, e),
        RpcException r => new CleanRoomRunException(RunFailure.Internal, $"KeyBroker: {r.StatusCode}: {r.Status.Detail}", e),
        _ => new CleanRoomRunException(RunFailure.Internal, $"{e.GetType().Name}: {e.Message}", e),
    };

    private static void Validate(CleanRoomRunSpec spec)
    {
        static void Require(bool ok, string message)
        {
            if (!ok)
            {
                throw new CleanRoomRunException(RunFailure.InvalidRequest, message);
            }
        }

        Require(!string.IsNullOrWhiteSpace(spec.RunId) && spec.RunId.Length <= 64 && spec.RunId.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'),
            "run_id must be 1-64 letters, digits, '-', '_' or '.'");
        Require(!string.IsNullOrWhiteSpace(spec.Consumer), "consumer is required");
        Require(!string.IsNullOrWhiteSpace(spec.ContractId), "contract_id is required");
        Require(!string.IsNullOrWhiteSpace(spec.OutputKeyId), "output_key_id is required");
        Require(spec.Datasets.Count > 0, "at least one dataset is required");
        foreach (var r in spec.Datasets.Append(spec.Pipeline).Concat(spec.BaseModel is null ? [] : [spec.BaseModel]))
        {
            Require(r.Blob is { Container.Length: > 0, Name.Length: > 0 }, "every package needs a blob (container and name)");
            Require(r.KeyId.Length > 0 && r.Owner.Length > 0 && r.SealedSha256.Length == 64, $"package {r.Blob.Container}/{r.Blob.Name} needs key_id, owner and sealed_sha256");
        }
    }

    private static string Short(string hex) => hex.Length > 16 ? hex[..16] + "…" : hex;

    private static IDisposable Phase(RunState s, V1.RunPhase phase, string message)
    {
        s.Report(phase, message);
        return new PhaseScope(Activities.StartActivity("cleanroom." + phase.ToString().ToLowerInvariant()));
    }

    private sealed class PhaseScope(Activity? activity) : IDisposable
    {
        public void Dispose() => activity?.Dispose();
    }

    /// <summary>A package fetched and verified without its key; opening checks the signature again against the same registered key.</summary>
    private sealed class FetchedPackage(V1.SealedPackageRef reference, byte[] bytes, PackageInfo info, SignerPublicKey signer)
    {
        public V1.SealedPackageRef Ref { get; } = reference;

        public byte[] Bytes { get; } = bytes;

        public PackageInfo Info { get; } = info;

        public SignerPublicKey Signer { get; } = signer;
    }

    private sealed class RunState(CleanRoomRunSpec spec, Action<RunProgressEvent> progress) : IDisposable
    {
        public CleanRoomRunSpec Spec { get; } = spec;

        public RecipientPrivateKey Ephemeral { get; } = RecipientPrivateKey.GenerateEcP256();

        public SigningKey Signing { get; } = SigningKey.Generate();

        public FetchedPackage PipelinePackage { get; set; } = null!;

        public List<FetchedPackage> DatasetPackages { get; } = [];

        public FetchedPackage? BaseModelPackage { get; set; }

        public Dictionary<string, ReleasedKey> Keys { get; } = new(StringComparer.Ordinal);

        public ReleasedKey? OutputKey { get; set; }

        public V1.PrivacyParameters? Declared { get; set; }

        /// <summary>Contracts with an unsettled reservation of this run.</summary>
        public HashSet<string> Reserved { get; } = new(StringComparer.Ordinal);

        public long StepsTaken { get; set; }

        public string DeviceName { get; set; } = "cpu";

        public void Report(V1.RunPhase phase, string message, int epoch = 0, int epochs = 0, long step = 0, long steps = 0, double? loss = null,
            double? dice = null, double? epsilon = null, double? epsilonTarget = null, double? delta = null, double samplesPerSecond = 0) =>
            progress(new RunProgressEvent(phase, epoch, epochs, step, steps, loss, dice, epsilon, epsilonTarget, delta, samplesPerSecond, message));

        public void Dispose()
        {
            Ephemeral.Dispose();
            Signing.Dispose();
            foreach (var key in Keys.Values)
            {
                key.Dispose();
            }

            OutputKey?.Dispose();
            foreach (var p in DatasetPackages.Append(PipelinePackage).Append(BaseModelPackage))
            {
                p?.Signer.Dispose();
            }
        }
    }
}
