import CapstanController
import CapstanCore
import CapstanEngine
import CapstanServer
import CapstanServing
import CapstanStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The serving agent of `capstan run --serve`, in the controller's service group.
struct AgentService: Service {
    let agent: ServingAgent
    let listening: AsyncGate<RunningAgent>
    let logger: Logger

    func run() async throws {
        defer { listening.close() }
        try await agent.run { running in
            logger.info("serving agent: gateway on \(running.gateway.url), admin API on \(running.admin.url)", metadata: ["component": "serve"])
            listening.open(running)
        }
    }
}

/// A value that becomes known once; waiters get it (or nil if it never comes).
final class AsyncGate<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var closed = false
        var waiters: [CheckedContinuation<Value?, Never>] = []
    }

    private let state = Mutex(State())

    func open(_ value: Value) {
        let waiters = state.withLock { state -> [CheckedContinuation<Value?, Never>] in
            guard state.value == nil, !state.closed else { return [] }
            state.value = value
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: value) }
    }

    /// No value will come: waiters get nil.
    func close() {
        let waiters = state.withLock { state -> [CheckedContinuation<Value?, Never>] in
            state.closed = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: nil) }
    }

    func value() async -> Value? {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state -> (Bool, Value?) in
                if let value = state.value { return (true, value) }
                if state.closed { return (true, nil) }
                state.waiters.append(continuation)
                return (false, nil)
            }
            if now.0 { continuation.resume(returning: now.1) }
        }
    }
}

/// What the controller's HTTP side reads: readiness from the loop, status and history from the
/// state store (the same documents as `capstan status` and `capstan history`).
struct ControllerStatusBackend: ControllerBackend {
    let controller: Controller
    let reconciler: Reconciler
    let store: SQLiteStateStore
    /// The registry the controller reconciles (the embedded one, or MLflow).
    let registry: any Registry
    let stateDirectory: String
    let repository: String
    let ref: String?
    let interval: String

    func readiness() -> Readiness {
        let readiness = controller.readiness()
        return Readiness(ready: readiness.ready, reason: readiness.reason)
    }

    func status() async throws -> StatusDocument {
        try await StatusReader.document(store: store, registry: registry, stateDirectory: stateDirectory)
    }

    func history(limit: Int) async throws -> [AuditEvent] {
        try await store.auditEvents(AuditQuery(limit: limit))
    }

    func pageContext() -> StatusPageContext {
        var context = StatusPageContext()
        context.repository = repository
        context.ref = ref
        context.pollInterval = interval
        context.lastObservedCommit = controller.lastObservedCommit
        context.startedAt = controller.startedAt
        return context
    }

    func requestPass(why: String) -> Bool {
        controller.requestPass(why: why)
    }

    func card(model: String) async throws -> ModelCard? {
        guard let manifests = reconciler.lastManifests, manifests.model(named: model) != nil,
              !(try await registry.versions(of: model)).isEmpty else { return nil }
        let source = reconciler.ports.source
        return try await ModelCards(registry: registry, store: store, commit: { await source.commitRecord($0) })
            .card(model: model, version: nil, manifests: manifests, now: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
    }
}

/// What `capstan run` makes of the loop's passes: Prometheus metrics and notifications.
struct RunObserver: ControllerObserver {
    let metrics: ControllerMetrics
    let notifier: Notifier?

    func fetchFailed(_ failure: ReconcileFailure) {
        metrics.recordFetchError()
    }

    func stepFinished(_ entry: PlanEntry, _ outcome: EntryOutcome) {
        switch outcome {
        case .done: metrics.recordStep(kind: entry.action.rawValue, result: "done")
        case .skipped: metrics.recordStep(kind: entry.action.rawValue, result: "skipped")
        case .failed(let failure):
            metrics.recordStep(kind: entry.action.rawValue, result: "failed")
            metrics.recordFailure(scope: "step", kind: entry.action.rawValue, failureClass: failure.failureClass.name,
                                  reason: failure.reason.rawValue)
        }
    }

    func passFinished(_ pass: FinishedPass) {
        let finishedAt = Date()
        if let report = pass.report {
            metrics.recordPass(outcome: report.outcome.rawValue, duration: pass.duration, changes: report.changeCount,
                               waiting: report.count(.waiting) + report.count(.blocked), finishedAt: finishedAt)
            if report.outcome != .failed { metrics.recordAppliedCommit(pass.commit) }
        } else if let failure = pass.failure {
            metrics.recordPass(outcome: "failed", duration: pass.duration, changes: 0, waiting: 0, finishedAt: finishedAt)
            metrics.recordFailure(scope: "pass", kind: "pass", failureClass: failure.failureClass.name, reason: failure.reason.rawValue)
        }
        let serving = pass.serving
        metrics.recordRollouts(Set(serving.applied.keys).union(serving.rollouts.keys).sorted().map { deployment in
            guard let rollout = serving.rollouts[deployment] else { return (deployment: deployment, phase: "stable", canaryWeight: 0, step: 0) }
            let weight = serving.applied[deployment]?.first { $0.version == rollout.to }?.weight ?? 0
            return (deployment: deployment, phase: rollout.phase.rawValue, canaryWeight: Double(weight), step: rollout.step + 1)
        })
        guard let notifier else { return }
        let failure = pass.failure?.message ?? (pass.report.flatMap { $0.outcome == .failed ? $0.failureLines.joined(separator: "; ") : nil })
        notifier.send(NotificationMapping.events(from: pass.events, deployments: pass.report?.deploymentEntries ?? [],
                                                 passFailure: failure,
                                                 failureClass: pass.failure ?? pass.report?.failures.first?.failure, commit: pass.commit))
    }
}

/// Audit events → notifications: versions validated or rejected, aliases moved, rollouts started,
/// promoted or rolled back; and a failed pass (with its failure's class and reason).
enum NotificationMapping {
    /// `deployments`: the pass's deployment entries, for the model and version of a rollout event.
    static func events(from audit: [AuditEvent], deployments: [PlanEntry] = [], passFailure: String?,
                       failureClass: ReconcileFailure? = nil, commit: String?, now: Date = Date()) -> [NotificationEvent] {
        var details: [String: DeploymentDetail] = [:]
        for entry in deployments {
            if case .deployment(let detail) = entry.detail, let action = AuditAction(deployment: entry.action) {
                details["\(entry.name) \(action.rawValue)"] = detail
            }
        }
        var out: [NotificationEvent] = []
        for event in audit {
            let at = Date(timeIntervalSince1970: Double(event.at) / 1000)
            switch (event.object, event.action) {
            case (.version(let model, let number), .validated), (.version(let model, let number), .rejected):
                let validated = event.action == .validated
                var n = NotificationEvent(kind: validated ? .versionValidated : .versionRejected, message:
                    "\(model) v\(number) \(validated ? "validated" : "rejected"): \(event.reason)", at: at)
                n.model = model
                n.version = number
                n.commit = event.commit
                if !validated { n.set(ReconcileFailure.Class.terminal, .gateFailed) }
                out.append(n)
            case (.alias(let model, let alias), .moveAlias):
                let to = event.after.flatMap(Self.int)
                let from = event.before.flatMap(Self.int)
                var n = NotificationEvent(kind: .aliasMoved, message:
                    "\(model)@\(alias): \(from.map { "v\($0)" } ?? "unset") → \(to.map { "v\($0)" } ?? "unset")", at: at)
                n.model = model
                n.alias = alias
                n.version = to
                n.commit = event.commit
                out.append(n)
            case (.deployment(let deployment), .startRollout), (.deployment(let deployment), .promote),
                 (.deployment(let deployment), .rollback):
                let kind: NotificationEvent.Kind = event.action == .startRollout ? .rolloutStarted
                    : event.action == .promote ? .rolloutPromoted : .rolloutRolledBack
                var n = NotificationEvent(kind: kind, message: "\(deployment): \(event.reason)", at: at)
                n.deployment = deployment
                n.commit = event.commit
                if let detail = details["\(deployment) \(event.action.rawValue)"] {
                    n.model = detail.model
                    n.version = detail.to
                }
                if event.action == .rollback { n.set(ReconcileFailure.Class.terminal, .rolledBack) }
                out.append(n)
            default:
                continue
            }
        }
        if let passFailure {
            var n = NotificationEvent(kind: .passFailed, message: "the pass\(commit.map { " at \($0.prefix(7))" } ?? "") failed: \(passFailure)", at: now)
            n.commit = commit
            n.failureClass = failureClass?.failureClass.name
            n.reason = failureClass?.reason.rawValue
            out.append(n)
        }
        return out
    }

    static func int(_ value: ParamValue) -> Int? {
        if case .int(let i) = value { return Int(i) }
        return nil
    }
}

extension NotificationEvent {
    /// The failure's class and reason, as every failure notification carries them.
    mutating func set(_ failureClass: ReconcileFailure.Class, _ reason: FailureReason) {
        self.failureClass = failureClass.name
        self.reason = reason.rawValue
    }
}
