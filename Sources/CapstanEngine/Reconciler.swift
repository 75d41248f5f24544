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
    /// The deployment entries decided after the registry changes, and what is left of them.
    public var deploymentEntries: [PlanEntry] = []
    public var deploymentResidual: [PlanEntry] = []
    /// Entries a first round made possible and that ran in the same pass.
    public var followUps: [PlanEntry] = []
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

    /// Closes what an earlier, killed pass left `started` in the journal. For an interrupted
    /// training, the processes of its run (its process group, only when they carry that run's
    /// marker) are killed and its working folder removed; the version it was training stays
    /// `training` and the planner trains it again. For a registry change, the registry is
    /// checked: a change that was made gets the audit event it was missing. Every entry is
    /// then closed as interrupted. Returns a line per entry for people.
    public func recover() async throws -> [String] {
        var notes: [String] = []
        // Changes of the serving layer are closed by the deployment phase, which can see it.
        for entry in try context.journal.unfinished() where entry.operation != deployOperation {
            var detail: [String: ParamValue] = [:]
            if case .map(let m)? = entry.detail { detail = m }
            var note = "recovered an interrupted \(entry.operation) of \(entry.subject) (journal entry \(entry.id))"
            var missed: [AuditEvent] = []
            if entry.operation == trainOperation {
                if case .int(let pgid)? = detail["pgid"], case .string(let run)? = detail["run"], pgid > 1,
                   ProcessGroups.kill(Int32(pgid), environmentMarker: (name: runMarker, value: run)) {
                    note += "; stopped its leftover training processes (process group \(pgid))"
                }
                missed += try await missedTrainingEvents(entry, detail)
            } else if entry.operation == validateCommandOperation {
                if case .int(let pgid)? = detail["pgid"], case .string(let run)? = detail["run"], pgid > 1,
                   ProcessGroups.kill(Int32(pgid), environmentMarker: (name: runMarker, value: run)) {
                    note += "; stopped its leftover validation processes (process group \(pgid))"
                }
                if entry.subject.hasPrefix("model/"), case .int(let number)? = detail["version"] {
                    StepWorkspace(stateDirectory: context.stateDirectory, model: String(entry.subject.dropFirst("model/".count)),
                                  version: Int(number), label: "validate").clean()
                }
            } else if case .map(let check)? = detail["check"], case .some(let audit) = detail["audit"],
                      let event = AuditCodec.event(audit), try await happened(entry.operation, check) {
                var late = event
                late.reason += " (recorded after an interrupted pass)"
                missed.append(late)
                note += "; the change had been made"
            }
            detail["interrupted"] = .bool(true)
            let journal = context.journal, audit = context.audit
            let closing = missed
            let id = entry.id
            let closed = ParamValue.map(detail)
            try await context.database.write("close journal entry \(id)") { db in
                for event in closing { _ = try audit.record(db, event) }
                try journal.fail(db, id: id, detail: closed)
            }
            context.record(entry.subject, "interrupted", commit: nil, reason: note)
            notes.append(note)
        }
        return notes
    }

    /// The audit events an interrupted training did not get to record: its version's creation
    /// (journaled with the number, unless the crash came first) and its end of training.
    func missedTrainingEvents(_ entry: Journal.Entry, _ detail: [String: ParamValue]) async throws -> [AuditEvent] {
        guard entry.subject.hasPrefix("model/"), case .string(let fingerprint)? = detail["fingerprint"] else { return [] }
        let model = String(entry.subject.dropFirst("model/".count))
        guard let version = try await context.registry.version(of: model, fingerprint: fingerprint) else { return [] }
        var events: [AuditEvent] = []
        let commit: String? = if case .string(let c)? = detail["commit"] { c } else { nil }
        if detail["version"] == nil {
            // The crash came before the version was journaled with its event.
            if detail["resumes"] == nil {
                events.append(context.event("model/\(model)/v\(version.number)", "create-version", commit: commit,
                                            after: .map(["status": .string("training"), "fingerprint": .string(fingerprint)]),
                                            reason: "recorded after an interrupted pass"))
            } else if case .int(let attempt)? = detail["attempt"], version.attempts >= Int(attempt) {
                // A retry or a resumed run that had claimed the version (its attempt counted).
                events.append(context.event("model/\(model)/v\(version.number)", "retrain-version", commit: commit,
                                            after: .map(["status": .string("training"), "fingerprint": .string(fingerprint),
                                                         "attempt": .int(attempt)]),
                                            reason: "recorded after an interrupted pass"))
            }
        }
        if version.status == .trained, let artifact = version.artifactDigest {
            events.append(Training.trainedEvent(context, name: model, number: version.number, commit: commit, artifact: artifact,
                                                metrics: version.metrics, reason: "recorded after an interrupted pass"))
        }
        // The failure was journaled before the version was marked failed.
        if version.status == .failed, let failure = detail["failure"], var event = AuditCodec.event(failure) {
            event.reason += " (recorded after an interrupted pass)"
            events.append(event)
        }
        // Its working folder is of no further use.
        if case .int(let attempt)? = detail["attempt"] {
            StepWorkspace(stateDirectory: context.stateDirectory, model: model, version: version.number, label: "a\(attempt)").clean()
        }
        return events
    }

    /// Whether the registry change of an interrupted journal entry was made.
    func happened(_ operation: String, _ check: [String: ParamValue]) async throws -> Bool {
        guard case .string(let model)? = check["model"] else { return false }
        let registry = context.registry
        switch operation {
        case "register-model":
            return try await registry.model(named: model) != nil
        case "validate":
            guard case .int(let n)? = check["version"] else { return false }
            let status = try await registry.version(of: model, number: Int(n))?.status
            return status == .validated || status == .rejected
        case "move-alias":
            guard case .string(let alias)? = check["alias"], case .int(let to)? = check["to"] else { return false }
            return try await registry.resolveAlias(alias, of: model) == Int(to)
        case "delete-alias":
            guard case .string(let alias)? = check["alias"] else { return false }
            return try await registry.resolveAlias(alias, of: model) == nil
        case "archive-versions":
            guard case .list(let numbers)? = check["versions"] else { return false }
            for case .int(let n) in numbers where try await registry.version(of: model, number: Int(n))?.archivedAt == nil {
                return false
            }
            return true
        default:
            return false
        }
    }

    /// Refuses a desired state whose steps would get a secret too short to be redacted from
    /// what they print and return (`SecretScrubber.minimumLength`). Called when the desired
    /// state is loaded, before anything runs; `execute` checks again.
    public func checkSecrets(_ desired: DesiredState) throws {
        try StepEnvironment.checkLengths(desired.models, reconciler: context.environment)
    }

    /// Executes `plan` (its model entries), then the Deployments against the registry as it is
    /// now, and computes what is left and each object's condition.
    public func execute(_ plan: Plan, desired: DesiredState, manifests: ManifestSet, repository: GitRepository, commit: ObjectID,
                        serving: (any ServingTarget)?) async throws -> PassResult {
        try checkSecrets(desired)
        let modelEntries = Plan(repository: plan.repository, ref: plan.ref, commit: plan.commit, actualDigest: plan.actualDigest,
                                createdAt: plan.createdAt, entries: plan.entries.filter { $0.kind == .model })
        var outcomes = await Executor(context: context).execute(modelEntries, desired: desired, repository: repository, commit: commit)
        var afterModels = try await observe()
        // What the first round made possible (archiving a version an alias just left, a `latest`
        // move to a version just validated) is done in the same pass, so that a second apply
        // right after has nothing to do. Only bookkeeping entries; never a training.
        var followUps: [PlanEntry] = []
        let bookkeeping: Set<PlanAction> = [.moveAlias, .deleteAlias, .archiveVersions, .updateModel]
        for round in 1...2 where !outcomes.values.contains(where: \.isFailure) {
            let next = Planner.plan(desired: desired, actual: afterModels, now: context.now(), options: PlanOptions())
            let entries = next.entries.filter { bookkeeping.contains($0.action) && $0.dependsOn.allSatisfy { id in next.entries.first { $0.id == id } == nil } }
            if entries.isEmpty { break }
            let renamed = entries.map { e -> PlanEntry in
                var e = e
                e.id += "#\(round)"
                return e
            }
            followUps += renamed
            let round = Plan(repository: plan.repository, ref: plan.ref, commit: plan.commit, actualDigest: next.actualDigest,
                             createdAt: next.createdAt, entries: renamed)
            outcomes.merge(await Executor(context: context).execute(round, desired: desired, repository: repository, commit: commit)) { a, _ in a }
            afterModels = try await observe()
        }

        // A pass stopped (a signal, a lost lease) changes nothing in the serving layer.
        try Task.checkCancellation()
        // Deployments follow the registry as the model entries left it.
        var deploymentEntries: [PlanEntry] = []
        var deploymentResidual: [PlanEntry] = []
        var conditions: [ObjectCondition] = []
        let deployments = DeploymentPhase.desired(manifests, registry: afterModels.registry)
        let phase = DeploymentPhase(context: context, serving: serving)
        let deployedBefore = !((try? phase.records.applied().isEmpty) ?? true)
        if serving != nil && (!deployments.isEmpty || deployedBefore) {
            for note in try await phase.recoverInterrupted() { context.events(.note("capstan: \(note)")) }
            let observation = try await phase.observe()
            if !deployments.isEmpty || !(observation.endpoints?.isEmpty ?? true) {
                deploymentEntries = DeploymentPlanner.plan(deployments, serving: observation, policy: desired.policy, now: context.now())
                if deploymentEntries.contains(where: { $0.action.isChange }) {
                    context.events(.deploymentPlan(deploymentEntries))
                }
                outcomes.merge(await phase.execute(deploymentEntries, manifests: manifests, repository: repository, commit: desired.commit)) { a, _ in a }
                let after = deploymentEntries.contains(where: { $0.action.isChange }) ? try await phase.observe() : observation
                deploymentResidual = DeploymentPlanner.plan(deployments, serving: after, policy: desired.policy, now: context.now())
                conditions += DeploymentPhase.conditions(deployments, residual: deploymentResidual, observation: after,
                                                         commit: desired.commit, now: context.now())
            }
        }

        let actual = try await observe()
        // `--retry-failed` applies to this pass only: what is left is judged by the backoff.
        let residual = Planner.plan(desired: desired, actual: actual, now: context.now(), options: PlanOptions())
        conditions = Conditions.models(desired: desired, residual: residual, registry: actual.registry, now: context.now()) + conditions
        try context.passes.setConditions(conditions)
        try context.passes.removeConditions(except: Set(conditions.map(\.object)), prefix: "model/")
        try context.passes.removeConditions(except: Set(conditions.map(\.object)), prefix: "deployment/")
        let failed = outcomes.values.contains(where: \.isFailure)
        let left = residual.hasChanges || residual.entries.contains { $0.action == .wait || $0.action == .blocked }
            || deploymentResidual.contains { $0.action.isChange || $0.action == .wait || $0.action == .blocked || $0.action == .servingUnavailable || $0.action == .drift }
        let outcome: PassResult.Outcome = failed ? .failed : (left ? .progressing : .converged)
        return PassResult(outcomes: outcomes, residual: residual, conditions: conditions, outcome: outcome,
                          deploymentEntries: deploymentEntries, deploymentResidual: deploymentResidual, followUps: followUps)
    }
}
