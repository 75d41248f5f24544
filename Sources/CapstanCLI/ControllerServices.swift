import CapstanCore
import CapstanServer
import CapstanServing
import CapstanStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The reconcile loop as a service: graceful shutdown lets the running pass finish (within the
/// grace), cancellation stops its step at once.
struct ControllerLoopService: Service {
    let controller: Controller

    func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await controller.run()
            } onGracefulShutdown: {
                controller.beginShutdown()
            }
        } onCancel: {
            controller.stopNow()
        }
    }
}

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
/// state database (the same documents as `capstan status` and `capstan history`).
struct ControllerStatusBackend: ControllerBackend {
    let controller: Controller
    let database: StateDatabase
    let stateDirectory: String
    let repository: String
    let ref: String?
    let interval: String

    func readiness() -> Readiness {
        controller.readiness()
    }

    func statusJSON() async throws -> Data {
        let (models, extras) = try await StatusReport.load(database)
        return Data(try StatusReport.json(stateDirectory: stateDirectory, models: models, extras: extras).utf8)
    }

    func statusPage() async throws -> String {
        let status = try await statusJSON()
        let history = try HistoryCommand.json(try AuditLog(database: database).query(limit: 50))
        var context = StatusPageContext()
        context.repository = repository
        context.ref = ref
        context.pollInterval = interval
        context.lastObservedCommit = controller.lastObservedCommit
        context.startedAt = controller.startedAt
        context.now = Date()
        return try StatusPage.render(status: status, history: history, context: context)
    }

    func requestPass(why: String) -> Bool {
        controller.requestPass(why: why)
    }
}

/// Audit events → notifications: versions validated or rejected, aliases moved, rollouts started,
/// promoted or rolled back; and a failed pass.
enum NotificationMapping {
    /// `deployments`: the pass's deployment entries, for the model and version of a rollout event.
    static func events(from audit: [AuditEvent], deployments: [PlanEntry] = [], passFailure: String?, commit: String?,
                       now: Date = Date()) -> [NotificationEvent] {
        var details: [String: DeploymentDetail] = [:]
        for entry in deployments {
            if case .deployment(let detail) = entry.detail { details["\(entry.name) \(entry.action.rawValue)"] = detail }
        }
        var out: [NotificationEvent] = []
        for event in audit {
            let parts = event.object.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
            guard parts.count >= 2 else { continue }
            switch (parts[0], event.action) {
            case ("model", "validated"), ("model", "rejected"):
                guard parts.count == 3, parts[2].hasPrefix("v"), let number = Int(parts[2].dropFirst()) else { continue }
                let validated = event.action == "validated"
                var n = NotificationEvent(kind: validated ? .versionValidated : .versionRejected, message:
                    "\(parts[1]) v\(number) \(validated ? "validated" : "rejected"): \(event.reason)", at: event.at)
                n.model = parts[1]
                n.version = number
                n.commit = event.commit
                out.append(n)
            case ("model", "move-alias"):
                guard parts.count == 4, parts[2] == "alias" else { continue }
                let to = event.after.flatMap(Self.int)
                let from = event.before.flatMap(Self.int)
                var n = NotificationEvent(kind: .aliasMoved, message:
                    "\(parts[1])@\(parts[3]): \(from.map { "v\($0)" } ?? "unset") → \(to.map { "v\($0)" } ?? "unset")", at: event.at)
                n.model = parts[1]
                n.alias = parts[3]
                n.version = to
                n.commit = event.commit
                out.append(n)
            case ("deployment", "start-rollout"), ("deployment", "promote"), ("deployment", "rollback"):
                let kind: NotificationEvent.Kind = event.action == "start-rollout" ? .rolloutStarted : event.action == "promote" ? .rolloutPromoted : .rolloutRolledBack
                var n = NotificationEvent(kind: kind, message: "\(parts[1]): \(event.reason)", at: event.at)
                n.deployment = parts[1]
                n.commit = event.commit
                if let detail = details["\(parts[1]) \(event.action)"] {
                    n.model = detail.model
                    n.version = detail.to
                }
                out.append(n)
            default:
                continue
            }
        }
        if let passFailure {
            var n = NotificationEvent(kind: .passFailed, message: "the pass\(commit.map { " at \($0.prefix(7))" } ?? "") failed: \(passFailure)", at: now)
            n.commit = commit
            out.append(n)
        }
        return out
    }

    static func int(_ value: ParamValue) -> Int? {
        if case .int(let i) = value { return Int(i) }
        return nil
    }
}
