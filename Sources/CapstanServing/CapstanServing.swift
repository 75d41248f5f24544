// CapstanServing: the local serving agent (`capstan serve`) — a supervisor of model-server
// processes, a gateway that routes `/<deployment>/…` to them by weight, and an admin API — and
// `AgentClient`, the `ServingTarget` the reconciler uses to reach it (DESIGN.md §5).
@_exported import CapstanCore
