import CapstanCore
import CapstanSystem
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The variable that marks a step's processes as Capstan's, so a crashed run's leftovers can be
/// found and killed safely (a recycled pid of another process never carries it).
let runMarker = "CAPSTAN_RUN_ID"

/// Where a step runs and what it gets: the files and environment shared by training and
/// validation commands.
///
/// A step gets its own folder with what it needs of the commit, copied out of the commit's
/// shared, read-only materialized tree: its working folder and its declared inputs inside the
/// repository (nothing else of the repository: an undeclared file would not be part of the
/// fingerprint either). Its cost follows the workdir, not the size of the repository.
struct StepWorkspace {
    /// `<state>/runs/<model>/v<N>-a<attempt>` (training), `…/f<fingerprint>-a<attempt>` (a
    /// training before its version has a number: the MLflow registry) or `…/v<N>-validate`.
    var folder: String
    /// The step's files, laid out as in the repository: steps may write into their working
    /// folder without touching another run's files.
    var tree: String
    var output: String
    var metricsFile: String
    var paramsFile: String
    var logFile: String

    init(workFolder: String, model: String, version: Int, label: String) {
        self.init(workFolder: workFolder, model: model, run: "v\(version)-\(label)")
    }

    /// The folder of attempt `attempt` of a training: named by the version when the registry
    /// numbered it when the training started, otherwise by the fingerprint.
    init(workFolder: String, model: String, training number: Int?, fingerprint: String, attempt: Int) {
        self.init(workFolder: workFolder, model: model, run: (number.map { "v\($0)" } ?? "f\(fingerprint.prefix(12))") + "-a\(attempt)")
    }

    private init(workFolder: String, model: String, run: String) {
        folder = "\(workFolder)/runs/\(model)/\(run)"
        tree = folder + "/tree"
        output = folder + "/output"
        metricsFile = folder + "/metrics.json"
        paramsFile = folder + "/params.json"
        logFile = "\(workFolder)/logs/\(model)/\(run).log"
    }

    /// The repository paths a step gets: its working folder and its inputs inside the
    /// repository, without those inside another one listed (`.` is the whole repository).
    static func paths(workdir: String, inputs: [TrainInput]) -> [String] {
        var paths = [workdir]
        for case .repository(let path) in inputs { paths.append(path) }
        let normalized = paths.compactMap { RepoPath.normalize($0) }
        if normalized.contains("") { return [""] }
        let unique = Array(Set(normalized)).sorted()
        return unique.filter { path in !unique.contains { $0 != path && path.hasPrefix($0 + "/") } }
    }

    /// Where the repository paths a step gets are copied from: each path written on its own by
    /// the source (`SourceRepository.materialize(commit:path:)`: a folder once per tree id, a file
    /// once per blob, shared), or, when one of them cannot be, the commit's whole tree. The cost
    /// of a step then follows what it gets, not the size of the repository.
    struct Sources {
        /// The commit's whole tree, when paths are copied out of it.
        var whole: String?
        /// Path → its own copy (paths the commit does not hold are missing).
        var parts: [String: String]

        static func locate(_ paths: [String], commit: String, source: any SourceRepository) async throws -> Sources {
            if paths != [""] {
                var parts: [String: String] = [:]
                var separately = true
                for path in paths where separately {
                    switch try await source.materialize(commit: commit, path: path) {
                    case .at(let location): parts[path] = location
                    case .absent: continue
                    case .wholeTreeNeeded: separately = false
                    }
                }
                if separately { return Sources(whole: nil, parts: parts) }
            }
            return Sources(whole: try await source.materialize(commit: commit), parts: [:])
        }

        /// Where `path` is copied from; nil when the commit holds nothing there.
        func location(of path: String) -> String? {
            guard let whole else { return parts[path] }
            if path.isEmpty { return whole }
            var info = stat()
            return lstat(whole + "/" + path, &info) == 0 ? whole + "/" + path : nil
        }
    }

    /// Creates the folders afresh (an interrupted attempt's leftovers are removed) and copies
    /// `paths` (repository paths, see `paths(workdir:inputs:)`) from `sources`.
    func prepare(sources: Sources, paths: [String], params: [String: ParamValue]) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: folder) { try fm.removeItem(atPath: folder) }
        // Private like the rest of the state folder (runs/ and logs/ hold data and metrics).
        try WorkFiles.makeFolder(folder)
        if paths == [""], let whole = sources.location(of: "") {
            try fm.copyItem(atPath: whole, toPath: tree)
        } else {
            try WorkFiles.makeFolder(tree)
            for path in paths {
                // A declared input the commit does not hold is left out (the fingerprint says
                // `missing`); its folder is still made, so that the step can create it.
                guard let from = sources.location(of: path) else { continue }
                let to = tree + "/" + path
                let parent = (to as NSString).deletingLastPathComponent
                if !fm.fileExists(atPath: parent) { try fm.createDirectory(atPath: parent, withIntermediateDirectories: true) }
                try fm.copyItem(atPath: from, toPath: to)
                // A shared file copy is read-only; the step's own copy is writable, as in a checkout.
                var info = stat()
                if lstat(to, &info) == 0, info.st_mode & S_IFMT == S_IFREG {
                    chmod(to, info.st_mode & 0o111 != 0 ? 0o755 : 0o644)
                }
            }
        }
        try WorkFiles.makeFolder(output)
        try WorkFiles.makeFolder((logFile as NSString).deletingLastPathComponent)
        if fm.fileExists(atPath: logFile) { try fm.removeItem(atPath: logFile) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        try WorkFiles.createFile(paramsFile, contents: try encoder.encode(params), what: "the params file")
    }

    /// The working folder inside the step's tree.
    func workdir(_ workdir: String) -> String {
        workdir == "." ? tree : tree + "/" + workdir
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

    struct MissingSecret: Error, ClassifiedError, CustomStringConvertible {
        var model: String
        var name: String
        var source: String
        var description: String {
            "model \(model): secretEnv \(name) is taken from the environment variable \(source), which is not set in Capstan's environment; set it and run again"
        }
        var failure: ReconcileFailure { ReconcileFailure(.stalled, .missingSecret, description) }
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
    struct ShortSecrets: Error, ClassifiedError, CustomStringConvertible {
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

        var failure: ReconcileFailure { ReconcileFailure(.stalled, .missingSecret, description) }
    }

    /// Throws `ShortSecrets` when a model's `secretEnv` takes a value shorter than
    /// `SecretScrubber.minimumLength` from `reconciler`. A variable that is not set is left to
    /// the training, which fails that model's entry alone (`MissingSecret`).
    static func checkLengths(_ models: [DesiredModel], reconciler: [String: String]) throws(ShortSecrets) {
        var problems: [ShortSecrets.Problem] = []
        for model in models {
            for (name, source) in model.manifest.spec.stepSettings.secretEnv.sorted(by: { $0.key < $1.key }) {
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
///
/// How it can end: trained; failed (a non-zero exit, a signal, the timeout, outputs that break
/// the rules) — the version is marked failed and its backoff starts (class `waiting` until the
/// backoff ends); or temporarily failed (exit 75, EX_TEMPFAIL; killed by the out-of-memory killer;
/// a full disk) — the version stays `training`, nothing is held against it, and the next pass
/// trains it again (class `transient`).
struct Training {
    let context: EngineContext
    let model: DesiredModel
    let plan: Plan
    /// The retry backoff of a failed training.
    let policy: Policy

    var registry: any Registry { context.registry }
    var name: String { model.name }
    var spec: TrainSpec { model.manifest.spec.stepSettings }

    /// The exit status a training uses to say "not now" (sysexits.h EX_TEMPFAIL).
    static let temporaryFailureStatus: Int32 = 75

    /// Returns the version number (when one was created or reused) and the outcome.
    func run(_ detail: TrainDetail) async throws -> (Int?, EntryOutcome) {
        guard detail.fingerprint == model.fingerprint else {
            return (nil, .failed(ReconcileFailure(.stalled, .planOutdated,
                                                  "the plan trains fingerprint \(detail.fingerprint.prefix(12)), but the spec at \(plan.commit.prefix(7)) now has \(model.fingerprint.prefix(12)); make a new plan")))
        }
        // A secret the step needs but Capstan does not have fails the entry before a version
        // number or a retry backoff is spent on it: set the variable and apply again.
        do {
            _ = try StepEnvironment.make(model: name, spec: spec, reconciler: context.environment, capstan: [:])
        } catch {
            return (nil, .failed(Failures.classify(error)))
        }
        let runID = UUID().uuidString.lowercased()
        // A retry or a resumed run claims an existing version: recovery must not take it for a
        // new version's creation.
        var journaled = TrainingRun(fingerprint: detail.fingerprint, commit: plan.commit, run: runID, attempt: detail.attempt,
                                    resumes: detail.version)
        let journalID = try await context.store.beginJournal(.training(journaled), subject: .model(name))
        Failpoint.hit("train.after-journal")
        let claim: TrainingClaim
        do {
            claim = try await registry.startTraining(TrainingStart(
                model: name, fingerprint: detail.fingerprint, commit: plan.commit, params: spec.params, training: detail.training,
                attempt: detail.attempt, resumes: detail.version, repository: plan.repository))
        } catch {
            var closing = StateChanges("close journal entry \(journalID)")
            closing.failJournal(journalID, JournalClosing(error: String(describing: error)))
            try? await context.commit(closing)
            throw error
        }
        let number = claim.number
        let label = claim.label
        Failpoint.hit("train.after-create-version")
        // The version number (or the registry's run) is journaled with its audit event in one
        // transaction; recovery records the event when a crash came in between (`Recovery`).
        let started: AuditEvent
        if let number {
            started = context.event(.version(model: name, number: number), detail.version == nil ? .createVersion : .retrainVersion,
                                    commit: plan.commit,
                                    after: .map(["status": .string("training"), "fingerprint": .string(detail.fingerprint),
                                                 "attempt": .int(Int64(detail.attempt))]),
                                    reason: detail.reasons.map(\.description).joined(separator: "; "))
        } else {
            var after: [String: ParamValue] = ["fingerprint": .string(detail.fingerprint), "attempt": .int(Int64(detail.attempt))]
            if let run = claim.run { after["run"] = .string(run) }
            started = context.event(.model(name), .startTraining, commit: plan.commit, after: .map(after),
                                    reason: detail.reasons.map(\.description).joined(separator: "; "))
        }
        journaled.version = number
        journaled.resumes = nil
        journaled.registryRun = claim.run
        var claimed = StateChanges("journal the training of entry \(journalID)")
        claimed.record(started)
        claimed.updateJournal(journalID, .training(journaled))
        try await context.commit(claimed)
        if let trained = claim.trained {
            // An earlier attempt trained and stored its artifact; only its registration is left.
            return try await finish(claim, trained, directory: nil, journalID: journalID, run: journaled,
                                    took: "registered the artifact an interrupted pass had trained")
        }

        let workspace = StepWorkspace(workFolder: context.workFolder, model: name, training: number,
                                      fingerprint: detail.fingerprint, attempt: detail.attempt)
        // Everything the step returns (output, metrics, the names of its outputs, errors that
        // quote them) goes through this before it is shown, logged or stored.
        let scrubber = StepEnvironment.scrubber(spec: spec, reconciler: context.environment)
        let result: StepResult
        let oomKillsBefore = OutOfMemory.kills()
        do {
            let paths = StepWorkspace.paths(workdir: spec.workdir, inputs: spec.inputs)
            let sources = try await StepWorkspace.Sources.locate(paths, commit: plan.commit, source: context.source)
            try workspace.prepare(sources: sources, paths: paths, params: spec.params)
            let env = try StepEnvironment.make(model: name, spec: spec, reconciler: context.environment, capstan: [
                "CAPSTAN_MODEL": name, "CAPSTAN_FINGERPRINT": detail.fingerprint,
                "CAPSTAN_COMMIT": plan.commit, "CAPSTAN_OUTPUT_DIR": workspace.output, "CAPSTAN_METRICS_FILE": workspace.metricsFile,
                "CAPSTAN_PARAMS_FILE": workspace.paramsFile, runMarker: runID,
            ].merging(number.map { ["CAPSTAN_VERSION": String($0)] } ?? [:]) { a, _ in a }
             .merging(claim.run.map { ["CAPSTAN_REGISTRY_RUN": $0] } ?? [:]) { a, _ in a })
            let events = context.events
            let store = context.store
            let started = journaled
            result = try await context.runner.run(
                StepRequest(argv: spec.command, workdir: workspace.workdir(spec.workdir),
                            environment: env, timeout: spec.timeout, logPath: workspace.logFile,
                            outputPrefix: "[\(name) \(number.map { "v\($0)" } ?? String(detail.fingerprint.prefix(12)))] ", killGrace: context.killGrace, redact: scrubber.secrets),
                started: { pid in
                    // Journaled before waiting: a crash from here on leaves the group to kill.
                    var running = started
                    running.processGroup = pid
                    var changes = StateChanges("journal the process group of entry \(journalID)")
                    changes.updateJournal(journalID, .training(running))
                    try? await store.commit(changes)
                    Failpoint.hit("train.after-start")
                },
                line: { line in events(.output(line)) })
        } catch is CancellationError {
            // Stopped (a signal, a lost lease): the runner has ended the process group. The
            // version stays `training` and the next pass trains it again, with no backoff.
            workspace.clean()
            var changes = StateChanges("close journal entry \(journalID)")
            changes.failJournal(journalID, JournalClosing(interrupted: true))
            changes.record(context.event(subject(claim), .interrupted, commit: plan.commit,
                                         reason: "the pass was stopped during training; the next pass trains \(label) again"))
            try? await context.commit(changes)
            return (number, .skipped("\(label): stopped during training; the next pass trains it again"))
        } catch {
            if let deferred = try await deferIfTransient(error, claim, journalID, workspace: workspace, scrubber: scrubber) {
                return (number, deferred)
            }
            let failure = Failures.classify(error, scrubbing: scrubber)
            let until = try await fail(claim, detail, journalID, run: journaled, tail: failure.message, workspace: workspace)
            return (number, .failed(ReconcileFailure(.waiting(until: until), .trainingFailed, "\(label): \(failure.message)")))
        }

        Failpoint.hit("train.after-exit")
        guard result.succeeded else {
            let why: String
            let reason: FailureReason
            switch result.termination {
            case .exited(Self.temporaryFailureStatus):
                return (number, try await deferTemporary(claim, journalID, workspace: workspace,
                                                         why: "exited with status 75 (EX_TEMPFAIL: a temporary failure)"))
            case .signalled(SIGKILL):
                // Capstan stops a step with SIGTERM first (its timeout, a stop) and reports that
                // as a timeout or a cancellation: a SIGKILL out of the blue is the out-of-memory
                // killer's, as the cgroup's count says when it can be read.
                let counted = OutOfMemory.kills().map { after in oomKillsBefore.map { after > $0 } ?? false } ?? false
                return (number, try await deferTemporary(
                    claim, journalID, workspace: workspace,
                    why: counted ? "was killed by the out-of-memory killer (its cgroup's oom_kill count rose)"
                                 : "was killed by SIGKILL, which Capstan did not send (the out-of-memory killer sends it)"))
            case .exited(let code):
                (why, reason) = ("exited with status \(code)", .trainingFailed)
            case .signalled(let sig):
                (why, reason) = ("was killed by signal \(sig)", .trainingFailed)
            case .timedOut:
                (why, reason) = ("ran longer than its timeout of \(spec.timeout) and was stopped", .trainingTimedOut)
            }
            let message = "training \(why); log: \(workspace.logFile)"
            let until = try await fail(claim, detail, journalID, run: journaled, tail: scrubber.scrub(result.outputTail),
                                       workspace: workspace)
            return (number, .failed(ReconcileFailure(.waiting(until: until), reason, "\(label): \(message)")))
        }

        let stored: StoredArtifact
        let metrics: [String: Double]
        do {
            metrics = try MetricsFile.read(workspace.metricsFile, required: false, scrubber: scrubber)
            try workspace.checkOutput()
            stored = try await context.artifacts.store(directory: workspace.output, scrubber: scrubber)
            Failpoint.hit("train.after-artifact")
        } catch {
            if let deferred = try await deferIfTransient(error, claim, journalID, workspace: workspace, scrubber: scrubber) {
                return (number, deferred)
            }
            let failure = Failures.classify(error, scrubbing: scrubber)
            let until = try await fail(claim, detail, journalID, run: journaled, tail: failure.message, workspace: workspace)
            return (number, .failed(ReconcileFailure(.waiting(until: until), .invalidOutput, "\(label): \(failure.message)")))
        }
        // Cleaned while the entry is still open: a crash meanwhile leaves it to recovery.
        workspace.clean()
        return try await finish(claim, TrainingResult(metrics: metrics, artifactDigest: stored.digest, artifactLocation: stored.location),
                                directory: stored.location, journalID: journalID, run: journaled,
                                took: "trained in \(ManifestDuration.format(result.durationMilliseconds))")
    }

    /// Records the training's result in the registry (the version becomes `trained`; MLflow
    /// registers it from the uploaded artifact) and closes the journal entry. A failure of the
    /// registry is transient: what was trained is kept (the artifact store holds it, and MLflow
    /// the run that names it) and the next pass registers it without training again.
    func finish(_ claim: TrainingClaim, _ trained: TrainingResult, directory: String?, journalID: Int64,
                run journaled: TrainingRun, took: String) async throws -> (Int?, EntryOutcome) {
        let version: ModelVersion
        do {
            // The files, when this machine's artifact store has them (a registry that has them
            // already, such as MLflow after the upload, needs none).
            var local = directory
            if local == nil, await context.artifacts.holds(digest: trained.artifactDigest) {
                local = try await context.artifacts.open(digest: trained.artifactDigest)
            }
            version = try await registry.finishTraining(claim, trained, directory: local)
        } catch {
            let failure = Failures.classify(error)
            if failure.reason == .leaseLost { throw error }
            var changes = StateChanges("close journal entry \(journalID)")
            if claim.number == nil, claim.run != nil, failure.failureClass == .transient {
                // What was trained is kept in the entry, left open: recovery registers it first
                // thing next pass, before anything is planned (the registry's run cannot say it yet).
                var kept = journaled
                kept.trained = trained
                changes = StateChanges("keep the training of journal entry \(journalID) for recovery")
                changes.updateJournal(journalID, .training(kept))
            } else {
                changes.failJournal(journalID, JournalClosing(interrupted: true, error: failure.message))
            }
            // The embedded registry leaves the version `training` (the next pass trains it again);
            // a registry that numbers versions when it registers them keeps the trained run.
            let next: String
            if claim.number != nil {
                next = "the next pass trains it again"
            } else if failure.failureClass == .transient {
                next = "the next pass registers it without training again"
            } else if case .waiting = failure.failureClass {
                next = "its run is marked failed, and it is trained again after the retry backoff"
            } else {
                next = "the next pass looks at it again once that is fixed"
            }
            changes.record(context.event(subject(claim), .interrupted, commit: plan.commit,
                                         reason: "\(failure.message); \(claim.label) was trained, and \(next)"))
            try? await context.commit(changes)
            return (claim.number, .failed(ReconcileFailure(failure.failureClass, failure.reason,
                                                           "\(claim.label): \(failure.message). It was trained; \(next)")))
        }
        Failpoint.hit("train.after-trained")
        var finished = StateChanges("record the end of journal entry \(journalID)")
        finished.record(Self.trainedEvent(context, name: name, number: version.number, commit: plan.commit,
                                          artifact: trained.artifactDigest, metrics: trained.metrics, reason: took))
        finished.finishJournal(journalID)
        try await context.commit(finished)
        Failpoint.hit("train.after-finish")
        return (version.number, .done("v\(version.number) \(took); " +
                                      (trained.metrics.isEmpty ? "no metrics" : MetricsFile.describe(trained.metrics))))
    }

    /// What the audit log names for a training: its version, or the model before it has one.
    func subject(_ claim: TrainingClaim) -> ObjectRef {
        claim.number.map { .version(model: name, number: $0) } ?? .model(name)
    }

    /// A failure of the machine rather than of the training is not held against the version: it
    /// is not marked failed and gets no backoff. It stays `training` (or `trained`, when only
    /// recording the end failed), its journal entry is closed as interrupted, and the next pass
    /// carries on. Machine failures: a full disk; the source, the state store or the materializer
    /// failing transiently (classified so by their adapters); the state folder refusing a write
    /// (`SystemError`). Nil for any other error (the step's outputs, metrics, secrets: the
    /// training's). A lost lease is rethrown: the pass is stopping and must write nothing more.
    func deferIfTransient(_ error: any Error, _ claim: TrainingClaim, _ journalID: Int64, workspace: StepWorkspace,
                          scrubber: SecretScrubber) async throws -> EntryOutcome? {
        let failure = Failures.classify(error, scrubbing: scrubber)
        if failure.reason == .leaseLost { throw error }
        let diskFull = failure.reason == .diskFull || WorkFiles.isDiskFull(error)
        let machine = diskFull || error is SystemError
            || (error is any ClassifiedError && failure.failureClass == .transient)
        guard machine else { return nil }
        // Space first: the step's folder is what filled the disk, most often.
        workspace.clean()
        let label = claim.label
        let message = diskFull ? "disk full: \(failure.message)" : failure.message
        var changes = StateChanges("close journal entry \(journalID)")
        changes.failJournal(journalID, JournalClosing(interrupted: true, error: message))
        changes.record(context.event(subject(claim), .interrupted, commit: plan.commit,
                                     reason: "\(message); \(label) is not marked failed, and the next pass trains it again"))
        try? await context.commit(changes)
        return .failed(ReconcileFailure(.transient, diskFull ? .diskFull : failure.reason,
                                        "\(label): \(message). \(label) is not marked failed; the next pass trains it again"))
    }

    /// A training that says "not now" (exit 75) or was killed by the out-of-memory killer: like a
    /// full disk, nothing is held against the version; the next pass trains it again.
    func deferTemporary(_ claim: TrainingClaim, _ journalID: Int64, workspace: StepWorkspace, why: String) async throws -> EntryOutcome {
        workspace.clean()
        let label = claim.label
        var changes = StateChanges("close journal entry \(journalID)")
        changes.failJournal(journalID, JournalClosing(interrupted: true, error: "training \(why)"))
        changes.record(context.event(subject(claim), .interrupted, commit: plan.commit,
                                     reason: "training \(why); \(label) is not marked failed, and the next pass trains it again"))
        try await context.commit(changes)
        return .failed(ReconcileFailure(.transient, .trainingTemporaryFailure,
                                        "\(label): training \(why); log: \(workspace.logFile). The next pass trains it again, without backoff"))
    }

    static func trainedEvent(_ context: EngineContext, name: String, number: Int, commit: String?, artifact: String,
                             metrics: [String: Double], reason: String) -> AuditEvent {
        context.event(.version(model: name, number: number), .trained, commit: commit, before: .string("training"),
                      after: .map(["status": .string("trained"), "artifact": .string(artifact),
                                   "metrics": .map(metrics.mapValues(ParamValue.double))]),
                      reason: reason)
    }

    /// Marks the version failed (its backoff starts) and records `training-failed`. The event is
    /// journaled before the version changes, so that a crash in between leaves recovery the event
    /// to record (`Recovery`): every failure is in the audit log once. Returns when the backoff
    /// ends (ms since the epoch).
    func fail(_ claim: TrainingClaim, _ detail: TrainDetail, _ journalID: Int64, run journaled: TrainingRun, tail: String,
              workspace: StepWorkspace) async throws -> Int64 {
        let now = context.now()
        let event = context.event(subject(claim), .trainingFailed, commit: plan.commit,
                                  before: .string("training"), after: .string("failed"), reason: String(tail.suffix(500)))
        workspace.clean()
        var run = journaled
        run.failure = event
        var journal = StateChanges("journal the failure of entry \(journalID)")
        journal.updateJournal(journalID, .training(run))
        try await context.commit(journal)
        try await registry.failTraining(claim, logTail: tail, at: now)
        Failpoint.hit("train.after-failed")
        var closing = StateChanges("record the end of journal entry \(journalID)")
        closing.record(event)
        closing.failJournal(journalID)
        try await context.commit(closing)
        return now + Planner.backoff(afterFailures: detail.attempt, policy: policy.retry)
    }
}

struct StepOutputError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The out-of-memory kills of this process's cgroup (cgroup v2 `memory.events`), to tell a
/// step killed by the kernel for memory from one killed by someone else. Nil when unreadable.
enum OutOfMemory {
    static func kills() -> Int64? {
        guard let cgroup = try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8),
              let line = cgroup.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
        let path = "/sys/fs/cgroup" + line.dropFirst(3) + "/memory.events"
        guard let events = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        for row in events.split(separator: "\n") where row.hasPrefix("oom_kill ") {
            return Int64(row.dropFirst("oom_kill ".count))
        }
        return nil
    }
}

/// Files and folders a pass writes under the state folder: private to the user running Capstan
/// (folders 0700, files 0600), like the rest of the state folder (`PrivateFiles`).
enum WorkFiles {
    /// Creates `path` and its missing parents with mode 0700.
    static func makeFolder(_ path: String) throws {
        try PrivateFiles.makeFolder(path, parentsMode: PrivateFiles.folderMode, what: "create the step's folder")
    }

    /// Writes `contents` to a new file at `path` with mode 0600.
    static func createFile(_ path: String, contents: Data, what: String) throws {
        try PrivateFiles.write(contents, to: path, what: "write \(what)")
    }

    /// Whether `error` (from the file system, through Foundation or POSIX) says the disk is full.
    static func isDiskFull(_ error: any Error) -> Bool {
        if let system = error as? SystemError { return system.isDiskFull }
        if let posix = error as? POSIXError { return posix.code == .ENOSPC || posix.code == .EDQUOT }
        let ns = error as NSError
        if ns.domain == NSPOSIXErrorDomain { return ns.code == Int(ENOSPC) || ns.code == Int(EDQUOT) }
        if ns.domain == NSCocoaErrorDomain, ns.code == CocoaError.fileWriteOutOfSpace.rawValue { return true }
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying !== ns { return isDiskFull(underlying) }
        return false
    }
}
