import CapstanCore
import CapstanEngine
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// How the controller paces itself (`capstan run` flags).
public struct ControllerTiming: Sendable {
    /// Polls the source this often (±10% jitter).
    public var interval: Duration = .seconds(60)
    /// A full pass this often even without a new commit (drift in the serving layer).
    public var resync: Duration = .seconds(600)
    /// While a rollout is in progress (or a transient failure waits to be retried), a pass this
    /// often.
    public var tick: Duration = .seconds(10)
    /// How long a running pass may take to finish after SIGTERM before its step is stopped.
    public var shutdownGrace: Duration = .seconds(30)

    public init() {}
}

/// Whether the controller is ready to serve traffic, and why (what `/readyz` says).
public struct ControllerReadiness: Sendable, Equatable {
    public var ready: Bool
    public var reason: String

    public init(ready: Bool, reason: String) {
        self.ready = ready
        self.reason = reason
    }
}

/// A pass that ended (or could not run), for the metrics and notifications of the caller.
public struct FinishedPass: Sendable {
    /// The commit the pass was for.
    public var commit: String
    /// What started it ("new commit 1a2b3c4", "webhook", "resync", "rollout in progress").
    public var trigger: String
    public var duration: Duration
    /// What the pass did, when it ran.
    public var report: PassReport?
    /// Why it could not run, when it did not.
    public var failure: ReconcileFailure?
    /// The audit events recorded since the last pass ended, oldest first.
    public var events: [AuditEvent]
    /// What Capstan keeps about the serving layer now (rollouts, applied weights).
    public var serving: ServingRecords
}

/// What the controller tells the outside world besides its log: the metrics and notifications
/// of `capstan run` (wired by the command layer).
public protocol ControllerObserver: Sendable {
    /// The source could not be fetched.
    func fetchFailed(_ failure: ReconcileFailure)
    /// A plan entry ended.
    func stepFinished(_ entry: PlanEntry, _ outcome: EntryOutcome)
    /// A pass ended (or could not run).
    func passFinished(_ pass: FinishedPass)
}

/// The reconcile loop of `capstan run` (DESIGN.md §4): polls the source, runs a pass when the
/// commit moves, on a nudge (webhook, API), on every resync, when a training's backoff ends and,
/// while a rollout is in progress or a transient failure waits, on every tick. One pass at a
/// time; nudges that arrive during a pass coalesce into one pass after it. Every pass takes the
/// state lock (`LeaseKeeper`), so an `apply` from cron and the controller never act at once.
///
/// It keeps one `Reconciler` for its whole life: the source stays open and what was read (parse
/// cache, tree index, folder identities) is reused by the next pass.
public final class Controller: Sendable {
    public let reconciler: Reconciler
    let ref: String?
    let timing: ControllerTiming
    let logger: Logger
    let observer: any ControllerObserver
    /// Who the lease names.
    let command: String
    /// The serving layer, when not the one capstan.yaml names (the in-process agent of --serve).
    private let serving = Mutex<ServingConnection?>(nil)
    /// Returns once the controller may start passes (the in-process agent listens), with the
    /// serving layer to use instead of the one capstan.yaml names, if any.
    let startGate: @Sendable () async -> ServingConnection?
    public let startedAt = Date()

    private let wakeup = Wakeup()

    private struct State {
        var firstPassDone = false
        var sourceError: String?
        var lastPass: (commit: String?, outcome: String, at: Date)?
        var shuttingDown = false
        var passTask: Task<PassReport, any Error>?
        var lastAuditID: Int64 = 0
    }

    private let state = Mutex(State())

    public init(reconciler: Reconciler, ref: String?, timing: ControllerTiming, logger: Logger, observer: any ControllerObserver,
                command: String = "capstan run", startGate: @escaping @Sendable () async -> ServingConnection? = { nil }) {
        self.reconciler = reconciler
        self.ref = ref
        self.timing = timing
        self.logger = logger
        self.observer = observer
        self.command = command
        self.startGate = startGate
    }

    var store: any StateStore { reconciler.ports.store }

    // MARK: What the HTTP side reads

    public func readiness() -> ControllerReadiness {
        state.withLock { state in
            if state.shuttingDown { return ControllerReadiness(ready: false, reason: "shutting down") }
            if let error = state.sourceError { return ControllerReadiness(ready: false, reason: "the source is unreachable: \(error)") }
            guard state.firstPassDone, let last = state.lastPass else {
                return ControllerReadiness(ready: false, reason: "the first pass has not finished yet")
            }
            return ControllerReadiness(ready: true, reason: "last pass \(last.outcome) at \(last.commit.map { String($0.prefix(7)) } ?? "no commit")")
        }
    }

    /// A pass as soon as possible; false once shutting down.
    public func requestPass(why: String) -> Bool {
        let accepted = state.withLock { !$0.shuttingDown }
        if accepted { wakeup.nudge(why) }
        return accepted
    }

    public var lastObservedCommit: String? { state.withLock { $0.lastPass?.commit } }

    // MARK: Shutdown

    /// Graceful: no new pass; a running one gets `shutdownGrace` to finish, then its step is stopped.
    public func beginShutdown() {
        let task = state.withLock { state -> Task<PassReport, any Error>? in
            state.shuttingDown = true
            return state.passTask
        }
        wakeup.shutdown()
        guard let task else { return }
        logger.notice("shutting down: the running pass has \(timing.shutdownGrace) to finish (send the signal again to stop it at once)")
        let grace = timing.shutdownGrace
        let logger = self.logger
        Task {
            try? await Task.sleep(for: grace)
            // Only if that pass is still running (a finished one has left `passTask`).
            if self.state.withLock({ $0.passTask == task }), !task.isCancelled {
                logger.warning("the pass did not finish within the shutdown grace; stopping its step (the next pass resumes it)")
                task.cancel()
            }
        }
    }

    /// At once: the running pass's step is stopped (the next pass resumes it).
    public func stopNow() {
        let task = state.withLock { state -> Task<PassReport, any Error>? in
            state.shuttingDown = true
            return state.passTask
        }
        wakeup.shutdown()
        task?.cancel()
    }

    // MARK: The loop

    public func run() async {
        if let connection = await startGate() { serving.withLock { $0 = connection } }
        let latest = (try? await store.auditEvents(AuditQuery(limit: 1)).first?.id) ?? nil
        state.withLock { $0.lastAuditID = latest ?? 0 }
        let clock = ContinuousClock()
        var nextPoll = clock.now + Self.jittered(timing.interval)
        var nextResync = clock.now + timing.resync
        /// When to come back without a new commit, and why (a rollout in progress, a busy lock,
        /// an unreachable source, a transient failure).
        var again: (at: ContinuousClock.Instant, why: String)?
        /// When the earliest wait of the last pass ends (a training's backoff): a pass then.
        var waitEnds: ContinuousClock.Instant?
        var pending: String? = "startup"
        /// A commit a poll just fetched, to use without fetching again.
        var polled: String?
        var lastCommit: String?
        while !state.withLock({ $0.shuttingDown }) {
            if pending == nil {
                var deadline = min(nextPoll, nextResync)
                if let again { deadline = min(deadline, again.at) }
                if let waitEnds { deadline = min(deadline, waitEnds) }
                switch await wakeup.wait(until: deadline) {
                case .shutdown:
                    return
                case .nudged(let why):
                    pending = why
                case .timeout:
                    let now = clock.now
                    if now >= nextResync {
                        pending = "resync"
                    } else if let due = again, now >= due.at {
                        pending = due.why
                    } else if let ends = waitEnds, now >= ends {
                        waitEnds = nil
                        pending = "a training backoff ended"
                    } else if now >= nextPoll {
                        nextPoll = now + Self.jittered(timing.interval)
                        if let commit = await poll(), commit != lastCommit {
                            pending = "new commit \(commit.prefix(7))"
                            polled = commit
                        }
                    }
                }
            }
            guard let why = pending else { continue }
            pending = nil
            // Every pass starts from a fresh fetch (or one just made): a nudge is never trusted
            // for the commit.
            let fetched: String?
            if let polled { fetched = polled } else { fetched = await poll() }
            polled = nil
            guard let commit = fetched else {
                again = (clock.now + timing.tick, "retry: \(why)")
                continue
            }
            nextPoll = clock.now + Self.jittered(timing.interval)
            nextResync = clock.now + timing.resync
            // A shutdown that came during the fetch: no new pass.
            if state.withLock({ $0.shuttingDown }) { return }
            let result = await pass(why: why, commit: commit)
            if result.ran {
                lastCommit = commit
                waitEnds = result.waitEnds.map { Self.instant(ofEpochMilliseconds: $0, clock: clock) }
            }
            again = result.again.map { (clock.now + timing.tick, $0) }
        }
    }

    static func jittered(_ interval: Duration) -> Duration {
        interval * Double.random(in: 0.9...1.1)
    }

    /// The monotonic instant of a wall-clock time (ms since the epoch), a little after it, so
    /// the pass that wakes then finds the wait over.
    static func instant(ofEpochMilliseconds ms: Int64, clock: ContinuousClock) -> ContinuousClock.Instant {
        let wait = max(0, ms - Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
        return clock.now + .milliseconds(wait + 100)
    }

    /// Fetches the source and resolves the ref; nil (and logged, counted) when it cannot.
    private func poll() async -> String? {
        do {
            let revision = try await reconciler.ports.source.resolve(ref, fetch: true)
            let recovered = state.withLock { state -> Bool in
                defer { state.sourceError = nil }
                return state.sourceError != nil
            }
            if recovered { logger.notice("the source is reachable again") }
            for note in revision.notes {
                // A force-push or a mirror cloned again is news once; a warning (credentials over
                // plain http) repeats on every fetch and is logged once.
                if note.kind == .warning { logWarningOnce(note.message) } else { logger.notice("\(note.message)") }
            }
            return revision.commit
        } catch {
            let failure = ReconcileFailure.of(error)
            observer.fetchFailed(failure)
            let changed = state.withLock { state -> Bool in
                defer { state.sourceError = failure.message }
                return state.sourceError != failure.message
            }
            if changed {
                logger.error("cannot read the source", metadata: ["error": "\(failure.message)", "reason": "\(failure.reason.rawValue)"])
            } else {
                logger.debug("cannot read the source", metadata: ["error": "\(failure.message)"])
            }
            return nil
        }
    }

    private let warned = Mutex<Set<String>>([])

    /// A warning about the source (a token sent over plain http) is logged once, not on every poll.
    private func logWarningOnce(_ message: String) {
        if warned.withLock({ $0.insert(message).inserted }) { logger.warning("\(message)") }
    }

    /// One pass at `commit`, under the state lock. `ran`: the pass ran (even if it failed);
    /// `again`: why to come back on the next tick (a rollout in progress, the lock was busy, a
    /// transient failure); `waitEnds`: when the earliest wait it left ends (ms since the epoch).
    private func pass(why: String, commit: String) async -> (ran: Bool, again: String?, waitEnds: Int64?) {
        let clock = ContinuousClock()
        let started = clock.now
        var log = logger
        log[metadataKey: "commit"] = "\(commit.prefix(12))"
        log[metadataKey: "trigger"] = "\(why)"
        let keeper: LeaseKeeper
        do {
            keeper = try await LeaseKeeper.acquire(store, holder: UUID().uuidString.lowercased(), command: command, waitMilliseconds: 0)
            if let previous = keeper.grant.tookOver {
                log.notice("took over the lock of a holder that is gone",
                           metadata: ["holder": "\(previous.holder)", "pid": "\(previous.pid)", "host": "\(previous.host)",
                                      "why": "\(keeper.grant.tookOverBecause ?? "it is gone")"])
            }
        } catch {
            let failure = ReconcileFailure.of(error)
            if failure.reason == .locked {
                log.warning("the state is locked; trying again on the next tick", metadata: ["error": "\(failure.message)"])
                return (false, "retry: \(why) (the state was locked)", nil)
            }
            // Not a busy lock: the state store itself failed (damaged, unavailable).
            log.error("cannot take the state lock", metadata: ["reason": "\(failure.reason.rawValue)", "class": "\(failure.failureClass.name)",
                                                             "error": "\(failure.message)"])
            return (false, failure.failureClass == .transient ? "retry: \(why) (\(failure.reason.rawValue))" : nil, nil)
        }
        log.info("pass started")
        let observer = self.observer
        let connection = serving.withLock { $0 }
        let reconciler = self.reconciler
        let ref = commit
        let command = self.command
        let task = Task {
            try await reconciler.pass(at: ref, fence: keeper.fence, command: command, fetch: false, serving: connection,
                                      events: { [log] event in Self.log(event, log, observer) },
                                      onLeaseLost: { error in keeper.reportLost(error) })
        }
        let stopNow = state.withLock { state -> Bool in
            state.passTask = task
            return state.shuttingDown
        }
        if stopNow { beginShutdown() }
        keeper.start { [log] failure in
            log.error("lost the state lock; stopping the pass", metadata: ["error": "\(failure.message)"])
            task.cancel()
        }
        let result = await task.result
        await keeper.release()
        state.withLock { $0.passTask = nil }
        let duration = clock.now - started
        let servingRecords = (try? await store.servingRecords()) ?? ServingRecords()
        var finished = FinishedPass(commit: commit, trigger: why, duration: duration, report: nil, failure: nil, events: [],
                                    serving: servingRecords)
        let outcome: String
        var again: String?
        var waitEnds: Int64?
        switch result {
        case .success(let report):
            finished.report = report
            outcome = report.outcome.rawValue
            again = report.comeBackSoon
            waitEnds = report.nextWakeup
            if report.outcome == .failed {
                for (entry, failure) in report.failures {
                    log.error("pass failed", metadata: ["outcome": "\(outcome)", "duration": "\(Self.seconds(duration))",
                                                         "entry": "\(entry.id)", "reason": "\(failure.reason.rawValue)",
                                                         "class": "\(failure.failureClass.name)", "error": "\(failure.message)"])
                }
            } else {
                log.info("pass finished", metadata: ["outcome": "\(outcome)", "duration": "\(Self.seconds(duration))",
                                                     "summary": "\(report.summary.split(separator: "\n").first.map(String.init) ?? "")"])
            }
        case .failure(let error):
            let failure = ReconcileFailure.of(error)
            finished.failure = failure
            outcome = "failed"
            if failure.failureClass == .transient { again = "retry: \(why) (\(failure.reason.rawValue))" }
            log.error("pass failed", metadata: ["outcome": "failed", "duration": "\(Self.seconds(duration))",
                                                 "reason": "\(failure.reason.rawValue)", "class": "\(failure.failureClass.name)",
                                                 "error": "\(failure.message)"])
        }
        if !servingRecords.rollouts.isEmpty, again == nil { again = "rollout in progress" }
        state.withLock { state in
            state.firstPassDone = true
            state.lastPass = (commit, outcome, Date())
        }
        // The audit events of this pass, oldest first, for notifications.
        let after = state.withLock { $0.lastAuditID }
        let events = ((try? await store.auditEvents(AuditQuery(afterID: after))) ?? []).reversed()
        if let last = events.last?.id { state.withLock { $0.lastAuditID = last } }
        finished.events = Array(events)
        observer.passFinished(finished)
        return (true, again, waitEnds)
    }

    static func seconds(_ d: Duration) -> String {
        String(format: "%.3fs", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    /// A pass's progress as log lines (constant messages; the data in metadata), and the steps
    /// for the observer.
    static func log(_ event: PassEvent, _ logger: Logger, _ observer: any ControllerObserver) {
        func metadata(_ entry: PlanEntry, version: Int? = nil) -> Logger.Metadata {
            var m: Logger.Metadata = ["step": "\(entry.action.rawValue)"]
            m[entry.kind == .model ? "model" : "deployment"] = "\(entry.name)"
            if case .deployment(let d) = entry.detail { m["model"] = "\(d.model)" }
            if let version = version ?? EntryReport.version(of: entry) { m["version"] = "\(version)" }
            return m
        }
        switch event {
        case .started(let entry):
            logger.info("step started", metadata: metadata(entry))
        case .finished(let entry, let outcome, let version):
            observer.stepFinished(entry, outcome)
            var m = metadata(entry, version: version)
            switch outcome {
            case .done(let message):
                m["result"] = "done"
                m["detail"] = "\(message)"
                logger.info("step done", metadata: m)
            case .skipped(let message):
                m["result"] = "skipped"
                m["detail"] = "\(message)"
                logger.info("step skipped", metadata: m)
            case .failed(let failure):
                m["result"] = "failed"
                m["reason"] = "\(failure.reason.rawValue)"
                m["class"] = "\(failure.failureClass.name)"
                m["error"] = "\(failure.message)"
                logger.error("step failed", metadata: m)
            }
        case .output(let line):
            logger.debug("step output", metadata: ["line": "\(line)"])
        case .note(let text), .recovered(let text):
            logger.notice("\(text)")
        case .warning(let text):
            logger.warning("\(text)")
        case .planned(let plan):
            for entry in plan.changes {
                var m = metadata(entry)
                m["reason"] = "\(entry.reason)"
                logger.info("planned", metadata: m)
            }
        case .deploymentPlan(let entries):
            for entry in entries where entry.action.isChange || entry.action == .drift || entry.action == .servingUnavailable {
                var m = metadata(entry)
                m["reason"] = "\(entry.reason)"
                logger.info("planned", metadata: m)
            }
        }
    }
}

/// The loop as a service of the controller's service group: graceful shutdown lets the running
/// pass finish (within the grace), cancellation stops its step at once.
public struct ControllerLoopService: Service {
    public let controller: Controller

    public init(controller: Controller) {
        self.controller = controller
    }

    public func run() async throws {
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
