import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanManifests
import CapstanMLflow
import CapstanRunner
import CapstanServing
import CapstanStore
import Foundation

/// The one place the commands wire concrete adapters to the engine's ports: the Git source, the
/// SQLite state (and the embedded registry in it), local subprocesses, the local artifact store,
/// and the local serving agent's admin API.
enum Wiring {
    /// Opens the state store of a state directory, turning its refusals (a damaged, newer or
    /// foreign database, a state folder that cannot be written) into command failures.
    static func store(_ stateDirectory: String) throws -> SQLiteStateStore {
        do {
            let store = try SQLiteStateStore(stateDirectory: stateDirectory)
            for warning in store.warnings { Terminal.err("capstan: warning: \(warning)\n") }
            return store
        } catch let error as StoreError {
            throw CommandFailure(message: error.message)
        }
    }

    /// The ports of a reconciler following `options`' repository with the state in `store`, and
    /// the registry that `capstan.yaml` names at the ref (`registry(for:store:)`).
    static func ports(_ options: RepositoryOptions, store: SQLiteStateStore, actor: String) async throws -> ReconcilerPorts {
        let source = GitSourceRepository(source: try options.source(for: options.repo ?? "."))
        let config = await registryConfig(source, ref: options.ref, fetch: !options.noFetch)
        let registry = try registry(for: config, store: store)
        if try await store.registryInUse() != config { try await store.recordRegistryInUse(config) }
        var ports = ReconcilerPorts(
            source: source, store: store, registry: registry.unfenced,
            fenced: { fence, onLost in
                let fenced = store.fencedStore(by: fence, onLost: onLost)
                return (fenced, registry.fenced(fenced))
            },
            runner: LocalStepRunner(), artifacts: LocalArtifactStore(stateDirectory: options.stateDirectory),
            serving: servingTarget, workFolder: options.stateDirectory, actor: actor, host: StateLock.localHostName())
        ports.registryConfig = config
        return ports
    }

    /// The registry of a configuration: the embedded one in `store`, or an MLflow server (its
    /// alias history kept in `store`), and the same over a pass's fenced store.
    struct WiredRegistry {
        var unfenced: any Registry
        var fenced: @Sendable (SQLiteStateStore) -> any Registry
    }

    static func registry(for config: RegistryConfig, store: SQLiteStateStore) throws -> WiredRegistry {
        switch config {
        case .embedded:
            return WiredRegistry(unfenced: store.registry, fenced: { $0.registry })
        case .mlflow(let m):
            let credentials: MLflowCredentials
            do {
                credentials = try MLflowCredentials.resolve(tokenVariable: m.tokenEnv, usernameVariable: m.usernameEnv,
                                                            passwordVariable: m.passwordEnv, environment: ProcessInfo.processInfo.environment)
            } catch {
                throw CommandFailure(message: "capstan.yaml spec.registry.mlflow: \(error.description)")
            }
            let client: MLflowClient
            do {
                client = try MLflowClient(MLflowClient.Configuration(url: m.url, credentials: credentials,
                                                                     timeout: .milliseconds(m.timeout.milliseconds)))
            } catch {
                throw CommandFailure(message: "capstan.yaml spec.registry.mlflow: \(error)")
            }
            let registry = MLflowRegistry(client: client, ledger: store.registry.ledger,
                                          options: MLflowRegistry.Options(experiment: m.experiment))
            return WiredRegistry(unfenced: registry, fenced: { registry.with(ledger: $0.registry.ledger) })
        }
    }

    /// The registry `capstan.yaml` names at `ref` (the embedded one when the commit cannot be
    /// read or has no valid config: the pass reads the commit again and reports its problems,
    /// and refuses a commit naming another registry than the one wired).
    static func registryConfig(_ source: GitSourceRepository, ref: String?, fetch: Bool) async -> RegistryConfig {
        var revision = try? await source.resolve(ref, fetch: false)
        if revision == nil, fetch { revision = try? await source.resolve(ref, fetch: true) }
        guard let revision else { return .embedded }
        // The file alone: listing the tree would cost as much as loading the manifests, which a
        // plan served from the plan cache never does.
        for name in ManifestLoader.configFileNames {
            guard let bytes = try? await source.file(at: name, of: revision) else { continue }
            let decoded = ManifestDecoder().decode(bytes, file: name)
            for case .config(let config) in decoded.manifests { return config.spec.registry }
            return .embedded
        }
        return .embedded
    }

    /// The persistent plan cache of one-shot `capstan plan` runs, in the state folder; keyed to
    /// this build of Capstan (its version and the executable file itself).
    static func planCache(_ stateDirectory: String, store: SQLiteStateStore) -> PlanCache {
        let registry = store.registry
        return PlanCache(store: PlanCacheFile(stateDirectory: stateDirectory), build: buildIdentity,
                         registryGeneration: { try await registry.generation() })
    }

    /// `capstan <version> <inode>:<size>:<mtime>` of the running executable: a rebuilt binary is
    /// another build even when the version string stays the same.
    static let buildIdentity: String = {
        var info = stat()
        guard stat("/proc/self/exe", &info) == 0 else { return "capstan \(CapstanMain.version) unknown-executable-\(getpid())" }
        return "capstan \(CapstanMain.version) \(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)"
    }()

    /// The configured serving layer (`spec.serving.local.admin` of capstan.yaml), reached through
    /// its admin API; the token, when `tokenEnv` names one, is read from the environment.
    @Sendable static func servingTarget(_ config: ConfigSpec) -> ServingConnection? {
        switch config.serving {
        case .local(let local):
            let token = local.tokenEnv.flatMap { ProcessInfo.processInfo.environment[$0] }
            let client = AgentClient(adminURL: local.admin, token: token, timeout: .seconds(10))
            return ServingConnection(target: client, close: { try? await client.shutdown() })
        }
    }

    /// A failure of the engine as a command failure: an invalid commit's diagnostics are printed
    /// first, with their source lines.
    static func failure(_ error: any Error) -> CommandFailure {
        if let failure = error as? CommandFailure { return failure }
        if let invalid = error as? InvalidDesiredState {
            let formatter = DiagnosticFormatter(style: .plain)
            for d in invalid.errors {
                Terminal.err(formatter.text(d, sourceLine: { invalid.load.sourceLine(file: $0, line: $1) }))
            }
            return CommandFailure(message: invalid.failure.message)
        }
        return CommandFailure(message: ReconcileFailure.of(error).message)
    }

    /// Notes and warnings of the engine, on stderr.
    static func printNote(_ event: PassEvent) {
        switch event {
        case .note(let text), .recovered(let text): Terminal.err("capstan: note: \(text)\n")
        case .warning(let text): Terminal.err("capstan: warning: \(text)\n")
        default: break
        }
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
