using MriSeg.Contracts;
using Grpc.Core;
using MriSeg.Contracts.V1;
using MriSeg.KeyRelease.Attestation;
using MriSeg.KeyRelease.Client;
using MriSeg.KeyRelease.Parties;
using MriSeg.Sealing;
using MriSeg.ServiceDefaults;

namespace MriSeg.Trainer;

/// <summary>
/// Who this clean room is towards the KeyBroker: its party signing key (<see cref="TrainerSettings.PartyKeyPath"/>;
/// in Development, made on first use in <c>.mriseg/cleanroom/party.key</c>), its party id, and the code measurement its
/// attestation states (the software hash of <see cref="TrainerSettings.MeasuredDirectory"/>).
/// </summary>
public sealed class CleanRoomIdentity : IDisposable
{
    private readonly Lazy<SigningKey> _key;
    private readonly Lazy<string> _measurement;
    private readonly KeyBroker.KeyBrokerClient _broker;

    public CleanRoomIdentity(TrainerSettings settings, KeyBroker.KeyBrokerClient broker, IHostEnvironment environment, ILogger<CleanRoomIdentity> logger)
    {
        _broker = broker;
        Settings = settings;
        var create = settings.CreatePartyKey ?? environment.IsDevelopment();
        KeyPath = settings.PartyKeyPath is { Length: > 0 } configured
            ? Path.GetFullPath(configured)
            : environment.IsDevelopment() ? Path.Combine(DevelopmentFolders.Resolve(environment.ContentRootPath, "cleanroom"), "party.key") : null;
        _key = new(() => Load(KeyPath, create, logger));
        _measurement = new(() => SoftwareMeasurement.OfDirectory(settings.MeasuredDirectory));
    }

    public TrainerSettings Settings { get; }

    /// <summary>The party key file; null outside Development when none is configured.</summary>
    public string? KeyPath { get; }

    public string PartyId => Settings.PartyId;

    /// <summary>The party signing key (throws <see cref="InvalidOperationException"/> with the reason when there is none).</summary>
    public SigningKey Key => _key.Value;

    public string Measurement => _measurement.Value;

    /// <summary>A KeyBroker client acting as this clean room (the broker found by service discovery, <see cref="TrainerSettings.KeyBrokerAddress"/>).</summary>
    public KeyBrokerParty Party() => new(_broker, PartyId, Key);

    private static SigningKey Load(string? path, bool create, ILogger logger)
    {
        if (path is null)
        {
            throw new InvalidOperationException("Trainer:PartyKeyPath is not set: the clean room has no party key for the KeyBroker");
        }

        if (File.Exists(path))
        {
            return SigningKey.Load(path);
        }

        if (!create)
        {
            throw new InvalidOperationException($"the clean room's party key {path} does not exist (Trainer:PartyKeyPath); make one with 'mriseg keygen' and register it with 'mriseg keys register'");
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var key = SigningKey.Generate();
        key.Save(path);
        key.PublicKey.Save(Path.ChangeExtension(path, ".pub"), overwrite: true);
        logger.LogWarning("Made the clean room's party key {Path} (development only; Trainer:CreatePartyKey)", path);
        return key;
    }

    public void Dispose()
    {
        if (_key.IsValueCreated)
        {
            _key.Value.Dispose();
        }
    }
}

/// <summary>
/// Registers the clean room's party (role CCR) with the KeyBroker at start-up, retrying while the broker is not up yet,
/// so that a first run does not fail on a missing registration. A broker that needs the operator's admin token gets
/// <see cref="TrainerSettings.KeyBrokerAdminToken"/>; without it the registration is left to the operator
/// (<c>mriseg keys register</c>) and a run fails with the broker's reason.
/// </summary>
public sealed class CleanRoomRegistration(CleanRoomIdentity identity, ILogger<CleanRoomRegistration> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (identity.KeyPath is null)
        {
            logger.LogWarning("No Trainer:PartyKeyPath: the clean room cannot obtain keys until one is configured");
            return;
        }

        var delay = TimeSpan.FromSeconds(1);
        for (var attempt = 1; !stoppingToken.IsCancellationRequested; attempt++)
        {
            try
            {
                await identity.Party().EnsureRegisteredAsync(PartyRole.CleanRoom, identity.Settings.KeyBrokerAdminToken, stoppingToken).ConfigureAwait(false);
                logger.LogInformation("Clean room party {Party} is registered with the KeyBroker (key {Thumbprint})", identity.PartyId, identity.Key.Thumbprint[..16]);
                return;
            }
            catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded && attempt < 60)
            {
                logger.LogDebug("KeyBroker not reachable yet ({Status}); retrying", e.StatusCode);
            }
            catch (Exception e) when (e is RpcException or InvalidOperationException or SealedPackageException)
            {
                logger.LogWarning("Could not register the clean room party {Party} with the KeyBroker: {Reason}", identity.PartyId, e is RpcException r ? r.Status.Detail : e.Message);
                return;
            }

            await Task.Delay(delay, stoppingToken).ConfigureAwait(false);
            delay = TimeSpan.FromSeconds(Math.Min(10, delay.TotalSeconds * 2));
        }
    }
}
