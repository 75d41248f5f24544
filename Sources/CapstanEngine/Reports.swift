import CapstanCore
import CapstanManifests

/// What `Reconciler.plan(at:)` found: the commit, its desired state, the actual state, and the
/// plan that closes the gap (model entries, then deployment entries as they stand against the
/// registry now).
public struct PlanReport: Sendable {
    public var revision: SourceRevision
    /// The manifests as loaded (warnings, source lines for diagnostics).
    public var load: LoadResult
    public var desired: DesiredState
    public var actual: ActualState
    public var plan: Plan
    /// Whether the serving layer was asked (deployments in Git, or endpoints Capstan set before).
    public var observedServing: Bool = false

    /// The manifests' warnings (a commit with errors is never planned: `InvalidDesiredState`).
    public var warnings: [Diagnostic] { load.diagnostics.filter { $0.severity == .warning } }
}

/// The manifests at a commit have errors: nothing is planned, nothing changes; the last good
/// desired state stays in force. Carries the diagnostics so the caller can show them.
public struct InvalidDesiredState: Error, ClassifiedError, CustomStringConvertible {
    public var revision: SourceRevision
    public var repository: String
    public var load: LoadResult

    public var errors: [Diagnostic] { load.diagnostics.filter { $0.severity == .error } }

    public var failure: ReconcileFailure {
        let count = errors.count
        return ReconcileFailure(.stalled, .invalidManifests,
                                "\(count) error\(count == 1 ? "" : "s") in the manifests at \(revision.ref) (\(revision.shortCommit)); nothing was planned and nothing changed. Fix them (capstan validate --repo \(repository) --ref \(revision.ref) lists them) and commit again")
    }

    public var description: String { failure.message }
}

/// How one entry of a pass ended, or why it is left for later.
public struct EntryReport: Hashable, Sendable {
    public enum Status: String, Hashable, Sendable, Codable {
        /// Carried out.
        case done
        /// Carried out and failed (the failure says what happens next).
        case failed
        /// Not run: nothing left to do, a dependency failed, the pass was stopped.
        case skipped
        /// Left for a later pass that comes by itself (a backoff, a version in training, a canary
        /// pause).
        case waiting
        /// Left until the spec changes (a pin to a rejected version).
        case blocked
    }

    public var entry: PlanEntry
    public var status: Status
    public var message: String
    public var failure: ReconcileFailure?

    public init(entry: PlanEntry, status: Status, message: String, failure: ReconcileFailure? = nil) {
        self.entry = entry
        self.status = status
        self.message = message
        self.failure = failure
    }

    /// The version the entry concerns, when the plan names one.
    public var version: Int? { Self.version(of: entry) }

    /// The version a plan entry concerns, when it names one.
    public static func version(of entry: PlanEntry) -> Int? {
        switch entry.detail {
        case .train(let d): return d.version
        case .validate(let d): return d.version.number
        case .moveAlias(let d): return d.to.number
        case .deleteAlias(let d): return d.from
        case .wait(let d): return d.version
        case .blocked(let d): return d.version
        case .deployment(let d): return d.to
        default: return nil
        }
    }
}

/// What one reconcile pass did, and what is left. The one place that decides what counts as a
/// change, a wait or a failure: `apply`'s exit status and summary, the controller's scheduling,
/// its metrics and notifications all read it.
public struct PassReport: Sendable {
    public enum Outcome: String, Hashable, Sendable, Codable {
        /// Nothing is left to do.
        case converged
        /// Work remains for a later pass (a retry after backoff, a rollout step), nothing failed.
        case progressing
        /// An entry failed.
        case failed
    }

    public var passID: Int64
    public var revision: SourceRevision
    /// The plan the pass started from (its model entries), as `plan` would show it.
    public var plan: Plan
    /// Entries a first round made possible and that ran in the same pass (a `latest` alias
    /// moving to a version just validated, archiving what an alias just left).
    public var followUps: [PlanEntry]
    /// The deployment entries, decided after the registry changes.
    public var deploymentEntries: [PlanEntry]
    /// How each executed entry ended, by entry id.
    public var outcomes: [String: EntryOutcome]
    /// What is left after the pass (the plan computed again), models then deployments.
    public var residual: [PlanEntry]
    public var conditions: [ObjectCondition]
    /// What recovery closed of a killed pass, for people.
    public var recovered: [String]
    /// The time of day this pass ran at (ms since the epoch).
    public var at: Int64

    public init(passID: Int64, revision: SourceRevision, plan: Plan, followUps: [PlanEntry], deploymentEntries: [PlanEntry],
                outcomes: [String: EntryOutcome], residual: [PlanEntry], conditions: [ObjectCondition], recovered: [String], at: Int64) {
        self.passID = passID
        self.revision = revision
        self.plan = plan
        self.followUps = followUps
        self.deploymentEntries = deploymentEntries
        self.outcomes = outcomes
        self.residual = residual
        self.conditions = conditions
        self.recovered = recovered
        self.at = at
    }

    /// The entries that ran: the plan's model changes, the follow-ups, the deployment changes.
    public var executed: [PlanEntry] {
        plan.changes.filter { $0.kind == .model } + followUps + deploymentEntries.filter(\.action.isChange)
    }

    /// Every entry of the pass with how it ended or why it is left: the executed ones, then what
    /// is left waiting or blocked.
    public var entries: [EntryReport] {
        var out: [EntryReport] = executed.map { entry in
            switch outcomes[entry.id] {
            case .done(let m)?: return EntryReport(entry: entry, status: .done, message: m)
            case .failed(let f)?: return EntryReport(entry: entry, status: .failed, message: f.message, failure: f)
            case .skipped(let m)?: return EntryReport(entry: entry, status: .skipped, message: m)
            case nil: return EntryReport(entry: entry, status: .skipped, message: "not run")
            }
        }
        for entry in residual {
            switch entry.action {
            case .wait:
                let until: Int64? = if case .wait(let d) = entry.detail { d.until } else { nil }
                out.append(EntryReport(entry: entry, status: .waiting, message: entry.reason,
                                       failure: ReconcileFailure(.waiting(until: until), Self.waitingReason(entry), entry.reason)))
            case .blocked:
                out.append(EntryReport(entry: entry, status: .blocked, message: entry.reason,
                                       failure: ReconcileFailure(Self.blockedClass(entry), Self.blockedReason(entry), entry.reason)))
            case .servingUnavailable:
                out.append(EntryReport(entry: entry, status: .waiting, message: entry.reason,
                                       failure: ReconcileFailure(.transient, .servingUnavailable, entry.reason)))
            default:
                continue
            }
        }
        return out
    }

    static func waitingReason(_ entry: PlanEntry) -> FailureReason {
        switch entry.detail {
        case .wait(let d) where d.fingerprint != nil: return .trainingFailed
        case .wait: return .trainingElsewhere
        case .deployment(let d) where d.rollout != nil: return .rolloutPaused
        default: return .starting
        }
    }

    /// A deployment whose target was rolled back (and quarantined) stays so until Git changes
    /// (terminal); an alias or deployment pinned to an unusable version needs a spec change
    /// (stalled).
    static func blockedClass(_ entry: PlanEntry) -> ReconcileFailure.Class {
        if case .deployment(let d) = entry.detail, d.to != nil { return .terminal }
        return .stalled
    }

    static func blockedReason(_ entry: PlanEntry) -> FailureReason {
        switch entry.detail {
        case .deployment(let d): return d.to != nil ? .rolledBack : .notServable
        case .blocked(let d): return d.code ?? .pinnedVersionUnusable
        default: return .pinnedVersionUnusable
        }
    }

    /// The failures of the executed entries.
    public var failures: [(entry: PlanEntry, failure: ReconcileFailure)] {
        executed.compactMap { entry in outcomes[entry.id]?.failure.map { (entry, $0) } }
    }

    public var outcome: Outcome {
        if !failures.isEmpty { return .failed }
        let left = residual.contains { $0.action.isChange || $0.action == .wait || $0.action == .blocked
            || $0.action == .servingUnavailable || $0.action == .drift }
        return left ? .progressing : .converged
    }

    public func count(_ status: EntryReport.Status) -> Int { entries.count { $0.status == status } }

    /// The changes carried out (done, failed or skipped).
    public var changeCount: Int { executed.count }

    /// When a wait of this pass ends by itself (a training backoff), the earliest; the loop
    /// comes back then.
    public var nextWakeup: Int64? {
        entries.compactMap { $0.failure?.failureClass.until }.min()
    }

    /// Why the loop should come back on its short tick rather than wait for a commit: a rollout
    /// in progress, an endpoint starting, a transient failure to retry. Nil when nothing needs it.
    public var comeBackSoon: String? {
        if residual.contains(where: { $0.kind == .deployment && ($0.action.isChange || $0.action == .wait) }) {
            return "rollout in progress"
        }
        if conditions.contains(where: { $0.object.kind == .deployment && $0.type == .progressing }) { return "deployment starting" }
        if failures.contains(where: { $0.failure.failureClass == .transient && !Self.retriedAtResync.contains($0.failure.reason) }) {
            return "retry after a transient failure"
        }
        if residual.contains(where: { $0.action == .servingUnavailable }) { return "the serving layer was unavailable" }
        return nil
    }

    /// Transient failures of a step itself (it said "not now" with exit 75, the out-of-memory
    /// killer stopped it, the disk filled up): retried on the next pass that comes anyway (a
    /// commit, a nudge, the resync), not on the short tick, so that a training that fails so
    /// every time does not run again every few seconds.
    static let retriedAtResync: Set<FailureReason> = [.trainingTemporaryFailure, .diskFull]

    /// One line for people (and the pass record): what happened, what is left.
    public var summary: String {
        let executed = self.executed
        let rollouts = residual.filter { $0.kind == .deployment && ($0.action == .wait || $0.action == .blocked || $0.action == .servingUnavailable) }
            .map { "\n  \($0.name): \($0.reason)" }.joined()
        let waiting = residual.count { $0.kind == .model && $0.action == .wait }
        let blocked = residual.count { $0.kind == .model && $0.action == .blocked }
        if executed.isEmpty {
            var text = "Apply complete: no changes; the registry already matches \(revision.commit.prefix(7))."
            let left = residual.filter { $0.kind == .model && !$0.action.isChange && $0.action != .orphaned }
            if !left.isEmpty { text += " \(left.count) waiting or blocked (see the plan above)." }
            return text + rollouts
        }
        var done = 0, failed = 0, skipped = 0
        for entry in executed {
            switch outcomes[entry.id] {
            case .done?: done += 1
            case .failed?: failed += 1
            default: skipped += 1
            }
        }
        var text = "Apply \(failed > 0 ? "finished with failures" : "complete") at \(revision.commit.prefix(7)): \(done) done, \(failed) failed, \(skipped) skipped."
        if waiting + blocked > 0 { text += " Left for later: \(waiting) waiting, \(blocked) blocked." }
        return text + rollouts
    }

    /// "churn train: v3: training exited with status 3…", one per failed entry.
    public var failureLines: [String] {
        failures.map { "\($0.entry.name) \($0.entry.action.rawValue): \($0.failure.message)" }
    }
}
