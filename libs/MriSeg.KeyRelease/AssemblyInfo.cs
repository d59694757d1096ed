// Secure key release: parties, release policies, attestation tokens, contracts and privacy budgets.
