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
/// <remarks>
/// With a checkpoint store, every epoch's training state is sealed and stored, and a durable high-water mark of the
/// steps started is written before each epoch's first step (<see cref="RunCheckpoints"/>). A run interrupted anywhere
/// (a killed trainer, or <c>interruption</c>) continues with <see cref="ResumeAsync"/>: it attests again with fresh
/// ephemeral keys, obtains the keys again under the same run id and the same declaration (the KeyBroker's ledger grants
/// a run's reservation once, and refuses other parameters or a settled run), restores the last checkpoint and trains
/// only the rest of the declared steps, with every step that may have run counted: the resumed run never composes
/// more steps than it declared.
/// </remarks>
public sealed class CleanRoomRun(IPackageSource packages, ISignerDirectory signers, IKeySource keys, IOutputSink outputs, CleanRoomRunOptions options, TimeProvider? time = null,
    ICheckpointStore? checkpoints = null)
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
    public Task<CleanRoomRunResult> ExecuteAsync(CleanRoomRunSpec spec, Action<RunProgressEvent>? progress = null, CancellationToken cancellationToken = default) =>
        ExecuteAsync(spec, progress, cancellationToken, CancellationToken.None);

    /// <summary>
    /// Executes <paramref name="spec"/>. <paramref name="cancellationToken"/> cancels the run: it ends
    /// <see cref="RunFailure.Cancelled"/>, its spend is settled at the steps taken and its checkpoints are removed.
    /// <paramref name="interruption"/> stops it as a killed trainer would stop (between steps): nothing is settled or
    /// removed, it ends <see cref="RunFailure.Interrupted"/>, and <see cref="ResumeAsync"/> continues it.
    /// </summary>
    /// <exception cref="CleanRoomRunException">The run failed, was cancelled or interrupted; nothing was released.</exception>
    public Task<CleanRoomRunResult> ExecuteAsync(CleanRoomRunSpec spec, Action<RunProgressEvent>? progress, CancellationToken cancellationToken, CancellationToken interruption) =>
        RunAsync(spec, false, 0, progress, cancellationToken, interruption);

    /// <summary>
    /// Resumes a run whose trainer was killed or interrupted: every phase again (fresh attestation and ephemeral keys,
    /// the keys obtained again under the same run id and declaration, which the KeyBroker grants without charging the
    /// budget again), then training from the last sealed checkpoint (or from the initial weights when there is none)
    /// for the remaining steps only. Every step an earlier attempt may have taken counts: the steps marker's
    /// high-water mark, the checkpoint's step count (plus a whole epoch when the marker is missing), and
    /// <paramref name="recordedSteps"/> (steps the host recorded from the run's progress; unauthenticated, so it can
    /// only raise the count). A checkpoint that fails any check ends the run <see cref="RunFailure.TamperedPackage"/>
    /// with its reservation left in full.
    /// </summary>
    /// <exception cref="CleanRoomRunException">The run failed, was cancelled or interrupted; nothing was released.</exception>
    public Task<CleanRoomRunResult> ResumeAsync(CleanRoomRunSpec spec, long recordedSteps, Action<RunProgressEvent>? progress = null,
        CancellationToken cancellationToken = default, CancellationToken interruption = default) =>
        RunAsync(spec, true, Math.Max(0, recordedSteps), progress, cancellationToken, interruption);

    private async Task<CleanRoomRunResult> RunAsync(CleanRoomRunSpec spec, bool resumed, long recordedSteps, Action<RunProgressEvent>? progress,
        CancellationToken cancellationToken, CancellationToken interruption)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var state = new RunState(spec, progress ?? (_ => { })) { Resumed = resumed, RecordedSteps = recordedSteps, CancelOnly = cancellationToken };
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, interruption);
        var interrupted = false;
        try
        {
            return await ExecuteCoreAsync(state, linked.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (interruption.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            // Like a kill: the reservation stays (the resumed run settles it), the checkpoints and the steps marker stay.
            interrupted = true;
            throw new CleanRoomRunException(RunFailure.Interrupted,
                $"the run was interrupted at step {state.StepsTaken}; it resumes from its last checkpoint, with the steps since counted as spent", e);
        }
        catch (Exception e) when (e is not CleanRoomRunException)
        {
            throw Classify(e, cancellationToken);
        }
        finally
        {
            if (!interrupted)
            {
                await EndAsync(state).ConfigureAwait(false);
            }

            state.Dispose();
        }
    }

    /// <summary>
    /// A run that ended (succeeded, failed or cancelled) settles what it spent, then removes its checkpoints. Neither
    /// happens while an earlier attempt's spend is unknown (a checkpoint could not be read): the reservation then
    /// stays in full and the checkpoints stay, so no later attempt can count fewer steps.
    /// </summary>
    private async Task EndAsync(RunState s)
    {
        if (!s.SpendKnown)
        {
            return;
        }

        if (s.Reserved.Count > 0)
        {
            // A failed run settles what it spent (0 steps before training) so the reservation does not stay in full.
            await TrySettleAsync(s).ConfigureAwait(false);
        }

        if (s.SettledContracts > 0 && s.Reserved.Count == 0 && checkpoints is not null)
        {
            try
            {
                await RunCheckpoints.DeleteAllAsync(checkpoints, OutputContainer(s.Spec), s.Spec.RunId, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Sealed blobs left behind open for nobody but this run's clean room, and the run is settled: a later
                // attempt under its id gets no keys.
                s.Report(V1.RunPhase.Done, $"the run's checkpoints could not be removed: {e.Message}");
            }
        }
    }

    private static string OutputContainer(CleanRoomRunSpec spec) => spec.OutputContainer ?? spec.Consumer.ToLowerInvariant();

    private async Task<CleanRoomRunResult> ExecuteCoreAsync(RunState s, CancellationToken ct)
    {
        var spec = s.Spec;
        Validate(spec);
        // Where training will run is settled before anything is attested, fetched or released.
        s.Device = ResolveDevice();

        // Whether an earlier attempt of this run left a record: then its spend is unknown until the records are read
        // (after the keys), and nothing is settled or removed before.
        if (checkpoints is not null)
        {
            var earlier = await checkpoints.ListAsync(OutputContainer(spec), RunCheckpoints.PrefixOf(spec.RunId), ct).ConfigureAwait(false);
            s.SpendKnown = earlier.Count == 0 && s.RecordedSteps == 0;
        }

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

            if (checkpoints is not null)
            {
                await ReadCheckpointsAsync(s, attestationToken, pipelineSha, ct).ConfigureAwait(false);
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

                    // A recipe is trained on data prepared as it says (as `mriseg train` insists): a shard made otherwise
                    // (another size, channels, normalisation or slice selection) would train and score something else.
                    if (config.Preprocessing?.Mismatch(data) is { } mismatch)
                    {
                        throw new CleanRoomRunException(RunFailure.SchemaMismatch,
                            $"the dataset of {package.Ref.Owner} was not pre-processed as the pipeline's recipe says: {mismatch}");
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
                    // Settled with the declared q and σ (an upper bound of the q used), the steps taken (lost ones included).
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

                // 8. Settle, then upload (a failed upload removes what it put there). From here an interruption (a shutdown)
                // waits for the end: a run settled but not uploaded could not resume (the broker refuses a settled run).
                foreach (var contract in s.Reserved.ToList())
                {
                    await keys.SettleAsync(spec.RunId, contract, spent, s.CancelOnly).ConfigureAwait(false);
                    s.Reserved.Remove(contract);
                    s.SettledContracts++;
                }

                var uploaded = new List<V1.SealedPackageRef>();
                using (Phase(s, V1.RunPhase.Uploading, $"uploading {sealedFiles.Count} sealed outputs"))
                {
                    var container = OutputContainer(spec);
                    var prefix = spec.OutputPrefix ?? $"outputs/{spec.RunId}/";
                    try
                    {
                        foreach (var (name, bytes, info) in sealedFiles)
                        {
                            var blob = await outputs.UploadAsync(container, prefix + name + ".sealed", bytes, s.CancelOnly).ConfigureAwait(false);
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

                s.Report(V1.RunPhase.Done,
                    $"done: {uploaded.Count} sealed outputs, ε {spent.Epsilon:0.###} over {spent.Steps} steps" + (trained.Training.LostSteps > 0 ? $" ({trained.Training.LostSteps} lost to interruptions, counted)" : ""),
                    step: spent.Steps, steps: declaredPlan.PlannedSteps,
                    epsilon: trained.Training.Privacy.Epsilon, epsilonTarget: config.Privacy.Epsilon, delta: spent.Delta);
                return new CleanRoomRunResult(uploaded, card, spent, attestationToken, s.Signing.PublicKey.ExportPem());
            }
        }
        finally
        {
            baseModel?.Dispose();
        }
    }

    /// <summary>
    /// The training device (<see cref="TorchBackendInfo.DeviceFor"/>): <see cref="CleanRoomRunOptions.Device"/> <c>cuda</c>
    /// without a usable CUDA device is an error unless MRISEG_ALLOW_CPU_FALLBACK allows the CPU.
    /// </summary>
    private TorchSharp.torch.Device ResolveDevice()
    {
        TorchBackendInfo info;
        try
        {
            info = TorchRuntime.Initialize();
        }
        catch (TorchUnavailableException e)
        {
            throw new CleanRoomRunException(RunFailure.Internal, "the trainer cannot start libtorch: " + e.Message.Split('\n')[0].Trim(), e);
        }

        return info.DeviceFor(options.Device, TorchRuntimeSettings.FromEnvironment().AllowCpuFallback)
            ?? throw new CleanRoomRunException(RunFailure.Internal,
                $"the trainer is configured for CUDA (Trainer:Device = cuda), but the libtorch from {info.LibTorchSource} has no usable " +
                $"CUDA device; point {TorchRuntimeSettings.LibTorchDirVariable} at a CUDA libtorch, or set " +
                $"{TorchRuntimeSettings.AllowCpuFallbackVariable}=1 to train on the CPU");
    }

    private async Task<LocalTrainingResult> TrainAsync(RunState s, SliceDataset data, TrainingConfig config, TrainingPlan declared, UNet2d? baseModel, CancellationToken ct)
    {
        var device = s.Device!;
        if (options.Threads is { } threads)
        {
            config = config with { Threads = threads };
        }

        var split = PatientSplit.Create(data, config.Split.ValidationFraction, config.Split.TestFraction, config.Seed, config.Split.Stratify);
        var train = data.SelectPatients(split.Train);
        var trainingPatients = train.SlicesByPatient().Count(p => p.Length > 0);
        var (bound, plan) = PrivacyDeclaration.Bind(config, declared, trainingPatients);
        var epochs = (int)Math.Ceiling((double)plan.PlannedSteps / plan.StepsPerEpoch);
        var patientsSha = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(string.Join('\n', train.PatientIds))));
        var resume = ResumeFor(s, plan, patientsSha);
        double? lastLoss = null, lastDice = null;
        var trainingOptions = new TrainingOptions
        {
            Device = device,
            CancellationToken = ct,
            InitialModel = baseModel,
            Resume = resume,
            BeforeSteps = s.Checkpoints is not { } store ? null : reach =>
            {
                // Durable before the chunk's first step: a failure here stops the run rather than take unrecorded steps.
                store.WriteStepsAsync(reach, plan.PlannedSteps, ct).GetAwaiter().GetResult();
            },
            Checkpoint = s.Checkpoints is not { } states ? null : c =>
            {
                // A state that cannot be stored costs only time after a kill (the marker still counts the steps): the run goes on.
                try
                {
                    var name = states.WriteStateAsync(c, patientsSha, ct).GetAwaiter().GetResult();
                    s.Report(V1.RunPhase.Training, $"checkpoint of epoch {c.Epoch} sealed and stored ({c.Steps} steps): {name}",
                        c.Epoch, epochs, c.Steps, plan.PlannedSteps, lastLoss, lastDice, c.Epochs[^1].Epsilon, bound.Privacy.Epsilon, bound.Privacy.Delta);
                }
                catch (Exception e) when (e is not OperationCanceledException)
                {
                    s.Report(V1.RunPhase.Training, $"checkpoint of epoch {c.Epoch} not stored: {e.Message}", c.Epoch, epochs, c.Steps, plan.PlannedSteps);
                }
            },
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
            TrainingResult training;
            try
            {
                training = SegmentationTrainer.Train(train, validation, bound, trainingOptions);
            }
            finally
            {
                // The restored state's tensors pointed into this plaintext; the trainer has copied them.
                if (s.Found?.StatePlaintext is { } restored)
                {
                    CryptographicOperations.ZeroMemory(restored);
                }
            }

            try
            {
                s.Report(V1.RunPhase.Evaluating, $"evaluating on {split.Test.Count} held-out patients", epochs, epochs, training.Steps, plan.PlannedSteps,
                    lastLoss, lastDice, training.Privacy?.Epsilon, bound.Privacy.Epsilon, bound.Privacy.Delta, training.SamplesPerSecond);
                using var activity = Activities.StartActivity("cleanroom.evaluating");
                var test = split.Test.Count > 0 ? SegmentationEvaluator.Evaluate(training.Model, data.SelectPatients(split.Test), bound.Evaluation.ToOptions()) : null;
                return new LocalTrainingResult(training, split, test, DatasetSchema.Of(data));
            }
            catch
            {
                training.Dispose();
                throw;
            }
        }, ct).ConfigureAwait(false);
    }

    /// <summary>
    /// Derives the run's checkpoint key (it needs the output and dataset keys just released) and reads what an earlier
    /// attempt left: from then on the spend of earlier attempts is known and counted.
    /// </summary>
    private async Task ReadCheckpointsAsync(RunState s, string attestationToken, string pipelineSha, CancellationToken ct)
    {
        var spec = s.Spec;
        s.CheckpointKey = RunCheckpoints.DeriveKey(spec.RunId, spec.Consumer, pipelineSha, s.OutputKey!.Key, spec.Datasets.Select(d => s.Keys[d.KeyId].Key));
        s.Checkpoints = new RunCheckpoints(checkpoints!, OutputContainer(spec), spec.RunId, s.CheckpointKey, s.Signing, keys.PartyId, new Dictionary<string, string>
        {
            ["mriseg.consumer"] = spec.Consumer,
            ["mriseg.attestation_token"] = attestationToken,
            ["mriseg.signer_public_key"] = s.Signing.PublicKey.ExportPem(),
            ["mriseg.code_measurement"] = options.CodeMeasurement,
            ["mriseg.pipeline_sha256"] = pipelineSha,
        }, _time);
        using (Phase(s, V1.RunPhase.LoadingPackages, $"reading the run's sealed checkpoints under {s.Checkpoints.Container}/{s.Checkpoints.Prefix}"))
        {
            var found = await s.Checkpoints.ReadAsync(ct).ConfigureAwait(false);
            s.Found = found;

            // Every step that may have run counts: the marker written before each chunk of steps; the checkpoint's own
            // count, plus a whole epoch when the marker is missing (it is written before any step, so a state without
            // one means it was removed); and what the host recorded. Never more than declared (the marker never says more).
            var earlier = Math.Max(found.StepsMarked ?? 0, found.State?.Steps ?? 0);
            if (found.StepsMarked is null && found.State is { } state)
            {
                earlier = Math.Max(earlier, state.Steps + state.Plan.StepsPerEpoch);
            }

            earlier = Math.Min(Math.Max(earlier, s.RecordedSteps), s.Declared!.Steps);
            s.StepsTaken = earlier;
            s.SpendKnown = true;
            if (earlier > 0 || found.State is not null)
            {
                var who = s.Resumed ? "resuming" : "an earlier attempt of this run left its records: resuming";
                s.Report(V1.RunPhase.LoadingPackages, found.State is { } st
                    ? $"{who} from the checkpoint of epoch {st.Epoch} ({st.Steps} steps); {earlier} steps counted as spent, {earlier - st.Steps} of them lost"
                    : $"{who} from the initial weights; {earlier} steps counted as spent (no checkpoint was stored)", step: earlier, steps: s.Declared.Steps);
            }
        }
    }

    /// <summary>How training resumes, or null for a first attempt; checks the checkpoint against this attempt's plan and patients.</summary>
    private static TrainingResume? ResumeFor(RunState s, TrainingPlan plan, string patientsSha)
    {
        var state = s.Found?.State;
        if (state is not null && (state.Plan != plan || s.Found!.TrainingPatientsSha256 != patientsSha))
        {
            throw new CleanRoomRunException(RunFailure.TamperedPackage,
                $"the checkpoint {s.Found!.StateName} was made for another plan or other training patients (N {state.Plan.TrainingPatients}, q {state.Plan.SampleRate:G6}, σ {state.Plan.NoiseMultiplier:G6}, {state.Plan.PlannedSteps} steps); this attempt plans N {plan.TrainingPatients}, q {plan.SampleRate:G6}, σ {plan.NoiseMultiplier:G6}, {plan.PlannedSteps} steps: the run does not resume from it");
        }

        var spent = Math.Min(s.StepsTaken, plan.PlannedSteps);
        return state is null && spent == 0 ? null : new TrainingResume { From = state, StepsSpent = Math.Max(spent, state?.Steps ?? 0) };
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
            Privacy = new SpentPrivacy(p.Epsilon, p.Delta, p.NoiseMultiplier, p.SampleRate, p.Steps, p.Accountant, t.LostSteps),
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
                s.SettledContracts++;
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

        /// <summary>Steps counted as spent so far: earlier attempts' (lost ones included) and this attempt's.</summary>
        public long StepsTaken { get; set; }

        /// <summary>Where the run trains, settled before anything is fetched.</summary>
        public TorchSharp.torch.Device? Device { get; set; }

        public string DeviceName => Device?.ToString() ?? "cpu";

        public bool Resumed { get; init; }

        /// <summary>The caller's cancellation without the interruption (settling and uploading are not interrupted).</summary>
        public CancellationToken CancelOnly { get; init; }

        /// <summary>Steps the host recorded for the run (a hint that can only raise the count).</summary>
        public long RecordedSteps { get; init; }

        /// <summary>
        /// False while an earlier attempt may have spent steps this attempt has not read yet: nothing is settled or
        /// removed then.
        /// </summary>
        public bool SpendKnown { get; set; } = true;

        /// <summary>Contracts this attempt settled.</summary>
        public int SettledContracts { get; set; }

        public DataKey? CheckpointKey { get; set; }

        public RunCheckpoints? Checkpoints { get; set; }

        public RunCheckpoints.Found? Found { get; set; }

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
            CheckpointKey?.Dispose();
            if (Found?.StatePlaintext is { } restored)
            {
                CryptographicOperations.ZeroMemory(restored);
            }

            foreach (var p in DatasetPackages.Append(PipelinePackage).Append(BaseModelPackage))
            {
                p?.Signer.Dispose();
            }
        }
    }
}
