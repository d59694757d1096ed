using System.Diagnostics;
using MriSeg.Imaging.Datasets;
using MriSeg.Imaging.Formats;
using MriSeg.Learning.Formats;
using MriSeg.Learning.Metrics;
using MriSeg.Learning.Model;
using MriSeg.Learning.Noise;
using MriSeg.Learning.PerSample;
using MriSeg.Privacy;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MriSeg.Learning.Training;

/// <summary>
/// Trains a <see cref="UNet2d"/> on a slice dataset: patient-level DP-SGD (the default) or ordinary minibatch
/// training.
/// </summary>
/// <remarks>
/// <para>
/// DP step: every training patient joins the batch independently with probability q = batch / N (Poisson sampling,
/// <see cref="PoissonSampler"/>); each chosen patient contributes at most <see cref="TrainingConfig.MaxSlicesPerPatient"/>
/// of its slices (a random subset), each slice in <see cref="AugmentationConfig.Multiplicity"/> independently augmented
/// copies; the folded pass (<see cref="DpGradientEngine"/>, one group per patient) gives each patient's gradient of
/// its combined loss, which is clipped to C as a whole; the clipped sum plus N(0, σ²C²) noise
/// (<see cref="GaussianNoise"/>) divided by q·N becomes the gradient of the optimiser (DP-SGD with momentum, DP-Adam).
/// The accountant composes one Poisson-subsampled Gaussian step per step; σ is calibrated so that the planned
/// ⌈epochs / q⌉ steps end at the target ε, and the run never takes a step that would exceed it.
/// </para>
/// <para>
/// Everything but the DP noise and the Poisson sampling is deterministic given <see cref="TrainingConfig.Seed"/>
/// (split, initial weights, slice choice, augmentation, non-private shuffling; and libtorch's CPU kernels at a fixed
/// thread count). The noise and the sampling come from the OS CSPRNG: the accountant's subsampling amplification
/// assumes nobody can tell which patients a step used. The seeded streams restart at every epoch from (seed, epoch),
/// so a run resumed from an epoch's checkpoint (<see cref="TrainingOptions.Resume"/>) draws what it would have drawn.
/// </para>
/// <para>
/// Checkpoints and resume: <see cref="TrainingOptions.Checkpoint"/> receives the state at every epoch end,
/// <see cref="TrainingOptions.BeforeSteps"/> the step count each epoch may reach before its first step, and
/// <see cref="TrainingOptions.Resume"/> continues from a checkpoint with every step an interrupted attempt may have
/// taken already composed: the run never composes more than its planned steps, whatever was lost.
/// </para>
/// <para>
/// Model selection: with validation patients, the weights of the epoch with the best validation Dice are kept
/// (EMA weights when EMA is on). Under DP this uses validation patients only (in the clean room the TDC's held-out
/// share); they are not protected by the training run's (ε, δ), which covers the training patients.
/// </para>
/// </remarks>
public static class SegmentationTrainer
{
    /// <summary>
    /// Fixes q, σ and the number of steps for <paramref name="trainingPatients"/> patients: the calibration and
    /// budget checks a run does before its first step.
    /// </summary>
    /// <exception cref="ArgumentException">The budget cannot be met (δ not below 1/N, no step fits, ...).</exception>
    public static TrainingPlan Plan(TrainingConfig config, int trainingPatients)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate();
        if (trainingPatients < 1)
        {
            throw new ArgumentException("there are no training patients.");
        }

        var q = Math.Min(1.0, (double)config.BatchSize / trainingPatients);
        var p = config.Privacy;
        if (p.Mode == PrivacyMode.NonPrivate)
        {
            var perEpoch = (long)Math.Ceiling((double)trainingPatients / config.BatchSize);
            var steps = Math.Max(1, (long)Math.Ceiling(config.Epochs * perEpoch));
            return new TrainingPlan(PrivacyMode.NonPrivate, trainingPatients, q, steps, perEpoch, 0, 0, config.AccountantKind, null, null, null);
        }

        if (p.Delta >= 1.0 / trainingPatients)
        {
            throw new ArgumentException(
                $"delta {p.Delta:G3} is not below 1/N = {1.0 / trainingPatients:G3} for {trainingPatients} training patients; a mechanism that releases one patient's data whole would meet it. Use a smaller delta.");
        }

        var kind = config.AccountantKind;
        var planned = Math.Max(1, (long)Math.Ceiling(config.Epochs / q));
        var sigma = p.NoiseMultiplier ?? PrivacyAccounting.CalibrateNoise(p.Epsilon, q, planned, p.Delta, kind).Sigma;
        var fitting = PrivacyBudget.MaxSteps(kind, q, sigma, p.Delta, p.Epsilon, limit: planned);
        if (fitting < 1)
        {
            throw new ArgumentException(
                $"not one step at q = {q:G4}, sigma = {sigma:G4} fits epsilon = {p.Epsilon:G4} at delta = {p.Delta:G3}; raise noise_multiplier or epsilon.");
        }

        var epsilon = PrivacyAccounting.ComputeEpsilon(q, sigma, fitting, p.Delta, kind).Epsilon;
        var stepsPerEpoch = Math.Max(1, (long)Math.Round(1 / q));
        return new TrainingPlan(PrivacyMode.Dp, trainingPatients, q, fitting, stepsPerEpoch, sigma, p.ClipNorm, kind, p.Epsilon, p.Delta, epsilon);
    }

    /// <summary>
    /// Trains on <paramref name="train"/>, validating on <paramref name="validation"/> (when given and not empty).
    /// Call <see cref="Torch.TorchRuntime.Initialize"/> first.
    /// </summary>
    /// <param name="train">The training patients' slices.</param>
    /// <param name="validation">Validation patients (model selection, early stopping); may be null.</param>
    /// <param name="config">The recipe.</param>
    /// <param name="options">Device, progress, cancellation, initial weights.</param>
    public static TrainingResult Train(SliceDataset train, SliceDataset? validation, TrainingConfig config, TrainingOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(config);
        options ??= new TrainingOptions();
        var model = ResolveModel(config, train);
        config = config with { Model = model };
        config.Validate();
        if (validation is not null && (validation.Channels != train.Channels || validation.LabelChannels != train.LabelChannels))
        {
            throw new ArgumentException($"validation data is {validation.Describe()}, training data {train.Describe()}.");
        }

        var previousThreads = get_num_threads();
        if (config.Threads is { } threads)
        {
            set_num_threads(threads);
        }

        try
        {
            using var run = new Run(train, validation is { Count: > 0 } ? validation : null, config, options);
            return run.Execute();
        }
        finally
        {
            set_num_threads(previousThreads);
        }
    }

    /// <summary>The run's model config: the configured one (checked against the data) or the reference U-Net fitted to it.</summary>
    public static UNetConfig ResolveModel(TrainingConfig config, SliceDataset data)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(data);
        var model = config.Model ?? UNetConfig.Reference with { InChannels = data.Channels, OutChannels = data.LabelChannels };
        if (model.InChannels != data.Channels || model.OutChannels != data.LabelChannels)
        {
            throw new ArgumentException(
                $"the model takes {model.InChannels} channels and predicts {model.OutChannels}; the data has {data.Channels} ({string.Join(',', data.Modalities)}) and {data.LabelChannels} label channels.");
        }

        if (data.Height % model.SizeMultiple != 0 || data.Width % model.SizeMultiple != 0)
        {
            throw new ArgumentException($"the data is {data.Height}x{data.Width}; a U-Net of depth {model.Depth} needs sides that are multiples of {model.SizeMultiple}.");
        }

        return model;
    }

    /// <summary>The per-slice loss of a config.</summary>
    public static PerSampleLoss Loss(TrainingConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return config.Loss switch
        {
            LossKind.BceDice => SegmentationLosses.BceDice(),
            LossKind.Dice => SegmentationLosses.SoftDice(),
            LossKind.DiceL1 => SegmentationLosses.DiceL1(),
            LossKind.Bce => SegmentationLosses.BinaryCrossEntropy,
            LossKind.BceTversky => SegmentationLosses.BceTversky(config.TverskyBeta),
            LossKind.BceLovasz => SegmentationLosses.BceLovasz,
            _ => throw new ArgumentOutOfRangeException(nameof(config), config.Loss, "unknown loss"),
        };
    }

    /// <summary>
    /// The loss for K augmented copies per slice: a patient's gradient must average its copies, not add them. A mean
    /// reduction already averages over all of the patient's (copied) slices; a sum reduction divides each copy's loss by K.
    /// </summary>
    internal static PerSampleLoss WithMultiplicity(PerSampleLoss loss, GroupReduction reduction, int multiplicity) =>
        reduction == GroupReduction.Sum && multiplicity > 1 ? (logits, targets) => loss(logits, targets) / multiplicity : loss;

    /// <summary>The learning rate at step <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>.</summary>
    public static double LearningRate(TrainingConfig config, long step, long totalSteps)
    {
        ArgumentNullException.ThrowIfNull(config);
        var s = config.Schedule;
        var baseRate = config.Optimizer.LearningRate;
        if (step < s.WarmupSteps)
        {
            return baseRate * (step + 1) / s.WarmupSteps;
        }

        if (s.Kind == ScheduleKind.Constant)
        {
            return baseRate;
        }

        var span = Math.Max(1, totalSteps - s.WarmupSteps - 1);
        var progress = Math.Clamp((double)(step - s.WarmupSteps) / span, 0, 1);
        return baseRate * (s.FinalFraction + ((1 - s.FinalFraction) * 0.5 * (1 + Math.Cos(Math.PI * progress))));
    }

    /// <summary>One run's state.</summary>
    private sealed class Run : IDisposable
    {
        private readonly SliceDataset _train;
        private readonly SliceDataset? _validation;
        private readonly TrainingConfig _config;
        private readonly TrainingOptions _options;
        private readonly Device _device;
        private readonly int[][] _slices;
        private readonly int[] _patients;
        private readonly TrainingPlan _plan;
        private readonly UNet2d _model;
        private readonly UNet2d _evalModel;
        private readonly optim.Optimizer _optimizer;
        private readonly PerSampleLoss _loss;
        private readonly WeightAverage? _ema;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly List<EpochSummary> _epochs = [];
        private GaussianNoise? _noise;
        private DpGradientEngine? _engine;
        private PoissonSampler? _sampler;
        private PrivacyAccountantBase? _accountant;
        private Tensor[]? _best;
        private bool _evalModelTaken;
        private Random _sliceRandom = null!;
        private SliceAugmenter _augmenter = null!;
        private double _secondsBefore;

        /// <summary>
        /// ε after each of up to 32 evenly spaced step counts (the last is the plan's), for the per-step reports of the
        /// PRV accountant (about 40 ms an evaluation, too slow for every step): a step reports ε at the next grid
        /// point, an upper bound since ε grows with the steps. Epoch ends report the accountant's own value.
        /// </summary>
        private (long Steps, double Epsilon)[] EpsilonBounds()
        {
            var total = _plan.PlannedSteps;
            var points = (int)Math.Min(32, total);
            return [.. Enumerable.Range(1, points)
                .Select(i => (long)Math.Ceiling((double)i * total / points))
                .Distinct()
                .Select(t => (t, PrivacyAccounting.ComputeEpsilon(_plan.SampleRate, _plan.NoiseMultiplier, t, _plan.Delta!.Value, _plan.Accountant).Epsilon))];
        }

        public Run(SliceDataset train, SliceDataset? validation, TrainingConfig config, TrainingOptions options)
        {
            _train = train;
            _validation = validation;
            _config = config;
            _options = options;
            _device = options.Device ?? CPU;
            var byPatient = train.SlicesByPatient();
            _patients = [.. Enumerable.Range(0, byPatient.Length).Where(p => byPatient[p].Length > 0)];
            _slices = [.. _patients.Select(p => byPatient[p])];
            _plan = Plan(config, _patients.Length);
            var seed = config.Seed;
            _model = CreateModel(config.Model!, seed, options.InitialModel);
            try
            {
                // Frozen parameters (config.Trainable): no gradient, no noise, no optimiser state or update, no EMA.
                _model.SetTrainable(config.Trainable);
            }
            catch (ArgumentException e)
            {
                _model.Dispose();
                throw new ArgumentException("invalid training configuration: " + e.Message, e);
            }

            _evalModel = new UNet2d(config.Model!, ScalarType.Float32, _device);
            _optimizer = CreateOptimizer(_model, config.Optimizer);
            _loss = WithMultiplicity(Loss(config), config.Reduction, config.Augmentation.Multiplicity);
            _ema = config.EmaDecay > 0 ? new WeightAverage(_model, config.EmaDecay) : null;
        }

        public TrainingResult Execute()
        {
            var dp = _plan.Mode == PrivacyMode.Dp;
            var resume = _options.Resume;
            var from = resume?.From;
            CheckResume(resume);

            // Every step an earlier attempt may have taken counts (composed below before any new step); of those, the
            // ones after its last checkpoint are lost: spent, but their updates are not in the restored weights.
            long step = resume?.StepsSpent ?? 0;
            var lost = resume is null ? 0 : (from?.LostSteps ?? 0) + (step - (from?.Steps ?? 0));
            var secret = _options.InsecureDeterministicPrivacySeed;
            if (dp)
            {
                // A resumed insecure run must not replay the noise of its first attempt: its stream starts from the step.
                _noise = secret is { } s1 ? GaussianNoise.CreateInsecureSeeded(step == 0 ? s1 : s1 + (0x9E3779B97F4A7C15UL * (ulong)step)) : GaussianNoise.CreateSecure();
                _sampler = secret is null ? PoissonSampler.CreateSecure(_plan.SampleRate) : null;
                _accountant = _plan.Accountant == AccountantKind.Prv ? new PrvAccountant() : new RdpAccountant();
                if (step > 0)
                {
                    _accountant.Compose(_plan.SampleRate, _plan.NoiseMultiplier, step);
                }

                var settings = new DpSgdSettings(_plan.ClipNorm, _plan.NoiseMultiplier, _plan.SampleRate * _plan.TrainingPatients, _config.Reduction,
                    _config.MaxSlicesPerPatient * _config.Augmentation.Multiplicity);
                _engine = new DpGradientEngine(_model, _loss, settings, _noise);
            }

            long slicesTotal = from?.SlicesProcessed ?? 0, patientsTotal = from?.PatientsProcessed ?? 0;
            double stepSeconds = from?.StepSeconds ?? 0;
            _secondsBefore = from?.TrainSeconds ?? 0;
            int? bestEpoch = from?.BestEpoch;
            double? bestDice = from?.BestValidationDice;
            var sinceBest = from?.SinceBest ?? 0;
            var stopReason = from?.StopReason ?? "completed";
            double? epsilon = dp && step > 0 ? _accountant!.GetEpsilon(_plan.Delta!.Value) : null;
            var bounds = dp ? EpsilonBounds() : [];
            var epoch = from?.Epoch ?? 0;
            if (from is not null)
            {
                Restore(from);
            }

            var permutation = Array.Empty<int>();
            while (from?.StopReason is null && step < _plan.PlannedSteps)
            {
                epoch++;
                _options.CancellationToken.ThrowIfCancellationRequested();
                SeedEpoch(epoch, secret);
                _options.BeforeSteps?.Invoke(Math.Min(_plan.PlannedSteps, step + _plan.StepsPerEpoch));
                double epochLoss = 0;
                int epochSteps = 0, epochPatients = 0, epochSlices = 0;
                if (!dp)
                {
                    permutation = [.. Enumerable.Range(0, _patients.Length)];
                    _sliceRandom.Shuffle(permutation);
                }

                for (var inEpoch = 0L; inEpoch < _plan.StepsPerEpoch && step < _plan.PlannedSteps; inEpoch++)
                {
                    _options.CancellationToken.ThrowIfCancellationRequested();
                    var batch = dp
                        ? _sampler!.Sample(_patients.Length)
                        : permutation.Skip((int)(inEpoch * _config.BatchSize)).Take(_config.BatchSize).ToArray();
                    var lr = LearningRate(_config, step, _plan.PlannedSteps);
                    foreach (var group in _optimizer.ParamGroups)
                    {
                        group.LearningRate = lr;
                    }

                    var watch = Stopwatch.StartNew();
                    var (loss, slices) = dp ? DpStepAndUpdate(batch) : PlainStepAndUpdate(batch);
                    _ema?.Update(_model);
                    stepSeconds += watch.Elapsed.TotalSeconds;
                    step++;
                    if (dp)
                    {
                        _accountant!.Step(_plan.SampleRate, _plan.NoiseMultiplier);
                        epsilon = _plan.Accountant == AccountantKind.Rdp
                            ? _accountant.GetEpsilon(_plan.Delta!.Value)
                            : bounds.First(b => b.Steps >= step).Epsilon;
                    }

                    slicesTotal += slices;
                    patientsTotal += batch.Length;
                    epochLoss += loss;
                    epochSteps++;
                    epochPatients += batch.Length;
                    epochSlices += slices;
                    _options.Progress?.Invoke(new TrainingProgress(
                        TrainingEventKind.Step, epoch, step, _plan.PlannedSteps, loss, null, epsilon,
                        stepSeconds > 0 ? slicesTotal / stepSeconds : 0, lr, batch.Length, slices, _clock.Elapsed.TotalSeconds));
                }

                if (dp)
                {
                    epsilon = _accountant!.GetEpsilon(_plan.Delta!.Value);
                    if (epsilon > _plan.TargetEpsilon!.Value)
                    {
                        throw new InvalidOperationException($"the accountant reports epsilon {epsilon:G6} above the budget {_plan.TargetEpsilon:G6} after {step} steps; training stopped.");
                    }
                }

                double? validationDice = null, validationIoU = null;
                var last = step >= _plan.PlannedSteps;
                if (_validation is not null && (epoch % _config.Validation.EveryEpochs == 0 || last))
                {
                    LoadEvaluationWeights();
                    var summary = SegmentationEvaluator.Evaluate(_evalModel, _validation, new EvaluationOptions { ComputeHd95 = _config.Validation.ComputeHd95 }).Summary;
                    (validationDice, validationIoU) = (summary.Dice, summary.IoU);
                    if (bestDice is null || summary.Dice > bestDice)
                    {
                        (bestDice, bestEpoch, sinceBest) = (summary.Dice, epoch, 0);
                        if (_config.Validation.KeepBest)
                        {
                            KeepBest();
                        }
                    }
                    else
                    {
                        sinceBest++;
                    }
                }

                var meanLoss = epochSteps > 0 ? epochLoss / epochSteps : double.NaN;
                _epochs.Add(new EpochSummary(epoch, step, meanLoss, validationDice, validationIoU, epsilon, Seconds));
                _options.Progress?.Invoke(new TrainingProgress(
                    TrainingEventKind.Epoch, epoch, step, _plan.PlannedSteps, meanLoss, validationDice, epsilon,
                    stepSeconds > 0 ? slicesTotal / stepSeconds : 0, LearningRate(_config, Math.Max(0, step - 1), _plan.PlannedSteps),
                    epochPatients, epochSlices, Seconds));
                var stopping = _config.Validation.Patience > 0 && sinceBest >= _config.Validation.Patience && !last;
                if (stopping)
                {
                    stopReason = "early stopping";
                }

                if (_options.Checkpoint is { } checkpoint)
                {
                    checkpoint(Snapshot(epoch, step, lost, bestEpoch, bestDice, sinceBest, stopping ? stopReason : null, slicesTotal, patientsTotal, stepSeconds));
                }

                if (stopping)
                {
                    break;
                }
            }

            if (dp && stopReason == "completed" && _plan.PlannedSteps < (long)Math.Ceiling(_config.Epochs / _plan.SampleRate))
            {
                stopReason = "privacy budget";
            }

            // The model to keep: the best validation weights, or the last (EMA) weights.
            if (_best is not null)
            {
                using var _ = no_grad();
                foreach (var (to, kept) in _evalModel.OrderedParameters().Zip(_best))
                {
                    to.copy_(kept);
                }
            }
            else
            {
                LoadEvaluationWeights();
                (bestEpoch, bestDice) = (null, null);
            }

            PrivacySpent? privacy = null;
            if (dp)
            {
                var spent = _accountant!.GetEpsilon(_plan.Delta!.Value);
                privacy = new PrivacySpent(spent, _plan.Delta.Value, _plan.TargetEpsilon!.Value, _plan.NoiseMultiplier, _plan.ClipNorm, _plan.SampleRate,
                    _accountant.TotalSteps, _plan.Accountant.ToName(), _plan.TrainingPatients, _noise!.Description,
                    _noise.IsCryptographicallySecure && secret is null);
            }

            // Deep-supervision heads only train: the result is the model that predicts, in the reference layout.
            UNet2d model;
            if (_evalModel.Config.DeepSupervision > 0)
            {
                model = _evalModel.WithoutDeepSupervision();
            }
            else
            {
                model = _evalModel;
                _evalModelTaken = true;
            }

            return new TrainingResult(model, _config, _plan, [.. _epochs], privacy, step, bestEpoch, bestDice, stopReason,
                Seconds, stepSeconds, slicesTotal, patientsTotal, lost);
        }

        /// <summary>Wall seconds of training, earlier attempts included.</summary>
        private double Seconds => _secondsBefore + _clock.Elapsed.TotalSeconds;

        /// <summary>The seeded streams of an epoch: slice choice, augmentation and (tests only) the insecure Poisson sampler.</summary>
        private void SeedEpoch(int epoch, ulong? insecureSecret)
        {
            var seed = _config.Seed;
            _sliceRandom = new Random(DeriveSeed(seed, 1, epoch));
            _augmenter = new SliceAugmenter(_config.Augmentation, DeriveSeed(seed, 2, epoch));
            if (_plan.Mode == PrivacyMode.Dp && insecureSecret is { } secret)
            {
                _sampler = PoissonSampler.CreateInsecureSeeded(_plan.SampleRate, DeriveSeed(secret, 3, epoch));
            }
        }

        private void CheckResume(TrainingResume? resume)
        {
            if (resume is null)
            {
                return;
            }

            if (resume.StepsSpent < (resume.From?.Steps ?? 0) || resume.StepsSpent < 0)
            {
                throw new ArgumentException($"the resume counts {resume.StepsSpent} steps spent, fewer than the {resume.From?.Steps ?? 0} of its checkpoint.");
            }

            if (resume.StepsSpent > _plan.PlannedSteps)
            {
                throw new ArgumentException($"earlier attempts may have taken {resume.StepsSpent} steps, more than the {_plan.PlannedSteps} planned: the run cannot resume within its budget.");
            }

            if (resume.From is { } from)
            {
                if (from.Plan != _plan)
                {
                    throw new ArgumentException($"the checkpoint was made for another plan ({Describe(from.Plan)}); this run plans {Describe(_plan)}.");
                }

                if (from.Model != _config.Model)
                {
                    throw new ArgumentException("the checkpoint's model architecture differs from the run's model config.");
                }

                if ((from.Ema is null) != (_ema is null))
                {
                    throw new ArgumentException($"the checkpoint was made {(from.Ema is null ? "without" : "with")} EMA; the run's config says otherwise.");
                }

                if (from.OptimizerKind != OptimizerName(_config.Optimizer.Kind))
                {
                    throw new ArgumentException($"the checkpoint holds {from.OptimizerKind} state; the run's optimiser is {OptimizerName(_config.Optimizer.Kind)}.");
                }
            }

            static string Describe(TrainingPlan p) => FormattableString.Invariant($"N {p.TrainingPatients}, q {p.SampleRate:G6}, σ {p.NoiseMultiplier:G6}, {p.PlannedSteps} steps");
        }

        /// <summary>The run's state at the end of epoch <paramref name="epoch"/>, copied to host memory.</summary>
        private TrainingCheckpoint Snapshot(int epoch, long steps, long lost, int? bestEpoch, double? bestDice, int sinceBest, string? stopReason,
            long slices, long patients, double stepSeconds)
        {
            var names = _model.Layout.ParameterNames;
            List<SafeTensor> Named(IEnumerable<Tensor> tensors) => [.. names.Zip(tensors, (n, t) => TorchSafeTensors.FromTensor(n, t))];
            var optimizerTensors = new List<SafeTensor>();
            var optimizerSteps = new List<long>();
            var states = ((OptimizerHelper)_optimizer).state_dict().State;
            for (var i = 0; i < states.Count; i++)
            {
                switch (states[i])
                {
                    case Adam.State a:
                        optimizerSteps.Add(a.step);
                        AddMoments(i, a.exp_avg, a.exp_avg_sq, a.max_exp_avg_sq);
                        break;
                    case AdamW.State a:
                        optimizerSteps.Add(a.step);
                        AddMoments(i, a.exp_avg, a.exp_avg_sq, a.max_exp_avg_sq);
                        break;
                    case SGD.State g when g.momentum_buffer is not null:
                        optimizerTensors.Add(TorchSafeTensors.FromTensor(FormattableString.Invariant($"{i}/momentum_buffer"), g.momentum_buffer));
                        break;
                    case SGD.State:
                        break;
                    default:
                        throw new NotSupportedException($"optimiser state {states[i].GetType().Name} cannot be checkpointed.");
                }
            }

            return new TrainingCheckpoint
            {
                Epoch = epoch,
                Steps = steps,
                LostSteps = lost,
                Plan = _plan,
                Model = _config.Model!,
                Epochs = [.. _epochs],
                BestEpoch = bestEpoch,
                BestValidationDice = bestDice,
                SinceBest = sinceBest,
                StopReason = stopReason,
                SlicesProcessed = slices,
                PatientsProcessed = patients,
                StepSeconds = stepSeconds,
                TrainSeconds = Seconds,
                EmaUpdates = _ema?.Updates ?? 0,
                OptimizerKind = OptimizerName(_config.Optimizer.Kind),
                OptimizerSteps = optimizerSteps,
                Weights = Named(_model.OrderedParameters()),
                Ema = _ema is null ? null : Named(_ema.Averages),
                Best = _best is null ? null : Named(_best),
                OptimizerTensors = optimizerTensors,
            };

            void AddMoments(int i, Tensor mean, Tensor square, Tensor? max)
            {
                optimizerTensors.Add(TorchSafeTensors.FromTensor(FormattableString.Invariant($"{i}/exp_avg"), mean));
                optimizerTensors.Add(TorchSafeTensors.FromTensor(FormattableString.Invariant($"{i}/exp_avg_sq"), square));
                if (max is not null)
                {
                    optimizerTensors.Add(TorchSafeTensors.FromTensor(FormattableString.Invariant($"{i}/max_exp_avg_sq"), max));
                }
            }
        }

        /// <summary>Puts a checkpoint's state into this run (its plan, model and optimiser were checked by <see cref="CheckResume"/>).</summary>
        private void Restore(TrainingCheckpoint from)
        {
            using var _ = no_grad();
            CopyInto(_model.OrderedParameters(), from.Weights, "weights");
            var parameters = _model.TrainableParameters();
            if (_ema is not null)
            {
                CopyInto(_ema.Averages, from.Ema!, "EMA averages");
                _ema.Updates = from.EmaUpdates;
            }

            if (from.Best is { } best)
            {
                var shapes = _evalModel.OrderedParameters();
                _best = [.. best.Zip(shapes, (t, p) => t.Shape.SequenceEqual(p.shape)
                    ? TorchSafeTensors.ToTensor(t, _device).DetachFromDisposeScope()
                    : throw new ArgumentException($"the checkpoint's best weights {t.Name} have another shape than the model's."))];
            }

            var tensors = from.OptimizerTensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
            var states = ((OptimizerHelper)_optimizer).state_dict().State;
            if (states.Count != parameters.Count || (from.OptimizerSteps.Count > 0 && from.OptimizerSteps.Count != states.Count))
            {
                throw new ArgumentException($"the checkpoint's optimiser state covers {from.OptimizerSteps.Count} parameters; the model has {parameters.Count} trainable.");
            }

            Tensor Get(int i, string field) => tensors.TryGetValue(FormattableString.Invariant($"{i}/{field}"), out var t)
                ? TorchSafeTensors.ToTensor(t, _device)
                : throw new ArgumentException($"the checkpoint lacks the optimiser's {field} of parameter {i}.");
            for (var i = 0; i < states.Count; i++)
            {
                using var scope = NewDisposeScope();
                switch (states[i])
                {
                    case Adam.State a:
                        a.step = from.OptimizerSteps[i];
                        a.exp_avg.copy_(Get(i, "exp_avg"));
                        a.exp_avg_sq.copy_(Get(i, "exp_avg_sq"));
                        a.max_exp_avg_sq?.copy_(Get(i, "max_exp_avg_sq"));
                        break;
                    case AdamW.State a:
                        a.step = from.OptimizerSteps[i];
                        a.exp_avg.copy_(Get(i, "exp_avg"));
                        a.exp_avg_sq.copy_(Get(i, "exp_avg_sq"));
                        a.max_exp_avg_sq?.copy_(Get(i, "max_exp_avg_sq"));
                        break;
                    case SGD.State g when tensors.ContainsKey(FormattableString.Invariant($"{i}/momentum_buffer")):
                        g.momentum_buffer ??= zeros_like(parameters[i]).DetachFromDisposeScope();
                        g.momentum_buffer.copy_(Get(i, "momentum_buffer"));
                        break;
                    case SGD.State:
                        break;
                    default:
                        throw new NotSupportedException($"optimiser state {states[i].GetType().Name} cannot be restored.");
                }
            }

            _epochs.AddRange(from.Epochs);
        }

        private static void CopyInto(IReadOnlyList<Tensor> targets, IReadOnlyList<SafeTensor> sources, string what)
        {
            if (targets.Count != sources.Count)
            {
                throw new ArgumentException($"the checkpoint holds {sources.Count} {what} tensors; the model has {targets.Count}.");
            }

            foreach (var (to, from) in targets.Zip(sources))
            {
                if (!from.Shape.SequenceEqual(to.shape))
                {
                    throw new ArgumentException($"the checkpoint's {what} tensor {from.Name} is [{string.Join(", ", from.Shape)}]; the model needs [{string.Join(", ", to.shape)}].");
                }

                using var value = TorchSafeTensors.ToTensor(from);
                to.copy_(value);
            }
        }

        private static string OptimizerName(OptimizerKind kind) => kind.ToString().ToLowerInvariant();

        /// <summary>
        /// One DP step over the sampled patients, optimiser update included: nearly equal chunks of whole patients through the engine, each padded
        /// with weight-0 groups to a multiple of <see cref="PassBucket"/> patients, so the folded pass sees a few fixed
        /// group counts whatever the Poisson batch size (a new count costs libtorch new convolution primitives, and the
        /// varying sizes fragmented the CPU heap: +3.5 MB per step without padding, flat with it).
        /// </summary>
        private (double Loss, int Slices) DpStepAndUpdate(int[] batch)
        {
            var chunks = PassSizes(batch.Length, _config.MaxPatientsPerPass);
            var starts = new int[chunks.Length];
            for (var c = 1; c < chunks.Length; c++)
            {
                starts[c] = starts[c - 1] + chunks[c - 1];
            }

            using var pending = _engine!.ComputeGradientsPending(chunks.Length, c =>
            {
                var patients = batch.AsSpan(starts[c], chunks[c]).ToArray();
                var padding = RoundUp(chunks[c], PassBucket) - chunks[c];
                return Materialise(SliceChoice(patients), padding);
            });
            // The update is queued before the stats are read, so an accelerator is waited for once, at the end.
            _optimizer.step();
            var stats = pending.Resolve();
            return (stats.Groups > 0 ? stats.LossSum / stats.Groups : 0, stats.Slices);
        }

        /// <summary>One ordinary step, optimiser update included: mean slice loss over the batch, accumulated over passes.</summary>
        private (double Loss, int Slices) PlainStepAndUpdate(int[] batch)
        {
            _optimizer.zero_grad();
            var perPass = _config.MaxPatientsPerPass;
            var built = new List<(int Start, int Count)>();
            for (var start = 0; start < batch.Length; start += perPass)
            {
                built.Add((start, Math.Min(perPass, batch.Length - start)));
            }

            // The slice count must be known before the first backward pass to scale each chunk's sum.
            var chunks = built.Select(b => SliceChoice(batch.AsSpan(b.Start, b.Count).ToArray())).ToList();
            var total = chunks.Sum(c => c.Slices.Count);
            double lossSum = 0;
            foreach (var choice in chunks)
            {
                using var scope = NewDisposeScope();
                var chunk = Materialise(choice);
                var perSlice = _model.Config.DeepSupervision > 0
                    ? SegmentationLosses.DeepSupervised(_loss, _model.ForwardLogitsWithDeepSupervision(chunk.Inputs), chunk.Targets)
                    : _loss(_model.ForwardLogits(chunk.Inputs), chunk.Targets);
                var sum = perSlice.sum();
                (sum / total).backward();
                lossSum += sum.item<float>();
            }

            _optimizer.step();
            return (total > 0 ? lossSum / total : 0, total);
        }


        /// <summary>The slices of each patient this step uses (a random subset of at most M), each repeated K times.</summary>
        private (List<int> Slices, List<int> Groups) SliceChoice(int[] patients)
        {
            var k = _config.Augmentation.Multiplicity;
            var max = _config.MaxSlicesPerPatient;
            var slices = new List<int>();
            var groups = new List<int>();
            for (var g = 0; g < patients.Length; g++)
            {
                var own = _slices[patients[g]];
                int[] chosen;
                if (own.Length <= max)
                {
                    chosen = own;
                }
                else
                {
                    chosen = [.. own];
                    for (var i = 0; i < max; i++)
                    {
                        var j = _sliceRandom.Next(i, chosen.Length);
                        (chosen[i], chosen[j]) = (chosen[j], chosen[i]);
                    }

                    chosen = chosen[..max];
                }

                foreach (var slice in chosen)
                {
                    for (var copy = 0; copy < k; copy++)
                    {
                        slices.Add(slice);
                        groups.Add(g);
                    }
                }
            }

            return (slices, groups);
        }

        /// <summary>Copies the chosen slices into tensors on the device and augments them; appends padding groups (one copy of the first slice each).</summary>
        private DpBatchChunk Materialise((List<int> Slices, List<int> Groups) choice, int paddingGroups = 0)
        {
            var (slices, groups) = choice;
            if (paddingGroups > 0 && slices.Count > 0)
            {
                var real = groups[^1] + 1;
                for (var p = 0; p < paddingGroups; p++)
                {
                    slices.Add(slices[0]);
                    groups.Add(real + p);
                }
            }
            else
            {
                paddingGroups = 0;
            }

            var x = SliceTensors.Images(_train, slices).to(_device);
            var y = SliceTensors.Masks(_train, slices).to(_device);
            var (ax, ay) = _augmenter.Apply(x, y);
            return new DpBatchChunk(ax, ay, groups, paddingGroups);
        }

        /// <summary>Copies the weights to evaluate (EMA or current) into the evaluation model.</summary>
        private void LoadEvaluationWeights()
        {
            using var _ = no_grad();
            var source = _ema?.Averages ?? [.. _model.OrderedParameters()];
            foreach (var (to, from) in _evalModel.OrderedParameters().Zip(source))
            {
                to.copy_(from);
            }
        }

        private void KeepBest()
        {
            using var _ = no_grad();
            var current = _evalModel.OrderedParameters();
            _best ??= [.. current.Select(p => empty_like(p).DetachFromDisposeScope())];
            foreach (var (to, from) in _best.Zip(current))
            {
                to.copy_(from);
            }
        }

        private UNet2d CreateModel(UNetConfig config, ulong seed, UNet2d? initial)
        {
            using var generator = new Generator(seed);
            var model = new UNet2d(config, ScalarType.Float32, CPU, generator);
            if (initial is not null)
            {
                if (!config.SameExceptDeepSupervision(initial.Config))
                {
                    model.Dispose();
                    throw new ArgumentException("the initial model's architecture differs from the run's model config.");
                }

                model.LoadWeightsFrom(initial);
            }

            if (_device.type != DeviceType.CPU)
            {
                model.to(_device);
            }

            return model;
        }

        /// <summary>The optimiser over the trainable parameters only (frozen ones get no state and no update, not even weight decay).</summary>
        private static optim.Optimizer CreateOptimizer(UNet2d model, OptimizerConfig o) => o.Kind switch
        {
            OptimizerKind.Sgd => optim.SGD(model.TrainableParameters(), o.LearningRate, o.Momentum, 0, o.WeightDecay, o.Nesterov && o.Momentum > 0),
            OptimizerKind.AdamW => optim.AdamW(model.TrainableParameters(), o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay),
            _ => optim.Adam(model.TrainableParameters(), o.LearningRate, o.Beta1, o.Beta2, o.Epsilon, o.WeightDecay),
        };

        public void Dispose()
        {
            _engine?.Dispose();
            _noise?.Dispose();
            _ema?.Dispose();
            _optimizer.Dispose();
            _model.Dispose();
            if (!_evalModelTaken)
            {
                _evalModel.Dispose();
            }

            foreach (var t in _best ?? [])
            {
                t.Dispose();
            }
        }
    }

    /// <summary>Folded passes hold a multiple of this many patients (padding groups fill the rest).</summary>
    internal const int PassBucket = 8;

    /// <summary>Patients per pass: ⌈b / P⌉ nearly equal chunks of the b patients (none when b = 0).</summary>
    internal static int[] PassSizes(int patients, int maxPerPass)
    {
        if (patients <= 0)
        {
            return [];
        }

        var chunks = (patients + maxPerPass - 1) / maxPerPass;
        return [.. Enumerable.Range(0, chunks).Select(c => (patients / chunks) + (c < patients % chunks ? 1 : 0))];
    }

    private static int RoundUp(int value, int multiple) => (value + multiple - 1) / multiple * multiple;

    /// <summary>A 32-bit seed for one of the run's random streams in epoch <paramref name="epoch"/> (1-based).</summary>
    internal static int DeriveSeed(ulong seed, int stream, int epoch) => DeriveSeed(seed + (0xD1B54A32D192ED03UL * (ulong)epoch), stream);

    /// <summary>A 32-bit seed for one of the run's random streams.</summary>
    internal static int DeriveSeed(ulong seed, int stream)
    {
        var x = seed + (0x9E3779B97F4A7C15UL * (ulong)(stream + 1));
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        x ^= x >> 31;
        return (int)(x & 0x7FFFFFFF);
    }

    /// <summary>Exponential moving average of the weights, with the usual warm-up: decay_t = min(decay, (1 + t)/(10 + t)).</summary>
    private sealed class WeightAverage : IDisposable
    {
        private readonly double _decay;

        public WeightAverage(UNet2d model, double decay)
        {
            _decay = decay;
            using var _ = no_grad();
            Averages = [.. model.OrderedParameters().Select(p => p.detach().clone().DetachFromDisposeScope())];
        }

        public Tensor[] Averages { get; }

        /// <summary>Updates so far (the warm-up's t).</summary>
        public long Updates { get; set; }

        public void Update(UNet2d model)
        {
            Updates++;
            var d = Math.Min(_decay, (1.0 + Updates) / (10.0 + Updates));
            using var _ = no_grad();
            foreach (var (average, p) in Averages.Zip(model.OrderedParameters()))
            {
                // A frozen parameter's average stays its (unchanged) value, bit for bit.
                if (p.requires_grad)
                {
                    average.mul_(d).add_(p, alpha: 1 - d);
                }
            }
        }

        public void Dispose()
        {
            foreach (var t in Averages)
            {
                t.Dispose();
            }
        }
    }
}
