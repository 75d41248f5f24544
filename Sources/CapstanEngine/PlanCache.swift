import CapstanCore
import Foundation

/// The persistent plan cache of one-shot commands (`capstan plan`): a process that starts, plans
/// once and exits cannot keep a parse cache in memory the way the controller does, so it keeps the
/// last plan it computed, with everything that plan is a function of, and reuses it when all of
/// that is unchanged.
///
/// The planner is pure: `(desired, actual, now, options) → Plan` (DESIGN.md §3). The cached plan
/// is reused only when each of those is known to be the same without reading it:
/// - **desired**: the same commit and tree of the same repository (the manifests, and with them
///   every input inside the repository, are content-addressed by the tree), read by the same
///   build of Capstan (a new binary may load or plan differently). A desired state with inputs
///   outside the repository (under data roots: their identity is their content now) is never
///   cached.
/// - **actual**: the registry's generation, which every write of a model, version or alias moves
///   (triggers in the database, whoever writes); who holds the state lock (a running pass changes
///   how versions in training read). A plan that involved the serving layer (deployments, or
///   endpoints Capstan set before) is never cached: the serving layer is observed live.
/// - **now**: the plan depends on the clock only through backoffs; the cached plan is valid until
///   the earliest time one of its waits ends.
/// - **options**: `--retry-failed`.
///
/// A cached plan is returned with `createdAt` set to now; everything else is as computed. The
/// record is versioned (`PlanCache.format`) inside a checked envelope (the `PlanCacheStore`); a
/// record that does not decode, names another format or another key is ignored and replaced.
public struct PlanCache: Sendable {
    /// Bumped whenever what the record holds or how the key is built changes.
    public static let format = 1

    public var store: any PlanCacheStore
    /// Identifies the build of Capstan (a new binary may plan differently): the CLI gives its
    /// version and the executable's identity.
    public var build: String
    /// The registry's generation (see above).
    public var registryGeneration: @Sendable () async throws -> Int64

    public init(store: any PlanCacheStore, build: String, registryGeneration: @escaping @Sendable () async throws -> Int64) {
        self.store = store
        self.build = build
        self.registryGeneration = registryGeneration
    }

    /// Everything a cached plan is a function of, but the clock.
    struct Key: Codable, Hashable {
        var build: String
        var repository: String
        var ref: String
        var commit: String
        var tree: String
        var registryGeneration: Int64
        var applyInProgress: String?
        var retryFailed: Bool
    }

    /// What is saved.
    struct Record: Codable {
        var format: Int
        var key: Key
        /// The plan may be reused before this time (milliseconds since the epoch; nil: any time).
        var validUntil: Int64?
        var plan: Plan
    }

    /// The plan saved for `key`, when it is still valid at `now`.
    func plan(for key: Key, now: Int64) async -> Plan? {
        guard let data = await store.load(),
              let record = try? JSONDecoder().decode(Record.self, from: data),
              record.format == Self.format, record.key == key,
              record.validUntil.map({ now < $0 }) ?? true else { return nil }
        var plan = record.plan
        plan.createdAt = now
        return plan
    }

    /// Saves `plan` for `key` when it can be reused: never for a desired state with inputs outside
    /// the repository or a plan that involved the serving layer (the caller checks those). A
    /// failed save costs the next run its cache, nothing else.
    func save(_ plan: Plan, for key: Key) async {
        let validUntil = plan.entries.compactMap { entry -> Int64? in
            if case .wait(let wait) = entry.detail { return wait.until }
            return nil
        }.min()
        let record = Record(format: Self.format, key: key, validUntil: validUntil, plan: plan)
        guard let data = try? JSONEncoder().encode(record) else { return }
        try? await store.save(data)
    }

    /// Whether the desired state is a function of the commit alone: every input is in the
    /// repository or a URI with a declared version.
    static func isCommitDetermined(_ desired: DesiredState) -> Bool {
        desired.models.allSatisfy { model in
            (model.manifest.spec.train?.inputs ?? []).allSatisfy { input in
                if case .external = input { return false }
                return true
            }
        }
    }
}

/// What `Reconciler.cachedPlan(at:)` returns.
public struct CachedPlanReport: Sendable {
    public var revision: SourceRevision
    public var plan: Plan
    /// True when the plan came from the cache (nothing was loaded or read from the registry).
    public var fromCache: Bool
}

extension Reconciler {
    /// `plan(at:)` through the persistent `cache`: the plan saved by an earlier run when nothing
    /// it depends on changed (see `PlanCache`), otherwise a plan computed in full and saved for
    /// the next run. Returns the same plan `plan(at:)` would, but for its `createdAt`.
    public func cachedPlan(at ref: String?, cache: PlanCache, options: PlanOptions = PlanOptions(), fetch: Bool = true,
                           events: @escaping @Sendable (PassEvent) -> Void = { _ in }) async throws -> CachedPlanReport {
        let revision = try await ports.source.resolve(ref, fetch: fetch)
        var options = options
        if options.applyInProgress == nil, let running = try? await runningPass() { options.applyInProgress = running }
        // Nil when what the plan depends on cannot be read cheaply: then it is planned in full.
        var key: PlanCache.Key?
        if let generation = try? await cache.registryGeneration(),
           let records = try? await ports.store.servingRecords(), records.applied.isEmpty, records.rollouts.isEmpty {
            key = PlanCache.Key(build: cache.build, repository: ports.source.displayName, ref: revision.ref,
                                commit: revision.commit, tree: revision.tree, registryGeneration: generation,
                                applyInProgress: options.applyInProgress, retryFailed: options.retryFailed)
        }
        if let key, let plan = await cache.plan(for: key, now: ports.now()) {
            for note in revision.notes {
                events(note.kind == .warning ? .warning(note.message) : .note(note.message))
            }
            return CachedPlanReport(revision: revision, plan: plan, fromCache: true)
        }
        let report = try await plan(at: ref, options: options, fetch: false, resolved: revision, events: events)
        if let key, report.revision.commit == revision.commit, !report.observedServing,
           PlanCache.isCommitDetermined(report.desired),
           let generation = try? await cache.registryGeneration() {
            // The generation read before planning, and after: a registry written meanwhile
            // (another process) is not cached under either.
            if generation == key.registryGeneration { await cache.save(report.plan, for: key) }
        }
        return CachedPlanReport(revision: report.revision, plan: report.plan, fromCache: false)
    }
}
