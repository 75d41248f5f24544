import CapstanCore
import CapstanStore
import Foundation
import Synchronization
import Testing
@testable import CapstanCLI
@testable import CapstanEngine
@testable import CapstanTestSupport

/// The golden plan corpus (issue 14): every folder under `GoldenPlans/` (but `common/`) is one
/// case — a small repository at two commits and the actual state beside it — with the plan
/// `capstan plan` prints at the second commit, in text (`expected.txt`) and JSON
/// (`expected.json`). The format of a case is described in `GoldenPlans/README.md`.
///
/// Each case runs for real: the two commits are made with `git` in a temporary folder (fixed
/// author, committer and dates, so commit ids never change), the registry and Capstan's serving
/// records are written into a real SQLite state folder through `EmbeddedRegistry` and
/// `StateChanges`, and the plan comes from `Reconciler.plan(at:)` over the ports `capstan plan`
/// wires (`Wiring.store`, `Wiring.ports`), rendered by `PlanRenderer` as the command renders it.
/// Two things differ from the command, both inputs of the case rather than code under test: the
/// clock is the case's `now`, and the serving layer is a `FixtureServing` that answers
/// `endpoints()` with the endpoints of `state.json` (it records nothing and decides nothing; the
/// agent itself is tested against real processes in CapstanServingTests and ServeApplyTests).
/// A case may instead ask for the serving agent capstan.yaml names, reached with the real client.
///
/// `CAPSTAN_UPDATE_GOLDEN=1` (scripts/update-golden-plans.sh) rewrites the expected files in the
/// source tree instead of comparing: for a deliberate change of the planner or the renderer,
/// reviewed in the diff.
struct GoldenPlanTests {
    /// The corpus as built into the test bundle.
    static let corpus = Bundle.module.resourceURL!.appendingPathComponent("GoldenPlans")
    /// The corpus in the source tree, which update mode rewrites.
    static let sourceCorpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GoldenPlans")
    static let updating = ProcessInfo.processInfo.environment["CAPSTAN_UPDATE_GOLDEN"] == "1"

    static let cases: [String] = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: corpus.path)) ?? []
        return names.filter { name in
            var isFolder: ObjCBool = false
            return !name.hasPrefix(".") && name != "common"
                && FileManager.default.fileExists(atPath: corpus.appendingPathComponent(name).path, isDirectory: &isFolder)
                && isFolder.boolValue
        }.sorted()
    }()

    @Test func corpusIsLargeEnough() {
        #expect(Self.cases.count >= 30)
        for name in Self.cases {
            let folder = Self.corpus.appendingPathComponent(name)
            let readme = (try? String(contentsOf: folder.appendingPathComponent("README"), encoding: .utf8)) ?? ""
            #expect(readme.split(separator: "\n").count == 1, "\(name): README must say in one line what the case shows")
            #expect(FileManager.default.fileExists(atPath: folder.appendingPathComponent("after").path), "\(name): no after/")
        }
    }

    @Test(arguments: cases)
    func planMatchesTheExpectedFiles(_ name: String) async throws {
        let output = try await GoldenCase(folder: Self.corpus.appendingPathComponent(name)).run()
        for (file, actual) in [("expected.txt", output.text), ("expected.json", output.json)] {
            if Self.updating {
                try Data(actual.utf8).write(to: Self.sourceCorpus.appendingPathComponent(name).appendingPathComponent(file))
                continue
            }
            let url = Self.corpus.appendingPathComponent(name).appendingPathComponent(file)
            let expected = (try? String(contentsOf: url, encoding: .utf8)) ?? ""
            // Compared first, so that a failure shows the diff rather than both documents.
            let matches = actual == expected
            #expect(matches, "\(name)/\(file) differs (- expected, + actual); run scripts/update-golden-plans.sh if the change is deliberate:\n\(LineDiff.unified(expected, actual))")
        }
    }

    /// The harness plans as `capstan plan` does: for a case without deployments (no clock in its
    /// text output), the built binary over the same repository and state prints expected.txt.
    @Test(arguments: ["003-param-changed", "011-pin-to-a-validated-version"])
    func theBinaryPrintsTheSamePlan(_ name: String) async throws {
        let golden = try GoldenCase(folder: Self.corpus.appendingPathComponent(name))
        let prepared = try await golden.prepare()
        let result = try CLI.run(["plan", "--repo", prepared.repository, "--state-dir", prepared.stateDirectory, "--ref", "main"])
        #expect(result.status == 0, "\(result.stderr)")
        let expected = try String(contentsOf: golden.folder.appendingPathComponent("expected.txt"), encoding: .utf8)
        #expect(GoldenCase.normalized(result.stdout, repository: prepared.repository) == expected,
                "\(LineDiff.unified(expected, GoldenCase.normalized(result.stdout, repository: prepared.repository)))")
    }
}

// MARK: - One case

/// A case folder: `before/` (optional), `after/`, `state.json`; `common/` beside the cases.
struct GoldenCase {
    let folder: URL
    let state: GoldenState
    /// Keeps the temporary repository and state folder for as long as the case runs.
    let scratch: TempDir

    /// 2026-11-05T10:00:00Z, the `now` of a case that names none.
    static let defaultNow: Int64 = 1_793_872_800_000
    /// The serving agent's boot id in a case's endpoints unless it names another.
    static let defaultBoot = "boot-1"

    init(folder: URL) throws {
        self.folder = folder
        let data = try Data(contentsOf: folder.appendingPathComponent("state.json"))
        do {
            state = try JSONDecoder().decode(GoldenState.self, from: data)
        } catch {
            throw GoldenError("\(folder.lastPathComponent)/state.json: \(error)")
        }
        scratch = try TempDir()
    }

    var name: String { folder.lastPathComponent }
    var now: Int64 { state.now ?? Self.defaultNow }
    var hasBefore: Bool { FileManager.default.fileExists(atPath: folder.appendingPathComponent("before").path) }

    struct Prepared {
        var repository: String
        var stateDirectory: String
        var afterCommit: String
        var beforeCommit: String? = nil
    }

    struct Output {
        var text: String
        var json: String
    }

    /// Builds the repository and the state, plans at `main` and renders the plan.
    func run() async throws -> Output {
        let prepared = try await prepare()
        let store = try Wiring.store(prepared.stateDirectory)
        let reconciler = Reconciler(ports: try await ports(prepared, store: store))
        let report = try await reconciler.plan(at: "main", options: PlanOptions(retryFailed: state.options?.retryFailed ?? false),
                                               fetch: true)
        #expect(report.revision.commit == prepared.afterCommit)
        // The plan cache of `capstan plan` never changes a plan: planned through it twice (the
        // second run from the cache when the case can be cached), the plan is the same.
        let cache = PlanCache(store: PlanCacheFile(stateDirectory: prepared.stateDirectory), build: "golden",
                              registryGeneration: { [registry = store.registry] in try await registry.generation() })
        for _ in 0..<2 {
            var cached = try await reconciler.cachedPlan(at: "main", cache: cache,
                                                         options: PlanOptions(retryFailed: state.options?.retryFailed ?? false)).plan
            cached.createdAt = report.plan.createdAt
            #expect(cached == report.plan, "\(name): the plan through the plan cache differs from the plan computed in full")
        }
        // A long-lived reconciler that read the before commit reads only what changed since
        // (the manifests, input identities and plan entries the change touches): the same plan.
        if let beforeCommit = prepared.beforeCommit {
            let following = Reconciler(ports: try await ports(prepared, store: store))
            _ = try? await following.plan(at: beforeCommit, fetch: false)
            var again = try await following.plan(at: "main", options: PlanOptions(retryFailed: state.options?.retryFailed ?? false),
                                                 fetch: true).plan
            again.createdAt = report.plan.createdAt
            #expect(again == report.plan, "\(name): planned after the before commit, the plan differs from the plan computed in full")
        }
        let renderer = PlanRenderer(plan: report.plan, color: false)
        return Output(text: Self.normalized(renderer.text(), repository: prepared.repository),
                      json: Self.normalized(try renderer.json(), repository: prepared.repository))
    }

    /// The ports of `capstan plan` (`Wiring.ports`) with the case's clock and serving layer.
    func ports(_ prepared: Prepared, store: SQLiteStateStore) async throws -> ReconcilerPorts {
        let options = try RepositoryOptions.parse(["--repo", prepared.repository, "--state-dir", prepared.stateDirectory])
        var ports = try await Wiring.ports(options, store: store, actor: "capstan plan")
        let now = self.now
        ports.now = { now }
        ports.environment = [:]
        if state.serving?.agent != "capstan.yaml" {
            let fixture = FixtureServing(endpoints: try (state.serving?.endpoints ?? []).map { try $0.status() })
            ports.serving = { _ in ServingConnection(target: fixture, close: {}) }
        }
        return ports
    }

    /// The repository path as it appears in output, replaced so that expected files are stable.
    static func normalized(_ text: String, repository: String) -> String {
        text.replacingOccurrences(of: repository, with: "<repo>")
    }

    // MARK: Repository

    /// Makes the commits (`before`, then `after`), then the state the case describes.
    func prepare() async throws -> Prepared {
        let repo = try GitRepo(at: scratch.sub("repo"))
        let stateDirectory = scratch.sub("state").path
        var beforeCommit: String?
        if hasBefore {
            try fill(repo, with: "before")
            beforeCommit = try repo.commit("before")
        }
        try fill(repo, with: "after")
        let afterCommit = try repo.commit("after", allowEmpty: true)
        let prepared = Prepared(repository: repo.path, stateDirectory: stateDirectory, afterCommit: afterCommit, beforeCommit: beforeCommit)
        try await seed(prepared, beforeCommit: beforeCommit)
        return prepared
    }

    /// Replaces the work tree with `common/` overlaid by the case's `side` folder. Every file is
    /// written with mode 0644, so the trees do not depend on the checkout of this repository.
    func fill(_ repo: GitRepo, with side: String) throws {
        let fm = FileManager.default
        for entry in try fm.contentsOfDirectory(atPath: repo.path) where entry != ".git" {
            try fm.removeItem(at: repo.url.appendingPathComponent(entry))
        }
        var files: [String: URL] = [:]
        for root in [folder.deletingLastPathComponent().appendingPathComponent("common"), folder.appendingPathComponent(side)] {
            for path in Self.files(under: root) { files[path] = root.appendingPathComponent(path) }
        }
        for (path, url) in files.sorted(by: { $0.key < $1.key }) {
            try repo.write(path, bytes: Array(try Data(contentsOf: url)))
        }
    }

    static func files(under root: URL) -> [String] {
        guard let e = FileManager.default.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey]) else { return [] }
        var out: [String] = []
        let base = root.resolvingSymlinksInPath().path
        for case let file as URL in e where (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
            out.append(String(file.resolvingSymlinksInPath().path.dropFirst(base.count + 1)))
        }
        return out.sorted()
    }

    // MARK: State

    /// What Capstan computes at a commit: the desired models and the loaded manifests.
    struct Desired {
        var commit: String
        var report: PlanReport

        func model(_ name: String) -> DesiredModel? { report.desired.models.first { $0.name == name } }
    }

    /// Writes the registry and serving records of state.json through the registry and the
    /// state store (never SQL), with a clock a day before the case's `now`.
    func seed(_ prepared: Prepared, beforeCommit: String?) async throws {
        let seedTime = now - 86_400_000
        let database = try StateDatabase(stateDirectory: prepared.stateDirectory)
        let store = SQLiteStateStore(database: database, now: { seedTime })
        let registry = store.registry

        // The desired state at each commit, as Capstan computes it (an empty registry meanwhile).
        func desired(at commit: String) async throws -> Desired {
            let reconciler = Reconciler(ports: try await ports(prepared, store: store))
            return Desired(commit: commit, report: try await reconciler.plan(at: commit, fetch: false))
        }
        let after = try await desired(at: prepared.afterCommit)
        var before: Desired?
        if let beforeCommit { before = try await desired(at: beforeCommit) }
        func at(_ ref: String, for what: String) throws -> Desired {
            switch ref {
            case "@after": return after
            case "@before":
                guard let before else { throw GoldenError("\(name): \(what) names @before, but the case has no before/") }
                return before
            default: throw GoldenError("\(name): \(what): '\(ref)' is neither @before nor @after")
            }
        }

        let seed = state.seed ?? (before == nil ? .none : .before)
        if seed == .before {
            guard let before else { throw GoldenError("\(name): seed is \"before\", but the case has no before/") }
            for model in before.report.desired.models {
                let spec = model.manifest.spec
                try await registry.upsertModel(name: model.name, description: spec.description, labels: model.manifest.metadata.labels)
                let metrics = state.seedMetrics?[model.name] ?? ["accuracy": 0.91]
                let v = try await registry.createVersion(NewVersion(model: model.name, fingerprint: model.fingerprint, commit: before.commit,
                                                                    params: spec.train?.params ?? [:], status: .training, training: model.training))
                try await registry.updateVersion(model: model.name, number: v.number, VersionUpdate(
                    status: .trained, metrics: metrics, artifactDigest: Self.digest(model.name, v.number),
                    artifactLocation: "artifacts/\(Self.digest(model.name, v.number))", logTail: ""))
                try await registry.updateVersion(model: model.name, number: v.number, VersionUpdate(
                    status: .validated, gateResults: Gates.evaluate(spec.validate, candidate: v.number, metrics: metrics, holder: nil)))
            }
        }
        for (model, meta) in (state.models ?? [:]).sorted(by: { $0.key < $1.key }) {
            try await registry.upsertModel(name: model, description: meta.description, labels: meta.labels ?? [:])
        }
        for v in state.versions ?? [] {
            let what = "version \(v.model) v\(v.number)"
            var fingerprint = v.fingerprint
            var training: TrainingDescription?
            var specAt = before ?? after
            if v.fingerprint.hasPrefix("@") {
                let side = try at(v.fingerprint, for: what)
                guard let model = side.model(v.model) else { throw GoldenError("\(name): \(what): no model \(v.model) at \(v.fingerprint)") }
                fingerprint = model.fingerprint
                training = model.training
                specAt = side
            }
            let commit: String?
            switch v.commit {
            case nil: commit = specAt.commit
            case let ref? where ref.hasPrefix("@"): commit = try at(ref, for: what).commit
            case let literal?: commit = literal.isEmpty ? nil : literal
            }
            let manifest = specAt.model(v.model)?.manifest ?? (before ?? after).model(v.model)?.manifest
            let created = try await registry.createVersion(NewVersion(model: v.model, fingerprint: fingerprint, commit: commit,
                                                                      params: manifest?.spec.train?.params ?? [:], status: .training,
                                                                      training: training))
            guard created.number == v.number else {
                throw GoldenError("\(name): \(what): the registry numbered it v\(created.number); list versions in order, after the seeded ones")
            }
            var update = VersionUpdate(status: v.status, metrics: v.metrics, logTail: v.logTail, attempts: v.attempts,
                                       failedAt: try v.failedAt.map { try $0.resolve(now) },
                                       archivedAt: try v.archived.map { try $0.resolve(now) })
            if v.status == .trained || v.status == .validated || v.status == .rejected {
                update.artifactDigest = Self.digest(v.model, v.number)
                update.artifactLocation = "artifacts/\(Self.digest(v.model, v.number))"
            }
            if v.status == .validated || v.status == .rejected {
                update.gateResults = v.gates ?? Gates.evaluate(manifest?.spec.validate, candidate: v.number, metrics: v.metrics ?? [:], holder: nil)
            }
            try await registry.updateVersion(model: v.model, number: v.number, update)
        }
        if seed == .before, let before {
            // The aliases a converged apply of `before` left.
            let snapshot = try await registry.snapshot()
            for model in before.report.desired.models {
                let versions = snapshot.versions[model.name] ?? []
                for pin in model.manifest.spec.aliases {
                    let target: ModelVersion?
                    switch pin.target {
                    case .version(let n): target = versions.first { $0.number == n && $0.status == .validated && $0.archivedAt == nil }
                    case .latest: target = Planner.latest(versions, fingerprint: model.fingerprint)
                    }
                    if let target {
                        try await registry.setAlias(pin.name, of: model.name, to: target.number, commit: before.commit, reason: "seeded")
                    }
                }
            }
        }
        for (model, aliases) in (state.aliases ?? [:]).sorted(by: { $0.key < $1.key }) {
            for (alias, number) in aliases.sorted(by: { $0.key < $1.key }) {
                if let number {
                    try await registry.setAlias(alias, of: model, to: number, commit: nil, reason: "seeded")
                } else {
                    try await registry.deleteAlias(alias, of: model, commit: nil, reason: "seeded")
                }
            }
        }

        // Capstan's serving records.
        guard let serving = state.serving else { return }
        func specHash(_ ref: String?, deployment: String, what: String) throws -> String {
            let side = try at(ref ?? "@after", for: what)
            let manifests = side.report.load.manifests
            guard let d = manifests.deployments.first(where: { $0.metadata.name == deployment }) else {
                throw GoldenError("\(name): \(what): no Deployment \(deployment) at \(ref ?? "@after")")
            }
            return DeploymentPhase.specHash(d, serve: manifests.model(named: d.spec.model)?.spec.serve)
        }
        var changes = StateChanges("seed the serving records of \(name)")
        let endpoints = serving.endpoints ?? []
        var applied: [String: [BackendWeight]] = [:]
        if let given = serving.applied {
            applied = given
        } else {
            for e in endpoints where applied[e.deployment] == nil {
                applied[e.deployment] = e.backends.map { b in BackendWeight(version: b.version, weight: b.weight, replicas: b.replicas ?? 1) }
            }
        }
        for (deployment, backends) in applied.sorted(by: { $0.key < $1.key }) {
            let model = endpoints.first { $0.deployment == deployment }?.model
                ?? after.report.load.manifests.deployments.first { $0.metadata.name == deployment }?.spec.model
            guard let model else { throw GoldenError("\(name): applied \(deployment): no endpoint or Deployment names its model") }
            changes.setApplied(deployment, model: model, backends)
        }
        for (deployment, r) in (serving.rollouts ?? [:]).sorted(by: { $0.key < $1.key }) {
            let what = "rollout of \(deployment)"
            let model = r.model ?? after.report.load.manifests.deployments.first { $0.metadata.name == deployment }?.spec.model ?? ""
            let stepping = r.phase == .stepping
            changes.setRollout(deployment, RolloutState(
                deployment: deployment, model: model, from: r.from, to: r.to, phase: r.phase, step: r.step ?? 0,
                stepStartedAt: try r.stepStartedAt.resolve(now),
                baseline: r.baseline.map { $0.stats() } ?? (stepping ? BackendStats() : nil),
                baselineBoot: r.baselineBoot ?? (stepping ? Self.defaultBoot : nil),
                startedAt: try (r.startedAt ?? r.stepStartedAt).resolve(now),
                specHash: try specHash(r.specHash, deployment: deployment, what: what)))
        }
        for q in serving.quarantine ?? [] {
            changes.addQuarantine(Quarantine(deployment: q.deployment, version: q.version,
                                             specHash: try specHash(q.specHash, deployment: q.deployment, what: "quarantine of \(q.deployment)"),
                                             reason: q.reason, at: try q.at.resolve(now)))
        }
        if !changes.isEmpty { try await store.commit(changes) }
    }

    /// A stand-in artifact digest for a seeded version (plans never open artifacts).
    static func digest(_ model: String, _ number: Int) -> String {
        "sha256:" + Hex.sha256(Data("\(model)/v\(number)".utf8))
    }
}

/// The serving layer of a case: answers `endpoints()` with what state.json lists. An input of
/// the case, like the registry rows: it records nothing and decides nothing. A plan never
/// changes the serving layer, so `apply` and `remove` fail loudly.
struct FixtureServing: ServingTarget {
    var endpoints: [EndpointStatus]

    func endpoints() async throws -> [EndpointStatus] { endpoints }

    func apply(_ spec: EndpointSpec) async throws {
        throw GoldenError("a plan must not change the serving layer (apply \(spec.deployment))")
    }

    func remove(deployment: String) async throws {
        throw GoldenError("a plan must not change the serving layer (remove \(deployment))")
    }
}

struct GoldenError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - state.json

/// The actual state of a case (see GoldenPlans/README.md).
struct GoldenState: Decodable {
    enum Seed: String, Decodable { case before, none }

    var now: Int64?
    var seed: Seed?
    /// Metrics of the seeded v1 per model (default accuracy 0.91).
    var seedMetrics: [String: [String: Double]]?
    var models: [String: ModelMeta]?
    var versions: [VersionState]?
    /// Model → alias → version (null: delete the alias).
    var aliases: [String: [String: Int?]]?
    var serving: ServingState?
    var options: Options?

    struct ModelMeta: Decodable {
        var description: String?
        var labels: [String: String]?
    }

    struct VersionState: Decodable {
        var model: String
        var number: Int
        var status: VersionStatus
        /// A literal fingerprint, or `@before` / `@after`: the model's fingerprint at that commit
        /// (with the training description Capstan records).
        var fingerprint: String
        /// `@before`, `@after` or a literal id; default: the commit of the fingerprint (or before).
        var commit: String?
        var metrics: [String: Double]?
        /// Default, for validated and rejected versions: the gates of the spec at the version's commit.
        var gates: [GateResult]?
        var attempts: Int?
        var failedAt: Moment?
        var archived: Moment?
        var logTail: String?
    }

    struct ServingState: Decodable {
        /// `capstan.yaml`: no fixture; the plan reaches the agent capstan.yaml names, for real.
        var agent: String?
        var endpoints: [Endpoint]?
        /// Deployment → what Capstan last set; default: each endpoint's weights as listed.
        var applied: [String: [BackendWeight]]?
        var rollouts: [String: Rollout]?
        var quarantine: [QuarantineState]?
    }

    struct Endpoint: Decodable {
        var deployment: String
        var model: String
        var bootID: String?
        var backends: [Backend]

        func status() throws -> EndpointStatus {
            EndpointStatus(deployment: deployment, model: model, backends: backends.map { b in
                let replicas = b.replicas ?? 1
                let health = b.health ?? .ready
                let spec = BackendSpec(version: b.version, weight: b.weight, replicas: replicas, command: ["python3", "serve.py"],
                                       workdir: "/srv/capstan/serving/\(model)/v\(b.version)/tree/models/\(model)",
                                       modelDir: "/srv/capstan/artifacts/\(model)-v\(b.version)",
                                       artifactDigest: GoldenCase.digest(model, b.version))
                return BackendStatus(spec: spec, readyReplicas: b.readyReplicas ?? (health == .ready ? replicas : 0), health: health,
                                     restarts: b.restarts ?? 0, lastError: b.lastError, stats: b.stats?.stats() ?? BackendStats())
            }, bootID: bootID ?? GoldenCase.defaultBoot)
        }
    }

    struct Backend: Decodable {
        var version: Int
        var weight: Int
        var replicas: Int?
        var health: BackendHealth?
        var readyReplicas: Int?
        var restarts: Int?
        var lastError: String?
        var stats: Stats?
    }

    struct Stats: Decodable {
        var requests: Int64?
        var errors5xx: Int64?
        var connectionErrors: Int64?
        /// Latency in milliseconds → how many requests took that long.
        var latencyMs: [String: Int]?

        func stats() -> BackendStats {
            var histogram = LatencyHistogram()
            for (ms, count) in latencyMs ?? [:] {
                for _ in 0..<count { histogram.record(milliseconds: Double(ms) ?? 0) }
            }
            return BackendStats(requests: requests ?? histogram.total, errors5xx: errors5xx ?? 0,
                                connectionErrors: connectionErrors ?? 0, latency: histogram)
        }
    }

    struct Rollout: Decodable {
        var model: String?
        var from: Int?
        var to: Int
        var phase: RolloutPhase
        var step: Int?
        var stepStartedAt: Moment
        var startedAt: Moment?
        var baseline: Stats?
        var baselineBoot: String?
        /// `@after` (default) or `@before`: the Deployment's spec hash at that commit.
        var specHash: String?
    }

    struct QuarantineState: Decodable {
        var deployment: String
        var version: Int
        var specHash: String?
        var reason: String
        var at: Moment
    }

    struct Options: Decodable {
        var retryFailed: Bool?
    }
}

/// A time in state.json: milliseconds since the epoch, or a duration before or after `now`
/// (`"-5m"`, `"+30s"`, `"-1h30m"`).
enum Moment: Decodable {
    case absolute(Int64)
    case relative(String)

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let ms = try? c.decode(Int64.self) {
            self = .absolute(ms)
        } else {
            self = .relative(try c.decode(String.self))
        }
    }

    func resolve(_ now: Int64) throws -> Int64 {
        switch self {
        case .absolute(let ms): return ms
        case .relative(let text):
            guard let sign = text.first, sign == "-" || sign == "+",
                  case .success(let d) = ManifestDuration.parse(String(text.dropFirst())) else {
                throw GoldenError("'\(text)' is not a time such as -5m or +30s")
            }
            return sign == "-" ? now - d.milliseconds : now + d.milliseconds
        }
    }
}

// MARK: - Diff

/// A line diff for failure messages: `-` expected, `+` actual, with two lines of context.
enum LineDiff {
    static func unified(_ expected: String, _ actual: String, context: Int = 2) -> String {
        let a = expected.components(separatedBy: "\n"), b = actual.components(separatedBy: "\n")
        // Longest common subsequence, from the end.
        var lcs = Array(repeating: Array(repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in stride(from: a.count - 1, through: 0, by: -1) {
            for j in stride(from: b.count - 1, through: 0, by: -1) {
                lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : max(lcs[i + 1][j], lcs[i][j + 1])
            }
        }
        var lines: [(Character, String)] = []
        var i = 0, j = 0
        while i < a.count || j < b.count {
            if i < a.count, j < b.count, a[i] == b[j] {
                lines.append((" ", a[i])); i += 1; j += 1
            } else if i < a.count, j == b.count || lcs[i + 1][j] >= lcs[i][j + 1] {
                lines.append(("-", a[i])); i += 1
            } else {
                lines.append(("+", b[j])); j += 1
            }
        }
        let changed = lines.indices.filter { lines[$0].0 != " " }
        var out: [String] = []
        var last = -1
        for (index, line) in lines.enumerated() where changed.contains(where: { abs($0 - index) <= context }) {
            if last >= 0, index > last + 1 { out.append("@@") }
            out.append("\(line.0) \(line.1)")
            last = index
        }
        return out.joined(separator: "\n")
    }
}
