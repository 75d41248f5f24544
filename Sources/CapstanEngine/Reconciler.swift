import CapstanGit
import CapstanRunner
import CapstanStore
import Foundation

/// The result of executing a plan.
public struct PassResult: Sendable {
    public enum Outcome: String, Sendable {
        /// Nothing is left to do.
        case converged
        /// Work remains for a later pass (a retry after backoff, a blocked alias), nothing failed.
        case progressing
        /// An entry failed (a training failed, a candidate was rejected, a registry call failed).
        case failed
    }

    public var outcomes: [String: EntryOutcome]
    /// The plan computed again after the pass: what is still left.
    public var residual: Plan
    public var conditions: [ObjectCondition]
    public var outcome: Outcome
}

/// One reconcile pass over the registry: recover what a killed pass left, observe, plan, execute,
/// report. The caller holds the state lock.
public struct Reconciler: Sendable {
    public let context: EngineContext

    public init(context: EngineContext) {
        self.context = context
    }

    /// Reads the whole registry.
    public func observe() async throws -> ActualState {
        ActualState(registry: try await context.registry.snapshot())
    }

    /// Closes what an earlier, killed pass left `started` in the journal: a training's process
    /// group (only when its processes carry that run's marker) is killed, and the entry is
    /// marked failed as interrupted. The version it was training stays `training`; the planner
    /// trains it again. Returns a line per entry for people.
    public func recover() throws -> [String] {
        var notes: [String] = []
        for entry in try context.journal.unfinished() {
            var detail: [String: ParamValue] = [:]
            if case .map(let m)? = entry.detail { detail = m }
            var note = "recovered an interrupted \(entry.operation) of \(entry.subject) (journal entry \(entry.id))"
            if entry.operation == trainOperation, case .int(let pgid)? = detail["pgid"], case .string(let run)? = detail["run"],
               pgid > 1 {
                if ProcessGroups.kill(Int32(pgid), environmentMarker: (name: runMarker, value: run)) {
                    note += "; stopped its leftover training processes (process group \(pgid))"
                }
            }
            detail["interrupted"] = .bool(true)
            try context.journal.fail(id: entry.id, detail: .map(detail))
            context.record(entry.subject, "interrupted", commit: nil, reason: note)
            notes.append(note)
        }
        return notes
    }

    /// Executes `plan` and computes what is left and each model's condition.
    public func execute(_ plan: Plan, desired: DesiredState, repository: GitRepository, commit: ObjectID,
                        options: PlanOptions = PlanOptions()) async throws -> PassResult {
        let outcomes = await Executor(context: context).execute(plan, desired: desired, repository: repository, commit: commit)
        let actual = try await observe()
        // `--retry-failed` applies to this pass only: what is left is judged by the backoff.
        let residual = Planner.plan(desired: desired, actual: actual, now: context.now(), options: PlanOptions())
        let conditions = Conditions.models(desired: desired, residual: residual, registry: actual.registry, now: context.now())
        try context.passes.setConditions(conditions)
        try context.passes.removeConditions(except: Set(conditions.map(\.object)), prefix: "model/")
        let failed = outcomes.values.contains { if case .failed = $0 { return true } else { return false } }
        let outcome: PassResult.Outcome = failed ? .failed : (residual.hasChanges || residual.entries.contains { $0.action == .wait || $0.action == .blocked } ? .progressing : .converged)
        _ = options
        return PassResult(outcomes: outcomes, residual: residual, conditions: conditions, outcome: outcome)
    }
}
