import CapstanCore
import Testing

/// Golden tests of the planner: a desired model and a registry in, the plan out, written as one
/// line per entry: `action id [dependencies] reason`.
struct PlannerTests {
    static let now: Int64 = 1_800_000_000_000
    static let minute: Int64 = 60_000

    // MARK: Building inputs

    static func model(_ name: String = "churn", fingerprint: String = "fp-new", params: [String: ParamValue] = ["lr": .double(0.1)],
                      aliases: [AliasPin] = [], validate: ValidateSpec? = nil, retention: Int? = nil,
                      description: String? = "Churn.", labels: [String: String] = ["team": "growth"]) -> DesiredModel {
        let train = TrainSpec(command: ["python3", "train.py"], workdir: "models/\(name)",
                              inputs: [.repository("data/\(name).csv")], params: params)
        let spec = ModelSpec(description: description, train: train, validate: validate, aliases: aliases,
                             retention: retention.map(RetentionSpec.init))
        let origin = ManifestOrigin(file: "models/\(name).yaml", documentIndex: 0, location: SourceLocation(file: "models/\(name).yaml", line: 1, column: 1),
                                    fields: ["spec.aliases.champion": FieldPosition(line: 20, column: 15)])
        let manifest = ModelManifest(metadata: ObjectMeta(name: name, labels: labels), spec: spec, origin: origin)
        let training = TrainingDescription(spec: train, inputs: [InputIdentity(input: "data/\(name).csv", identity: "git-blob:\(fingerprint)")])
        return DesiredModel(manifest: manifest, training: training, fingerprint: fingerprint)
    }

    static func version(_ number: Int, _ status: VersionStatus, fingerprint: String? = nil, metrics: [String: Double] = [:],
                        attempts: Int = 1, failedAt: Int64? = nil, archived: Bool = false, gates: [GateResult] = [],
                        training: TrainingDescription? = nil, log: String? = nil) -> ModelVersion {
        ModelVersion(model: "churn", number: number, status: status, fingerprint: fingerprint ?? "fp-\(number)", metrics: metrics,
                     gateResults: gates, logTail: log, createdAt: now - 100 * minute, attempts: attempts, failedAt: failedAt,
                     archivedAt: archived ? now - minute : nil, training: training)
    }

    static func registry(_ versions: [ModelVersion], aliases: [String: Int] = [:], registered: Bool = true,
                         description: String? = "Churn.", labels: [String: String] = ["team": "growth"]) -> ActualState {
        let models = registered ? [RegisteredModel(name: "churn", description: description, labels: labels, createdAt: 0, updatedAt: 0)] : []
        return ActualState(registry: RegistrySnapshot(models: models, versions: registered ? ["churn": versions] : [:],
                                                      aliases: registered ? ["churn": aliases] : [:]))
    }

    static func plan(_ models: [DesiredModel], _ actual: ActualState, now: Int64 = now, retryFailed: Bool = false,
                     policy: Policy = Policy(retry: RetryPolicy(initial: .init(milliseconds: 60_000), max: .init(milliseconds: 3_600_000)))) -> Plan {
        let desired = DesiredState(repository: "repo", ref: "main", commit: "c0ffee", models: models, policy: policy)
        return Planner.plan(desired: desired, actual: actual, now: now, options: PlanOptions(retryFailed: retryFailed))
    }

    static func lines(_ plan: Plan) -> [String] {
        plan.entries.map { e in
            "\(e.action.rawValue) \(e.id)" + (e.dependsOn.isEmpty ? "" : " [\(e.dependsOn.joined(separator: ", "))]") + " \(e.reason)"
        }
    }

    // MARK: Golden cases

    @Test func aNewModelIsRegisteredTrainedValidatedAndAliased() {
        let p = Self.plan([Self.model(aliases: [AliasPin(name: "champion", target: .latest)],
                                      validate: ValidateSpec(metrics: [NamedGate(metric: "accuracy", gate: MetricGate(min: 0.9))]))],
                          Self.registry([], registered: false))
        #expect(Self.lines(p) == [
            "register-model churn/register not in the registry yet",
            "train churn/train [churn/register] new model",
            "validate churn/validate [churn/train] gates for the version this train produces",
            "move-alias churn/alias/champion [churn/validate] champion follows the newest validated version; it moves if the candidate passes its gates",
        ])
        guard case .moveAlias(let move) = p.entries[3].detail else { Issue.record("no move"); return }
        #expect(move.to == .produced(by: "churn/train"))
        guard case .validate(let v) = p.entries[2].detail else { Issue.record("no validate"); return }
        #expect(v.gates == ["accuracy >= 0.9"])
        #expect(p.hasChanges)
        #expect(p.changes.count == 4)
    }

    @Test func nothingChangedIsAnEmptyPlan() {
        let p = Self.plan([Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .latest)])],
                          Self.registry([Self.version(1, .validated)], aliases: ["champion": 1]))
        #expect(p.entries.isEmpty)
        #expect(!p.hasChanges)
    }

    @Test func metadataChangesUpdateTheModelWithoutTraining() {
        let p = Self.plan([Self.model(fingerprint: "fp-1", description: "New text.", labels: ["team": "risk"])],
                          Self.registry([Self.version(1, .validated)]))
        #expect(Self.lines(p) == ["update-model churn/update description and labels changed"])
        guard case .updateModel(let change) = p.entries[0].detail else { Issue.record("no update"); return }
        #expect(change.previousDescription == "Churn.")
        #expect(change.labels == ["team": "risk"])
    }

    @Test func aChangedParamSaysWhatChanged() {
        let old = Self.model(fingerprint: "fp-1", params: ["lr": .double(0.05), "epochs": .int(10)]).training
        let p = Self.plan([Self.model(fingerprint: "fp-2", params: ["lr": .double(0.1), "epochs": .int(10)])],
                          Self.registry([Self.version(1, .validated, training: old)]))
        #expect(Self.lines(p) == [
            "train churn/train param lr changed 0.05 → 0.1; input data/churn.csv changed (blob fp-1 → blob fp-2)",
            "validate churn/validate [churn/train] no gates: the trained version is validated as it is",
        ])
        guard case .train(let t) = p.entries[0].detail else { Issue.record("no train"); return }
        #expect(t.version == nil)
        #expect(t.attempt == 1)
        #expect(t.reasons.first == .paramChanged(name: "lr", from: .double(0.05), to: .double(0.1)))
    }

    @Test func aVersionWithoutItsDescriptionIsExplainedByFingerprint() {
        let p = Self.plan([Self.model(fingerprint: "fp-2")], Self.registry([Self.version(1, .validated)]))
        #expect(Self.lines(p).first == "train churn/train fingerprint changed fp-1 → fp-2")
    }

    @Test func aFailedFingerprintWaitsOutItsBackoff() {
        let failedAt = Self.now - Self.minute
        let actual = Self.registry([Self.version(1, .validated), Self.version(2, .failed, fingerprint: "fp-new", attempts: 2, failedAt: failedAt, log: "Traceback\nValueError: boom")],
                                   aliases: ["champion": 1])
        let model = Self.model(aliases: [AliasPin(name: "champion", target: .latest)])
        let p = Self.plan([model], actual)
        #expect(Self.lines(p) == [
            "wait churn/wait training v2 (fingerprint fp-new) failed 2 times; retrying after a backoff of 2m, or now with --retry-failed",
        ])
        guard case .wait(let w) = p.entries[0].detail else { Issue.record("no wait"); return }
        #expect(w.until == failedAt + 2 * Self.minute)
        #expect(w.lastFailure == "Traceback\nValueError: boom")
        #expect(!p.hasChanges)

        // After the backoff: the same version is retried (never a second version).
        let later = Self.plan([model], actual, now: failedAt + 2 * Self.minute)
        #expect(Self.lines(later) == [
            "train churn/train retry of a failed training (attempt 3)",
            "validate churn/validate [churn/train] no gates: the trained version is validated as it is",
            "move-alias churn/alias/champion [churn/validate] champion follows the newest validated version; it moves if the candidate passes its gates",
        ])
        guard case .train(let t) = later.entries[0].detail else { Issue.record("no train"); return }
        #expect(t.version == 2)
        #expect(t.attempt == 3)

        // --retry-failed ignores the backoff.
        let forced = Self.plan([model], actual, retryFailed: true)
        #expect(Self.lines(forced).first == "train churn/train retrying v2 now (--retry-failed)")
    }

    @Test func backoffDoublesUpToItsMaximum() {
        let policy = RetryPolicy(initial: .init(milliseconds: 60_000), max: .init(milliseconds: 600_000))
        #expect((1...6).map { Planner.backoff(afterFailures: $0, policy: policy) } == [60_000, 120_000, 240_000, 480_000, 600_000, 600_000])
        #expect(Planner.backoff(afterFailures: 500, policy: policy) == 600_000)
    }

    @Test func anInterruptedTrainingIsResumedIntoTheSameVersion() {
        let p = Self.plan([Self.model()], Self.registry([Self.version(1, .validated), Self.version(2, .training, fingerprint: "fp-new")]))
        #expect(Self.lines(p).first == "train churn/train version 2 was interrupted while training; training it again")
        guard case .train(let t) = p.entries[0].detail else { Issue.record("no train"); return }
        #expect(t.version == 2)
        #expect(t.attempt == 2)
    }

    @Test func aTrainedVersionIsValidated() {
        let p = Self.plan([Self.model(aliases: [AliasPin(name: "champion", target: .latest)])],
                          Self.registry([Self.version(1, .validated), Self.version(2, .trained, fingerprint: "fp-new")], aliases: ["champion": 1]))
        #expect(Self.lines(p) == [
            "validate churn/validate v2 was trained but not validated (an interrupted pass); running its gates",
            "move-alias churn/alias/champion [churn/validate] champion follows the newest validated version; it moves if the candidate passes its gates",
        ])
        guard case .moveAlias(let m) = p.entries[1].detail else { Issue.record("no move"); return }
        #expect(m.to == .number(2))
        #expect(m.from == 1)
    }

    @Test func aPinnedAliasMovesToAValidatedVersionWithMetrics() {
        let p = Self.plan([Self.model(fingerprint: "fp-3", aliases: [AliasPin(name: "champion", target: .version(2))])],
                          Self.registry([Self.version(1, .validated, metrics: ["accuracy": 0.9]),
                                         Self.version(2, .validated, metrics: ["accuracy": 0.93]),
                                         Self.version(3, .validated)], aliases: ["champion": 1]))
        #expect(Self.lines(p) == ["move-alias churn/alias/champion the spec pins champion to v2 (now v1)"])
        guard case .moveAlias(let m) = p.entries[0].detail else { Issue.record("no move"); return }
        #expect(m.current?.metrics == ["accuracy": 0.9])
        #expect(m.candidate?.metrics == ["accuracy": 0.93])
    }

    @Test(arguments: [
        (VersionStatus.rejected, "alias champion is pinned to v2, but v2 was rejected by its gates (accuracy >= 0.9: accuracy = 0.7); aliases point only at validated versions. Pin another version in models/churn.yaml:20:15"),
        (.failed, "alias champion is pinned to v2, but v2 failed to train; aliases point only at validated versions. Pin another version in models/churn.yaml:20:15"),
    ])
    func aliasesPinnedToUnusableVersionsAreBlocked(_ status: VersionStatus, _ reason: String) {
        let gates = [GateResult(gate: "accuracy >= 0.9", passed: false, detail: "accuracy = 0.7")]
        let p = Self.plan([Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .version(2))])],
                          Self.registry([Self.version(1, .validated), Self.version(2, status, gates: gates)], aliases: ["champion": 1]))
        #expect(Self.lines(p) == ["blocked churn/alias/champion \(reason)"])
        #expect(!p.hasChanges)
    }

    @Test func anAliasPinnedToAMissingOrArchivedVersionIsBlocked() {
        let missing = Self.plan([Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .version(9))])],
                                Self.registry([Self.version(1, .validated)]))
        #expect(Self.lines(missing) == ["blocked churn/alias/champion alias champion is pinned to v9, which does not exist (the newest is v1); change the pin in models/churn.yaml:20:15"])
        let archived = Self.plan([Self.model(fingerprint: "fp-2", aliases: [AliasPin(name: "champion", target: .version(1))])],
                                 Self.registry([Self.version(1, .validated, archived: true), Self.version(2, .validated)]))
        #expect(Self.lines(archived).first?.hasPrefix("blocked churn/alias/champion alias champion is pinned to v1, but v1 is archived") == true)
    }

    /// A version of another spec left `training` by a killed pass: only a pass of that spec
    /// resumes it, so an alias pinned to it is blocked rather than waiting forever — unless an
    /// apply running now is training it.
    @Test func anAliasPinnedToAnEarlierSpecsVersionLeftTrainingIsBlocked() {
        let model = Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .version(2))])
        let actual = Self.registry([Self.version(1, .validated), Self.version(2, .training)], aliases: ["champion": 1])
        let p = Self.plan([model], actual)
        #expect(Self.lines(p) == ["blocked churn/alias/champion alias champion is pinned to v2, which an interrupted pass left training under another spec (fingerprint fp-2); this commit does not train that spec, so nothing will finish v2. Pin a validated version in models/churn.yaml:20:15, or revert the training spec to the one v2 comes from so that the next pass resumes it"])
        guard case .blocked(let b)? = p.entries.first?.detail else { Issue.record("not blocked"); return }
        #expect(b.code == .pinnedVersionUnusable)
        let desired = DesiredState(repository: "repo", ref: "main", commit: "c0ffee", models: [model], policy: Policy())
        let running = Planner.plan(desired: desired, actual: actual, now: Self.now, options: PlanOptions(applyInProgress: "pid 7 on host"))
        #expect(Self.lines(running) == ["wait churn/alias/champion alias champion is pinned to v2, which is still training"])
        // The spec it comes from resumes it, and the alias moves once it passes its gates.
        let reverted = Self.plan([Self.model(fingerprint: "fp-2", aliases: [AliasPin(name: "champion", target: .version(2))])], actual)
        #expect(Self.lines(reverted).first == "train churn/train version 2 was interrupted while training; training it again")
        #expect(Self.lines(reverted).last?.hasPrefix("move-alias churn/alias/champion [churn/validate] the spec pins champion to v2; it moves once") == true)
    }

    @Test func latestWithNothingValidatedIsBlocked() {
        let p = Self.plan([Self.model(aliases: [AliasPin(name: "champion", target: .latest)])],
                          Self.registry([Self.version(1, .rejected, fingerprint: "fp-new")]))
        #expect(Self.lines(p) == ["blocked churn/alias/champion alias champion (latest) has nothing to point at: v1, the newest, was rejected by its gates; change the model so that it passes"])
    }

    @Test func anAliasLeftOutOfTheSpecIsDeleted() {
        let p = Self.plan([Self.model(fingerprint: "fp-1")], Self.registry([Self.version(1, .validated)], aliases: ["old": 1]))
        #expect(Self.lines(p) == ["delete-alias churn/alias/old/delete alias old is no longer in the spec"])
    }

    @Test func versionsBeyondRetentionAreArchivedButNotAliasHolders() {
        let versions = (1...6).map { Self.version($0, $0 == 5 ? .rejected : .validated) }
        let p = Self.plan([Self.model(fingerprint: "fp-6", aliases: [AliasPin(name: "champion", target: .version(1))], retention: 2)],
                          Self.registry(versions, aliases: ["champion": 1]))
        #expect(Self.lines(p) == ["archive-versions churn/archive retention keeps the newest 2 versions; versions an alias holds or a Deployment uses are kept"])
        guard case .archiveVersions(let a) = p.entries[0].detail else { Issue.record("no archive"); return }
        #expect(a.versions == [2, 3, 4])
    }

    static func deployment(_ name: String, _ target: DeploymentTarget) -> DeploymentManifest {
        DeploymentManifest(metadata: ObjectMeta(name: name), spec: DeploymentSpec(model: "churn", target: target),
                           origin: ManifestOrigin(file: "deployments/\(name).yaml", documentIndex: 0,
                                                  location: SourceLocation(file: "deployments/\(name).yaml", line: 1, column: 1)))
    }

    /// Retention never archives a version a Deployment pins in Git, or one that serves (or is
    /// being rolled out or away from) per Capstan's serving records, though no alias holds it.
    @Test func retentionKeepsVersionsDeploymentsPinOrServe() {
        let versions = (1...5).map { Self.version($0, .validated) }
        let records = ServingRecords(
            applied: ["churn-canary": [BackendWeight(version: 2, weight: 90, replicas: 1), BackendWeight(version: 4, weight: 10, replicas: 1)]],
            rollouts: ["churn-canary": RolloutState(deployment: "churn-canary", model: "churn", from: 2, to: 4, phase: .stepping, step: 0,
                                                    stepStartedAt: Self.now, startedAt: Self.now, specHash: "h")])
        let serving = records.versionsInUse(models: [:])
        #expect(serving.map(\.version) == [2, 4])
        var actual = Self.registry(versions, aliases: ["champion": 5])
        actual.serving = serving
        let desired = DesiredState(repository: "repo", ref: "main", commit: "c0ffee",
                                   models: [Self.model(fingerprint: "fp-5", aliases: [AliasPin(name: "champion", target: .latest)], retention: 1)],
                                   deployments: [Self.deployment("churn-prod", .version(3))], policy: Policy())
        let p = Planner.plan(desired: desired, actual: actual, now: Self.now)
        guard case .archiveVersions(let a)? = p.entries.first?.detail else { Issue.record("no archive: \(Self.lines(p))"); return }
        #expect(a.versions == [1])
        // Without the Deployments, everything but the alias holder goes.
        let bare = Planner.plan(desired: DesiredState(repository: "repo", ref: "main", commit: "c0ffee", models: desired.models, policy: Policy()),
                                actual: Self.registry(versions, aliases: ["champion": 5]), now: Self.now)
        guard case .archiveVersions(let b)? = bare.entries.first?.detail else { Issue.record("no archive"); return }
        #expect(b.versions == [1, 2, 3, 4])
    }

    @Test func aRegressionGateRunsAfterItsAliasMoves() {
        let validate = ValidateSpec(noRegressionAgainst: "champion")
        let p = Self.plan([Self.model(aliases: [AliasPin(name: "champion", target: .version(2))], validate: validate)],
                          Self.registry([Self.version(1, .validated), Self.version(2, .validated)], aliases: ["champion": 1]))
        // The move comes first in plan order, which is execution order.
        #expect(Self.lines(p) == [
            "train churn/train fingerprint changed fp-2 → fp-new",
            "move-alias churn/alias/champion the spec pins champion to v2 (now v1)",
            "validate churn/validate [churn/train, churn/alias/champion] gates for the version this train produces",
        ])
    }

    /// Reverting a change in Git brings back the version of the reverted-to spec: `latest`
    /// prefers the current spec's version over a newer one.
    @Test func latestFollowsTheCurrentSpecsVersionAfterARevert() {
        let p = Self.plan([Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .latest)])],
                          Self.registry([Self.version(1, .validated), Self.version(2, .validated)], aliases: ["champion": 2]))
        #expect(Self.lines(p) == ["move-alias churn/alias/champion champion follows the version of the current spec, v1"])
        // While the current spec's version is rejected, the newest validated one serves.
        let rejected = Self.plan([Self.model(fingerprint: "fp-3", aliases: [AliasPin(name: "champion", target: .latest)])],
                                 Self.registry([Self.version(1, .validated), Self.version(2, .validated), Self.version(3, .rejected)],
                                               aliases: ["champion": 1]))
        #expect(Self.lines(rejected) == [
            "move-alias churn/alias/champion champion follows the newest validated version, v2 (the current spec's version is not validated)",
        ])
    }

    @Test func aVersionTrainingInARunningApplyIsWaitedFor() {
        let desired = DesiredState(repository: "repo", ref: "main", commit: "c0ffee", models: [Self.model()], policy: Policy())
        let p = Planner.plan(desired: desired, actual: Self.registry([Self.version(1, .training, fingerprint: "fp-new")]), now: Self.now,
                             options: PlanOptions(applyInProgress: "pid 42 on build-1, running 'capstan apply'"))
        #expect(Self.lines(p) == ["wait churn/wait v1 is being trained by a running apply (pid 42 on build-1, running 'capstan apply')"])
    }

    @Test func modelsOnlyInTheRegistryAreOrphanedAndLeftAlone() {
        var actual = Self.registry([Self.version(1, .validated)], aliases: ["champion": 1])
        actual.registry.models.append(RegisteredModel(name: "old", description: nil, labels: [:], createdAt: 0, updatedAt: 0))
        actual.registry.versions["old"] = [Self.version(1, .validated)]
        actual.registry.aliases["old"] = ["champion": 1]
        let p = Self.plan([Self.model(fingerprint: "fp-1", aliases: [AliasPin(name: "champion", target: .latest)])], actual)
        #expect(Self.lines(p) == ["orphaned old/orphaned in the registry but no longer in Git; Capstan leaves it as it is"])
        #expect(!p.hasChanges)
    }

    @Test func plansAreDeterministicAndTheDigestFollowsTheRegistry() {
        let models = [Self.model("b"), Self.model("a"), Self.model("c")]
        let actual = Self.registry([Self.version(1, .validated)])
        let first = Self.plan(models, actual)
        #expect(first == Self.plan(models.reversed(), actual))
        #expect(first.entries.map(\.name).filter { $0 != "churn" } == ["a", "a", "a", "b", "b", "b", "c", "c", "c"])
        var moved = actual
        moved.registry.aliases["churn"] = ["champion": 1]
        #expect(actual.digest != moved.digest)
        #expect(actual.digest == Self.registry([Self.version(1, .validated)]).digest)
    }

    // MARK: Gates

    @Test func gatesCheckThresholdsAndRegressionsWithTolerance() {
        let spec = ValidateSpec(metrics: [NamedGate(metric: "accuracy", gate: MetricGate(min: 0.8)),
                                          NamedGate(metric: "latency", gate: MetricGate(max: 50))],
                                noRegressionAgainst: "champion", tolerance: ["accuracy": 0.01])
        let holder = Self.version(1, .validated, metrics: ["accuracy": 0.9, "latency": 40])
        let ok = Gates.evaluate(spec, candidate: 2, metrics: ["accuracy": 0.895, "latency": 40], holder: holder)
        #expect(ok.map(\.passed) == [true, true, true])
        let worse = Gates.evaluate(spec, candidate: 2, metrics: ["accuracy": 0.88, "latency": 45], holder: holder)
        #expect(worse.map(\.passed) == [true, true, false])
        #expect(worse[2].detail == "worse than v1: accuracy 0.88 vs 0.9 (tolerance 0.01), latency 45 vs 40")
        let missing = Gates.evaluate(spec, candidate: 2, metrics: [:], holder: nil)
        #expect(missing.map(\.passed) == [false, false, true])
        #expect(missing[0].detail == "the metrics file has no accuracy")
        #expect(missing[2].detail == "no version holds champion yet")
    }
}
