import CapstanCore
import CapstanManifests
import CapstanSystem
import Foundation
import Synchronization

/// The reconcile pass (DESIGN.md §4), as one component: `plan(at:)` reads the desired state at a
/// commit and the actual state and returns the plan; `pass(at:fence:)` recovers what a killed
/// pass left, plans, executes (models, then deployments against the registry as the models left
/// it), records conditions and the pass, and returns what happened. `capstan plan`, `capstan
/// apply` and the controller all go through it; they only wire ports and render.
///
/// A long-lived process keeps one reconciler: it keeps what it read (the parse cache by blob id,
/// the tree index and folder identities of the last commit, the registry snapshot and the
/// conditions it recorded), and its source keeps the repository open. A pass then costs what
/// changed: the registry is refreshed by its generation, a pass that changed nothing in the
/// registry is not observed and planned again, and only the conditions that changed are written.
public final class Reconciler: Sendable {
    public let ports: ReconcilerPorts
    let parseCache: ParseCache
    let inputs: InputResolver
    /// The registry as last read, refreshed by generation (`Registry.snapshot(refreshing:)`).
    private let registryCache = Mutex<GenerationalSnapshot?>(nil)
    /// The conditions stored by this reconciler's last pass, valid while no other process ran a
    /// pass since (see `recordConditions`), and the commit and registry generation its model
    /// conditions were computed from.
    private let conditionCache = Mutex<KeptConditions?>(nil)
    /// The last plan made from scratch, with the desired state and registry generation it was
    /// made from: a pass over the same commit against a registry that did not move takes it
    /// again (see `reusablePlan`).
    private let lastPlanned = Mutex<Planned?>(nil)
    /// The revision loaded last and what it gave: a next revision of the same shape patches it.
    private let lastLoaded = Mutex<(revision: SourceRevision, load: LoadResult)?>(nil)

    /// The manifests of the last commit this reconciler read (the controller's model cards).
    public var lastManifests: ManifestSet? { lastLoaded.withLock { $0?.load.manifests } }
    /// The registry digest (`ActualState.digest`) of one generation: computed once per generation.
    private let digestCache = Mutex<(generation: Int64, digest: String)?>(nil)

    struct KeptConditions: Sendable {
        var passID: Int64
        var conditions: [ObjectRef: ObjectCondition]
        /// What the model conditions were computed from: `Conditions.models` gives the same
        /// for the same commit, plan and registry.
        var basis: (commit: String, generation: Int64, plan: Plan)?
    }

    struct Planned: Sendable {
        var desired: DesiredState
        var generation: Int64
        /// The versions in use it was planned with (retention keeps them; no generation covers them).
        var serving: [VersionInUse]
        var options: PlanOptions
        var plan: Plan
    }

    public init(ports: ReconcilerPorts, parseCache: ParseCache = ParseCache()) {
        self.ports = ports
        self.parseCache = parseCache
        self.inputs = InputResolver(source: ports.source)
    }

    /// What the reconciler keeps between passes, for tests and diagnostics: the parse cache and the
    /// generation of the registry snapshot it holds (nil: none, or a registry without
    /// generations).
    public var parsedFiles: ParseCache { parseCache }
    /// How many loads were made by patching the one before (only the files a commit changed were
    /// read: `ManifestLoader.load(after:changes:)`), and how many models were resolved rather
    /// than carried forward, since this reconciler was made.
    public var patchedLoads: Int { patched.load(ordering: .relaxed) }
    public var resolvedModels: Int { inputs.resolvedModels }
    private let patched = Atomic<Int>(0)
    public var registryGeneration: Int64? { registryCache.withLock { $0?.generation } }

    /// The registry now: the kept snapshot when the registry has not moved since it was read,
    /// otherwise refreshed through `registry` (the pass's fenced registry, over the same state).
    func registrySnapshot(_ registry: any Registry) async throws -> GenerationalSnapshot {
        let previous = registryCache.withLock { $0 }
        let now = try await registry.snapshot(refreshing: previous)
        registryCache.withLock { kept in
            // Plans and passes may overlap (the controller's API): keep the newest.
            if kept == nil || (kept?.generation ?? .min) <= (now.generation ?? .min) { kept = now }
        }
        return now
    }

    /// The actual state of `read` with `serving`, its digest known when this generation's was
    /// computed before.
    func actualState(_ read: GenerationalSnapshot, serving: [VersionInUse]) -> ActualState {
        guard let generation = read.generation else { return ActualState(registry: read.snapshot, serving: serving) }
        if let known = digestCache.withLock({ $0?.generation == generation ? $0?.digest : nil }) {
            return ActualState(registry: read.snapshot, serving: serving, knownDigest: known)
        }
        let digest = ActualState.digest(of: read.snapshot)
        digestCache.withLock { $0 = (generation, digest) }
        return ActualState(registry: read.snapshot, serving: serving, knownDigest: digest)
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
        /// The registry generation `actual` was read at (nil: the registry keeps none).
        var generation: Int64?
    }

    /// Reads the manifests at `ref`, refuses a commit with errors (nothing is planned from an
    /// invalid commit), resolves the training inputs and fingerprints, and reads the registry.
    func prepare(_ context: EngineContext, ref: String?, fetch: Bool, resolved: SourceRevision? = nil) async throws -> Prepared {
        let source = ports.source
        var revision: SourceRevision
        if let resolved { revision = resolved } else { revision = try await source.resolve(ref, fetch: fetch) }
        var load: LoadResult
        var changes: SourceChanges?
        do {
            (load, changes) = try await self.load(revision)
            if load.diagnostics.contains(where: { $0.code == .fileUnreadable }), try await source.recoverDamagedMirror() {
                context.events(.note("the mirror of \(source.displayName) was damaged; it was cloned again"))
                revision = try await source.resolve(ref, fetch: true)
                (load, changes) = try await self.load(revision)
            }
        } catch let error as any ClassifiedError where error.failure.reason == .sourceDamaged {
            // A damaged mirror is re-created, never trusted; a damaged local repository is
            // reported.
            guard try await source.recoverDamagedMirror() else { throw error }
            context.events(.note("the mirror of \(source.displayName) was damaged; it was cloned again"))
            revision = try await source.resolve(ref, fetch: true)
            (load, changes) = try await self.load(revision)
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
        let named = load.manifests.configSpec.registry
        if named != ports.registryConfig {
            throw ReconcileFailure(.stalled, .registryRefused,
                                   "capstan.yaml at \(revision.shortCommit) names \(Self.describe(named)), but this reconciler was started for \(Self.describe(ports.registryConfig)); nothing was planned against either. Run the command again (a running `capstan run` must be restarted to change registries)")
        }
        let models: [DesiredModel]
        do {
            if let kept = lastPlanned.withLock({ $0?.desired }), kept.commit == revision.commit, kept.repository == source.displayName,
               !Self.hasExternalInputs(load.manifests) {
                // The same commit, and every input identified by the commit alone: the same models.
                models = kept.models
            } else {
                models = try await inputs.desiredModels(load, revision: revision, store: context.store, now: context.now,
                                                        changes: changes)
            }
        } catch let error as InputResolverError {
            var failure = error.failure
            failure.message = "\(source.displayName) @ \(revision.shortCommit): cannot resolve training inputs: \(failure.message)"
            throw failure
        }
        let desired = DesiredState(repository: source.displayName, ref: revision.ref, commit: revision.commit, models: models,
                                   deployments: load.manifests.deployments, policy: load.manifests.configSpec.policy)
        let registry = try await registrySnapshot(context.registry)
        return Prepared(revision: revision, load: load, desired: desired,
                        actual: actualState(registry, serving: try await Self.versionsInUse(context, desired)),
                        generation: registry.generation)
    }

    static func describe(_ registry: RegistryConfig) -> String {
        switch registry {
        case .embedded: return "the embedded registry"
        case .mlflow(let m):
            // Never user information a URL may carry (the client refuses such URLs anyway).
            var url = m.url
            if let scheme = url.range(of: "://"), let at = url[scheme.upperBound...].firstIndex(of: "@"),
               !url[scheme.upperBound..<at].contains("/") {
                url.replaceSubrange(scheme.upperBound...at, with: "")
            }
            return "the MLflow registry at \(url) (experiment \(m.experiment))"
        }
    }

    /// Whether a model has an input outside the repository, whose identity (its content) may change
    /// without a commit.
    static func hasExternalInputs(_ manifests: ManifestSet) -> Bool {
        manifests.models.contains { model in
            (model.spec.train?.inputs ?? []).contains { if case .external = $0 { return true } else { return false } }
        }
    }

    /// The last plan made, when it is what planning again would give: the same desired state
    /// (commit and models), the same registry generation, versions in use and options, and no
    /// backoff it waits for has ended since (the only part of a plan that moves with the clock).
    /// Its creation time is `now`.
    func reusablePlan(_ prepared: Prepared, options: PlanOptions, now: Int64) -> Plan? {
        guard let generation = prepared.generation,
              var plan = lastPlanned.withLock({ kept -> Plan? in
                  guard let kept, kept.generation == generation, kept.options == options, kept.desired == prepared.desired,
                        kept.serving == prepared.actual.serving else { return nil }
                  return kept.plan
              }) else { return nil }
        for entry in plan.entries where entry.action == .wait {
            if case .wait(let wait) = entry.detail, let until = wait.until, until <= now { return nil }
        }
        plan.createdAt = now
        return plan
    }

    /// After a commit that changed a few models, with nothing else moved since the last plan (the
    /// registry's generation, the versions in use, the options, the policy, the Deployments, the
    /// repository; the ref and commit name the plan and decide nothing in it): that plan, and the
    /// models to plan again, those whose desired state differs and those whose backoff ended
    /// since. Nil when the whole plan must be made again (a model came or went, or many changed).
    func changedDesiredModels(_ prepared: Prepared, options: PlanOptions, now: Int64) -> (Plan, Set<String>)? {
        guard let generation = prepared.generation,
              let kept = lastPlanned.withLock({ $0 }), kept.generation == generation, kept.options == options,
              kept.serving == prepared.actual.serving, kept.desired.policy == prepared.desired.policy,
              kept.desired.deployments == prepared.desired.deployments, kept.desired.repository == prepared.desired.repository,
              kept.desired.models.count == prepared.desired.models.count else { return nil }
        var changed = Set<String>()
        for (old, new) in zip(kept.desired.models, prepared.desired.models) where old != new {
            guard old.name == new.name else { return nil }
            changed.insert(new.name)
            if changed.count > Self.replanLimit { return nil }
        }
        for entry in kept.plan.entries where entry.action == .wait {
            if case .wait(let wait) = entry.detail, let until = wait.until, until <= now { changed.insert(entry.name) }
        }
        return (kept.plan, changed)
    }

    /// Beyond this many changed models a plan is made from scratch (as cheap, and simpler).
    static let replanLimit = 256

    /// The versions Capstan's serving records show in use (which retention keeps), for the
    /// Deployments of `desired`.
    static func versionsInUse(_ context: EngineContext, _ desired: DesiredState) async throws -> [VersionInUse] {
        let models = Dictionary(desired.deployments.map { ($0.metadata.name, $0.spec.model) }, uniquingKeysWith: { a, _ in a })
        return try await context.store.servingRecords().versionsInUse(models: models)
    }

    /// The manifests at `revision`, and how its tree differs from the one loaded last when the
    /// source can tell (the same paths, only contents changed): then only the changed files are
    /// read again (`ManifestLoader.load(after:changes:)`), and the caller resolves only the
    /// models they touch.
    func load(_ revision: SourceRevision) async throws -> (LoadResult, SourceChanges?) {
        var changes: SourceChanges?
        let kept = lastLoaded.withLock { $0 }
        if let kept {
            if kept.revision.tree == revision.tree {
                changes = SourceChanges(from: revision.tree, to: revision.tree, files: [:])
            } else {
                // A comparison that fails (an object that cannot be read) leaves the full read to say why.
                changes = try? await ports.source.changes(from: kept.revision, to: revision)
            }
        }
        let manifests = try await ports.source.manifests(at: revision)
        let loader = ManifestLoader(source: manifests, decoder: ManifestDecoder(), cache: parseCache)
        let load: LoadResult
        if let kept, let changes {
            load = try await loader.load(after: kept.load, changes: changes)
            if load.patched { patched.add(1, ordering: .relaxed) }
        } else {
            load = try await loader.load()
        }
        lastLoaded.withLock { $0 = (revision, load) }
        return (load, changes)
    }

    /// The plan of the models. Snapshots leave out the training descriptions of versions; a
    /// model that retrains gets its newest version's description fetched, so the plan can say
    /// what changed since.
    func modelPlan(_ prepared: inout Prepared, _ context: EngineContext, options: PlanOptions) async throws -> Plan {
        let now = context.now()
        if let plan = reusablePlan(prepared, options: options, now: now) { return plan }
        let changed = changedDesiredModels(prepared, options: options, now: now)
        func planNow() -> Plan {
            if let (base, models) = changed {
                return Planner.replan(base, models: models, desired: prepared.desired, actual: prepared.actual, now: now, options: options)
            }
            return Planner.plan(desired: prepared.desired, actual: prepared.actual, now: now, options: options)
        }
        var plan = planNow()
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
        if fetched { plan = planNow() }
        if let generation = prepared.generation {
            lastPlanned.withLock { $0 = Planned(desired: prepared.desired, generation: generation, serving: prepared.actual.serving,
                                                options: options, plan: plan) }
        }
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
        // The conditions kept from this reconciler's last pass stay true only if no other pass ran
        // since (pass ids are consecutive): then this pass takes them over.
        conditionCache.withLock { kept in
            if let k = kept, k.passID == passID - 1 { kept?.passID = passID } else { kept = nil }
        }
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
            // The residual plan when the pass changes nothing in the registry: the plan itself,
            // when it was made here with the options a residual is made with.
            var unchanged: Plan?
            if let saved {
                try Self.check(saved, against: prepared)
                plan = saved
            } else {
                plan = try await modelPlan(&prepared, context, options: options)
                if options == PlanOptions() { unchanged = plan }
            }
            events(.planned(plan))
            let serving = override ?? ports.serving(prepared.load.manifests.configSpec)
            let executed = await Result {
                try await execute(plan, prepared, context, serving: serving?.target, passID: passID, residualIfUnchanged: unchanged)
            }
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
    /// now, and computes what is left and each object's condition. When the registry did not move
    /// since `prepared` was read, nothing is planned again: what is left of the models is
    /// `residualIfUnchanged` (the plan made from the same state, with the residual's options).
    func execute(_ plan: Plan, _ prepared: Prepared, _ context: EngineContext, serving: (any ServingTarget)?, passID: Int64,
                 residualIfUnchanged: Plan? = nil) async throws -> PassReport {
        let desired = prepared.desired
        let manifests = prepared.load.manifests
        let modelEntries = Plan(repository: plan.repository, ref: plan.ref, commit: plan.commit, actualDigest: plan.actualDigest,
                                createdAt: plan.createdAt, entries: plan.entries.filter { $0.kind == .model })
        var outcomes = await Executor(context: context).execute(modelEntries, desired: desired)
        /// The plan again against `actual`: only the models that changed since `prepared` when the
        /// plan made then is at hand (`residualIfUnchanged`) and the versions in use are the same,
        /// otherwise all of them.
        func planAgain(_ actual: ActualState, _ read: GenerationalSnapshot) -> Plan {
            let now = context.now()
            guard let base = residualIfUnchanged, actual.serving == prepared.actual.serving,
                  var models = Self.changedModels(from: prepared.actual.registry, generation: prepared.generation, to: read) else {
                return Planner.plan(desired: desired, actual: actual, now: now, options: PlanOptions())
            }
            for entry in base.entries where entry.action == .wait {
                if case .wait(let wait) = entry.detail, let until = wait.until, until <= now { models.insert(entry.name) }
            }
            return Planner.replan(base, models: models, desired: desired, actual: actual, now: now)
        }
        var read = try await registrySnapshot(context.registry)
        // The model entries do not change what serves: the versions in use are those read for the plan.
        var afterModels = actualState(read, serving: prepared.actual.serving)
        /// Nothing the pass did (or anyone else did meanwhile) changed the registry.
        var registryUnchanged: Bool { read.generation != nil && read.generation == prepared.generation }
        // What the first round made possible (archiving a version an alias just left, a `latest`
        // move to a version just validated) is done in the same pass, so that a second apply
        // right after has nothing to do. Only bookkeeping entries; never a training. The gates
        // of a registry-only model's versions (metrics only, no command) count as bookkeeping:
        // a model it has just taken over in MLflow shows its versions only once registered.
        var followUps: [PlanEntry] = []
        let bookkeeping: Set<PlanAction> = [.moveAlias, .deleteAlias, .archiveVersions, .updateModel]
        let registryOnly = Set(desired.models.filter(\.isRegistryOnly).map(\.name))
        // A model with a failed entry gets no follow-ups (its failure is for the next pass to
        // look at); the others do.
        var failedModels = Set<String>()
        for entry in modelEntries.entries where outcomes[entry.id]?.isFailure == true { failedModels.insert(entry.name) }
        for round in 1...3 where !registryUnchanged {
            let next = planAgain(afterModels, read)
            let entries = next.entries.filter { entry in
                (bookkeeping.contains(entry.action) || (entry.action == .validate && registryOnly.contains(entry.name)))
                    && !failedModels.contains(entry.name)
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
            read = try await registrySnapshot(context.registry)
            afterModels = actualState(read, serving: prepared.actual.serving)
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

        read = try await registrySnapshot(context.registry)
        // The deployment phase may have changed what serves: read again.
        let actual = actualState(read, serving: try await Self.versionsInUse(context, desired))
        let servingUnchanged = actual.serving == prepared.actual.serving
        // `--retry-failed` applies to this pass only: what is left is judged by the backoff.
        let residual = (registryUnchanged && servingUnchanged ? residualIfUnchanged : nil) ?? planAgain(actual, read)
        // The residual is the plan of the next pass over this commit and registry: kept as the last
        // plan (for a plan with trainings, the next pass plans again: it fetches what changed).
        if let generation = read.generation, !residual.entries.contains(where: { $0.action == .train }) {
            lastPlanned.withLock { $0 = Planned(desired: desired, generation: generation, serving: actual.serving,
                                                options: PlanOptions(), plan: residual) }
        }
        // What failed in this pass, by model: a failure the registry keeps no trace of (a missing
        // secret, a full disk) still shows in the model's condition.
        var failed: [String: ReconcileFailure] = [:]
        for entry in plan.entries + followUps where entry.kind == .model {
            if failed[entry.name] == nil, let failure = outcomes[entry.id]?.failure { failed[entry.name] = failure }
        }
        // The model conditions of the same commit, registry and residual are those of the last
        // pass, when neither pass failed: taken as they are.
        let basis = failed.isEmpty ? read.generation.map { (commit: desired.commit, generation: $0, plan: residual) } : nil
        let kept = conditionCache.withLock { kept -> [ObjectCondition]? in
            guard let kept, kept.passID == passID, let was = kept.basis, let basis, was.commit == basis.commit,
                  was.generation == basis.generation, was.plan.entries == basis.plan.entries else { return nil }
            return desired.models.compactMap { kept.conditions[.model($0.name)] }
        }
        let models = kept.flatMap { $0.count == desired.models.count ? $0 : nil }
            ?? Conditions.models(desired: desired, residual: residual, registry: actual.registry, now: context.now(), failed: failed)
        conditions = models + conditions
        try await recordConditions(conditions, passID: passID, basis: basis, context)
        return PassReport(passID: 0, revision: prepared.revision, plan: plan, followUps: followUps,
                          deploymentEntries: deploymentEntries, outcomes: outcomes, residual: residual.entries + deploymentResidual,
                          conditions: conditions, recovered: [], at: context.now())
    }
}

extension Reconciler {
    /// The models whose registry state differs between `old` and `new` (their row, versions or
    /// aliases); nil when a model was registered or removed, or the models are not in the same
    /// order (then everything is planned again). Cheap for a refreshed snapshot: what did not
    /// change shares its storage with `old`.
    static func changedModels(from old: RegistrySnapshot, to new: RegistrySnapshot) -> Set<String>? {
        changedModels(from: old, generation: nil, to: GenerationalSnapshot(generation: nil, snapshot: new))
    }

    /// `changedModels(from:to:)`, told by the registry when `new` was refreshed from the
    /// generation `old` was read at (`GenerationalSnapshot.refreshed`): no comparison then.
    static func changedModels(from old: RegistrySnapshot, generation: Int64?, to read: GenerationalSnapshot) -> Set<String>? {
        let new = read.snapshot
        guard old.models.count == new.models.count else { return nil }
        if let generation, read.generation == generation { return [] }
        if let generation, let refreshed = read.refreshed, refreshed.since == generation { return refreshed.models }
        var changed = Set<String>()
        for (a, b) in zip(old.models, new.models) where a != b {
            guard a.name == b.name else { return nil }
            changed.insert(a.name)
        }
        for (name, versions) in new.versions where old.versions[name] != versions { changed.insert(name) }
        for name in old.versions.keys where new.versions[name] == nil { changed.insert(name) }
        for (name, aliases) in new.aliases where old.aliases[name] != aliases { changed.insert(name) }
        for name in old.aliases.keys where new.aliases[name] == nil { changed.insert(name) }
        return changed
    }

    /// Records the conditions of pass `passID`: only those that changed are written (a condition
    /// that holds keeps the time and commit at which it was set), and those of objects no longer
    /// desired are removed. What is stored is known without reading it when this reconciler's
    /// previous pass was the last one (`pass` checks); otherwise it is read. When it cannot be
    /// read (a row no Capstan wrote), every condition is written and the others pruned, as before.
    func recordConditions(_ conditions: [ObjectCondition], passID: Int64, basis: (commit: String, generation: Int64, plan: Plan)?,
                          _ context: EngineContext) async throws {
        var known = conditionCache.withLock { kept -> [ObjectRef: ObjectCondition]? in
            defer { kept = nil }  // Until the write is done: a failed write leaves the store unknown.
            return kept?.passID == passID ? kept?.conditions : nil
        }
        if known == nil, let stored = try? await context.store.conditions() {
            known = Dictionary(stored.map { ($0.object, $0) }, uniquingKeysWith: { a, _ in a })
        }
        var now: [ObjectRef: ObjectCondition] = [:]
        var recording = StateChanges("record the conditions of the pass")
        if let known {
            var changed: [ObjectCondition] = []
            for condition in conditions {
                if let before = known[condition.object], before.holds(condition) {
                    now[condition.object] = before
                } else {
                    changed.append(condition)
                    now[condition.object] = condition
                }
            }
            if !changed.isEmpty { recording.setConditions(changed) }
            recording.removeConditions(known.keys.filter { now[$0] == nil }.sorted { $0.description < $1.description })
        } else {
            for condition in conditions { now[condition.object] = condition }
            recording.setConditions(conditions, pruning: [.model, .deployment])
        }
        try await context.commit(recording)
        conditionCache.withLock { $0 = KeptConditions(passID: passID, conditions: now, basis: basis) }
    }
}

extension ObjectCondition {
    /// Whether `other` says the same as this condition (the same type, reason, message and
    /// failure class), whenever and at whichever commit it was observed: a condition that holds
    /// is not written again, and keeps the time and commit at which it was set.
    func holds(_ other: ObjectCondition) -> Bool {
        object == other.object && type == other.type && reason == other.reason && message == other.message
            && failureClass == other.failureClass
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async throwing body, so that clean-up can run before it is rethrown.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
