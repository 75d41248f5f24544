import CapstanCore
import CapstanManifests
import CapstanSystem
import Foundation

/// The reconcile pass (DESIGN.md §4), as one component: `plan(at:)` reads the desired state at a
/// commit and the actual state and returns the plan; `pass(at:fence:)` recovers what a killed
/// pass left, plans, executes (models, then deployments against the registry as the models left
/// it), records conditions and the pass, and returns what happened. `capstan plan`, `capstan
/// apply` and the controller all go through it; they only wire ports and render.
///
/// A long-lived process keeps one reconciler: it keeps what it read (the parse cache by blob id,
/// the tree index and folder identities of the last commit), and its source keeps the repository
/// open.
public final class Reconciler: Sendable {
    public let ports: ReconcilerPorts
    let parseCache: ParseCache
    let inputs: InputResolver

    public init(ports: ReconcilerPorts, parseCache: ParseCache = ParseCache()) {
        self.ports = ports
        self.parseCache = parseCache
        self.inputs = InputResolver(source: ports.source)
    }

    // MARK: Plan

    /// The plan at `ref` (nil: the source's default) against the registry and serving layer as
    /// they are now. Changes nothing (it may fetch the source and cache input hashes). Throws
    /// `InvalidDesiredState` for a commit whose manifests have errors, and classified failures
    /// otherwise (a source that cannot be read, inputs that cannot be identified).
    public func plan(at ref: String?, options: PlanOptions = PlanOptions(), fetch: Bool = true,
                     events: @escaping @Sendable (PassEvent) -> Void = { _ in }) async throws -> PlanReport {
        try await plan(at: ref, options: options, fetch: fetch, resolved: nil, events: events)
    }

    /// `plan(at:)`, from `resolved` when the caller has resolved `ref` already.
    func plan(at ref: String?, options: PlanOptions, fetch: Bool, resolved: SourceRevision?,
              events: @escaping @Sendable (PassEvent) -> Void) async throws -> PlanReport {
        let context = EngineContext(ports, store: ports.store, registry: ports.registry, events: events)
        var options = options
        // A version `training` while another pass holds the lock is being trained, not interrupted.
        if options.applyInProgress == nil, let running = try? await runningPass() { options.applyInProgress = running }
        var prepared = try await prepare(context, ref: ref, fetch: fetch, resolved: resolved)
        var plan = try await modelPlan(&prepared, context, options: options)
        // `apply` plans the Deployments after the model entries ran: this plan shows them against
        // the registry as those entries will leave it.
        let deployments = DeploymentPhase.desired(prepared.load.manifests,
                                                  projection: RegistryProjection.after(plan, from: prepared.actual.registry))
        // Observed even without Deployments in Git when Capstan set endpoints before: those left
        // behind are orphans. A repository that never deployed does not reach out.
        let deployedBefore = !(try await context.store.servingRecords().applied.isEmpty)
        var observedServing = false
        if !deployments.isEmpty || deployedBefore, let serving = ports.serving(prepared.load.manifests.configSpec) {
            observedServing = true
            let phase = DeploymentPhase(context: context, serving: serving.target, commit: prepared.revision.commit)
            let observed = await Result { try await phase.observe(record: false) }
            await serving.close()
            plan.entries += DeploymentPlanner.plan(deployments, serving: try observed.get(), policy: prepared.desired.policy,
                                                   now: context.now())
        }
        return PlanReport(revision: prepared.revision, load: prepared.load, desired: prepared.desired, actual: prepared.actual,
                          plan: plan, observedServing: observedServing)
    }

    /// Who runs a pass now (a live lease), for messages; nil when nobody does. A lease of this
    /// host whose process is gone (killed: its lease not yet expired) runs nothing.
    func runningPass() async throws -> String? {
        let now = ports.now()
        let host = ports.host
        guard let lease = try await ports.store.leases().first(where: { lease in
            guard !lease.isExpired(at: now) else { return false }
            if lease.host == host, case .gone = LocalProcess.liveness(pid: lease.pid, startTime: lease.processStart) { return false }
            return true
        }) else { return nil }
        return "pid \(lease.pid) on \(lease.host), running '\(lease.command)'"
    }

    /// A commit's desired state, ready for the planner, and the registry it is planned against.
    struct Prepared {
        var revision: SourceRevision
        var load: LoadResult
        var desired: DesiredState
        var actual: ActualState
    }

    /// Reads the manifests at `ref`, refuses a commit with errors (nothing is planned from an
    /// invalid commit), resolves the training inputs and fingerprints, and reads the registry.
    func prepare(_ context: EngineContext, ref: String?, fetch: Bool, resolved: SourceRevision? = nil) async throws -> Prepared {
        let source = ports.source
        var revision: SourceRevision
        if let resolved { revision = resolved } else { revision = try await source.resolve(ref, fetch: fetch) }
        var load: LoadResult
        do {
            load = try await self.load(revision)
            if load.diagnostics.contains(where: { $0.code == .fileUnreadable }), try await source.recoverDamagedMirror() {
                context.events(.note("the mirror of \(source.displayName) was damaged; it was cloned again"))
                revision = try await source.resolve(ref, fetch: true)
                load = try await self.load(revision)
            }
        } catch let error as any ClassifiedError where error.failure.reason == .sourceDamaged {
            // A damaged mirror is re-created, never trusted; a damaged local repository is
            // reported.
            guard try await source.recoverDamagedMirror() else { throw error }
            context.events(.note("the mirror of \(source.displayName) was damaged; it was cloned again"))
            revision = try await source.resolve(ref, fetch: true)
            load = try await self.load(revision)
        }
        for note in revision.notes {
            context.events(note.kind == .warning ? .warning(note.message) : .note(note.message))
        }
        // (With errors, those are reported instead; a warning alone, such as a submodule, still
        // leaves nothing to plan from.)
        if load.fileCount == 0 && !load.diagnostics.hasErrors {
            throw ReconcileFailure(.stalled, .noManifests,
                                   "\(source.displayName) @ \(revision.ref) (\(revision.shortCommit)) holds no manifest files (capstan.yaml, *.yaml, *.yml); nothing to plan")
        }
        if load.diagnostics.errorCount > 0 {
            throw InvalidDesiredState(revision: revision, repository: source.displayName, load: load)
        }
        let models: [DesiredModel]
        do {
            models = try await inputs.desiredModels(load, revision: revision, store: context.store, now: context.now)
        } catch let error as InputResolverError {
            var failure = error.failure
            failure.message = "\(source.displayName) @ \(revision.shortCommit): cannot resolve training inputs: \(failure.message)"
            throw failure
        }
        let desired = DesiredState(repository: source.displayName, ref: revision.ref, commit: revision.commit, models: models,
                                   deployments: load.manifests.deployments, policy: load.manifests.configSpec.policy)
        let actual = try await Self.actualState(context, desired)
        return Prepared(revision: revision, load: load, desired: desired, actual: actual)
    }

    /// The registry as it is now, with the versions Capstan's serving records show in use (which
    /// retention keeps).
    static func actualState(_ context: EngineContext, _ desired: DesiredState) async throws -> ActualState {
        let registry = try await context.registry.snapshot()
        let models = Dictionary(desired.deployments.map { ($0.metadata.name, $0.spec.model) }, uniquingKeysWith: { a, _ in a })
        return ActualState(registry: registry, serving: try await context.store.servingRecords().versionsInUse(models: models))
    }

    func load(_ revision: SourceRevision) async throws -> LoadResult {
        let manifests = try await ports.source.manifests(at: revision)
        return try await ManifestLoader(source: manifests, decoder: ManifestDecoder(), cache: parseCache).load()
    }

    /// The plan of the models. Snapshots leave out the training descriptions of versions; a
    /// model that retrains gets its newest version's description fetched, so the plan can say
    /// what changed since.
    func modelPlan(_ prepared: inout Prepared, _ context: EngineContext, options: PlanOptions) async throws -> Plan {
        let now = context.now()
        var plan = Planner.plan(desired: prepared.desired, actual: prepared.actual, now: now, options: options)
        var fetched = false
        for entry in plan.entries {
            guard case .train(let t) = entry.detail,
                  t.reasons.contains(where: { if case .fingerprintChanged = $0 { return true } else { return false } }),
                  var versions = prepared.actual.registry.versions[entry.name],
                  let last = versions.indices.max(by: { versions[$0].number < versions[$1].number }),
                  versions[last].training == nil,
                  let training = try await context.registry.trainingDescription(of: entry.name, number: versions[last].number)
            else { continue }
            versions[last].training = training
            prepared.actual.registry.versions[entry.name] = versions
            fetched = true
        }
        if fetched { plan = Planner.plan(desired: prepared.desired, actual: prepared.actual, now: now, options: options) }
        return plan
    }

    // MARK: Pass

    /// One reconcile pass at `ref`, under the lease `fence` (the caller took it and keeps it
    /// renewed: see `LeaseKeeper`). With `saved`, exactly that plan is carried out, and refused
    /// when the commit or the registry moved since it was made. `serving`, when given, is used
    /// instead of the serving layer capstan.yaml names (the controller's in-process agent).
    ///
    /// A pass that ran returns its report, whatever its outcome; one that could not run (the
    /// commit is invalid, the source unreachable, the lease lost before it began) throws, after
    /// recording the pass as failed.
    public func pass(at ref: String?, fence: Fence, command: String, options: PlanOptions = PlanOptions(), saved: Plan? = nil,
                     fetch: Bool = true, serving override: ServingConnection? = nil,
                     events: @escaping @Sendable (PassEvent) -> Void,
                     onLeaseLost: @escaping @Sendable (any Error) -> Void) async throws -> PassReport {
        let (store, registry) = ports.fenced(fence, onLeaseLost)
        let context = EngineContext(ports, store: store, registry: registry, events: events)
        let passID = try await store.startPass(command: command, commit: nil)
        var commit: String?
        do {
            let recovered = try await Recovery(context: context).recover()
            for note in recovered { events(.recovered(note)) }
            var prepared = try await prepare(context, ref: ref, fetch: fetch)
            commit = prepared.revision.commit
            do {
                try StepEnvironment.checkLengths(prepared.desired.models, reconciler: context.environment)
            } catch {
                throw error.failure
            }
            let plan: Plan
            if let saved {
                try Self.check(saved, against: prepared)
                plan = saved
            } else {
                plan = try await modelPlan(&prepared, context, options: options)
            }
            events(.planned(plan))
            let serving = override ?? ports.serving(prepared.load.manifests.configSpec)
            let executed = await Result { try await execute(plan, prepared, context, serving: serving?.target) }
            if override == nil { await serving?.close() }
            var report = try executed.get()
            report.passID = passID
            report.recovered = recovered
            var finish = StateChanges("record the end of pass \(passID)")
            finish.finishPass(passID, commit: commit, outcome: PassRecord.Outcome(rawValue: report.outcome.rawValue) ?? .failed,
                              summary: report.summary)
            try await store.commit(finish)
            return report
        } catch {
            var finish = StateChanges("record the end of pass \(passID)")
            let failure = Failures.classify(error)
            finish.finishPass(passID, commit: commit, outcome: failure.reason == .interrupted ? .interrupted : .failed,
                              summary: failure.message)
            try? await store.commit(finish)
            throw error
        }
    }

    /// A saved plan runs only against the commit and registry it was computed from.
    static func check(_ plan: Plan, against prepared: Prepared) throws {
        let now = prepared.desired.commit
        guard plan.commit == now else {
            throw ReconcileFailure(.stalled, .planOutdated,
                                   "the saved plan was made at commit \(plan.commit.prefix(12)), but \(plan.ref) is now at \(now.prefix(12)); nothing was applied. Make a new plan (capstan plan --out FILE) and review it")
        }
        guard plan.actualDigest == prepared.actual.digest else {
            throw ReconcileFailure(.stalled, .planOutdated,
                                   "the registry changed since the saved plan was made (another apply ran, or a version, alias or model changed); nothing was applied. Make a new plan (capstan plan --out FILE) and review it")
        }
    }

    /// Executes `plan` (its model entries), then the Deployments against the registry as it is
    /// now, and computes what is left and each object's condition.
    func execute(_ plan: Plan, _ prepared: Prepared, _ context: EngineContext, serving: (any ServingTarget)?) async throws -> PassReport {
        let desired = prepared.desired
        let manifests = prepared.load.manifests
        let modelEntries = Plan(repository: plan.repository, ref: plan.ref, commit: plan.commit, actualDigest: plan.actualDigest,
                                createdAt: plan.createdAt, entries: plan.entries.filter { $0.kind == .model })
        var outcomes = await Executor(context: context).execute(modelEntries, desired: desired)
        var afterModels = try await Self.actualState(context, desired)
        // What the first round made possible (archiving a version an alias just left, a `latest`
        // move to a version just validated) is done in the same pass, so that a second apply
        // right after has nothing to do. Only bookkeeping entries; never a training.
        var followUps: [PlanEntry] = []
        let bookkeeping: Set<PlanAction> = [.moveAlias, .deleteAlias, .archiveVersions, .updateModel]
        // A model with a failed entry gets no follow-ups (its failure is for the next pass to
        // look at); the others do.
        var failedModels = Set<String>()
        for entry in modelEntries.entries where outcomes[entry.id]?.isFailure == true { failedModels.insert(entry.name) }
        for round in 1...2 {
            let next = Planner.plan(desired: desired, actual: afterModels, now: context.now(), options: PlanOptions())
            let entries = next.entries.filter { entry in
                bookkeeping.contains(entry.action) && !failedModels.contains(entry.name)
                    && entry.dependsOn.allSatisfy { id in next.entries.first { $0.id == id } == nil }
            }
            if entries.isEmpty { break }
            let renamed = entries.map { e -> PlanEntry in
                var e = e
                e.id += "#\(round)"
                return e
            }
            followUps += renamed
            let round = Plan(repository: plan.repository, ref: plan.ref, commit: plan.commit, actualDigest: next.actualDigest,
                             createdAt: next.createdAt, entries: renamed)
            let roundOutcomes = await Executor(context: context).execute(round, desired: desired)
            for entry in renamed where roundOutcomes[entry.id]?.isFailure == true { failedModels.insert(entry.name) }
            outcomes.merge(roundOutcomes) { a, _ in a }
            afterModels = try await Self.actualState(context, desired)
        }

        // A pass stopped (a signal, a lost lease) changes nothing in the serving layer.
        try Task.checkCancellation()
        // Deployments follow the registry as the model entries left it.
        var deploymentEntries: [PlanEntry] = []
        var deploymentResidual: [PlanEntry] = []
        var conditions: [ObjectCondition] = []
        let deployments = DeploymentPhase.desired(manifests, registry: afterModels.registry)
        let phase = DeploymentPhase(context: context, serving: serving, commit: desired.commit)
        let deployedBefore = !(try await context.store.servingRecords().applied.isEmpty)
        if serving != nil && (!deployments.isEmpty || deployedBefore) {
            for note in try await phase.recoverInterrupted() { context.events(.note(note)) }
            let observation = try await phase.observe()
            if !deployments.isEmpty || !(observation.endpoints?.isEmpty ?? true) {
                deploymentEntries = DeploymentPlanner.plan(deployments, serving: observation, policy: desired.policy, now: context.now())
                if deploymentEntries.contains(where: { $0.action.isChange }) {
                    context.events(.deploymentPlan(deploymentEntries))
                }
                outcomes.merge(await phase.execute(deploymentEntries, manifests: manifests)) { a, _ in a }
                let after = deploymentEntries.contains(where: { $0.action.isChange }) ? try await phase.observe() : observation
                deploymentResidual = DeploymentPlanner.plan(deployments, serving: after, policy: desired.policy, now: context.now())
                conditions += DeploymentPhase.conditions(deployments, residual: deploymentResidual, observation: after,
                                                         commit: desired.commit, now: context.now())
            }
        }

        let actual = try await Self.actualState(context, desired)
        // `--retry-failed` applies to this pass only: what is left is judged by the backoff.
        let residual = Planner.plan(desired: desired, actual: actual, now: context.now(), options: PlanOptions())
        // What failed in this pass, by model: a failure the registry keeps no trace of (a missing
        // secret, a full disk) still shows in the model's condition.
        var failed: [String: ReconcileFailure] = [:]
        for entry in plan.entries + followUps where entry.kind == .model {
            if failed[entry.name] == nil, let failure = outcomes[entry.id]?.failure { failed[entry.name] = failure }
        }
        conditions = Conditions.models(desired: desired, residual: residual, registry: actual.registry, now: context.now(),
                                       failed: failed) + conditions
        var recording = StateChanges("record the conditions of the pass")
        recording.setConditions(conditions, pruning: [.model, .deployment])
        try await context.commit(recording)
        return PassReport(passID: 0, revision: prepared.revision, plan: plan, followUps: followUps,
                          deploymentEntries: deploymentEntries, outcomes: outcomes, residual: residual.entries + deploymentResidual,
                          conditions: conditions, recovered: [], at: context.now())
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async throwing body, so that clean-up can run before it is rethrown.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
