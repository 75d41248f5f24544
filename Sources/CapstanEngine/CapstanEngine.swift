// CapstanEngine: the reconciler. It reads the desired state at one commit, observes the
// registry, computes fingerprints and the plan, and executes a pass (DESIGN.md §4).
@_exported import CapstanCore
