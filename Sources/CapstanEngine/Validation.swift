import CapstanCore
import Foundation

/// Runs a version's gates: the validation command when the spec has one (it may add metrics by
/// writing CAPSTAN_METRICS_FILE), then the metric thresholds and the regression check against the
/// alias holder. The version becomes `validated` when every gate passed, `rejected` otherwise.
struct Validation {
    let context: EngineContext
    let model: DesiredModel
    let plan: Plan

    var registry: any Registry { context.registry }
    var name: String { model.name }

    func run(version number: Int) async throws -> EntryOutcome {
        guard let version = try await registry.version(of: name, number: number) else {
            return .failed(ReconcileFailure(.stalled, .planOutdated, "v\(number) does not exist; make a new plan"))
        }
        guard version.status == .trained else {
            return .skipped("v\(number) is \(version.status.rawValue), not waiting for validation")
        }
        // A changed artifact blocks the version's use: it is never validated from altered files.
        // A version registered outside Capstan (registry-only model) may have no digest yet:
        // its gates read only its metrics, and its files are checked when they are downloaded.
        var artifact: String?
        if let digest = version.artifactDigest {
            artifact = try await context.artifacts.open(digest: digest)
        } else if !model.isRegistryOnly {
            return .failed(ReconcileFailure(.terminal, .artifactChanged, "v\(number) has no artifact; it cannot be validated"))
        }

        let spec = model.manifest.spec.validate
        var metrics = version.metrics
        var results: [GateResult] = []
        if let spec, let command = spec.command, let artifact {
            let (result, extra) = try await runCommand(command, spec: spec, version: version, artifact: artifact)
            results.append(result)
            metrics.merge(extra) { _, new in new }
        }
        var holder: ModelVersion?
        if let alias = spec?.noRegressionAgainst, let n = try await registry.resolveAlias(alias, of: name) {
            holder = try await registry.version(of: name, number: n)
        }
        results = Gates.evaluate(spec, candidate: number, metrics: metrics, holder: holder) + results
        let passed = results.allSatisfy(\.passed)
        let failed = results.filter { !$0.passed }
        let summary = passed
            ? (results.isEmpty ? "no gates" : "\(results.count) gate\(results.count == 1 ? "" : "s") passed")
            : failed.map { "\($0.gate) (\($0.detail))" }.joined(separator: "; ")
        let event = context.event(.version(model: name, number: number), passed ? .validated : .rejected, commit: plan.commit,
                                  before: .string("trained"),
                                  after: .map(["status": .string(passed ? "validated" : "rejected"),
                                               "gates": .list(results.map { .map(["gate": .string($0.gate), "passed": .bool($0.passed),
                                                                                  "detail": .string($0.detail)]) })]),
                                  reason: summary)
        try await context.journaled(.validate(model: name, version: number), event: event) {
            Failpoint.hit("validate.before-update")
            var update = VersionUpdate(status: passed ? .validated : .rejected, metrics: metrics, gateResults: results)
            update.ofVersionMadeElsewhere = model.isRegistryOnly
            try await registry.updateVersion(model: name, number: number, update)
            Failpoint.hit("validate.after-update")
        }
        if passed { return .done("v\(number) validated: \(summary)") }
        // A version registered outside Capstan that fails the gates is kept from the aliases:
        // Capstan did its job, nothing needs fixing in Git.
        if model.isRegistryOnly { return .done("v\(number) rejected (registered outside Capstan; no alias will point at it): \(summary)") }
        return .failed(ReconcileFailure(.terminal, .gateFailed, "v\(number) rejected: \(summary)"))
    }

    /// The validation command, in a fresh copy of the commit's tree, with the training
    /// environment plus CAPSTAN_MODEL_DIR.
    ///
    /// The command's run is journaled (`validate-command`, with its process group once started),
    /// so that a pass killed while it runs has its processes stopped and its folder removed by
    /// the next pass, as for a training.
    func runCommand(_ command: [String], spec: ValidateSpec, version: ModelVersion, artifact: String) async throws -> (GateResult, [String: Double]) {
        let gate = "command \(command.joined(separator: " "))"
        let train = model.manifest.spec.stepSettings
        let workspace = StepWorkspace(workFolder: context.workFolder, model: name, version: version.number, label: "validate")
        let runID = UUID().uuidString.lowercased()
        let store = context.store
        let base = StepRun(version: version.number, run: runID)
        let journalID = try await store.beginJournal(.validationCommand(base), subject: .model(name))
        let workdir = spec.workdir ?? train.workdir
        let outcome: (GateResult, [String: Double])
        do {
            outcome = try await runStep(command, gate: gate, spec: spec, version: version, artifact: artifact, workspace: workspace,
                                           workdir: workdir, run: base, journalID: journalID)
        } catch {
            workspace.clean()
            var closing = StateChanges("close journal entry \(journalID)")
            closing.failJournal(journalID, JournalClosing(error: String(describing: error)))
            try? await store.commit(closing)
            throw error
        }
        // The folder goes while the entry is open: a crash meanwhile leaves it to recovery.
        workspace.clean()
        var finished = StateChanges("close journal entry \(journalID)")
        finished.finishJournal(journalID)
        try await store.commit(finished)
        Failpoint.hit("validate.after-command")
        return outcome
    }

    func runStep(_ command: [String], gate: String, spec: ValidateSpec, version: ModelVersion, artifact: String,
                    workspace: StepWorkspace, workdir: String, run base: StepRun, journalID: Int64) async throws -> (GateResult, [String: Double]) {
        let train = model.manifest.spec.stepSettings
        let store = context.store
        let paths = StepWorkspace.paths(workdir: workdir, inputs: train.inputs)
        let sources = try await StepWorkspace.Sources.locate(paths, commit: plan.commit, source: context.source)
        try workspace.prepare(sources: sources, paths: paths, params: train.params)
        let env = try StepEnvironment.make(model: name, spec: train, reconciler: context.environment, capstan: [
            "CAPSTAN_MODEL": name, "CAPSTAN_VERSION": String(version.number), "CAPSTAN_FINGERPRINT": version.fingerprint,
            "CAPSTAN_COMMIT": plan.commit, "CAPSTAN_MODEL_DIR": artifact, "CAPSTAN_METRICS_FILE": workspace.metricsFile,
            "CAPSTAN_PARAMS_FILE": workspace.paramsFile, runMarker: base.run,
        ])
        let events = context.events
        let scrubber = StepEnvironment.scrubber(spec: train, reconciler: context.environment)
        let result = try await context.runner.run(
            StepRequest(argv: command, workdir: workspace.workdir(workdir), environment: env,
                        timeout: spec.timeout, logPath: workspace.logFile, outputPrefix: "[\(name) v\(version.number) validate] ",
                        killGrace: context.killGrace,
                        redact: scrubber.secrets),
            started: { pid in
                var running = base
                running.processGroup = pid
                var changes = StateChanges("journal the process group of entry \(journalID)")
                changes.updateJournal(journalID, .validationCommand(running))
                try? await store.commit(changes)
                Failpoint.hit("validate.after-start")
            }, line: { events(.output($0)) })
        switch result.termination {
        case .exited(0):
            return (GateResult(gate: gate, passed: true, detail: "exited 0"),
                    try MetricsFile.read(workspace.metricsFile, required: false, scrubber: scrubber))
        case .exited(let code):
            let tail = scrubber.scrub(result.outputTail.split(separator: "\n").suffix(3).joined(separator: " | "))
            return (GateResult(gate: gate, passed: false, detail: "exited with status \(code)" + (tail.isEmpty ? "" : ": \(tail)")), [:])
        case .signalled(let sig):
            return (GateResult(gate: gate, passed: false, detail: "killed by signal \(sig)"), [:])
        case .timedOut:
            return (GateResult(gate: gate, passed: false, detail: "ran longer than its timeout of \(spec.timeout)"), [:])
        }
    }
}
