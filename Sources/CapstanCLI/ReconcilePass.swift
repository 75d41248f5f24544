import CapstanCore
import CapstanEngine
import CapstanRunner
import CapstanStore
import Foundation

/// One reconcile pass as `apply` and the controller (`run`) execute it: recover what a killed
/// pass left, read the commit, plan, execute, record the pass. The caller holds the state lock.
struct ReconcilePass {
    var options: RepositoryOptions
    var database: StateDatabase
    /// Who the audit log names (`capstan apply (alice)`, `capstan run (capstan@host)`).
    var actor: String
    /// The command recorded with the pass (`apply`, `run`).
    var command: String
    var planOptions = PlanOptions()
    /// A saved plan to execute exactly (apply PLANFILE).
    var saved: Plan?
    /// Progress of the steps.
    var events: @Sendable (PassEvent) -> Void
    /// Notes for people: recovery notes, the plan, the summary.
    var report: @Sendable (Report) -> Void

    enum Report {
        case note(String)
        case plan(Plan)
        case summary(String)
    }

    /// What a pass did.
    struct Outcome {
        var commit: String
        var plan: Plan
        var result: PassResult
        var summary: String

        /// The registry and deployment entries that ran, with how each ended.
        var executed: [(entry: PlanEntry, outcome: EntryOutcome)] {
            (plan.changes.filter { $0.kind == .model } + result.followUps + result.deploymentEntries.filter { $0.action.isChange })
                .compactMap { entry in result.outcomes[entry.id].map { (entry, $0) } }
        }

        var changeCount: Int {
            plan.changes.filter { $0.kind == .model }.count + result.followUps.count + result.deploymentEntries.filter { $0.action.isChange }.count
        }

        var waitingCount: Int {
            result.residual.count(.wait) + result.residual.count(.blocked)
                + result.deploymentResidual.filter { $0.action == .wait || $0.action == .blocked }.count
        }
    }

    /// Runs the pass. A pass that ran but did not converge returns its outcome (`.failed`); a pass
    /// that could not run (the commit is invalid, the source unreachable) throws.
    func run(serving servingOverride: ServingConnection? = nil) async throws -> Outcome {
        let context = EngineContext(
            stateDirectory: options.stateDirectory, database: database, registry: EmbeddedRegistry(database: database),
            runner: LocalStepRunner(), actor: actor, events: events)
        let passID = try context.passes.start(command: command, commit: nil)
        var commit: String?
        do {
            let reconciler = Reconciler(context: context)
            for note in try await reconciler.recover() { report(.note(note)) }
            var prepared = try await PassPreparation.prepare(options, database: database, now: context.now())
            commit = prepared.desired.commit
            try reconciler.checkSecrets(prepared.desired)
            let plan: Plan
            if let saved {
                try ApplyCommand.check(saved, against: prepared)
                plan = saved
            } else {
                plan = try await PassPreparation.plan(&prepared, now: context.now(), options: planOptions)
            }
            report(.plan(plan))
            let serving = servingOverride ?? PassPreparation.servingTarget(prepared.state.result.manifests.configSpec)
            let outcome = await Result(catching: {
                try await reconciler.execute(plan, desired: prepared.desired, manifests: prepared.state.result.manifests,
                                             repository: prepared.repository, commit: prepared.commit, serving: serving?.target)
            })
            if servingOverride == nil { await serving?.close() }
            let result = try outcome.get()
            let summary = ApplyOutput.summary(plan, result)
            report(.summary(summary))
            try context.passes.finish(id: passID, commit: commit, outcome: PassRecords.Pass.Outcome(rawValue: result.outcome.rawValue) ?? .failed,
                                      summary: summary)
            return Outcome(commit: prepared.desired.commit, plan: plan, result: result, summary: summary)
        } catch {
            try? context.passes.finish(id: passID, commit: commit, outcome: .failed, summary: "\(error)")
            if Task.isCancelled { throw CommandFailure(message: "the pass was stopped before it finished") }
            throw error
        }
    }
}
