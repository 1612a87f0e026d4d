"""controller: statistics, the rollout state machine, the reconciler, the ops API and status pages."""
