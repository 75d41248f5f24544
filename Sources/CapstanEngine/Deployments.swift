import CapstanCore
import CapstanManifests
import CapstanSystem
import Foundation

/// The serving half of a pass: observe the serving layer, plan the Deployments against the
/// registry as the model half left it, and carry the plan out (endpoints, rollout states,
/// quarantines), recording every step in the audit log.
struct DeploymentPhase: Sendable {
    let context: EngineContext
    /// Nil when no serving layer is configured.
    let serving: (any ServingTarget)?
    /// The commit whose code serves (its materialized tree).
    let commit: String

    init(context: EngineContext, serving: (any ServingTarget)?, commit: String) {
        self.context = context
        self.serving = serving
        self.commit = commit
    }

    /// A digest of what a rollout and a quarantine belong to: the Deployment's spec and how its
    /// model is served. Changing either in Git lifts a quarantine.
    static func specHash(_ deployment: DeploymentManifest, serve: ServeSpec?) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var bytes = (try? encoder.encode(deployment.spec)) ?? Data()
        bytes.append(0)
        bytes.append((try? encoder.encode(serve)) ?? Data())
        return Hex.sha256(bytes)
    }

    /// Each Deployment with the version it should serve now.
    static func desired(_ manifests: ManifestSet, registry: RegistrySnapshot) -> [DesiredDeployment] {
        desired(manifests, projection: RegistryProjection(registry: registry))
    }

    /// Each Deployment with the version it will serve once the model entries of a plan have run
    /// (`capstan plan`; `apply` runs them, then resolves against the registry they left).
    static func desired(_ manifests: ManifestSet, projection: RegistryProjection) -> [DesiredDeployment] {
        manifests.deployments.map { d in
            DesiredDeployment.resolve(d, projection: projection,
                                      specHash: specHash(d, serve: manifests.model(named: d.spec.model)?.spec.serve))
        }
    }

    /// What the serving layer holds, with Capstan's own records. Never throws: an unreachable
    /// serving layer is an observation.
    func observe(record: Bool = true) async throws -> ServingObservation {
        let records = try await context.store.servingRecords()
        guard let serving else {
            return ServingObservation(endpoints: nil, unavailable: "no serving layer is configured", applied: records.applied,
                                      rollouts: records.rollouts, quarantine: records.quarantine)
        }
        do {
            let endpoints = try await serving.endpoints()
            if record {
                var changes = StateChanges("record the observed endpoints")
                changes.setObserved(endpoints)
                try? await context.commit(changes)
            }
            return ServingObservation(endpoints: Dictionary(endpoints.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a }),
                                      applied: records.applied, rollouts: records.rollouts, quarantine: records.quarantine)
        } catch {
            return ServingObservation(endpoints: nil, unavailable: String(describing: error), applied: records.applied,
                                      rollouts: records.rollouts, quarantine: records.quarantine)
        }
    }

    /// Executes the deployment entries, one deployment after another.
    func execute(_ entries: [PlanEntry], manifests: ManifestSet) async -> [String: EntryOutcome] {
        var outcomes: [String: EntryOutcome] = [:]
        for entry in entries where entry.action.isChange || entry.action == .wait {
            guard case .deployment(let detail) = entry.detail else { continue }
            if entry.action == .wait { continue }
            if Task.isCancelled { break }
            context.events(.started(entry))
            let outcome: EntryOutcome
            do {
                // A pass that lost its lease does not touch the serving layer either.
                try await context.store.checkLease()
                outcome = try await execute(entry, detail, manifests: manifests)
            } catch {
                outcome = ModelPipeline.outcome(of: error, scrubber: .none)
            }
            outcomes[entry.id] = outcome
            context.events(.finished(entry, outcome, version: detail.to))
        }
        return outcomes
    }

    func execute(_ entry: PlanEntry, _ detail: DeploymentDetail, manifests: ManifestSet) async throws -> EntryOutcome {
        let name = entry.name
        let object = ObjectRef.deployment(name)
        switch entry.action {
        case .retireEndpoint:
            guard let serving else { return .skipped("no serving layer") }
            let change = ServingChange(deployment: name, model: detail.model, applied: .remove, rollout: nil, quarantine: nil,
                                       event: context.event(object, .retireEndpoint, commit: commit,
                                                            before: detail.from.map { .int(Int64($0)) }, reason: entry.reason))
            try await journaled(change) { try await serving.remove(deployment: name) }
            return .done("endpoint removed")
        case .adoptDrift:
            try await record(ServingChange(deployment: name, model: detail.model, applied: .set(detail.backends ?? []), rollout: nil,
                                           quarantine: nil,
                                           event: context.event(object, .adoptDrift, commit: commit, after: Self.traffic(detail.backends ?? []),
                                                                reason: entry.reason)))
            return .done("took the endpoint as it is")
        default:
            break
        }
        guard let action = AuditAction(deployment: entry.action) else { return .skipped("not a change of the endpoint") }
        let event = context.event(object, action, commit: commit, before: detail.from.map { .int(Int64($0)) },
                                  after: detail.backends.map(Self.traffic), reason: entry.reason)
        if let backends = detail.backends {
            guard let serving else { return .skipped("no serving layer") }
            guard let model = manifests.model(named: detail.model), let serve = model.spec.serve else {
                return .failed(ReconcileFailure(.stalled, .notServable, "model \(detail.model) has no spec.serve at \(commit.prefix(7)); add one to serve it"))
            }
            let spec = EndpointSpec(deployment: name, model: detail.model,
                                    backends: try await backendSpecs(backends, model: detail.model, serve: serve,
                                                                      registryOnly: model.spec.isRegistryOnly))
            try await journaled(ServingChange(deployment: name, model: detail.model, applied: .set(backends), rollout: detail.rollout,
                                              quarantine: detail.quarantine, event: event)) {
                try await serving.apply(spec)
            }
        } else {
            try await record(ServingChange(deployment: name, model: detail.model, applied: .keep, rollout: detail.rollout,
                                           quarantine: detail.quarantine, event: event))
        }
        let traffic = detail.backends.map { " — " + $0.map { "v\($0.version) \($0.weight)%" }.joined(separator: ", ") } ?? ""
        if entry.action == .rollback {
            return .failed(ReconcileFailure(.terminal, .rolledBack,
                                            "v\(detail.to.map(String.init) ?? "?") rolled back and quarantined; traffic back on \(detail.from.map { "v\($0)" } ?? "the previous version")"))
        }
        return .done((detail.progress ?? entry.action.rawValue) + traffic)
    }

    // MARK: Records of a change, journaled

    /// Journals `change`, makes the serving change (`body`), then records it. A pass killed
    /// after the serving layer took the change but before Capstan recorded it leaves the entry
    /// `started`; the next pass finds the endpoint as the change left it and records the change
    /// then (`recoverInterrupted`), instead of taking Capstan's own change for drift.
    func journaled(_ change: ServingChange, _ body: () async throws -> Void) async throws {
        let id = try await context.store.beginJournal(.servingChange(change), subject: .deployment(change.deployment))
        do {
            try await body()
        } catch {
            var closing = StateChanges("close journal entry \(id)")
            closing.failJournal(id, JournalClosing(error: String(describing: error)))
            try? await context.commit(closing)
            throw error
        }
        Failpoint.hit("deployment.after-serving")
        try await record(change, closing: id)
    }

    /// Records `change` (and closes journal entry `closing`) in one transaction.
    func record(_ change: ServingChange, closing id: Int64? = nil, late: Bool = false) async throws {
        var changes = StateChanges("record the change of \(change.deployment)")
        switch change.applied {
        case .keep: break
        case .set(let backends): changes.setApplied(change.deployment, model: change.model, backends)
        case .remove: changes.setApplied(change.deployment, model: change.model, nil)
        }
        changes.setRollout(change.deployment, change.rollout)
        if let q = change.quarantine { changes.addQuarantine(q) }
        var event = change.event
        if late { event.reason += " (recorded after an interrupted pass)" }
        changes.record(event)
        if let id {
            if late {
                changes.failJournal(id, JournalClosing(interrupted: true))
            } else {
                changes.finishJournal(id)
            }
        }
        try await context.commit(changes)
    }

    /// Closes the serving changes a killed pass left `started`: a change the serving layer shows
    /// (the endpoint has the journaled weights, or is gone for a removal) is recorded now, with
    /// its audit event; one it does not show is closed as interrupted, and planned again. Left
    /// for a later pass while the serving layer cannot be read. Returns a line per entry.
    func recoverInterrupted() async throws -> [String] {
        let pending = try await context.store.unfinishedJournal().filter { $0.operation == .deploy }
        guard !pending.isEmpty, let serving, let endpoints = try? await serving.endpoints() else { return [] }
        let byName = Dictionary(endpoints.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a })
        var notes: [String] = []
        for entry in pending {
            guard case .servingChange(let change)? = entry.record else {
                var closing = StateChanges("close journal entry \(entry.id)")
                closing.failJournal(entry.id, JournalClosing(interrupted: true, error: "written by another version of Capstan"))
                try await context.commit(closing)
                continue
            }
            let happened: Bool
            switch change.applied {
            case .keep: happened = false
            case .set(let backends):
                happened = byName[change.deployment].map { DeploymentPlanner.weights($0) == backends.sorted { $0.version < $1.version } } ?? false
            case .remove: happened = byName[change.deployment] == nil
            }
            var note = "recovered an interrupted \(change.event.action.rawValue) of deployment/\(change.deployment) (journal entry \(entry.id))"
            if happened {
                try await record(change, closing: entry.id, late: true)
                note += "; the serving layer had taken it"
            } else {
                var closing = StateChanges("close journal entry \(entry.id)")
                closing.failJournal(entry.id, JournalClosing(interrupted: true))
                try await context.commit(closing)
            }
            await context.record(.deployment(change.deployment), .interrupted, commit: nil, reason: note)
            notes.append(note)
        }
        return notes
    }

    /// A version's files the artifact store lacks (trained by another Capstan, or its store
    /// emptied), from the registry's copy (MLflow): downloaded, stored, and checked against the
    /// digest the version was registered with. A registry that keeps no copy leaves the store's
    /// error to `open`.
    func fetch(model: String, number: Int, digest: String) async throws {
        let staging = "\(context.workFolder)/downloads/\(model)-v\(number)-\(UUID().uuidString.lowercased())"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try WorkFiles.makeFolder((staging as NSString).deletingLastPathComponent)
        guard try await context.registry.downloadArtifact(model: model, number: number, into: staging) else { return }
        let stored = try await context.artifacts.store(directory: staging, scrubber: .none)
        guard stored.digest == digest else {
            throw ReconcileFailure(.terminal, .artifactChanged,
                                   "the files of v\(number) of \(model) in the registry hash to \(stored.digest), not to \(digest), the digest it was registered with; they were changed after registration and will not be served. Retrain the version, or restore its files")
        }
        context.events(.note("downloaded the files of v\(number) of \(model) from the registry into the artifact store (\(digest))"))
    }

    /// The files of a version registered outside Capstan (a registry-only model's, in MLflow),
    /// which no digest vouches for yet: downloaded into the artifact store, and their digest
    /// recorded on the version, so that the files served from then on are these (a later change
    /// in the registry is refused like any changed artifact).
    func fetchRegistered(model: String, number: Int, registryOnly: Bool) async throws -> String {
        let staging = "\(context.workFolder)/downloads/\(model)-v\(number)-\(UUID().uuidString.lowercased())"
        defer { try? FileManager.default.removeItem(atPath: staging) }
        try WorkFiles.makeFolder((staging as NSString).deletingLastPathComponent)
        guard try await context.registry.downloadArtifact(model: model, number: number, into: staging) else {
            throw ReconcileFailure(.stalled, .notServable, "v\(number) of \(model) has no artifact to serve")
        }
        let stored = try await context.artifacts.store(directory: staging, scrubber: .none)
        // Killed before this, the next pass downloads them again: nothing to journal.
        var update = VersionUpdate(artifactDigest: stored.digest)
        update.ofVersionMadeElsewhere = registryOnly
        _ = try await context.registry.updateVersion(model: model, number: number, update)
        await context.record(.version(model: model, number: number), .recordArtifact, commit: commit, after: .string(stored.digest),
                             reason: "files registered outside Capstan, downloaded from the registry to serve them")
        context.events(.note("downloaded the files of v\(number) of \(model) from the registry into the artifact store (\(stored.digest)) and recorded their digest"))
        return stored.digest
    }

    /// The concrete backends: each version's commit materialized for its serving code, its
    /// artifact verified, the model's `serve` settings.
    func backendSpecs(_ backends: [BackendWeight], model: String, serve: ServeSpec, registryOnly: Bool) async throws -> [BackendSpec] {
        var out: [BackendSpec] = []
        for b in backends {
            guard let version = try await context.registry.version(of: model, number: b.version) else {
                throw ReconcileFailure(.stalled, .pinnedVersionMissing, "model \(model) has no v\(b.version)")
            }
            let digest: String
            if let known = version.artifactDigest {
                digest = known
                if !(await context.artifacts.holds(digest: digest)) {
                    try await fetch(model: model, number: b.version, digest: digest)
                }
            } else {
                digest = try await fetchRegistered(model: model, number: b.version, registryOnly: registryOnly)
            }
            let modelDir = try await context.artifacts.open(digest: digest)
            // A version registered outside Capstan was not trained at a commit: the serving code
            // is the commit's being reconciled.
            let commit = version.commit ?? self.commit
            guard commit.utf8.count == 40 else {
                throw ReconcileFailure(.stalled, .notServable, "v\(b.version) of \(model) records no commit to serve its code from")
            }
            let workdir = try await servingFolder(model: model, version: b.version, commit: commit, workdir: serve.workdir)
            out.append(BackendSpec(version: b.version, weight: b.weight, replicas: b.replicas, command: serve.command, workdir: workdir,
                                   modelDir: modelDir, artifactDigest: digest, env: serve.env, secretEnv: serve.secretEnv,
                                   readinessPath: serve.readiness.path,
                                   readinessTimeoutMilliseconds: serve.readiness.timeout.milliseconds))
        }
        return out
    }

    /// The working folder a version's model servers run in: a copy of the `serve.workdir` of its
    /// commit, of its own (`<state>/serving/<model>/v<N>`), made once. The commit's materialized
    /// tree is shared and read-only: a server that writes next to its code (Python's
    /// `__pycache__`) must not write into it.
    func servingFolder(model: String, version: Int, commit: String, workdir: String) async throws -> String {
        let folder = "\(context.workFolder)/serving/\(model)/v\(version)-\(commit.prefix(12))"
        let tree = folder + "/tree"
        let fm = FileManager.default
        if !fm.fileExists(atPath: tree) {
            let materialized = try await context.source.materialize(commit: commit)
            let paths = StepWorkspace.paths(workdir: workdir, inputs: [])
            for path in paths where !path.isEmpty {
                var info = stat()
                guard lstat(materialized + "/" + path, &info) == 0 else {
                    // Only a spec change helps: the version's own commit has no such folder.
                    throw ReconcileFailure(.stalled, .notServable,
                                           "\(model) v\(version): serve.workdir '\(path)' does not exist at its commit \(commit.prefix(12)); serve.workdir must name a folder of the commit the version was trained at (fix spec.serve.workdir, or pin a version trained after the folder was added)")
                }
            }
            let staging = folder + ".partial-\(getpid())"
            try? fm.removeItem(atPath: staging)
            do {
                try WorkFiles.makeFolder(staging)
                if paths == [""] {
                    try fm.copyItem(atPath: materialized, toPath: staging + "/tree")
                } else {
                    for path in paths {
                        let to = staging + "/tree/" + path
                        try fm.createDirectory(atPath: (to as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                        try fm.copyItem(atPath: materialized + "/" + path, toPath: to)
                    }
                }
                try WorkFiles.makeFolder((folder as NSString).deletingLastPathComponent)
            } catch {
                try? fm.removeItem(atPath: staging)
                throw error
            }
            if rename(staging, folder) != 0 {
                let code = errno
                // Another pass made it meanwhile: use theirs.
                try? fm.removeItem(atPath: staging)
                guard fm.fileExists(atPath: tree) else { throw SystemError("create the serving folder", path: folder, errno: code) }
            }
        }
        return workdir == "." ? tree : tree + "/" + workdir
    }

    static func traffic(_ backends: [BackendWeight]) -> ParamValue {
        .map(Dictionary(uniqueKeysWithValues: backends.map { ("v\($0.version)", ParamValue.int(Int64($0.weight))) }))
    }

    /// Each deployment's condition, from what is left to do after the pass.
    static func conditions(_ desired: [DesiredDeployment], residual: [PlanEntry], observation: ServingObservation,
                           commit: String, now: Int64) -> [ObjectCondition] {
        let byName = Dictionary(grouping: residual, by: \.name)
        return desired.map { d in
            let entries = byName[d.name] ?? []
            let (type, reason, message): (ObjectCondition.Kind, String, String)
            var failureClass: ReconcileFailure.Class?
            if let e = entries.first(where: { $0.action == .servingUnavailable }) {
                (type, reason, message) = (.degraded, "ServingUnavailable", e.reason)
                failureClass = .transient
            } else if let e = entries.first(where: { $0.action == .blocked }) {
                if case .deployment(let detail) = e.detail, detail.to != nil {
                    (type, reason, message) = (.degraded, "RolledBack", e.reason)
                    failureClass = .terminal
                } else {
                    (type, reason, message) = (.stalled, "TargetBlocked", e.reason)
                    failureClass = .stalled
                }
            } else if let e = entries.first(where: { $0.action == .drift }) {
                (type, reason, message) = (.degraded, "Drifted", e.reason)
                failureClass = .stalled
            } else if let e = entries.first(where: { $0.action.isChange || $0.action == .wait }) {
                (type, reason, message) = (.progressing, "RollingOut", e.reason)
            } else if let endpoint = observation.endpoints?[d.name], let target = d.target,
                      let backend = endpoint.backend(version: target), backend.health == .starting {
                (type, reason, message) = (.progressing, "Starting", "v\(target) is starting (\(backend.readyReplicas)/\(backend.spec.replicas) replicas ready)")
            } else if let endpoint = observation.endpoints?[d.name], let target = d.target,
                      let backend = endpoint.backend(version: target), backend.health != .ready {
                (type, reason, message) = (.degraded, "Unhealthy", "v\(target): \(backend.health.rawValue)" + (backend.lastError.map { " (\($0))" } ?? ""))
                failureClass = .transient
            } else {
                (type, reason, message) = (.ready, "Serving", d.target.map { "v\($0) serves all traffic" } ?? "serving")
            }
            return ObjectCondition(object: .deployment(d.name), type: type, reason: reason, message: message, commit: commit, updatedAt: now,
                                   failureClass: failureClass)
        }
    }
}
