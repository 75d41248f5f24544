import Foundation

/// Where a one-shot command keeps the engine's plan cache between runs (`Reconciler.cachedPlan`):
/// one opaque record the engine encodes and checks itself. Implemented in the state folder by
/// `PlanCacheFile` (CapstanStore).
///
/// A cache is never trusted beyond its own checks and never fatal: `load` returns nil for a record
/// that is absent, damaged, cut short or written in another format, and the caller plans from
/// scratch.
public protocol PlanCacheStore: Sendable {
    /// The record last saved, verified; nil when there is none that can be used.
    func load() async -> Data?
    /// Replaces the record (atomically: a reader sees the old record or the new one).
    func save(_ record: Data) async throws
}
