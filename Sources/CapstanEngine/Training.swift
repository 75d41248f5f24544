import CapstanGit
import CapstanStore
import Foundation

/// The journal operation of a training run.
let trainOperation = "train"
/// The journal operation of a validation command's run.
let validateCommandOperation = "validate-command"
/// The variable that marks a step's processes as Capstan's, so a crashed run's leftovers can be
/// found and killed safely (a recycled pid of another process never carries it).
let runMarker = "CAPSTAN_RUN_ID"

/// Where a step runs and what it gets: the files and environment shared by training and
/// validation commands.
struct StepWorkspace {
    /// `<state>/runs/<model>/v<N>-a<attempt>` (training) or `…-validate`.
    var folder: String
    /// A private copy of the commit's tree: steps may write into their working folder without
    /// touching another run's files.
    var tree: String
    var output: String
    var metricsFile: String
    var paramsFile: String
    var logFile: String

    init(stateDirectory: String, model: String, version: Int, label: String) {
        folder = "\(stateDirectory)/runs/\(model)/v\(version)-\(label)"
        tree = folder + "/tree"
        output = folder + "/output"
        metricsFile = folder + "/metrics.json"
        paramsFile = folder + "/params.json"
        logFile = "\(stateDirectory)/logs/\(model)/v\(version)-\(label).log"
    }

    /// Creates the folders afresh (an interrupted attempt's leftovers are removed) and copies the
    /// materialized tree in.
    func prepare(materialized: URL, params: [String: ParamValue]) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: folder) { try fm.removeItem(atPath: folder) }
        // Private like the rest of the state folder (runs/ and logs/ hold data and metrics).
        try StateFolder.makeFolder(folder, parentsMode: StateFolder.folderMode, what: "create the step's folder")
        try fm.copyItem(atPath: materialized.path, toPath: tree)
        try StateFolder.makeFolder(output, what: "create the step's output folder")
        try StateFolder.makeFolder((logFile as NSString).deletingLastPathComponent, parentsMode: StateFolder.folderMode,
                                   what: "create the log folder")
        if fm.fileExists(atPath: logFile) { try fm.removeItem(atPath: logFile) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        guard fm.createFile(atPath: paramsFile, contents: try encoder.encode(params),
                            attributes: [.posixPermissions: Int(StateFolder.fileMode)]) else {
            throw StepOutputError(message: "cannot write the params file '\(paramsFile)'")
        }
    }

    /// Checks what the step left in `output` before it is stored: the folder itself (a step may
    /// have replaced it with a symlink, whose target would be stored) and that it is not empty.
    /// The entries inside are checked by the artifact store.
    func checkOutput() throws {
        var info = stat()
        guard lstat(output, &info) == 0 else {
            let code = errno
            throw StepOutputError(message: "cannot read the training's output folder '\(output)' (CAPSTAN_OUTPUT_DIR): \(String(cString: strerror(code))); write the model's files into that folder and leave the folder itself in place")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            let kind = MetricsFile.nonRegularKind(info.st_mode) ?? "a file"
            throw StepOutputError(message: "the training replaced its output folder '\(output)' (CAPSTAN_OUTPUT_DIR) with \(kind); artifacts may hold only files and folders. Write the model's files into the folder instead of replacing it")
        }
        guard try !FileManager.default.contentsOfDirectory(atPath: output).isEmpty else {
            throw StepOutputError(message: "the training command succeeded but wrote nothing to CAPSTAN_OUTPUT_DIR ('\(output)'); write the model's files there")
        }
    }

    /// Removes everything but the log.
    func clean() {
        try? FileManager.default.removeItem(atPath: folder)
    }
}

/// The environment a step gets: a few variables of the reconciler's (PATH, HOME, locale), the
/// spec's `env`, its `secretEnv` resolved from the reconciler's environment, and Capstan's own.
enum StepEnvironment {
    static let inherited = ["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TZ"]

    struct MissingSecret: Error, CustomStringConvertible {
        var model: String
        var name: String
        var source: String
        var description: String {
            "model \(model): secretEnv \(name) is taken from the environment variable \(source), which is not set in Capstan's environment; set it and run again"
        }
    }

    static func make(model: String, spec: TrainSpec, reconciler: [String: String], capstan: [String: String]) throws -> [String: String] {
        var env: [String: String] = [:]
        for name in inherited { if let v = reconciler[name] { env[name] = v } }
        if env["PATH"] == nil { env["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        for (k, v) in spec.env { env[k] = v }
        for (name, source) in spec.secretEnv.sorted(by: { $0.key < $1.key }) {
            guard let value = reconciler[source] else { throw MissingSecret(model: model, name: name, source: source) }
            env[name] = value
        }
        for (k, v) in capstan { env[k] = v }
        return env
    }

    /// The scrubber of everything a model's steps return: the secret values they see.
    static func scrubber(spec: TrainSpec, reconciler: [String: String]) -> SecretScrubber {
        SecretScrubber(secrets: spec.secretEnv.values.compactMap { reconciler[$0] })
    }

    /// Secrets too short to be redacted (`SecretScrubber.minimumLength`), refused before a pass
    /// runs anything. Names the model, the variable the step gets and the one it comes from;
    /// never the value.
    struct ShortSecrets: Error, CustomStringConvertible {
        struct Problem: Hashable, Sendable {
            var model: String
            var name: String
            var source: String
            var length: Int
        }

        var problems: [Problem]

        var description: String {
            problems.map { p in
                let length = p.length == 0 ? "is empty" : "has only \(p.length) character\(p.length == 1 ? "" : "s")"
                return "model \(p.model): secretEnv \(p.name) is taken from the environment variable \(p.source), whose value \(length); "
                    + "Capstan redacts secrets of at least \(SecretScrubber.minimumLength) characters from what a step prints and returns, "
                    + "so it refuses shorter ones: set a longer secret in \(p.source), or move \(p.name) to env if it is not a secret"
            }.joined(separator: "\n")
        }
    }

    /// Throws `ShortSecrets` when a model's `secretEnv` takes a value shorter than
    /// `SecretScrubber.minimumLength` from `reconciler`. A variable that is not set is left to
    /// the training, which fails that model's entry alone (`MissingSecret`).
    static func checkLengths(_ models: [DesiredModel], reconciler: [String: String]) throws(ShortSecrets) {
        var problems: [ShortSecrets.Problem] = []
        for model in models {
            for (name, source) in model.manifest.spec.train.secretEnv.sorted(by: { $0.key < $1.key }) {
                if let value = reconciler[source], value.count < SecretScrubber.minimumLength {
                    problems.append(.init(model: model.name, name: name, source: source, length: value.count))
                }
            }
        }
        if !problems.isEmpty { throw ShortSecrets(problems: problems) }
    }
}

/// One training run: a version is created (or reused for a retry), the command runs, its output
/// folder goes into the artifact store and its metrics into the registry.
struct Training {
    let context: EngineContext
    let model: DesiredModel
    let plan: Plan
    let repository: GitRepository
    let commit: ObjectID

    var registry: any Registry { context.registry }
    var name: String { model.name }
    var spec: TrainSpec { model.manifest.spec.train }

    /// Returns the version number (when one was created or reused) and the outcome.
    func run(_ detail: TrainDetail) async throws -> (Int?, EntryOutcome) {
        guard detail.fingerprint == model.fingerprint else {
            return (nil, .failed("the plan trains fingerprint \(detail.fingerprint.prefix(12)), but the spec at \(plan.commit.prefix(7)) now has \(model.fingerprint.prefix(12)); make a new plan"))
        }
        // A secret the step needs but Capstan does not have fails the entry before a version
        // number or a retry backoff is spent on it: set the variable and apply again.
        do {
            _ = try StepEnvironment.make(model: name, spec: spec, reconciler: context.environment, capstan: [:])
        } catch {
            return (nil, .failed(ModelPipeline.describe(error)))
        }
        let runID = UUID().uuidString.lowercased()
        var begun: [String: ParamValue] = [
            "fingerprint": .string(detail.fingerprint), "commit": .string(plan.commit), "run": .string(runID),
            "attempt": .int(Int64(detail.attempt)),
        ]
        // A retry or a resumed run claims an existing version: recovery must not take it for a
        // new version's creation.
        if let number = detail.version { begun["resumes"] = .int(Int64(number)) }
        let journalID = try context.journal.begin(operation: trainOperation, subject: "model/\(name)", detail: .map(begun))
        Failpoint.hit("train.after-journal")
        let version: ModelVersion
        do {
            version = try await claimVersion(detail)
        } catch {
            try? context.journal.fail(id: journalID, detail: .map(["error": .string(ModelPipeline.describe(error))]))
            throw error
        }
        let number = version.number
        Failpoint.hit("train.after-create-version")
        // The version number is journaled with its audit event in one transaction; recovery
        // records the event when a crash came in between (`Reconciler.recover`).
        let created = context.event("model/\(name)/v\(number)", detail.version == nil ? "create-version" : "retrain-version",
                                    commit: plan.commit,
                                    after: .map(["status": .string("training"), "fingerprint": .string(detail.fingerprint),
                                                 "attempt": .int(Int64(detail.attempt))]),
                                    reason: detail.reasons.map(\.description).joined(separator: "; "))
        try context.journalVersion(journalID, detail: .map([
            "fingerprint": .string(detail.fingerprint), "commit": .string(plan.commit), "run": .string(runID),
            "attempt": .int(Int64(detail.attempt)), "version": .int(Int64(number)),
        ]), recording: created)

        let workspace = StepWorkspace(stateDirectory: context.stateDirectory, model: name, version: number, label: "a\(detail.attempt)")
        // Everything the step returns (output, metrics, the names of its outputs, errors that
        // quote them) goes through this before it is shown, logged or stored.
        let scrubber = StepEnvironment.scrubber(spec: spec, reconciler: context.environment)
        let result: StepResult
        do {
            let materialized = try await context.materializer.materialize(repository, commit: commit)
            try workspace.prepare(materialized: materialized, params: spec.params)
            let env = try StepEnvironment.make(model: name, spec: spec, reconciler: context.environment, capstan: [
                "CAPSTAN_MODEL": name, "CAPSTAN_VERSION": String(number), "CAPSTAN_FINGERPRINT": detail.fingerprint,
                "CAPSTAN_COMMIT": plan.commit, "CAPSTAN_OUTPUT_DIR": workspace.output, "CAPSTAN_METRICS_FILE": workspace.metricsFile,
                "CAPSTAN_PARAMS_FILE": workspace.paramsFile, runMarker: runID,
            ])
            let events = context.events
            let journal = context.journal
            result = try await context.runner.run(
                StepRequest(argv: spec.command, workdir: workspace.tree + "/" + (spec.workdir == "." ? "" : spec.workdir),
                            environment: env, timeout: spec.timeout, logPath: workspace.logFile,
                            outputPrefix: "[\(name) v\(number)] ", killGrace: context.killGrace, redact: scrubber.secrets),
                started: { pid in
                    // Journaled before waiting: a crash from here on leaves the group to kill.
                    try? journal.update(id: journalID, detail: .map([
                        "fingerprint": .string(detail.fingerprint), "commit": .string(plan.commit), "run": .string(runID),
                        "attempt": .int(Int64(detail.attempt)), "version": .int(Int64(number)), "pgid": .int(Int64(pid)),
                    ]))
                    Failpoint.hit("train.after-start")
                },
                line: { line in events(.output(line)) })
        } catch is CancellationError {
            // Stopped (a signal, a lost lease): the runner has ended the process group. The
            // version stays `training` and the next pass trains it again, with no backoff.
            workspace.clean()
            try? context.journal.fail(id: journalID, detail: .map([
                "fingerprint": .string(detail.fingerprint), "version": .int(Int64(number)), "interrupted": .bool(true),
            ]))
            context.record("model/\(name)/v\(number)", "interrupted", commit: plan.commit, reason: "the pass was stopped during training; the next pass trains v\(number) again")
            return (number, .skipped("v\(number): stopped during training; the next pass trains it again"))
        } catch {
            if let deferred = deferIfTransient(error, number, detail, journalID, workspace: workspace, scrubber: scrubber) { return (number, deferred) }
            let message = scrubber.scrub(ModelPipeline.describe(error))
            try await fail(number, detail, journalID, tail: message, workspace: workspace)
            return (number, .failed("v\(number): \(message)"))
        }

        Failpoint.hit("train.after-exit")
        guard result.succeeded else {
            let why: String
            switch result.termination {
            case .exited(let code): why = "exited with status \(code)"
            case .signalled(let sig): why = "was killed by signal \(sig)"
            case .timedOut: why = "ran longer than its timeout of \(spec.timeout) and was stopped"
            }
            let message = "training \(why); log: \(workspace.logFile)"
            try await fail(number, detail, journalID, tail: scrubber.scrub(result.outputTail), workspace: workspace)
            return (number, .failed("v\(number): \(message)"))
        }

        do {
            let metrics = try MetricsFile.read(workspace.metricsFile, required: false, scrubber: scrubber)
            try workspace.checkOutput()
            let stored = try context.artifacts.store(directory: workspace.output, scrubber: scrubber)
            Failpoint.hit("train.after-artifact")
            try await registry.updateVersion(model: name, number: number, VersionUpdate(
                status: .trained, metrics: metrics, artifactDigest: stored.digest, artifactLocation: stored.path, logTail: ""))
            Failpoint.hit("train.after-trained")
            // Cleaned while the entry is still open: a crash meanwhile leaves it to recovery.
            workspace.clean()
            try context.finish(journalID, recording: Self.trainedEvent(context, name: name, number: number, commit: plan.commit,
                                                                       artifact: stored.digest, metrics: metrics,
                                                                       reason: "training finished in \(ManifestDuration.format(result.durationMilliseconds))"),
                               detail: .map(["fingerprint": .string(detail.fingerprint), "version": .int(Int64(number)),
                                             "artifact": .string(stored.digest)]))
            Failpoint.hit("train.after-finish")
            return (number, .done("v\(number) trained in \(ManifestDuration.format(result.durationMilliseconds)); " +
                                  (metrics.isEmpty ? "no metrics" : MetricsFile.describe(metrics))))
        } catch {
            if let deferred = deferIfTransient(error, number, detail, journalID, workspace: workspace, scrubber: scrubber) { return (number, deferred) }
            let message = scrubber.scrub(ModelPipeline.describe(error))
            try await fail(number, detail, journalID, tail: message, workspace: workspace)
            return (number, .failed("v\(number): \(message)"))
        }
    }

    /// A failure of the machine rather than of the training (the disk is full: the output could
    /// not be stored, the step's folder not written) is not held against the version: it is not
    /// marked failed and gets no backoff. It stays `training`, its journal entry is closed as
    /// interrupted, and the next pass trains it again. Nil for any other error, and for a lost
    /// lease (which must write nothing: it is rethrown by the caller's writes).
    func deferIfTransient(_ error: any Error, _ number: Int, _ detail: TrainDetail, _ journalID: Int64,
                          workspace: StepWorkspace, scrubber: SecretScrubber) -> EntryOutcome? {
        guard FileSystemFailure.isDiskFull(error) else { return nil }
        let message = scrubber.scrub(ModelPipeline.describe(error))
        // Space first: the step's folder is what filled the disk, most often.
        workspace.clean()
        try? context.journal.fail(id: journalID, detail: .map([
            "fingerprint": .string(detail.fingerprint), "version": .int(Int64(number)), "interrupted": .bool(true),
            "transient": .string(message),
        ]))
        context.record("model/\(name)/v\(number)", "interrupted", commit: plan.commit,
                       reason: "disk full: \(message); v\(number) is not marked failed, and the next pass trains it again")
        return .transient("v\(number): disk full: \(message). v\(number) is not marked failed; the next pass trains it again")
    }

    static func trainedEvent(_ context: EngineContext, name: String, number: Int, commit: String?, artifact: String,
                             metrics: [String: Double], reason: String) -> AuditEvent {
        context.event("model/\(name)/v\(number)", "trained", commit: commit, before: .string("training"),
                      after: .map(["status": .string("trained"), "artifact": .string(artifact),
                                   "metrics": .map(metrics.mapValues(ParamValue.double))]),
                      reason: reason)
    }

    /// A new version for a new fingerprint; the same version again for a retry or a resumed run.
    func claimVersion(_ detail: TrainDetail) async throws -> ModelVersion {
        if let number = detail.version {
            guard let existing = try await registry.version(of: name, number: number), existing.fingerprint == detail.fingerprint else {
                throw StepOutputError(message: "v\(number) is not a version of fingerprint \(detail.fingerprint.prefix(12)); make a new plan")
            }
            guard existing.status == .failed || existing.status == .training else {
                throw StepOutputError(message: "v\(number) is \(existing.status.rawValue) now; make a new plan")
            }
            return try await registry.updateVersion(model: name, number: number, VersionUpdate(
                status: .training, attempts: detail.attempt, commit: plan.commit))
        }
        return try await registry.createVersion(NewVersion(
            model: name, fingerprint: detail.fingerprint, commit: plan.commit, params: spec.params, status: .training,
            training: detail.training))
    }

    /// Marks the version failed (its backoff starts) and records `training-failed`. The event is
    /// journaled before the version changes, so that a crash in between leaves recovery the event
    /// to record (`Reconciler.missedTrainingEvents`): every failure is in the audit log once.
    func fail(_ number: Int, _ detail: TrainDetail, _ journalID: Int64, tail: String, workspace: StepWorkspace) async throws {
        let now = context.now()
        let event = context.event("model/\(name)/v\(number)", "training-failed", commit: plan.commit, before: .string("training"),
                                  after: .string("failed"), reason: String(tail.suffix(500)))
        workspace.clean()
        var journaled: [String: ParamValue] = [
            "fingerprint": .string(detail.fingerprint), "commit": .string(plan.commit), "attempt": .int(Int64(detail.attempt)),
            "version": .int(Int64(number)),
        ]
        if let resumed = detail.version { journaled["resumes"] = .int(Int64(resumed)) }
        let closed = ParamValue.map(journaled)
        journaled["failure"] = try AuditCodec.value(event)
        try context.journal.update(id: journalID, detail: .map(journaled))
        try await registry.updateVersion(model: name, number: number, VersionUpdate(
            status: .failed, logTail: String(tail.suffix(8192)), failedAt: now))
        Failpoint.hit("train.after-failed")
        try context.close(journalID, failed: true, recording: event, detail: closed)
    }
}

struct StepOutputError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
