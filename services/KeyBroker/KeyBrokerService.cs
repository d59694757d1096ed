using MriSeg.ServiceDefaults;

namespace MriSeg.KeyBroker;

[PendingCapability("the KeyBroker (secure key release under attestation, contracts and privacy budgets)")]
public sealed class KeyBrokerService : Contracts.V1.KeyBroker.KeyBrokerBase;
