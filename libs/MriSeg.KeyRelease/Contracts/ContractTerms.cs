using System.Text.Json.Serialization;
using Google.Protobuf.WellKnownTypes;
using V1 = MriSeg.Contracts.V1;

namespace MriSeg.KeyRelease.Contracts;

/// <summary>Pipeline limits recorded with a contract (enforced by the attested trainer, which reads the pipeline).</summary>
/// <param name="RequirePatientLevelPrivacy">The privacy unit must be the patient.</param>
/// <param name="MaxEpochs">Largest number of epochs; 0: no limit.</param>
/// <param name="MaxSlicesPerPatient">Largest number of slices per patient; 0: no limit.</param>
/// <param name="AllowedArchitectures">Architectures the pipeline may train.</param>
public sealed record PipelineLimits(bool RequirePatientLevelPrivacy, int MaxEpochs, int MaxSlicesPerPatient, IReadOnlyList<string> AllowedArchitectures);

/// <summary>The terms of a contract (common to every key that serves it).</summary>
/// <param name="ContractId">The contract id.</param>
/// <param name="DatasetId">The dataset it covers (dataset contracts).</param>
/// <param name="Owner">The party that made it (the keys' owner).</param>
/// <param name="AllowedConsumers">Consumers (TDC ids) that runs may train for.</param>
/// <param name="Expires">After this, nothing is released under it.</param>
/// <param name="MaxEpsilonPerRun">Largest ε of one run (at <paramref name="Delta"/>).</param>
/// <param name="MaxEpsilonTotal">Largest ε of all runs composed (at <paramref name="Delta"/>).</param>
/// <param name="Delta">The δ every ε of this contract is computed at.</param>
/// <param name="AllowedPipelineSha256">Pinned pipeline configurations (lower-case hex SHA-256); empty: any, within the limits.</param>
/// <param name="Limits">The pipeline limits, if any.</param>
public sealed record ContractTerms(
    string ContractId, string DatasetId, string Owner, IReadOnlyList<string> AllowedConsumers, DateTimeOffset? Expires,
    double MaxEpsilonPerRun, double MaxEpsilonTotal, double Delta, IReadOnlyList<string> AllowedPipelineSha256, PipelineLimits? Limits)
{
    /// <summary>Whether the contract carries a privacy budget (dataset contracts).</summary>
    [JsonIgnore]
    public bool HasBudget => MaxEpsilonTotal > 0;

    /// <summary>
    /// Reads and checks contract terms from a request. <paramref name="owner"/> is the caller: an empty owner becomes it,
    /// another owner is refused. A dataset contract needs a dataset id, an expiry, allowed consumers, ε per run and in
    /// total (per run ≤ total) and δ in (0, 1); other keys' contracts carry no budget.
    /// </summary>
    public static ContractTerms FromRequest(V1.ContractTerms contract, string owner, bool dataset, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(contract);
        if (!Ids.IsName(contract.ContractId))
        {
            throw KeyBrokerException.InvalidArgument($"contract.contract_id '{Ids.Printable(contract.ContractId)}' is not valid: {Ids.NameRule}");
        }

        var contractOwner = string.IsNullOrEmpty(contract.Owner) ? owner : contract.Owner;
        if (!string.Equals(contractOwner, owner, StringComparison.Ordinal))
        {
            throw KeyBrokerException.PermissionDenied($"contract.owner '{Ids.Printable(contract.Owner)}' is not the caller '{owner}': a party makes contracts for its own keys only");
        }

        foreach (var consumer in contract.AllowedConsumers)
        {
            if (!Ids.IsPartyId(consumer))
            {
                throw KeyBrokerException.InvalidArgument($"contract.allowed_consumers: '{Ids.Printable(consumer)}' is not a party id ({Ids.PartyIdRule})");
            }
        }

        var pipelines = new List<string>();
        foreach (var pipeline in contract.AllowedPipelineSha256)
        {
            pipelines.Add(Ids.Sha256Hex(pipeline)
                ?? throw KeyBrokerException.InvalidArgument($"contract.allowed_pipeline_sha256: '{Ids.Printable(pipeline)}' is not a hex SHA-256"));
        }

        DateTimeOffset? expires = null;
        if (contract.Expires is not null)
        {
            try
            {
                expires = contract.Expires.ToDateTimeOffset();
            }
            catch (InvalidOperationException)
            {
                throw KeyBrokerException.InvalidArgument("contract.expires is not a valid timestamp");
            }

            if (expires <= now)
            {
                throw KeyBrokerException.InvalidArgument($"contract.expires {expires:O} is in the past");
            }
        }

        double[] numbers = [contract.MaxEpsilonPerRun, contract.MaxEpsilonTotal, contract.Delta];
        if (numbers.Any(v => !double.IsFinite(v) || v < 0))
        {
            throw KeyBrokerException.InvalidArgument("contract: max_epsilon_per_run, max_epsilon_total and delta must be finite and not negative");
        }

        if (dataset)
        {
            if (!Ids.IsName(contract.DatasetId))
            {
                throw KeyBrokerException.InvalidArgument($"contract.dataset_id '{Ids.Printable(contract.DatasetId)}' is not valid: {Ids.NameRule}");
            }

            if (expires is null)
            {
                throw KeyBrokerException.InvalidArgument("contract.expires is required for a dataset contract");
            }

            if (contract.AllowedConsumers.Count == 0)
            {
                throw KeyBrokerException.InvalidArgument("contract.allowed_consumers is required for a dataset contract (the consumers runs may train for)");
            }

            if (contract.MaxEpsilonPerRun <= 0 || contract.MaxEpsilonTotal <= 0)
            {
                throw KeyBrokerException.InvalidArgument("contract: max_epsilon_per_run and max_epsilon_total must be > 0 for a dataset contract");
            }

            if (contract.MaxEpsilonPerRun > contract.MaxEpsilonTotal)
            {
                throw KeyBrokerException.InvalidArgument($"contract: max_epsilon_per_run {Ids.Num(contract.MaxEpsilonPerRun)} exceeds max_epsilon_total {Ids.Num(contract.MaxEpsilonTotal)}");
            }

            if (contract.Delta <= 0 || contract.Delta >= 1)
            {
                throw KeyBrokerException.InvalidArgument("contract.delta must be in (0, 1) for a dataset contract (well below 1/patients)");
            }
        }
        else if (contract.MaxEpsilonPerRun != 0 || contract.MaxEpsilonTotal != 0 || contract.Delta != 0)
        {
            throw KeyBrokerException.InvalidArgument("contract: privacy budgets (epsilon, delta) apply to dataset keys only");
        }

        if (contract.DatasetId.Length > 0 && !Ids.IsName(contract.DatasetId))
        {
            throw KeyBrokerException.InvalidArgument($"contract.dataset_id '{Ids.Printable(contract.DatasetId)}' is not valid: {Ids.NameRule}");
        }

        var c = contract.Constraints;
        if (c is not null && (c.MaxEpochs < 0 || c.MaxSlicesPerPatient < 0))
        {
            throw KeyBrokerException.InvalidArgument("contract.constraints: max_epochs and max_slices_per_patient must not be negative");
        }

        return new ContractTerms(contract.ContractId, contract.DatasetId, owner,
            contract.AllowedConsumers.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList(),
            expires, contract.MaxEpsilonPerRun, contract.MaxEpsilonTotal, contract.Delta,
            pipelines.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList(),
            c is null ? null : new PipelineLimits(c.RequirePatientLevelPrivacy, c.MaxEpochs, c.MaxSlicesPerPatient,
                c.AllowedArchitectures.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList()));
    }

    /// <summary>The contract message.</summary>
    public V1.ContractTerms ToContract()
    {
        var contract = new V1.ContractTerms
        {
            ContractId = ContractId,
            DatasetId = DatasetId,
            Owner = Owner,
            AllowedConsumers = { AllowedConsumers },
            Expires = Expires is { } e ? Timestamp.FromDateTimeOffset(e) : null,
            MaxEpsilonPerRun = MaxEpsilonPerRun,
            MaxEpsilonTotal = MaxEpsilonTotal,
            Delta = Delta,
            AllowedPipelineSha256 = { AllowedPipelineSha256 },
        };
        if (Limits is { } l)
        {
            contract.Constraints = new V1.PipelineConstraints
            {
                RequirePatientLevelPrivacy = l.RequirePatientLevelPrivacy,
                MaxEpochs = l.MaxEpochs,
                MaxSlicesPerPatient = l.MaxSlicesPerPatient,
                AllowedArchitectures = { l.AllowedArchitectures },
            };
        }

        return contract;
    }

    /// <summary>Whether two terms are the same (lists compared as sets, already sorted).</summary>
    public bool SameAs(ContractTerms other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return ContractId == other.ContractId && DatasetId == other.DatasetId && Owner == other.Owner
            && AllowedConsumers.SequenceEqual(other.AllowedConsumers) && Expires == other.Expires
            && MaxEpsilonPerRun.Equals(other.MaxEpsilonPerRun) && MaxEpsilonTotal.Equals(other.MaxEpsilonTotal) && Delta.Equals(other.Delta)
            && AllowedPipelineSha256.SequenceEqual(other.AllowedPipelineSha256)
            && (Limits is null ? other.Limits is null
                : other.Limits is not null && Limits.RequirePatientLevelPrivacy == other.Limits.RequirePatientLevelPrivacy
                  && Limits.MaxEpochs == other.Limits.MaxEpochs && Limits.MaxSlicesPerPatient == other.Limits.MaxSlicesPerPatient
                  && Limits.AllowedArchitectures.SequenceEqual(other.Limits.AllowedArchitectures));
    }
}
