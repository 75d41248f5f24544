import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanStore
import Foundation

/// `capstan register MODEL --artifact DIR --metrics FILE`: a version made outside Capstan (a
/// notebook, another pipeline) into the embedded registry, for a registry-only model (a Model
/// without `spec.train`). The next pass judges it on the model's gates and moves its aliases.
/// With MLflow as the registry, versions are registered with MLflow's own client instead.
struct RegisterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Register a version made outside Capstan in the embedded registry (for a Model without spec.train).",
        discussion: """
            The folder is copied into the artifact store and the metrics file is read as a training's \
            (a flat JSON object of metric name → number). The version is `trained` until the next \
            apply judges it on the Model's gates. Registering the same files again changes nothing.
            """)

    @Argument(help: "The registered model (the Model's metadata.name).")
    var model: String

    @Option(name: .long, help: ArgumentHelp("The folder holding the version's files.", valueName: "dir"))
    var artifact: String

    @Option(name: .long, help: ArgumentHelp("JSON file of the version's metrics ({\"accuracy\": 0.91}).", valueName: "file"))
    var metrics: String

    @Option(name: .customLong("param"), help: ArgumentHelp("A parameter of the version, recorded with it (repeatable).", valueName: "key=value"))
    var params: [String] = []

    @Option(name: .customLong("lock-timeout"), help: ArgumentHelp("How long to wait for a running apply's lock (default 0s).", valueName: "duration"))
    var lockTimeout: String = "0s"

    @OptionGroup var state: StateDirectoryOption

    func run() async throws {
        do {
            Terminal.out(try await register() + "\n")
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        }
    }

    func register() async throws -> String {
        if let problem = Names.dnsLabelProblem(model) {
            throw CommandFailure(message: "'\(model)' is not a model name: \(problem)", exitCode: ExitStatus.usage)
        }
        var recordedParams: [String: ParamValue] = [:]
        for item in params {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw CommandFailure(message: "--param '\(item)' is not key=value", exitCode: ExitStatus.usage)
            }
            recordedParams[String(item[..<eq])] = .string(String(item[item.index(after: eq)...]))
        }
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: artifact, isDirectory: &isFolder), isFolder.boolValue else {
            throw CommandFailure(message: "--artifact \(artifact): no such folder; give the folder holding the version's files")
        }
        guard FileManager.default.fileExists(atPath: metrics) else {
            throw CommandFailure(message: "--metrics \(metrics): no such file; give a JSON object of the version's metrics, e.g. {\"accuracy\": 0.93}")
        }
        let values: [String: Double]
        do {
            values = try MetricsFile.read(metrics, required: true, scrubber: .none)
        } catch {
            throw CommandFailure(message: "--metrics \(metrics): \(error)")
        }
        let wait = try ManifestDuration.option(lockTimeout, "--lock-timeout").milliseconds
        let store = try Wiring.store(state.path)
        if case .mlflow(let m)? = try await store.registryInUse() {
            throw CommandFailure(message: "the registry of \(state.path) is the MLflow server at \(m.url); register versions there with MLflow's client (mlflow.register_model), and Capstan judges them on the next pass")
        }
        let command = (["capstan"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        let keeper: LeaseKeeper
        do {
            keeper = try await LeaseKeeper.acquire(store, holder: UUID().uuidString.lowercased(), command: command, waitMilliseconds: wait)
        } catch {
            throw Wiring.failure(error)
        }
        let result: Result<String, any Error>
        do {
            let fenced = store.fencedStore(by: keeper.fence)
            result = .success(try await Self.register(model: model, artifact: artifact, metrics: values, params: recordedParams,
                                                      store: fenced, artifacts: LocalArtifactStore(stateDirectory: state.path)))
        } catch {
            result = .failure(error)
        }
        await keeper.release()
        do {
            return try result.get()
        } catch {
            throw Wiring.failure(error)
        }
    }

    static func register(model: String, artifact: String, metrics: [String: Double], params: [String: ParamValue],
                         store: SQLiteStateStore, artifacts: LocalArtifactStore) async throws -> String {
        let registry = store.registry
        let stored = try await artifacts.store(directory: artifact, scrubber: .none)
        // The files are the version's identity: the same files are one version.
        let fingerprint = stored.digest
        var created = false
        let version: ModelVersion
        if let existing = try await registry.version(of: model, fingerprint: fingerprint) {
            // A registration stopped between its two writes is finished; a finished one stays.
            guard existing.status == .training else {
                guard existing.metrics == metrics else {
                    throw CommandFailure(message: "these files are v\(existing.number) of \(model) already, registered with other metrics; a version's metrics do not change (register changed files as a new version)")
                }
                return "These files are v\(existing.number) of \(model) already (\(existing.status.rawValue)); nothing changed."
            }
            version = existing
        } else {
            if try await registry.model(named: model) == nil {
                _ = try await registry.upsertModel(name: model, description: nil, labels: [:])
                created = true
            }
            // `training` until its metrics and files are recorded: a pass never judges a
            // version whose metrics are not there yet.
            version = try await registry.createVersion(NewVersion(model: model, fingerprint: fingerprint, params: params, status: .training))
        }
        _ = try await registry.updateVersion(model: model, number: version.number,
                                             VersionUpdate(status: .trained, metrics: metrics, artifactDigest: stored.digest,
                                                           artifactLocation: stored.location))
        let actor = ProcessInfo.processInfo.environment["USER"] ?? "capstan"
        var changes = StateChanges("record the registration of v\(version.number) of \(model)")
        changes.record(AuditEvent(at: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)), actor: actor, host: StateLock.localHostName(),
                                  commit: nil, object: .version(model: model, number: version.number), action: .registerVersion,
                                  after: .map(["artifact": .string(stored.digest),
                                               "metrics": .map(metrics.mapValues { .double($0) })]),
                                  reason: "registered with capstan register"))
        try await store.commit(changes)
        let names = metrics.keys.sorted().map { "\($0)=\(Gates.format(metrics[$0]!))" }.joined(separator: " ")
        return "Registered v\(version.number) of \(model) (files \(stored.digest.prefix(19))…, metrics \(names.isEmpty ? "none" : names))."
            + (created ? " The model was not in the registry: it was created." : "")
            + " The next apply judges it on the gates of the Model in Git (a Model without spec.train)."
    }
}
