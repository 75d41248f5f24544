import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanManifests
import CapstanRunner
import CapstanServing
import CapstanStore
import Foundation
import Synchronization

/// A commit's desired state, ready for the planner, with what executing it needs.
struct PreparedPass {
    var state: GitDesiredState
    var desired: DesiredState
    var database: StateDatabase
    var registry: EmbeddedRegistry
    var actual: ActualState

    var repository: GitRepository { state.opened.repository }
    var commit: ObjectID { state.revision.commit }
}

enum PassPreparation {
    /// Reads the manifests at `ref`, refuses a commit with errors (nothing is planned from an
    /// invalid commit), resolves the training inputs and fingerprints, and reads the registry.
    static func prepare(_ options: RepositoryOptions, database: StateDatabase, now: Int64) async throws -> PreparedPass {
        let repo = options.repo ?? "."
        let source = try options.source(for: repo)
        let state = try await GitDesiredStateReader.openAndLoad(source, fetch: !options.noFetch, ref: options.ref)
        let diagnostics = state.result.diagnostics
        // (With errors, those are reported below; a warning alone, such as a submodule, still
        // leaves nothing to plan from.)
        if state.result.fileCount == 0 && !diagnostics.hasErrors {
            throw CommandFailure(message: "\(state.opened.location) @ \(state.revision.ref) (\(state.revision.commit.short)) holds no manifest files (capstan.yaml, *.yaml, *.yml); nothing to plan")
        }
        if diagnostics.errorCount > 0 {
            let formatter = DiagnosticFormatter(style: .plain)
            for d in diagnostics where d.severity == .error {
                Terminal.err(formatter.text(d, sourceLine: { state.result.sourceLine(file: $0, line: $1) }))
            }
            let count = diagnostics.errorCount
            throw CommandFailure(message: "\(count) error\(count == 1 ? "" : "s") in the manifests at \(state.revision.ref) (\(state.revision.commit.short)); nothing was planned and nothing changed. Fix them (capstan validate --repo \(repo) --ref \(state.revision.ref) lists them) and commit again")
        }
        let manifests = state.result.manifests
        let resolver = InputResolver(repository: state.opened.repository, database: database)
        let models: [DesiredModel]
        do {
            models = try await resolver.desiredModels(state.result, tree: state.revision.tree)
        } catch {
            throw CommandFailure(message: "\(state.opened.location) @ \(state.revision.commit.short): cannot resolve training inputs: \(error)")
        }
        // A local path is kept absolute, so a saved plan can be applied from any folder.
        var repositoryName = state.opened.location.description
        if state.opened.mirrorPath == nil, !repo.contains("://"), !repo.hasPrefix("/") {
            repositoryName = URL(fileURLWithPath: repo).standardizedFileURL.path
        }
        let desired = DesiredState(repository: repositoryName, ref: state.revision.ref,
                                   commit: state.revision.commit.hex, models: models, policy: manifests.configSpec.policy)
        let registry = EmbeddedRegistry(database: database)
        let actual: ActualState
        do {
            actual = ActualState(registry: try await registry.snapshot())
        } catch {
            throw CommandFailure(message: "cannot read the registry in '\(database.path)': \(error)")
        }
        return PreparedPass(state: state, desired: desired, database: database, registry: registry, actual: actual)
    }

    /// The plan of `pass`. Snapshots leave out the training descriptions of versions; a model
    /// that retrains gets its newest version's description fetched, so the plan can say what
    /// changed since.
    static func plan(_ pass: inout PreparedPass, now: Int64, options: PlanOptions) async throws -> Plan {
        var plan = Planner.plan(desired: pass.desired, actual: pass.actual, now: now, options: options)
        var fetched = false
        for entry in plan.entries {
            guard case .train(let t) = entry.detail, t.reasons.contains(where: { if case .fingerprintChanged = $0 { return true } else { return false } }),
                  var versions = pass.actual.registry.versions[entry.name], let last = versions.indices.max(by: { versions[$0].number < versions[$1].number }),
                  versions[last].training == nil,
                  let training = try await pass.registry.trainingDescription(of: entry.name, number: versions[last].number) else { continue }
            versions[last].training = training
            pass.actual.registry.versions[entry.name] = versions
            fetched = true
        }
        if fetched { plan = Planner.plan(desired: pass.desired, actual: pass.actual, now: now, options: options) }
        return plan
    }

    /// Opens the state database of `options`, turning its refusals into command failures and
    /// printing its warnings (a state folder other users can read) on stderr.
    static func openDatabase(_ stateDirectory: String) throws -> StateDatabase {
        let database: StateDatabase
        do {
            database = try StateDatabase(stateDirectory: stateDirectory)
        } catch let error as StoreError {
            throw CommandFailure(message: error.message)
        }
        for warning in database.warnings { Terminal.err("capstan: warning: \(warning)\n") }
        return database
    }
}

/// Keeps the lease of one pass: renews it every quarter of its `ttl` and checks every second that
/// it is still held; the pass's fenced database (`fenced(_:)`) reports a lost lease at its first
/// write that finds it. Whichever notices first, `onLost` is called once (it stops the pass: the
/// running step is cancelled) and `lost` keeps the error. A renewal that fails for another reason
/// (a busy or full disk) is tried again: while the lease is not taken over, the pass may go on, and
/// once it is, the fence stops it.
final class LeaseKeeper: Sendable {
    let lock: StateLock
    let fence: Fence
    let ttl: TimeInterval

    private struct State {
        var lost: StoreError?
        var onLost: (@Sendable (StoreError) -> Void)?
        var task: Task<Void, Never>?
    }

    private let state = Mutex(State())

    init(lock: StateLock, fence: Fence, ttl: TimeInterval) {
        self.lock = lock
        self.fence = fence
        self.ttl = ttl
    }

    /// `database` as the pass writes it: every write checks this lease.
    func fenced(_ database: StateDatabase) -> StateDatabase {
        database.fenced(by: fence) { [self] error in self.lose(error) }
    }

    /// The error the lease was lost with, if it was.
    var lost: StoreError? { state.withLock { $0.lost } }

    /// Starts renewing and checking; `onLost` runs at once if the lease was already found lost.
    func start(onLost: @escaping @Sendable (StoreError) -> Void) {
        let lock = self.lock, fence = self.fence, ttl = self.ttl
        let task = Task { [self] in
            let clock = ContinuousClock()
            var renewed = clock.now
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { return }
                do {
                    if clock.now - renewed >= .seconds(ttl / 4) {
                        try lock.renew(fence, ttl: ttl)
                        renewed = clock.now
                    } else {
                        try lock.check(fence)
                    }
                } catch let error as StoreError where error.code == .leaseLost {
                    self.lose(error)
                    return
                } catch {
                    // Tried again in a second; the fence guards the writes meanwhile.
                }
            }
        }
        let already = state.withLock { state -> StoreError? in
            state.onLost = onLost
            state.task = task
            return state.lost
        }
        if let already { onLost(already) }
    }

    /// Stops renewing (the pass is over).
    func stop() {
        state.withLock { $0.task }?.cancel()
    }

    private func lose(_ error: StoreError) {
        let handler = state.withLock { state -> (@Sendable (StoreError) -> Void)? in
            guard state.lost == nil else { return nil }
            state.lost = error
            return state.onLost
        }
        handler?(error)
    }
}

/// The serving layer a pass talks to, and how to let go of it.
struct ServingConnection: Sendable {
    var target: any ServingTarget
    var close: @Sendable () async -> Void
}

extension PassPreparation {
    /// The configured serving layer (`spec.serving.local.admin` of capstan.yaml), reached through
    /// its admin API; the token, when `tokenEnv` names one, is read from the environment.
    static func servingTarget(_ config: ConfigSpec) -> ServingConnection? {
        switch config.serving {
        case .local(let local):
            let token = local.tokenEnv.flatMap { ProcessInfo.processInfo.environment[$0] }
            let client = AgentClient(adminURL: local.admin, token: token, timeout: .seconds(10))
            return ServingConnection(target: client, close: { try? await client.shutdown() })
        }
    }
}

extension Result where Failure == any Error {
    /// The outcome of an async throwing body, so that clean-up can run before it is rethrown.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Saved plans (`plan --out`, `apply PLANFILE`): the Plan as JSON, with its format checked.
enum SavedPlan {
    static func write(_ plan: Plan, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = try encoder.encode(plan)
        let url = URL(fileURLWithPath: path)
        do {
            try data.write(to: url, options: .atomic)
        } catch {
            throw CommandFailure(message: "cannot write the plan to '\(path)': \(error.localizedDescription)")
        }
    }

    static func read(_ path: String) throws -> Plan {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw CommandFailure(message: "cannot read the plan file '\(path)': \(error.localizedDescription)")
        }
        struct Header: Decodable { var formatVersion: Int? }
        guard let header = try? JSONDecoder().decode(Header.self, from: data), let version = header.formatVersion else {
            throw CommandFailure(message: "'\(path)' is not a plan saved by `capstan plan --out` (no formatVersion); make one with capstan plan --out \(path)")
        }
        guard version == Plan.formatVersion else {
            throw CommandFailure(message: "'\(path)' is a plan of format \(version); this Capstan reads format \(Plan.formatVersion). Make a new plan with this Capstan")
        }
        do {
            return try JSONDecoder().decode(Plan.self, from: data)
        } catch {
            throw CommandFailure(message: "'\(path)' is not a valid saved plan (\(error)); make a new plan with capstan plan --out \(path)")
        }
    }
}

extension ManifestDuration {
    /// Parses a command-line duration, or fails with a usage error naming the option.
    static func option(_ text: String, _ name: String) throws -> ManifestDuration {
        switch ManifestDuration.parse(text) {
        case .success(let d): return d
        case .failure: throw ValidationError("\(name) '\(text)' is not a duration such as 30s, 5m or 1h")
        }
    }
}
