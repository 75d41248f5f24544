import CapstanCore
import Foundation
import Synchronization

/// The `Registry` port over an MLflow tracking server (docs/mlflow.md).
///
/// - Each training is an MLflow run in the model's experiment (`capstan/<model>` by default),
///   tagged `capstan.model`, `capstan.fingerprint`, `capstan.attempt`, `capstan.commit`,
///   `mlflow.source.git.commit` and `mlflow.source.name`, with the spec's params. A version is
///   registered only when its training succeeded: the output folder is uploaded as the run's
///   `model` artifact through the server's artifact proxy, and the version is created from it
///   (`source` and `run_id`), after waiting out `PENDING_REGISTRATION`. Versions are numbered by
///   MLflow then: a training in progress or failed is a run, never a version
///   (`RegistrySnapshot.attempts`).
/// - Capstan's state of a version is in its tags: `capstan.fingerprint`, `capstan.status`
///   (`trained`, `validated`, `rejected`), `capstan.gates`, `capstan.metrics`, … Versions
///   without `capstan.fingerprint` were not made by Capstan: drift for a model Capstan trains,
///   left as they are; the versions of a registry-only model (no `spec.train`), which Capstan
///   judges on their run's metrics and then tags with its verdict.
/// - Registered models Capstan manages carry `capstan.managed = true`; others are not read.
/// - MLflow keeps no history of aliases: Capstan's state does, with the tags Capstan wrote on
///   its versions and the drift it adopted (`RegistryLedgerStore`). What Capstan decides from is
///   that record, not MLflow's editable tags: a change made in MLflow is drift
///   (`RegistrySnapshot.external`), which `policy.drift` reverts, reports or adopts.
///
/// Every step is idempotent: runs and versions are looked up by their tags before they are
/// created, so a pass killed anywhere leaves nothing that the next pass duplicates.
public final class MLflowRegistry: Registry {
    public struct Options: Sendable {
        /// The experiment of a model's runs; `{model}` is replaced by the model's name.
        public var experiment: String
        /// How long a version may stay `PENDING_REGISTRATION` within one pass.
        public var registrationTimeout: Duration

        public init(experiment: String = MLflowRegistry.defaultExperiment, registrationTimeout: Duration = .seconds(300)) {
            self.experiment = experiment
            self.registrationTimeout = registrationTimeout
        }
    }

    public static let defaultExperiment = "capstan/{model}"

    /// Tag keys Capstan writes.
    public enum Tag {
        public static let managed = "capstan.managed"
        public static let model = "capstan.model"
        public static let fingerprint = "capstan.fingerprint"
        public static let commit = "capstan.commit"
        public static let attempt = "capstan.attempt"
        public static let status = "capstan.status"
        public static let artifactDigest = "capstan.artifact_digest"
        /// Set on a run once its output is uploaded completely (the digest uploaded).
        public static let uploaded = "capstan.uploaded"
        public static let metrics = "capstan.metrics"
        public static let params = "capstan.params"
        public static let gates = "capstan.gates"
        public static let gateResults = "capstan.gate_results"
        public static let archivedAt = "capstan.archived_at"
        public static let attempts = "capstan.attempts"
        public static let training = "capstan.training"
        public static let logTail = "capstan.log_tail"
        public static let gitCommit = "mlflow.source.git.commit"
        public static let sourceName = "mlflow.source.name"
        public static let sourceType = "mlflow.source.type"
        public static let runName = "mlflow.runName"
    }

    /// MLflow's limit of a model version tag's value (mlflow/utils/validation.py).
    static let maxVersionTagValue = 5000
    /// The artifact path of a version's files inside its run.
    static let modelPath = "model"

    public let client: MLflowClient
    let ledger: any RegistryLedgerStore
    let options: Options
    let now: @Sendable () -> Int64
    /// Experiment name → id, once found or created.
    private let experiments = Mutex<[String: String]>([:])

    public init(client: MLflowClient, ledger: any RegistryLedgerStore, options: Options = Options(),
                now: @escaping @Sendable () -> Int64 = { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }) {
        self.client = client
        self.ledger = ledger
        self.options = options
        self.now = now
    }

    /// The same registry, keeping its ledger in `ledger` (a fenced state store's).
    public func with(ledger: any RegistryLedgerStore) -> MLflowRegistry {
        MLflowRegistry(sharing: self, ledger: ledger)
    }

    private init(sharing other: MLflowRegistry, ledger: any RegistryLedgerStore) {
        client = other.client
        self.ledger = ledger
        options = other.options
        now = other.now
        experiments.withLock { $0 = other.experiments.withLock { $0 } }
    }

    func experimentName(of model: String) -> String {
        options.experiment.replacingOccurrences(of: "{model}", with: model)
    }

    // MARK: Reading

    public func models() async throws -> [RegisteredModel] {
        try await managedModels().map(Self.model)
    }

    func managedModels() async throws -> [MLflowRegisteredModel] {
        try await client.searchRegisteredModels(filter: nil, orderBy: ["name ASC"]).filter { $0.tags.dictionary[Tag.managed] == "true" }
    }

    /// Paged searches, not a request per model: the registered models (with their aliases), every
    /// version, and the runs of Capstan's experiments that have not finished (attempts).
    public func snapshot() async throws -> RegistrySnapshot {
        let registered = try await managedModels()
        let names = Set(registered.map(\.name))
        let record = try await ledger.ledger()
        var versions: [String: [ModelVersion]] = [:]
        var external = ExternalRegistryState(ledger: record)
        for v in try await client.searchModelVersions(filter: nil, pageSize: 10_000) where names.contains(v.name) {
            let tags = v.tags.dictionary
            let recorded = record.versions[v.name]?[v.version]
            if tags[Tag.fingerprint] != nil || recorded != nil {
                external.versionTags[v.name, default: [:]][v.version] = Self.capstanTags(tags)
            } else {
                // Made outside Capstan and never judged by it: drift for a model Capstan trains, a
                // candidate for a registry-only one (judged on its run's metrics).
                external.foreignVersions[v.name, default: []].append(v.version)
            }
            if let version = try await mapped(v, recorded: recorded) {
                versions[v.name, default: []].append(version)
            }
        }
        for name in versions.keys { versions[name]!.sort { $0.number < $1.number } }
        var aliases: [String: [String: Int]] = [:]
        for m in registered where !m.aliases.isEmpty { aliases[m.name] = m.aliasVersions }
        let attempts = try await unfinishedAttempts(models: names, versions: versions, ledger: record)
        return RegistrySnapshot(models: registered.map(Self.model).sorted { $0.name < $1.name }, versions: versions,
                                aliases: aliases, attempts: attempts, external: external)
    }

    /// Capstan's own tags of a version (what the ledger records and compares).
    static func capstanTags(_ tags: [String: String]) -> [String: String] {
        tags.filter { $0.key.hasPrefix("capstan.") }
    }

    /// The trainings of fingerprints without a version: the runs of Capstan's experiments that
    /// did not finish (a finished run always has its version), newest per fingerprint.
    func unfinishedAttempts(models: Set<String>, versions: [String: [ModelVersion]],
                            ledger record: RegistryLedger) async throws -> [String: [TrainingAttemptRecord]] {
        let experimentIDs = try await capstanExperiments()
        guard !experimentIDs.isEmpty else { return [:] }
        var runs: [MLflowRun] = []
        // 100 experiments per search: Capstan's bound, which keeps each request (and the SQL IN
        // list the server builds from it) small; MLflow sets none.
        for start in stride(from: 0, to: experimentIDs.count, by: 100) {
            let ids = Array(experimentIDs[start..<min(start + 100, experimentIDs.count)])
            runs += try await client.searchRuns(experimentIDs: ids, filter: "attributes.status != 'FINISHED'")
        }
        // A version Capstan registered and someone deleted: its finished run can register it
        // again (`startTraining` takes it up), without training.
        for (model, recorded) in record.versions.sorted(by: { $0.key < $1.key }) where models.contains(model) {
            for (number, tags) in recorded.sorted(by: { $0.key < $1.key }) {
                guard let fingerprint = tags[Tag.fingerprint], !(versions[model]?.contains { $0.number == number } ?? false),
                      !(versions[model]?.contains { $0.fingerprint == fingerprint } ?? false) else { continue }
                let filter = MLflowFilter.all([try MLflowFilter.tag(Tag.model, equals: model),
                                               try MLflowFilter.tag(Tag.fingerprint, equals: fingerprint),
                                               "attributes.status = 'FINISHED'"])
                runs += try await client.searchRuns(experimentIDs: [try await experimentID(of: model)], filter: filter, pageSize: 10)
            }
        }
        var latest: [String: [String: (run: MLflowRun, attempts: Int)]] = [:]
        for run in runs {
            let tags = run.data.tags.dictionary
            guard let model = tags[Tag.model], models.contains(model), let fingerprint = tags[Tag.fingerprint] else { continue }
            if versions[model]?.contains(where: { $0.fingerprint == fingerprint }) == true { continue }
            let attempt = tags[Tag.attempt].flatMap(Int.init) ?? 1
            if let kept = latest[model]?[fingerprint] {
                let newer = (run.info.startTime ?? 0, attempt) > (kept.run.info.startTime ?? 0, kept.attempts)
                latest[model]![fingerprint] = (newer ? run : kept.run, max(kept.attempts, attempt))
            } else {
                latest[model, default: [:]][fingerprint] = (run, attempt)
            }
        }
        return latest.mapValues { byFingerprint in
            byFingerprint.map { fingerprint, entry in
                let tags = entry.run.data.tags.dictionary
                let state: TrainingAttemptRecord.State
                switch entry.run.info.status {
                case .failed: state = .failed
                case .finished: state = .trained
                // A killed run (a lost artifact, a stop) was interrupted, not failed: no backoff.
                default: state = tags[Tag.artifactDigest] != nil && entry.run.info.status == .running ? .trained : .running
                }
                return TrainingAttemptRecord(
                    fingerprint: fingerprint, state: state, attempts: entry.attempts, startedAt: entry.run.info.startTime ?? 0,
                    failedAt: state == .failed ? (entry.run.info.endTime ?? entry.run.info.startTime) : nil,
                    logTail: state == .failed ? tags[Tag.logTail] : nil, commit: tags[Tag.commit], run: entry.run.info.runID)
            }.sorted { $0.fingerprint < $1.fingerprint }
        }
    }

    /// The ids of the experiments Capstan's runs may be in.
    func capstanExperiments() async throws -> [String] {
        let template = options.experiment
        let found: [MLflowExperiment]
        if template.contains("{model}") {
            // `capstan/{model}` → name LIKE 'capstan/%' (the filter's own wildcards escaped away
            // would need ESCAPE, which MLflow lacks: a broader match is filtered below).
            let pattern = template.replacingOccurrences(of: "{model}", with: "%")
            found = try await client.searchExperiments(filter: "name LIKE \(try MLflowFilter.quote(pattern))")
        } else {
            found = try await client.experiment(named: template).map { [$0] } ?? []
        }
        return found.filter { !$0.isDeleted }.map(\.id)
    }

    public func trainingDescription(of model: String, number: Int) async throws -> TrainingDescription? {
        guard let v = try await client.modelVersion(name: model, version: number),
              let text = v.tags.dictionary[Tag.training] else { return nil }
        return try? JSONDecoder().decode(TrainingDescription.self, from: Data(text.utf8))
    }

    public func model(named name: String) async throws -> RegisteredModel? {
        guard let m = try await client.registeredModel(named: name), m.tags.dictionary[Tag.managed] == "true" else { return nil }
        return Self.model(m)
    }

    public func versions(of model: String) async throws -> [ModelVersion] {
        let recorded = try await ledger.recordedVersions(of: model)
        var out: [ModelVersion] = []
        for v in try await client.searchModelVersions(filter: try MLflowFilter.name(equals: model)) {
            if let version = try await mapped(v, recorded: recorded[v.version]) { out.append(version) }
        }
        return out.sorted { $0.number < $1.number }
    }

    public func version(of model: String, number: Int) async throws -> ModelVersion? {
        guard let v = try await client.modelVersion(name: model, version: number) else { return nil }
        return try await mapped(v, recorded: try await ledger.recordedTags(of: model, number: number))
    }

    /// `version(_:recorded:run:)`, with the metrics and params of its run for a version made
    /// outside Capstan that Capstan has not judged (one request; a judged one carries the
    /// metrics it was judged on in `capstan.metrics`).
    func mapped(_ v: MLflowModelVersion, recorded: [String: String]?) async throws -> ModelVersion? {
        var run: MLflowRun?
        if v.tags.dictionary[Tag.fingerprint] == nil, recorded?[Tag.metrics] == nil, v.status == .ready,
           let id = v.runID, !id.isEmpty {
            run = try await client.run(id: id)
        }
        return Self.version(v, recorded: recorded, run: run)
    }

    public func version(of model: String, fingerprint: String) async throws -> ModelVersion? {
        guard let v = try await mlflowVersion(of: model, fingerprint: fingerprint) else { return nil }
        return Self.version(v, recorded: try await ledger.recordedTags(of: model, number: v.version))
    }

    func mlflowVersion(of model: String, fingerprint: String) async throws -> MLflowModelVersion? {
        let filter = MLflowFilter.all([try MLflowFilter.name(equals: model), try MLflowFilter.tag(Tag.fingerprint, equals: fingerprint)])
        return try await client.searchModelVersions(filter: filter).min { $0.version < $1.version }
    }

    public func versions(of model: String, status: VersionStatus) async throws -> [ModelVersion] {
        try await versions(of: model).filter { $0.status == status }
    }

    public func newestValidated(of model: String) async throws -> ModelVersion? {
        try await versions(of: model).filter { $0.status == .validated && $0.archivedAt == nil }.max { $0.number < $1.number }
    }

    public func aliases(of model: String) async throws -> [String: Int] {
        try await client.registeredModel(named: model)?.aliasVersions ?? [:]
    }

    public func resolveAlias(_ alias: String, of model: String) async throws -> Int? {
        do {
            return try await client.modelVersion(name: model, alias: alias)?.version
        } catch let error as MLflowError where error.kind == .notFound {
            return nil
        }
    }

    // MARK: Models

    @discardableResult
    public func upsertModel(name: String, description: String?, labels: [String: String]) async throws -> RegisteredModel {
        var model = try await client.ensureRegisteredModel(name: name, description: description,
                                                           tags: [MLflowTag(key: Tag.managed, value: "true")])
        if (model.description ?? "") != (description ?? "") {
            model = try await client.updateRegisteredModel(name: name, description: description ?? "")
        }
        let current = model.tags.dictionary
        if current[Tag.managed] != "true" { try await client.setRegisteredModelTag(name: name, key: Tag.managed, value: "true") }
        for (key, value) in labels.sorted(by: { $0.key < $1.key }) where current[key] != value {
            try await client.setRegisteredModelTag(name: name, key: key, value: value)
        }
        // Labels removed from the spec go; tags of Capstan's own and of others' making
        // (`mlflow.*`) stay.
        for key in current.keys.sorted() where labels[key] == nil && !Self.isReserved(key) {
            try await client.deleteRegisteredModelTag(name: name, key: key)
        }
        guard let updated = try await client.registeredModel(named: name) else { throw RegistryError.modelNotFound(name) }
        return Self.model(updated)
    }

    // MARK: Versions

    /// Versions are registered from a finished training (`finishTraining`); MLflow cannot hold a
    /// version before its files exist.
    public func createVersion(_ version: NewVersion) async throws -> ModelVersion {
        throw MLflowRegistryError(message: "the MLflow registry registers a version only from a finished training's artifacts; a version of '\(version.model)' cannot be created before it is trained")
    }

    @discardableResult
    public func updateVersion(model: String, number: Int, _ update: VersionUpdate) async throws -> ModelVersion {
        guard let current = try await client.modelVersion(name: model, version: number) else {
            throw RegistryError.versionNotFound(model: model, number: number)
        }
        // A version made outside Capstan is changed only for a registry-only model, whose
        // versions the planner judges (its verdict, and the digest of its files once downloaded).
        let known = try await ledger.recordedTags(of: model, number: number)
        guard current.tags.dictionary[Tag.fingerprint] != nil || known != nil || update.ofVersionMadeElsewhere else {
            throw MLflowRegistryError(message: "version \(number) of '\(model)' was not made by Capstan (it has no \(Tag.fingerprint) tag) and its model is trained by Capstan; Capstan does not change it")
        }
        var tags: [(String, String)] = []
        if let status = update.status { tags.append((Tag.status, status.rawValue)) }
        if let metrics = update.metrics, let text = Self.json(metrics) { tags.append((Tag.metrics, text)) }
        if let results = update.gateResults {
            let passed = results.allSatisfy(\.passed)
            tags.append((Tag.gates, passed ? "passed" : "rejected"))
            if let text = Self.json(results) { tags.append((Tag.gateResults, text)) }
            // Each gate's evidence on its own tag, for people reading the MLflow UI.
            for (i, r) in results.enumerated() {
                tags.append(("capstan.gate.\(i + 1)", String("\(r.passed ? "passed" : "failed"): \(r.gate): \(r.detail)".prefix(Self.maxVersionTagValue))))
            }
        }
        if let digest = update.artifactDigest { tags.append((Tag.artifactDigest, digest)) }
        if let archivedAt = update.archivedAt { tags.append((Tag.archivedAt, String(archivedAt))) }
        if let attempts = update.attempts { tags.append((Tag.attempts, String(attempts))) }
        for (key, value) in (update.tags ?? [:]).sorted(by: { $0.key < $1.key }) { tags.append((key, value)) }
        for (key, value) in tags {
            try await client.setModelVersionTag(name: model, version: number, key: key, value: value)
        }
        // The verdict in the description, unless someone else wrote one (a version registered
        // outside Capstan keeps its author's).
        if let results = update.gateResults, (current.description ?? "").isEmpty || current.description!.hasPrefix(Self.descriptionPrefix) {
            let summary = results.isEmpty ? "no gates" : results.map { "\($0.passed ? "✓" : "✗") \($0.gate): \($0.detail)" }.joined(separator: "\n")
            let status = results.allSatisfy(\.passed) ? "validated" : "rejected"
            _ = try await client.updateModelVersion(name: model, version: number,
                                                    description: String("\(Self.descriptionPrefix)\(status)\n\(summary)".prefix(Self.maxVersionTagValue)))
        }
        // Metrics a validation command added are logged on the run too, where the UI shows them
        // (only those the run does not hold already).
        if let metrics = update.metrics, let runID = current.runID, !runID.isEmpty, !metrics.isEmpty,
           let run = try await client.run(id: runID) {
            let held = run.data.metricValues
            let time = now()
            let added = metrics.filter { held[$0.key] != $0.value }.sorted { $0.key < $1.key }
            if !added.isEmpty {
                try await client.logBatch(runID: runID, metrics: added.map { MLflowMetric(key: $0.key, value: $0.value, timestamp: time) })
            }
        }
        guard let after = try await client.modelVersion(name: model, version: number) else {
            throw RegistryError.versionNotFound(model: model, number: number)
        }
        // What Capstan wrote: its own record, from which it decides (not the editable tags).
        var recorded = known ?? Self.capstanTags(current.tags.dictionary)
        for (key, value) in tags where key.hasPrefix("capstan.") { recorded[key] = value }
        try await ledger.recordVersion(model: model, number: number, tags: recorded)
        guard let updated = try await mapped(after, recorded: recorded) else { throw RegistryError.versionNotFound(model: model, number: number) }
        return updated
    }

    // MARK: Training

    public func startTraining(_ start: TrainingStart) async throws -> TrainingClaim {
        let experiment = try await experimentID(of: start.model)
        let filter = MLflowFilter.all([
            try MLflowFilter.tag(Tag.model, equals: start.model), try MLflowFilter.tag(Tag.fingerprint, equals: start.fingerprint),
        ])
        let earlier = try await client.searchRuns(experimentIDs: [experiment], filter: filter, orderBy: ["attributes.start_time DESC"])
        // A run an interrupted pass left is taken up again, not duplicated; a finished one whose
        // version was deleted registers it again.
        if let left = earlier.first(where: { $0.info.status == .running })
            ?? earlier.first(where: { $0.info.status == .finished && $0.data.tags.dictionary[Tag.uploaded] != nil }) {
            let runID = left.info.runID
            if left.info.status == .running {
                try await client.logBatch(runID: runID, tags: [MLflowTag(key: Tag.attempt, value: String(start.attempt)),
                                                               MLflowTag(key: Tag.commit, value: start.commit)])
            }
            var claim = TrainingClaim(model: start.model, fingerprint: start.fingerprint, attempt: start.attempt, run: runID)
            let tags = left.data.tags.dictionary
            if let digest = tags[Tag.artifactDigest] {
                claim.trained = TrainingResult(metrics: left.data.metricValues, artifactDigest: digest, artifactLocation: left.info.artifactURI)
            }
            return claim
        }
        var tags = [
            MLflowTag(key: Tag.model, value: start.model), MLflowTag(key: Tag.fingerprint, value: start.fingerprint),
            MLflowTag(key: Tag.attempt, value: String(start.attempt)), MLflowTag(key: Tag.commit, value: start.commit),
            MLflowTag(key: Tag.gitCommit, value: start.commit), MLflowTag(key: Tag.sourceType, value: "JOB"),
        ]
        if let repository = start.repository { tags.append(MLflowTag(key: Tag.sourceName, value: repository)) }
        let run = try await client.createRun(experimentID: experiment, name: "\(start.model)-\(start.fingerprint.prefix(12))-a\(start.attempt)",
                                             startTime: now(), tags: tags)
        let params = start.params.sorted { $0.key < $1.key }.map { MLflowParam(key: $0.key, value: Self.text($0.value)) }
        if !params.isEmpty { try await client.logBatch(runID: run.info.runID, params: params) }
        return TrainingClaim(model: start.model, fingerprint: start.fingerprint, attempt: start.attempt, run: run.info.runID)
    }

    public func finishTraining(_ claim: TrainingClaim, _ result: TrainingResult, directory: String?) async throws -> ModelVersion {
        guard let runID = claim.run else {
            throw MLflowRegistryError(message: "the training of \(claim.label) of '\(claim.model)' has no MLflow run")
        }
        // Registered already (a pass killed after the version was created): that version.
        if let existing = try await mlflowVersion(of: claim.model, fingerprint: claim.fingerprint) {
            return try await ready(existing, run: runID)
        }
        guard let run = try await client.run(id: runID) else {
            throw MLflowRegistryError(message: "the MLflow run \(runID) of \(claim.label) of '\(claim.model)' is gone (deleted?); the next pass trains it again")
        }
        let runTags = run.data.tags.dictionary
        // First the digest and the metrics: from here on the training is not repeated.
        if runTags[Tag.artifactDigest] != result.artifactDigest {
            let time = now()
            try await client.logBatch(runID: runID, metrics: result.metrics.sorted { $0.key < $1.key }.map {
                MLflowMetric(key: $0.key, value: $0.value, timestamp: time)
            }, tags: [MLflowTag(key: Tag.artifactDigest, value: result.artifactDigest)])
        }
        let location = try MLflowArtifactLocation(artifactURI: run.info.artifactURI).appending(Self.modelPath)
        if runTags[Tag.uploaded] != result.artifactDigest {
            guard let directory else {
                throw MLflowRegistryError(message: "the artifact \(result.artifactDigest) of \(claim.label) of '\(claim.model)' is no longer in Capstan's artifact store and was not uploaded to run \(runID); stop the run in MLflow (mark it KILLED) so that the next pass trains it again")
            }
            _ = try await client.uploadArtifacts(from: directory, to: location)
            try await client.logBatch(runID: runID, tags: [MLflowTag(key: Tag.uploaded, value: result.artifactDigest)])
        }
        var tags = [
            MLflowTag(key: Tag.fingerprint, value: claim.fingerprint), MLflowTag(key: Tag.status, value: VersionStatus.trained.rawValue),
            MLflowTag(key: Tag.artifactDigest, value: result.artifactDigest), MLflowTag(key: Tag.attempts, value: String(claim.attempt)),
        ]
        if let commit = runTags[Tag.commit] { tags.append(MLflowTag(key: Tag.commit, value: commit)) }
        if let text = Self.json(result.metrics) { tags.append(MLflowTag(key: Tag.metrics, value: text)) }
        if let text = Self.json(run.data.params.reduce(into: [String: String]()) { $0[$1.key] = $1.value }) {
            tags.append(MLflowTag(key: Tag.params, value: text))
        }
        let created: MLflowModelVersion
        do {
            created = try await client.createModelVersion(name: claim.model, source: location.uri, runID: runID, tags: tags)
        } catch let error as MLflowError where error.isTransient {
            // The answer may be lost while the version was made: look before the next pass does.
            guard let made = try? await mlflowVersion(of: claim.model, fingerprint: claim.fingerprint) else { throw error }
            created = made
        }
        return try await ready(created, run: runID)
    }

    /// The version once MLflow registered it, with its run ended. A failed registration fails the
    /// training (its run is marked failed, with MLflow's reason).
    func ready(_ version: MLflowModelVersion, run runID: String) async throws -> ModelVersion {
        let recorded = try await ledger.recordedTags(of: version.name, number: version.version)
        let registered: MLflowModelVersion
        do {
            registered = try await client.waitUntilReady(version, timeout: options.registrationTimeout)
        } catch let error as MLflowError where error.kind == .registrationFailed {
            try? await client.logBatch(runID: runID, tags: [MLflowTag(key: Tag.logTail, value: String(error.message.prefix(Self.maxVersionTagValue)))])
            _ = try? await client.updateRun(id: runID, status: .failed, endTime: now())
            throw error
        }
        if let run = try await client.run(id: runID), run.info.status != .finished {
            _ = try await client.updateRun(id: runID, status: .finished, endTime: now())
        }
        let tags = recorded ?? Self.capstanTags(registered.tags.dictionary)
        if recorded == nil { try await ledger.recordVersion(model: registered.name, number: registered.version, tags: tags) }
        guard let mapped = Self.version(registered, recorded: tags) else {
            throw MLflowRegistryError(message: "version \(registered.version) of '\(registered.name)' has no \(Tag.fingerprint) tag after its registration")
        }
        return mapped
    }

    public func failTraining(_ claim: TrainingClaim, logTail: String, at time: Int64) async throws {
        guard let runID = claim.run else { return }
        try await client.logBatch(runID: runID, tags: [MLflowTag(key: Tag.logTail, value: String(logTail.suffix(Self.maxVersionTagValue)))])
        _ = try await client.updateRun(id: runID, status: .failed, endTime: time)
    }

    func experimentID(of model: String) async throws -> String {
        let name = experimentName(of: model)
        if let id = experiments.withLock({ $0[name] }) { return id }
        let experiment = try await client.ensureExperiment(named: name, tags: [MLflowTag(key: Tag.managed, value: "true")])
        experiments.withLock { $0[name] = experiment.id }
        return experiment.id
    }

    // MARK: Aliases

    public func setAlias(_ alias: String, of model: String, to number: Int, commit: String?, reason: String) async throws {
        guard let version = try await version(of: model, number: number) else {
            throw RegistryError.versionNotFound(model: model, number: number)
        }
        guard version.status == .validated else {
            throw RegistryError.notValidated(model: model, number: number, status: version.status)
        }
        if version.archivedAt != nil { throw RegistryError.archived(model: model, number: number) }
        let from = try await resolveAlias(alias, of: model)
        guard from != number else { return }
        try await client.setAlias(name: model, alias: alias, version: number)
        try await ledger.record(AliasMove(model: model, alias: alias, from: from, to: number, at: now(), commit: commit, reason: reason))
    }

    public func deleteAlias(_ alias: String, of model: String, commit: String?, reason: String) async throws {
        guard let from = try await resolveAlias(alias, of: model) else { return }
        try await client.deleteAlias(name: model, alias: alias)
        try await ledger.record(AliasMove(model: model, alias: alias, from: from, to: nil, at: now(), commit: commit, reason: reason))
    }

    public func aliasHistory(of model: String, alias: String?) async throws -> [AliasMove] {
        try await ledger.moves(of: model, alias: alias)
    }

    public func aliasHolder(_ alias: String, of model: String, at time: Int64) async throws -> Int? {
        try await ledger.holder(alias, of: model, at: time)
    }

    // MARK: Artifacts

    /// The version's files, through the server's artifact proxy.
    public func downloadArtifact(model: String, number: Int, into folder: String) async throws -> Bool {
        guard let v = try await client.modelVersion(name: model, version: number) else {
            throw RegistryError.versionNotFound(model: model, number: number)
        }
        guard var source = v.source, !source.isEmpty else {
            throw MLflowRegistryError(message: "version \(number) of '\(model)' has no source in MLflow; its files cannot be downloaded")
        }
        // `models:/m-…` (a logged model), `runs:/<run>/…`: where the server stores them.
        if !source.hasPrefix("mlflow-artifacts:") { source = try await client.downloadURI(name: model, version: number) }
        let location: MLflowArtifactLocation
        do {
            location = try MLflowArtifactLocation(artifactURI: source)
        } catch {
            throw MLflowRegistryError(message: "version \(number) of '\(model)' has its files at \(source), which the MLflow server does not serve through its artifact proxy (\(error)); Capstan downloads only what the server proxies (mlflow-artifacts:, the default of mlflow server)")
        }
        _ = try await client.downloadArtifacts(from: location, into: folder)
        return true
    }

    // MARK: Drift

    public func adoptDrift(model: String, object: DriftObject, _ adoption: DriftAdoption) async throws {
        try await ledger.adopt(model: model, object: object, adoption)
    }

    /// Sets the tags Capstan recorded back on the version, and removes Capstan tags it did not write.
    public func restoreVersion(model: String, number: Int) async throws {
        guard let recorded = try await ledger.recordedTags(of: model, number: number) else {
            throw MLflowRegistryError(message: "Capstan has no record of the tags of version \(number) of '\(model)'; it cannot put them back")
        }
        guard let current = try await client.modelVersion(name: model, version: number) else {
            throw RegistryError.versionNotFound(model: model, number: number)
        }
        let now = Self.capstanTags(current.tags.dictionary)
        for (key, value) in recorded.sorted(by: { $0.key < $1.key }) where now[key] != value {
            try await client.setModelVersionTag(name: model, version: number, key: key, value: value)
        }
        for key in now.keys.sorted() where recorded[key] == nil {
            try await client.deleteModelVersionTag(name: model, version: number, key: key)
        }
    }

    // MARK: Mapping

    /// Tags that are not labels: Capstan's own and MLflow's.
    static func isReserved(_ key: String) -> Bool { key.hasPrefix("capstan.") || key.hasPrefix("mlflow.") }

    static func model(_ m: MLflowRegisteredModel) -> RegisteredModel {
        let labels = m.tags.dictionary.filter { !isReserved($0.key) }
        let description = m.description.flatMap { $0.isEmpty ? nil : $0 }
        return RegisteredModel(name: m.name, description: description, labels: labels,
                               createdAt: m.creationTimestamp ?? 0, updatedAt: m.lastUpdatedTimestamp ?? m.creationTimestamp ?? 0)
    }

    /// The start of the description Capstan writes on a version it judged.
    static let descriptionPrefix = "Capstan: "

    /// A version as the port has it; nil for a registration that failed.
    ///
    /// A version made outside Capstan (no `capstan.fingerprint`: another pipeline, a notebook)
    /// has the fingerprint `run:<run id>` (`mlflow-version:<n>` without a run) and no
    /// commit; until Capstan judges it, it is `trained` once `READY` (`training` while
    /// `PENDING_REGISTRATION`), with the metrics and params of `run`.
    static func version(_ v: MLflowModelVersion, recorded: [String: String]?, run: MLflowRun? = nil) -> ModelVersion? {
        // Capstan's record when it has one (MLflow's tags may have been edited: that is drift).
        // A version made elsewhere that Capstan has no record of has no Capstan state, whatever
        // `capstan.*` tags someone wrote on it: it is judged from its run like any other.
        let madeByCapstan = v.tags.dictionary[Tag.fingerprint] != nil
        let capstan = recorded ?? (madeByCapstan ? Self.capstanTags(v.tags.dictionary) : [:])
        let tags = v.tags.dictionary.filter { !$0.key.hasPrefix("capstan.") }.merging(capstan) { _, r in r }
        guard v.status != .failedRegistration else { return nil }
        let fingerprint: String
        let status: VersionStatus
        if let own = tags[Tag.fingerprint] {
            fingerprint = own
            status = tags[Tag.status].flatMap(VersionStatus.init(rawValue:)) ?? .trained
        } else {
            fingerprint = v.runID.flatMap { $0.isEmpty ? nil : "run:\($0)" } ?? "mlflow-version:\(v.version)"
            if let judged = tags[Tag.status].flatMap(VersionStatus.init(rawValue:)) {
                status = judged
            } else if v.status != .ready {
                status = .training
            } else {
                // Judged once its run is over: a run still going may log its evaluation later.
                switch run?.info.status {
                case .running?, .scheduled?: status = .training
                case .failed?, .killed?: status = .failed
                default: status = .trained
                }
            }
        }
        let source = v.source
        let runMetrics = run?.data.metricValues ?? [:]
        let runParams = run.map { Dictionary($0.data.params.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last }) } ?? [:]
        return ModelVersion(
            model: v.name, number: v.version, status: status, fingerprint: fingerprint, commit: tags[Tag.commit],
            artifactDigest: tags[Tag.artifactDigest], artifactLocation: source, logTail: nil,
            createdAt: v.creationTimestamp ?? 0, attempts: tags[Tag.attempts].flatMap(Int.init) ?? 1, failedAt: nil,
            archivedAt: tags[Tag.archivedAt].flatMap(Int64.init), training: nil,
            deferred: {
                let decoder = JSONDecoder()
                func decode<T: Decodable>(_ type: T.Type, _ key: String) -> T? {
                    tags[key].flatMap { try? decoder.decode(T.self, from: Data($0.utf8)) }
                }
                let params = (decode([String: String].self, Tag.params) ?? runParams).mapValues(ParamValue.string)
                return VersionDetails(params: params, metrics: decode([String: Double].self, Tag.metrics) ?? runMetrics,
                                      gateResults: decode([GateResult].self, Tag.gateResults) ?? [],
                                      tags: tags.filter { !isReserved($0.key) })
            })
    }

    /// `value` as JSON that fits a version tag; nil when it does not fit (it is then left out:
    /// the run keeps the full record).
    static func json<T: Encodable>(_ value: T) -> String? {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(value), data.count <= maxVersionTagValue else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// A param as MLflow keeps it (text).
    static func text(_ value: ParamValue) -> String {
        switch value {
        case .string(let s): return s
        default:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            return (try? encoder.encode(value)).map { String(decoding: $0, as: UTF8.self) } ?? String(describing: value)
        }
    }
}

/// A request the MLflow registry refuses (not MLflow's refusal: Capstan's own rule).
public struct MLflowRegistryError: Error, Sendable, CustomStringConvertible, ClassifiedError {
    public var message: String
    public var description: String { message }
    public var failure: ReconcileFailure { ReconcileFailure(.stalled, .registryRefused, message) }
}

extension MLflowError: ClassifiedError {
    /// Transient failures (down, slow, 5xx, a pending registration) are retried by the next
    /// pass; a failed registration fails the training; anything else needs a person.
    public var failure: ReconcileFailure {
        if isTransient { return ReconcileFailure(.transient, .registryUnavailable, description) }
        if kind == .registrationFailed { return ReconcileFailure(.waiting(until: nil), .trainingFailed, description) }
        return ReconcileFailure(.stalled, .registryRefused, description)
    }
}
