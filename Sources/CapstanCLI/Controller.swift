import CapstanController
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanServer
import CapstanStore
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// How the controller paces itself (`capstan run` flags).
struct ControllerTiming: Sendable {
    /// Polls the source this often (±10% jitter).
    var interval: Duration = .seconds(60)
    /// A full pass this often even without a new commit (drift in the serving layer).
    var resync: Duration = .seconds(600)
    /// While a rollout is in progress, a pass this often.
    var tick: Duration = .seconds(10)
    /// How long a running pass may take to finish after SIGTERM before its step is stopped.
    var shutdownGrace: Duration = .seconds(30)
}

/// The reconcile loop of `capstan run`: polls the source, runs a pass when the commit moves, on a
/// nudge (webhook, API), on every resync and, while a rollout is in progress, on every tick. One
/// pass at a time; nudges that arrive during a pass coalesce into one pass after it.
final class Controller: Sendable {
    let options: RepositoryOptions
    let timing: ControllerTiming
    let database: StateDatabase
    let metrics: ControllerMetrics
    let logger: Logger
    let actor: String
    /// The serving layer, when not the one capstan.yaml names (the in-process agent of --serve).
    private let serving = Mutex<ServingConnection?>(nil)
    /// Returns once the controller may start passes (the in-process agent listens), with the
    /// serving layer to use instead of the one capstan.yaml names, if any.
    let startGate: @Sendable () async -> ServingConnection?
    /// Called after every pass with the audit events it recorded and its outcome (notifications).
    let afterPass: @Sendable (_ events: [AuditEvent], _ deployments: [PlanEntry], _ failure: String?, _ commit: String) -> Void
    let startedAt = Date()

    private let wakeup = Wakeup()

    private struct State {
        var firstPassDone = false
        var sourceError: String?
        /// Warnings of the source already logged: each is logged once, not on every poll.
        var sourceWarnings: Set<String> = []
        var lastPass: (commit: String?, outcome: String, at: Date)?
        var lastAppliedCommit: String?
        var shuttingDown = false
        var passTask: Task<ReconcilePass.Outcome, any Error>?
        var lastAuditID: Int64 = 0
    }

    private let state = Mutex(State())

    init(options: RepositoryOptions, timing: ControllerTiming, database: StateDatabase, metrics: ControllerMetrics, logger: Logger,
         actor: String, startGate: @escaping @Sendable () async -> ServingConnection? = { nil },
         afterPass: @escaping @Sendable ([AuditEvent], [PlanEntry], String?, String) -> Void) {
        self.options = options
        self.timing = timing
        self.database = database
        self.metrics = metrics
        self.logger = logger
        self.actor = actor
        self.startGate = startGate
        self.afterPass = afterPass
    }

    // MARK: What the HTTP side reads

    func readiness() -> Readiness {
        state.withLock { state in
            if state.shuttingDown { return Readiness(ready: false, reason: "shutting down") }
            if let error = state.sourceError { return Readiness(ready: false, reason: "the source is unreachable: \(error)") }
            guard state.firstPassDone, let last = state.lastPass else { return Readiness(ready: false, reason: "the first pass has not finished yet") }
            return Readiness(ready: true, reason: "last pass \(last.outcome) at \(last.commit.map { String($0.prefix(7)) } ?? "no commit")")
        }
    }

    /// A pass as soon as possible; false once shutting down.
    func requestPass(why: String) -> Bool {
        let accepted = state.withLock { !$0.shuttingDown }
        if accepted { wakeup.nudge(why) }
        return accepted
    }

    var lastObservedCommit: String? { state.withLock { $0.lastPass?.commit } }

    // MARK: Shutdown

    /// Graceful: no new pass; a running one gets `shutdownGrace` to finish, then its step is stopped.
    func beginShutdown() {
        let task = state.withLock { state -> Task<ReconcilePass.Outcome, any Error>? in
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
    func stopNow() {
        let task = state.withLock { state -> Task<ReconcilePass.Outcome, any Error>? in
            state.shuttingDown = true
            return state.passTask
        }
        wakeup.shutdown()
        task?.cancel()
    }

    // MARK: The loop

    func run() async {
        if let connection = await startGate() { serving.withLock { $0 = connection } }
        state.withLock { $0.lastAuditID = (try? AuditLog(database: database).query(limit: 1).first?.id ?? 0) ?? 0 }
        let clock = ContinuousClock()
        var nextPoll = clock.now + Self.jittered(timing.interval)
        var nextResync = clock.now + timing.resync
        /// When to come back without a new commit, and why (a rollout in progress, a busy lock,
        /// an unreachable source).
        var again: (at: ContinuousClock.Instant, why: String)?
        /// When the earliest training backoff of the last pass ends: a pass then retries it.
        var backoffEnds: ContinuousClock.Instant?
        var pending: String? = "startup"
        /// A commit a poll just fetched, to use without fetching again.
        var polled: String?
        var lastCommit: String?
        while !state.withLock({ $0.shuttingDown }) {
            if pending == nil {
                var deadline = min(nextPoll, nextResync)
                if let again { deadline = min(deadline, again.at) }
                if let backoffEnds { deadline = min(deadline, backoffEnds) }
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
                    } else if let ends = backoffEnds, now >= ends {
                        backoffEnds = nil
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
                backoffEnds = result.retryAt.map { Self.instant(ofEpochMilliseconds: $0, clock: clock) }
            }
            again = result.again.map { (clock.now + timing.tick, $0) }
        }
    }

    static func jittered(_ interval: Duration) -> Duration {
        interval * Double.random(in: 0.9...1.1)
    }

    /// The monotonic instant of a wall-clock time (ms since the epoch), a little after it, so
    /// the pass that wakes then finds the backoff over.
    static func instant(ofEpochMilliseconds ms: Int64, clock: ContinuousClock) -> ContinuousClock.Instant {
        let wait = max(0, ms - Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
        return clock.now + .milliseconds(wait + 100)
    }

    /// Fetches the source and resolves the ref; nil (and logged, counted) when it cannot.
    private func poll() async -> String? {
        do {
            let source = try options.source(for: options.repo ?? ".")
            let opened = try await source.open(fetch: !options.noFetch)
            for warning in opened.warnings where state.withLock({ $0.sourceWarnings.insert(warning).inserted }) {
                logger.warning("\(warning)")
            }
            let revision = try await opened.resolve(options.ref)
            let recovered = state.withLock { state -> Bool in
                defer { state.sourceError = nil }
                return state.sourceError != nil
            }
            if recovered { logger.notice("the source is reachable again") }
            return revision.commit.hex
        } catch {
            metrics.recordFetchError()
            let message = (error as? GitSourceError)?.description ?? (error as? CommandFailure)?.message ?? "\(error)"
            let changed = state.withLock { state -> Bool in
                defer { state.sourceError = message }
                return state.sourceError != message
            }
            if changed {
                logger.error("cannot read the source: \(message)")
            } else {
                logger.debug("cannot read the source: \(message)")
            }
            return nil
        }
    }

    /// One pass at `commit`, under the state lock. `ran`: the pass ran (even if it failed);
    /// `again`: why to come back on the next tick (a rollout in progress, the lock was busy);
    /// `retryAt`: when the earliest training backoff it waits out ends (ms since the epoch).
    private func pass(why: String, commit: String) async -> (ran: Bool, again: String?, retryAt: Int64?) {
        let clock = ContinuousClock()
        let started = clock.now
        var log = logger
        log[metadataKey: "commit"] = "\(commit.prefix(12))"
        log[metadataKey: "trigger"] = "\(why)"
        let lock = StateLock(database: database)
        let holder = StateLock.newHolderID()
        let ttl: TimeInterval = 60
        let acquired: StateLock.Acquired
        do {
            acquired = try await lock.acquire(holder: holder, command: "capstan run", ttl: ttl, wait: 0)
            if let previous = acquired.tookOver {
                log.notice("took over the lock of holder \(previous.holder) (pid \(previous.pid) on \(previous.host)): \(acquired.tookOverBecause ?? "it is gone")")
            }
        } catch {
            log.warning("the state is locked; trying again in \(timing.tick): \((error as? StoreError)?.message ?? "\(error)")")
            return (false, "retry: \(why) (the state was locked)", nil)
        }
        // Every write of the pass checks this lease; once it is lost the pass writes nothing more.
        let keeper = LeaseKeeper(lock: lock, fence: acquired.fence, ttl: ttl)
        log.info("pass started")
        var passOptions = options
        passOptions.noFetch = true
        let metrics = self.metrics
        let pass = ReconcilePass(
            options: passOptions, database: keeper.fenced(database), actor: actor, command: "run",
            events: { [log] event in Self.log(event, log, metrics) },
            report: { [log] report in
                switch report {
                case .note(let note): log.notice("\(note)")
                case .plan(let plan):
                    let changes = plan.changes.count
                    if changes > 0 {
                        log.info("plan: \(changes) change\(changes == 1 ? "" : "s")")
                        for line in PlanReport(plan: plan, color: false).entryLines() where !line.isEmpty {
                            log.info("plan: \(line.trimmingCharacters(in: .whitespaces))")
                        }
                    }
                case .summary: break
                }
            })
        let connection = serving.withLock { $0 }
        let task = Task { try await pass.run(serving: connection) }
        let stopNow = state.withLock { state -> Bool in
            state.passTask = task
            return state.shuttingDown
        }
        if stopNow { beginShutdown() }
        keeper.start { [log] error in
            log.error("lost the state lock; stopping the pass: \(error.message)")
            task.cancel()
        }
        let result = await task.result
        keeper.stop()
        if keeper.lost == nil { _ = try? lock.release(holder: holder) }
        state.withLock { $0.passTask = nil }
        let duration = clock.now - started
        let outcome: String
        var failure: String?
        var deploymentsSettling = false
        var retryAt: Int64?
        var deploymentEntries: [PlanEntry] = []
        var rollouts: [String: RolloutState] = [:]
        var applied: [String: [BackendWeight]] = [:]
        do {
            let records = ServingRecords(database: database)
            rollouts = try records.rollouts()
            applied = try records.applied()
        } catch {
            log.warning("cannot read the rollouts: \(error)")
        }
        switch result {
        case .success(let done):
            outcome = done.result.outcome.rawValue
            deploymentEntries = done.result.deploymentEntries
            // A deployment still starting (or waiting on the serving layer) is looked at again soon.
            deploymentsSettling = done.result.conditions.contains { $0.object.hasPrefix("deployment/") && $0.type == .progressing }
            retryAt = done.result.residual.entries.compactMap { entry -> Int64? in
                guard entry.action == .wait, case .wait(let wait) = entry.detail else { return nil }
                return wait.until
            }.min()
            metrics.recordPass(outcome: outcome, duration: duration, changes: done.changeCount, waiting: done.waitingCount)
            if done.result.outcome == .failed {
                failure = ApplyOutput.failures(done.plan, done.result).joined(separator: "; ")
                log.error("pass failed: \(failure ?? "")", metadata: ["outcome": "\(outcome)", "duration": "\(Self.seconds(duration))"])
            } else {
                metrics.recordAppliedCommit(commit)
                log.info("pass finished: \(done.summary.split(separator: "\n").first.map(String.init) ?? "")",
                         metadata: ["outcome": "\(outcome)", "duration": "\(Self.seconds(duration))"])
            }
            state.withLock { $0.lastAppliedCommit = done.result.outcome == .failed ? $0.lastAppliedCommit : commit }
        case .failure(let error):
            outcome = "failed"
            metrics.recordPass(outcome: outcome, duration: duration, changes: 0, waiting: 0)
            failure = (error as? CommandFailure)?.message ?? "\(error)"
            log.error("pass failed: \(failure ?? "")", metadata: ["outcome": "failed", "duration": "\(Self.seconds(duration))"])
        }
        metrics.recordRollouts(Set(applied.keys).union(rollouts.keys).sorted().map { deployment in
            guard let rollout = rollouts[deployment] else { return (deployment: deployment, phase: "stable", canaryWeight: 0, step: 0) }
            let weight = applied[deployment]?.first { $0.version == rollout.to }?.weight ?? 0
            return (deployment: deployment, phase: rollout.phase.rawValue, canaryWeight: Double(weight), step: rollout.step + 1)
        })
        state.withLock { state in
            state.firstPassDone = true
            state.lastPass = (commit, outcome, Date())
        }
        // The audit events of this pass, for notifications.
        let after = state.withLock { $0.lastAuditID }
        let events = ((try? AuditLog(database: database).query(after: after)) ?? []).reversed()
        if let last = events.last?.id { state.withLock { $0.lastAuditID = last } }
        afterPass(Array(events), deploymentEntries, failure, commit)
        return (true, !rollouts.isEmpty ? "rollout in progress" : deploymentsSettling ? "deployment starting" : nil, retryAt)
    }

    static func seconds(_ d: Duration) -> String {
        String(format: "%.3fs", Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
    }

    /// A step's progress as log lines, and the step counters.
    static func log(_ event: PassEvent, _ logger: Logger, _ metrics: ControllerMetrics) {
        func metadata(_ entry: PlanEntry, _ message: String? = nil) -> Logger.Metadata {
            var m: Logger.Metadata = ["step": "\(entry.action.rawValue)"]
            m[entry.kind == .model ? "model" : "deployment"] = "\(entry.name)"
            var version: Int?
            switch entry.detail {
            case .train(let d): version = d.version
            case .validate(let d): if case .number(let n) = d.version { version = n }
            case .moveAlias(let d): if case .number(let n) = d.to { version = n }
            case .deployment(let d):
                m["model"] = "\(d.model)"
                version = d.to
            default: break
            }
            // A new version's number is known once trained: its message starts with it ("v3 trained…").
            if version == nil, let message, message.hasPrefix("v") {
                version = Int(message.dropFirst().prefix { $0.isNumber })
            }
            if let version { m["version"] = "\(version)" }
            return m
        }
        switch event {
        case .started(let entry):
            logger.info("\(entry.name): \(ApplyOutput.verb(entry.action))", metadata: metadata(entry))
        case .finished(let entry, let outcome):
            switch outcome {
            case .done(let message):
                metrics.recordStep(kind: entry.action.rawValue, result: "done")
                logger.info("\(entry.name): \(entry.action.rawValue) done: \(message)", metadata: metadata(entry, message))
            case .skipped(let message):
                metrics.recordStep(kind: entry.action.rawValue, result: "skipped")
                logger.info("\(entry.name): \(entry.action.rawValue) skipped: \(message)", metadata: metadata(entry))
            case .failed(let message):
                metrics.recordStep(kind: entry.action.rawValue, result: "failed")
                logger.error("\(entry.name): \(entry.action.rawValue) failed: \(message)", metadata: metadata(entry, message))
            case .transient(let message):
                metrics.recordStep(kind: entry.action.rawValue, result: "failed")
                logger.error("\(entry.name): \(entry.action.rawValue) failed (transient, retried on the next pass): \(message)",
                             metadata: metadata(entry, message))
            }
        case .output(let line):
            logger.debug("\(line)", metadata: ["step": "output"])
        case .note(let text):
            logger.notice("\(text)")
        case .deploymentPlan(let entries):
            for entry in entries where entry.action.isChange || entry.action == .drift || entry.action == .servingUnavailable {
                logger.info("\(entry.name): \(entry.action.rawValue): \(entry.reason)", metadata: metadata(entry))
            }
        }
    }
}
