import CapstanCore
import Foundation

/// The ports a reconciler works through, as the command layer wires them (DESIGN.md §5): the
/// engine never sees SQLite, libgit2 or an HTTP client, only these protocols.
public struct ReconcilerPorts: Sendable {
    /// Where the desired state comes from (kept open by a long-lived process).
    public var source: any SourceRepository
    /// Capstan's own state, unfenced (a pass fences it with its lease).
    public var store: any StateStore
    /// The model registry over `store` (unfenced).
    public var registry: any Registry
    /// The store and registry a pass writes through: every write checks `fence`. `onLost` is
    /// called once, the first time a write finds the lease lost.
    public var fenced: @Sendable (_ fence: Fence, _ onLost: @escaping @Sendable (any Error) -> Void) -> (any StateStore, any Registry)
    public var runner: any StepRunner
    public var artifacts: any ArtifactStore
    /// The serving layer capstan.yaml names (nil: none configured), connected for one pass.
    public var serving: @Sendable (ConfigSpec) -> ServingConnection?
    /// Where steps get their folders (`runs/`) and logs (`logs/`): the state directory.
    public var workFolder: String
    /// Who the audit log names (`capstan apply (alice)`, `capstan run (capstan@host)`).
    public var actor: String
    public var host: String
    /// The reconciler's environment: `secretEnv` values and PATH are taken from it.
    public var environment: [String: String]
    /// Milliseconds since the Unix epoch.
    public var now: @Sendable () -> Int64
    /// How long a step gets after SIGTERM before SIGKILL.
    public var killGrace: ManifestDuration
    /// The registry `capstan.yaml` named when `registry` was wired: a commit naming another is
    /// refused (a pass never writes into a registry the commit does not name).
    public var registryConfig: RegistryConfig = .embedded

    public init(source: any SourceRepository, store: any StateStore, registry: any Registry,
                fenced: @escaping @Sendable (Fence, @escaping @Sendable (any Error) -> Void) -> (any StateStore, any Registry),
                runner: any StepRunner, artifacts: any ArtifactStore,
                serving: @escaping @Sendable (ConfigSpec) -> ServingConnection?, workFolder: String, actor: String, host: String,
                environment: [String: String] = ProcessInfo.processInfo.environment,
                now: @escaping @Sendable () -> Int64 = { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) },
                killGrace: ManifestDuration = StepRequest.defaultKillGrace) {
        self.source = source
        self.store = store
        self.registry = registry
        self.fenced = fenced
        self.runner = runner
        self.artifacts = artifacts
        self.serving = serving
        // Absolute: steps run in folders under it, from their own working directories.
        self.workFolder = URL(fileURLWithPath: workFolder).standardizedFileURL.path
        self.actor = actor
        self.host = host
        self.environment = environment
        self.now = now
        self.killGrace = killGrace
    }
}

/// The serving layer a pass talks to, and how to let go of it.
public struct ServingConnection: Sendable {
    public var target: any ServingTarget
    public var close: @Sendable () async -> Void

    public init(target: any ServingTarget, close: @escaping @Sendable () async -> Void) {
        self.target = target
        self.close = close
    }
}

/// Everything one pass (or one plan) works with: the ports, fenced for a pass.
struct EngineContext: Sendable {
    let store: any StateStore
    let registry: any Registry
    let runner: any StepRunner
    let artifacts: any ArtifactStore
    let source: any SourceRepository
    let workFolder: String
    let actor: String
    let host: String
    let environment: [String: String]
    let now: @Sendable () -> Int64
    let killGrace: ManifestDuration
    let events: @Sendable (PassEvent) -> Void

    init(_ ports: ReconcilerPorts, store: any StateStore, registry: any Registry, events: @escaping @Sendable (PassEvent) -> Void) {
        self.store = store
        self.registry = registry
        self.runner = ports.runner
        self.artifacts = ports.artifacts
        self.source = ports.source
        self.workFolder = ports.workFolder
        self.actor = ports.actor
        self.host = ports.host
        self.environment = ports.environment
        self.now = ports.now
        self.killGrace = ports.killGrace
        self.events = events
    }

    func event(_ object: ObjectRef, _ action: AuditAction, commit: String?, before: ParamValue? = nil, after: ParamValue? = nil,
               reason: String) -> AuditEvent {
        AuditEvent(at: now(), actor: actor, host: host, commit: commit, object: object, action: action,
                   before: before, after: after, reason: reason)
    }

    /// Records an audit event on its own. A failure is reported as a warning (a lost lease
    /// silently: the pass is stopping, and whoever stops it says why).
    func record(_ object: ObjectRef, _ action: AuditAction, commit: String?, before: ParamValue? = nil, after: ParamValue? = nil,
                reason: String) async {
        var changes = StateChanges("record the audit event '\(action.rawValue)' of '\(object)'")
        changes.record(event(object, action, commit: commit, before: before, after: after, reason: reason))
        do {
            try await store.commit(changes)
        } catch {
            if Failures.classify(error).reason != .leaseLost {
                events(.warning("could not write the audit log: \(error)"))
            }
        }
    }

    func commit(_ changes: StateChanges) async throws {
        try await store.commit(changes)
    }

    /// Runs one registry change under the journal, so that its audit event is never lost: the
    /// change is journaled (with the event to record and how to tell whether it happened) before
    /// `body` runs, and the event is recorded in the transaction that closes the entry. A pass
    /// killed in between leaves the entry `started`; the next pass checks the registry and
    /// records the event if the change was made (`Recovery`).
    @discardableResult
    func journaled<T: Sendable>(_ change: RegistryChange, event: AuditEvent, _ body: () async throws -> T) async throws -> T {
        let id = try await store.beginJournal(.registryChange(change, event: event), subject: .model(change.model))
        let value: T
        do {
            value = try await body()
        } catch {
            var closing = StateChanges("close journal entry \(id)")
            closing.failJournal(id, JournalClosing(error: String(describing: error)))
            try? await store.commit(closing)
            throw error
        }
        var done = StateChanges("record the end of journal entry \(id)")
        done.record(event)
        done.finishJournal(id)
        try await store.commit(done)
        return value
    }
}

/// What the engine makes of errors (see `ReconcileFailure.of`).
enum Failures {
    static func classify(_ error: any Error) -> ReconcileFailure { ReconcileFailure.of(error) }

    /// `error`'s failure with its message run through `scrubber`.
    static func classify(_ error: any Error, scrubbing scrubber: SecretScrubber) -> ReconcileFailure {
        var failure = ReconcileFailure.of(error)
        failure.message = scrubber.scrub(failure.message)
        return failure
    }
}
