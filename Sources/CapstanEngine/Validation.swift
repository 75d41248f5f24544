import CapstanGit
import CapstanStore
import Foundation

/// Runs a version's gates: the validation command when the spec has one (it may add metrics by
/// writing CAPSTAN_METRICS_FILE), then the metric thresholds and the regression check against the
/// alias holder. The version becomes `validated` when every gate passed, `rejected` otherwise.
struct Validation {
    let context: EngineContext
    let model: DesiredModel
    let plan: Plan
    let repository: GitRepository
    let commit: ObjectID

    var registry: any Registry { context.registry }
    var name: String { model.name }

    func run(version number: Int) async throws -> EntryOutcome {
        guard let version = try await registry.version(of: name, number: number) else {
            return .failed("v\(number) does not exist")
        }
        guard version.status == .trained else {
            return .skipped("v\(number) is \(version.status.rawValue), not waiting for validation")
        }
        guard let digest = version.artifactDigest else {
            return .failed("v\(number) has no artifact; it cannot be validated")
        }
        // A changed artifact blocks the version's use: it is never validated from altered files.
        let artifact = try context.artifacts.open(digest: digest)

        let spec = model.manifest.spec.validate
        var metrics = version.metrics
        var results: [GateResult] = []
        if let spec, let command = spec.command {
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
        let event = context.event("model/\(name)/v\(number)", passed ? "validated" : "rejected", commit: plan.commit,
                                  before: .string("trained"),
                                  after: .map(["status": .string(passed ? "validated" : "rejected"),
                                               "gates": .list(results.map { .map(["gate": .string($0.gate), "passed": .bool($0.passed),
                                                                                  "detail": .string($0.detail)]) })]),
                                  reason: summary)
        try await context.journaled("validate", subject: "model/\(name)",
                                    check: ["model": .string(name), "version": .int(Int64(number))], event: event) {
            Failpoint.hit("validate.before-update")
            try await registry.updateVersion(model: name, number: number, VersionUpdate(
                status: passed ? .validated : .rejected, metrics: metrics, gateResults: results))
            Failpoint.hit("validate.after-update")
        }
        if passed { return .done("v\(number) validated: \(summary)") }
        return .failed("v\(number) rejected: \(summary)")
    }

    /// The validation command, in a fresh copy of the commit's tree, with the training
    /// environment plus CAPSTAN_MODEL_DIR.
    ///
    /// The command's run is journaled (`validate-command`, with its process group once started),
    /// so that a pass killed while it runs has its processes stopped and its folder removed by
    /// the next pass, as for a training.
    func runCommand(_ command: [String], spec: ValidateSpec, version: ModelVersion, artifact: String) async throws -> (GateResult, [String: Double]) {
        let gate = "command \(command.joined(separator: " "))"
        let train = model.manifest.spec.train
        let workspace = StepWorkspace(stateDirectory: context.stateDirectory, model: name, version: version.number, label: "validate")
        let runID = UUID().uuidString.lowercased()
        let journal = context.journal
        let base: [String: ParamValue] = ["version": .int(Int64(version.number)), "run": .string(runID)]
        let journalID = try journal.begin(operation: validateCommandOperation, subject: "model/\(name)", detail: .map(base))
        var closed = false
        defer {
            workspace.clean()
            if !closed { try? journal.fail(id: journalID) }
        }
        let materialized = try await context.materializer.materialize(repository, commit: commit)
        try workspace.prepare(materialized: materialized, params: train.params)
        let env = try StepEnvironment.make(model: name, spec: train, reconciler: context.environment, capstan: [
            "CAPSTAN_MODEL": name, "CAPSTAN_VERSION": String(version.number), "CAPSTAN_FINGERPRINT": version.fingerprint,
            "CAPSTAN_COMMIT": plan.commit, "CAPSTAN_MODEL_DIR": artifact, "CAPSTAN_METRICS_FILE": workspace.metricsFile,
            "CAPSTAN_PARAMS_FILE": workspace.paramsFile, runMarker: runID,
        ])
        let workdir = spec.workdir ?? train.workdir
        let events = context.events
        let scrubber = StepEnvironment.scrubber(spec: train, reconciler: context.environment)
        let result = try await context.runner.run(
            StepRequest(argv: command, workdir: workspace.tree + "/" + (workdir == "." ? "" : workdir), environment: env,
                        timeout: spec.timeout, logPath: workspace.logFile, outputPrefix: "[\(name) v\(version.number) validate] ",
                        killGrace: context.killGrace,
                        redact: scrubber.secrets),
            started: { pid in
                var detail = base
                detail["pgid"] = .int(Int64(pid))
                try? journal.update(id: journalID, detail: .map(detail))
                Failpoint.hit("validate.after-start")
            }, line: { events(.output($0)) })
        let outcome: (GateResult, [String: Double])
        switch result.termination {
        case .exited(0):
            outcome = (GateResult(gate: gate, passed: true, detail: "exited 0"),
                       try MetricsFile.read(workspace.metricsFile, required: false, scrubber: scrubber))
        case .exited(let code):
            let tail = scrubber.scrub(result.outputTail.split(separator: "\n").suffix(3).joined(separator: " | "))
            outcome = (GateResult(gate: gate, passed: false, detail: "exited with status \(code)" + (tail.isEmpty ? "" : ": \(tail)")), [:])
        case .signalled(let sig):
            outcome = (GateResult(gate: gate, passed: false, detail: "killed by signal \(sig)"), [:])
        case .timedOut:
            outcome = (GateResult(gate: gate, passed: false, detail: "ran longer than its timeout of \(spec.timeout)"), [:])
        }
        // The folder goes while the entry is open: a crash meanwhile leaves it to recovery.
        workspace.clean()
        try journal.finish(id: journalID)
        closed = true
        Failpoint.hit("validate.after-command")
        return outcome
    }
}
