/// Computes the plan: `(desired, actual, now) → Plan`. Pure and deterministic: the same inputs
/// give the same plan, entry for entry, which is what lets `apply PLANFILE` check a saved plan and
/// the golden tests pin every decision.
///
/// The history the planner needs is part of the actual state: each version carries its training
/// attempts and the time of its last failure (for the retry backoff), and the description its
/// fingerprint was computed from (to say what changed).
public enum Planner {
    public static func plan(desired: DesiredState, actual: ActualState, now: Int64, options: PlanOptions = PlanOptions()) -> Plan {
        var entries: [PlanEntry] = []
        let registered = Dictionary(actual.registry.models.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for model in desired.models {
            var planner = ModelPlanner(
                desired: model, registered: registered[model.name],
                versions: actual.registry.versions[model.name] ?? [],
                attempts: actual.registry.attempts[model.name] ?? [],
                aliases: actual.registry.aliases[model.name] ?? [:],
                external: actual.registry.external.map { ExternalSlice($0, model: model.name) },
                deployed: deployed(model.name, desired: desired, actual: actual),
                policy: desired.policy, now: now, options: options)
            entries += planner.plan()
        }
        entries += orphans(desired: desired, actual: actual)
        return Plan(repository: desired.repository, ref: desired.ref, commit: desired.commit,
                    actualDigest: actual.digest, createdAt: now, entries: entries)
    }

    /// `plan(desired:actual:now:options:)` again after a few models changed, without planning the
    /// others again: the entries of `models` are planned against `actual`, every other model's
    /// are taken from `previous`, and orphans are found again. Gives what `plan` gives when
    /// `previous` was planned from the same `desired` and `options` and the models not in `models`
    /// are as they were then in the registry and have no backoff that ended since (the caller
    /// checks; see `Reconciler`).
    public static func replan(_ previous: Plan, models: Set<String>, desired: DesiredState, actual: ActualState, now: Int64,
                              options: PlanOptions = PlanOptions()) -> Plan {
        // A few models: looked up one by one rather than indexing them all.
        let registered = models.count > 16 ? Dictionary(actual.registry.models.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }) : nil
        func planned(_ i: Int) -> [PlanEntry] {
            let model = desired.models[i]
            var planner = ModelPlanner(
                desired: model,
                registered: registered.map { $0[model.name] } ?? actual.registry.models.first { $0.name == model.name },
                versions: actual.registry.versions[model.name] ?? [],
                attempts: actual.registry.attempts[model.name] ?? [],
                aliases: actual.registry.aliases[model.name] ?? [:],
                external: actual.registry.external.map { ExternalSlice($0, model: model.name) },
                deployed: deployed(model.name, desired: desired, actual: actual),
                policy: desired.policy, now: now, options: options)
            return planner.plan()
        }
        var entries: [PlanEntry] = []
        entries.reserveCapacity(previous.entries.count)
        // `previous` lists each model's entries together, in the order of `desired.models` (as
        // `plan` and `replan` make them), orphans last: taken in one walk. When it does not, its
        // entries are gathered by model first.
        var next = 0
        let old = previous.entries
        for i in desired.models.indices {
            let name = desired.models[i].name
            let start = next
            while next < old.count, old[next].name == name, old[next].action != .orphaned { next += 1 }
            if models.contains(name) { entries += planned(i) } else { entries += old[start..<next] }
        }
        while next < old.count, old[next].action == .orphaned { next += 1 }
        if next < old.count {
            var kept: [String: [PlanEntry]] = [:]
            for entry in old where entry.action != .orphaned && !models.contains(entry.name) {
                kept[entry.name, default: []].append(entry)
            }
            entries.removeAll(keepingCapacity: true)
            for i in desired.models.indices {
                let name = desired.models[i].name
                if models.contains(name) { entries += planned(i) } else if let same = kept[name] { entries += same }
            }
        }
        entries += orphans(desired: desired, actual: actual)
        return Plan(repository: desired.repository, ref: desired.ref, commit: desired.commit,
                    actualDigest: actual.digest, createdAt: now, entries: entries)
    }

    static func orphans(desired: DesiredState, actual: ActualState) -> [PlanEntry] {
        var entries: [PlanEntry] = []
        // Every registered model desired, in the same order (the common case): none.
        let registry = actual.registry.models
        if registry.count <= desired.models.count,
           registry.indices.allSatisfy({ registry[$0].name == desired.models[$0].name }) { return [] }
        let wanted = Set(desired.models.map(\.name))
        for model in registry where !wanted.contains(model.name) {
            let versions = actual.registry.versions[model.name] ?? []
            let aliases = actual.registry.aliases[model.name] ?? [:]
            entries.append(PlanEntry(
                id: "\(model.name)/orphaned", action: .orphaned, name: model.name,
                reason: "in the registry but no longer in Git; Capstan leaves it as it is",
                detail: .orphaned(OrphanDetail(versions: versions.count, aliases: aliases))))
        }
        return entries
    }

    /// The versions of `model` that Deployments use: pinned by a Deployment in Git (`version: 7`),
    /// or serving or rolling out per Capstan's serving records. (A Deployment that follows an
    /// alias uses the alias's holder, which retention keeps anyway.)
    static func deployed(_ model: String, desired: DesiredState, actual: ActualState) -> Set<Int> {
        var numbers = Set(actual.serving.filter { $0.model == model }.map(\.version))
        for d in desired.deployments where d.spec.model == model {
            if case .version(let n)? = d.spec.target { numbers.insert(n) }
        }
        return numbers
    }

    /// The delay before attempt `attempts + 1` of a fingerprint that failed `attempts` times:
    /// `initial`, doubled per further failure, at most `max`.
    public static func backoff(afterFailures attempts: Int, policy: RetryPolicy) -> Int64 {
        let initial = max(policy.initial.milliseconds, 1)
        var delay = initial
        for _ in 1..<max(attempts, 1) {
            if delay >= policy.max.milliseconds / 2 { return policy.max.milliseconds }
            delay *= 2
        }
        return min(delay, policy.max.milliseconds)
    }

    /// What `latest` resolves to: the version trained from the current spec when it is validated
    /// (so reverting a change in Git brings its earlier version back), otherwise the newest
    /// validated, non-archived version.
    public static func latest(_ versions: [ModelVersion], fingerprint: String) -> ModelVersion? {
        if let current = versions.first(where: { $0.fingerprint == fingerprint }), current.status == .validated, current.archivedAt == nil {
            return current
        }
        return versions.filter { $0.status == .validated && $0.archivedAt == nil }.max { $0.number < $1.number }
    }

    /// The gates of a validation spec as people read them.
    public static func gateDescriptions(_ spec: ValidateSpec?) -> [String] {
        guard let spec else { return [] }
        var out: [String] = []
        for g in spec.metrics {
            if let lo = g.gate.min { out.append("\(g.metric) >= \(Gates.format(lo))") }
            if let hi = g.gate.max { out.append("\(g.metric) <= \(Gates.format(hi))") }
        }
        if let alias = spec.noRegressionAgainst {
            let tolerance = spec.tolerance.sorted { $0.key < $1.key }.map { "\($0.key) \(Gates.format($0.value))" }
            out.append("no regression against \(alias)" + (tolerance.isEmpty ? "" : " (tolerance \(tolerance.joined(separator: ", ")))"))
        }
        if let command = spec.command { out.append("command \(command.joined(separator: " "))") }
        return out
    }
}

/// The plan of one model.
private struct ModelPlanner {
    let desired: DesiredModel
    let registered: RegisteredModel?
    let versions: [ModelVersion]
    /// Trainings of fingerprints without a version (`RegistrySnapshot.attempts`).
    let attempts: [TrainingAttemptRecord]
    let aliases: [String: Int]
    /// Versions Deployments pin or serve (see `Planner.deployed`).
    let deployed: Set<Int>
    let policy: Policy
    let now: Int64
    let options: PlanOptions

    var entries: [PlanEntry] = []
    /// The entry that creates the model, which everything else waits for.
    var registerID: String?
    /// The train entry of this pass, when there is one.
    var trainID: String?
    /// The validate entry of the desired fingerprint's version, when there is one.
    var validateID: String?
    /// Validate entries of other versions left `trained`, by number.
    var validateOthers: [Int: String] = [:]
    /// Whether the desired fingerprint is waiting out a failure.
    var waiting = false

    /// What the registry's ledger says of this model (a registry others write too), or nil.
    let external: ExternalSlice?

    init(desired: DesiredModel, registered: RegisteredModel?, versions: [ModelVersion], attempts: [TrainingAttemptRecord],
         aliases: [String: Int], external: ExternalSlice? = nil, deployed: Set<Int>, policy: Policy, now: Int64, options: PlanOptions) {
        self.desired = desired
        self.registered = registered
        // In a registry others write too, versions of others' making that Capstan has not judged
        // are drift for a model Capstan trains (`planVersionDrift`), and candidates for a
        // registry-only one.
        if let external, !desired.isRegistryOnly, !external.foreign.isEmpty {
            let foreign = Set(external.foreign)
            self.versions = versions.filter { !foreign.contains($0.number) }
        } else {
            self.versions = versions
        }
        self.attempts = attempts
        self.external = external
        self.aliases = aliases
        self.deployed = deployed
        self.policy = policy
        self.now = now
        self.options = options
    }

    var name: String { desired.name }
    var spec: ModelSpec { desired.manifest.spec }

    mutating func plan() -> [PlanEntry] {
        planMetadata()
        if desired.isRegistryOnly {
            planRegisteredVersions()
        } else {
            planTraining()
            planStrayValidations()
        }
        planAliases()
        planVersionDrift()
        planRetention()
        return entries
    }

    // MARK: Metadata

    mutating func planMetadata() {
        let description = spec.description
        let labels = desired.manifest.metadata.labels
        guard let registered else {
            registerID = "\(name)/register"
            entries.append(PlanEntry(id: registerID!, action: .registerModel, name: name, reason: "not in the registry yet",
                                     detail: .registerModel(ModelMetadataChange(description: description, labels: labels))))
            return
        }
        var changed: [String] = []
        if (registered.description ?? "") != (description ?? "") { changed.append("description") }
        if registered.labels != labels { changed.append("labels") }
        guard !changed.isEmpty else { return }
        entries.append(PlanEntry(
            id: "\(name)/update", action: .updateModel, name: name, reason: "\(changed.joined(separator: " and ")) changed",
            detail: .updateModel(ModelMetadataChange(description: description, labels: labels,
                                                     previousDescription: registered.description,
                                                     previousLabels: registered.labels))))
    }

    // MARK: Training

    mutating func planTraining() {
        let fingerprint = desired.fingerprint
        guard let existing = versions.first(where: { $0.fingerprint == fingerprint }) else {
            // Its version was deleted outside Capstan: registered again only under revert (the
            // drift entry reports it otherwise; `planVersionDrift`).
            if let external, policy.drift != .revert, external.deletedVersions(present: versions).contains(where: { $0.fingerprint == fingerprint }) {
                return
            }
            if let attempt = attempts.first(where: { $0.fingerprint == fingerprint }) {
                planAttempt(attempt)
            } else {
                addTrain(version: nil, attempt: 1, reasons: newVersionReasons(), reason: nil)
            }
            return
        }
        switch existing.status {
        case .validated, .rejected:
            return
        case .trained:
            let id = "\(name)/validate"
            validateID = id
            entries.append(PlanEntry(
                id: id, action: .validate, name: name,
                reason: "v\(existing.number) was trained but not validated (an interrupted pass); running its gates",
                dependsOn: dependencies(), detail: .validate(ValidateDetail(version: .number(existing.number), gates: gates))))
        case .training:
            if let running = options.applyInProgress {
                entries.append(PlanEntry(
                    id: "\(name)/wait", action: .wait, name: name,
                    reason: "v\(existing.number) is being trained by a running apply (\(running))",
                    detail: .wait(WaitDetail(until: nil, version: existing.number, fingerprint: nil))))
                return
            }
            addTrain(version: existing.number, attempt: existing.attempts + 1,
                     reasons: [.resumeInterrupted(version: existing.number)], reason: nil)
        case .failed:
            retryOrWait(version: existing.number, attempts: existing.attempts, failedAt: existing.failedAt ?? existing.createdAt,
                        logTail: existing.logTail, label: "v\(existing.number)",
                        described: "v\(existing.number) (fingerprint \(fingerprint.prefix(12)))")
        }
    }

    /// A failed training of the desired fingerprint: trained again once its backoff is over (or
    /// now, with `--retry-failed`), otherwise a wait entry that says until when.
    /// - Parameters:
    ///   - label: how the retry's reason names it (`v3`, `fingerprint 1a2b…`).
    ///   - described: how the wait's reason names it.
    mutating func retryOrWait(version: Int?, attempts: Int, failedAt: Int64, logTail: String?, label: String, described: String) {
        let delay = Planner.backoff(afterFailures: attempts, policy: policy.retry)
        let next = failedAt + delay
        if options.retryFailed || now >= next {
            let attempt = attempts + 1
            addTrain(version: version, attempt: attempt, reasons: [.retry(attempt: attempt, lastFailure: logTail)],
                     reason: options.retryFailed && now < next ? "retrying \(label) now (--retry-failed)" : nil)
        } else {
            waiting = true
            let failures = attempts == 1 ? "once" : "\(attempts) times"
            entries.append(PlanEntry(
                id: "\(name)/wait", action: .wait, name: name,
                reason: "training \(described) failed \(failures); retrying after a backoff of \(ManifestDuration.format(delay)), or now with --retry-failed",
                detail: .wait(WaitDetail(until: next, version: version, fingerprint: desired.fingerprint, lastFailure: logTail))))
        }
    }

    /// The desired fingerprint has no version but has been trained before, in a registry that
    /// numbers versions when it registers them (`RegistrySnapshot.attempts`): the same decisions
    /// as for a version in `training` or `failed`, naming the fingerprint instead of a number.
    mutating func planAttempt(_ record: TrainingAttemptRecord) {
        let fingerprint = desired.fingerprint
        let label = "fingerprint \(fingerprint.prefix(12))"
        switch record.state {
        case .running, .trained:
            if record.state == .running, let running = options.applyInProgress {
                entries.append(PlanEntry(
                    id: "\(name)/wait", action: .wait, name: name,
                    reason: "\(label) is being trained by a running apply (\(running))",
                    detail: .wait(WaitDetail(until: nil, version: nil, fingerprint: fingerprint))))
                return
            }
            addTrain(version: nil, attempt: record.attempts + 1, reasons: [.resumeAttempt(fingerprint: fingerprint)],
                     reason: record.state == .trained
                        ? "the last training of \(label) stored its artifact but its version was not registered; registering it (the training does not run again)"
                        : nil)
        case .failed:
            retryOrWait(version: nil, attempts: record.attempts, failedAt: record.failedAt ?? record.startedAt, logTail: record.logTail,
                        label: label, described: label)
        }
    }

    /// Why a fingerprint with no version trains: compared with the newest version's description.
    func newVersionReasons() -> [TrainReason] {
        guard let last = versions.max(by: { $0.number < $1.number }) else { return [.newModel] }
        if let old = last.training {
            let differences = desired.training.differences(from: old)
            if !differences.isEmpty { return differences }
        }
        return [.fingerprintChanged(from: last.fingerprint, to: desired.fingerprint)]
    }

    mutating func addTrain(version: Int?, attempt: Int, reasons: [TrainReason], reason: String?) {
        let id = "\(name)/train"
        trainID = id
        let text = reason ?? reasons.map(\.description).joined(separator: "; ")
        entries.append(PlanEntry(
            id: id, action: .train, name: name, reason: text, dependsOn: registerID.map { [$0] } ?? [],
            detail: .train(TrainDetail(fingerprint: desired.fingerprint, training: desired.training, reasons: reasons,
                                       version: version, attempt: attempt,
                                       timeoutMilliseconds: (spec.train?.timeout ?? TrainSpec.defaultTimeout).milliseconds))))
        let validate = "\(name)/validate"
        validateID = validate
        entries.append(PlanEntry(
            id: validate, action: .validate, name: name,
            reason: gates.isEmpty ? "no gates: the trained version is validated as it is" : "gates for the version this train produces",
            dependsOn: [id], detail: .validate(ValidateDetail(version: .produced(by: id), gates: gates))))
    }

    /// Versions of older fingerprints left `trained` by an interrupted pass are validated too, so
    /// a pinned alias can reach them; their results are kept like any other.
    mutating func planStrayValidations() {
        for v in versions where v.status == .trained && v.fingerprint != desired.fingerprint && v.archivedAt == nil {
            let id = "\(name)/validate/v\(v.number)"
            validateOthers[v.number] = id
            entries.append(PlanEntry(
                id: id, action: .validate, name: name,
                reason: v.commit == nil
                    ? "v\(v.number) was registered outside Capstan (capstan register); running its gates"
                    : "v\(v.number) was trained but not validated (an interrupted pass); running its gates",
                dependsOn: dependencies(), detail: .validate(ValidateDetail(version: .number(v.number), gates: gates))))
        }
    }

    /// A registry-only model's versions that no pass has judged yet (registered since) get their
    /// gates, evaluated on the metrics the registry holds for them (their run's, in MLflow).
    mutating func planRegisteredVersions() {
        for v in versions where v.status == .trained && v.archivedAt == nil {
            let id = "\(name)/validate/v\(v.number)"
            validateOthers[v.number] = id
            entries.append(PlanEntry(
                id: id, action: .validate, name: name, reason: registeredReason(v),
                dependsOn: dependencies(), detail: .validate(ValidateDetail(version: .number(v.number), gates: gates))))
        }
    }

    /// Why a registered version is judged, with the verdict it will get when the regression
    /// alias is held by `holder` (nil: by its current holder).
    func registeredReason(_ v: ModelVersion, holder: Int? = nil) -> String {
        if gates.isEmpty { return "v\(v.number) was registered outside Capstan; the model has no gates, so it is valid as it is" }
        let verdict = predictedVerdict(v, holder: holder)
        return "v\(v.number) was registered outside Capstan; judging it on its metrics (" + (verdict.passed ? "it passes" : "it fails: \(verdict.failed)") + ")"
    }

    /// The verdict the gates give `version` on the metrics the registry holds for it, against
    /// `holder` of the regression alias (nil: its current holder): what its validate entry finds.
    func predictedVerdict(_ version: ModelVersion, holder number: Int? = nil) -> (passed: Bool, failed: String) {
        let holder = (number ?? spec.validate?.noRegressionAgainst.flatMap { aliases[$0] }).flatMap { n in versions.first { $0.number == n } }
        let results = Gates.evaluate(spec.validate, candidate: version.number, metrics: version.metrics, holder: holder)
        let failed = results.filter { !$0.passed }.map { "\($0.gate): \($0.detail)" }.joined(separator: "; ")
        return (failed.isEmpty, failed)
    }

    var gates: [String] { Planner.gateDescriptions(spec.validate) }

    func dependencies() -> [String] { registerID.map { [$0] } ?? [] }

    // MARK: Aliases

    mutating func planAliases() {
        let wanted = Set(spec.aliases.map(\.name))
        for pin in spec.aliases {
            let drift = aliasDrift(pin)
            if let drift, drift.handled { continue }
            let before = entries.count
            switch pin.target {
            case .version(let number): planPinned(pin, number)
            case .latest: planLatest(pin)
            }
            // Reverted by the move the spec asks for, which says why.
            if let drift, let i = entries[before...].firstIndex(where: { $0.id == "\(name)/alias/\(pin.name)" }) {
                entries[i].reason = "\(drift.text); policy.drift is revert: " + entries[i].reason
            }
        }
        // In a registry others write too, only the aliases Capstan set are Capstan's to delete.
        let deletable = external.map { ext in Set(ext.aliasesSet.compactMap { $0.value == nil ? nil : $0.key }) }
        for (alias, number) in aliases.sorted(by: { $0.key < $1.key }) where !wanted.contains(alias) && deletable?.contains(alias) != false {
            entries.append(PlanEntry(
                id: "\(name)/alias/\(alias)/delete", action: .deleteAlias, name: name,
                reason: "alias \(alias) is no longer in the spec", detail: .deleteAlias(AliasDeleteDetail(alias: alias, from: number))))
        }
        // A gate that compares against an alias runs after that alias has moved in this plan.
        if let alias = spec.validate?.noRegressionAgainst,
           let move = entries.first(where: { $0.id == "\(name)/alias/\(alias)" }),
           case .moveAlias(let detail) = move.detail, detail.to.number != nil {
            // Not the validation the move itself waits for (a registry-only model's `latest`).
            for i in entries.indices where entries[i].action == .validate && !entries[i].dependsOn.contains(move.id)
                && !move.dependsOn.contains(entries[i].id) {
                entries[i].dependsOn.append(move.id)
                // A registered version is judged against the alias's new holder: say so.
                if desired.isRegistryOnly, case .validate(let v) = entries[i].detail, let n = v.version.number,
                   let version = versions.first(where: { $0.number == n }) {
                    entries[i].reason = registeredReason(version, holder: detail.to.number)
                }
            }
            // Plan order is execution order: the move goes before the first entry that waits for it.
            if let from = entries.firstIndex(where: { $0.id == move.id }),
               let to = entries.firstIndex(where: { $0.dependsOn.contains(move.id) }), to < from {
                let moved = entries.remove(at: from)
                entries.insert(moved, at: to)
            }
        }
    }

    // MARK: Drift (a registry others write too)

    /// An alias Capstan set that is no longer where Capstan put it. Under alert or adopt it gets
    /// its entry here (`handled`); under revert the alias is planned as the spec says, and `text`
    /// says why. Nil when it did not drift, or its adoption still holds, or its adoption was for
    /// another spec (Capstan manages the alias again).
    mutating func aliasDrift(_ pin: AliasPin) -> (text: String, handled: Bool)? {
        guard let external, let set = external.aliasesSet[pin.name] else { return nil }
        let current = aliases[pin.name]
        guard set != current else { return nil }
        let found = current.map { "v\($0)" } ?? "deleted"
        let expected = set.map { "v\($0)" } ?? "none"
        let spec = "\(pin.target)@\(desired.fingerprint)"
        if let adopted = external.adoptions[.alias(pin.name)], adopted.value == found {
            return adopted.spec == spec ? (text: "", handled: true) : nil
        }
        let text = current == nil
            ? "alias \(pin.name) was deleted outside Capstan (Capstan had set it to \(expected))"
            : "alias \(pin.name) was moved outside Capstan to \(found) (Capstan set \(expected))"
        guard addDrift(.alias(pin.name), text: text, found: found, expected: expected, spec: spec, revertible: false) else {
            return (text: text, handled: false)
        }
        return (text: text, handled: true)
    }

    /// Versions someone else registered, and versions Capstan made that were edited or deleted
    /// outside Capstan.
    mutating func planVersionDrift() {
        guard let external else { return }
        let fingerprint = desired.fingerprint
        // A registry-only model's versions are all made outside Capstan, and deleting them is
        // its owners' business: only the tags Capstan wrote are watched.
        let foreign = desired.isRegistryOnly ? [] : external.foreign.sorted()
        if !foreign.isEmpty {
            let found = foreign.map { "v\($0)" }.joined(separator: ", ")
            let adopted = external.adoptions[.foreignVersions]
            if adopted?.value != found || adopted?.spec != fingerprint {
                _ = addDrift(.foreignVersions,
                             text: "\(found) \(foreign.count == 1 ? "was" : "were") registered outside Capstan (no capstan.fingerprint tag); Capstan never changes versions it did not make",
                             found: found, expected: nil, spec: fingerprint, revertible: false)
            }
        }
        for (number, recorded) in external.recordedVersions.sorted(by: { $0.key < $1.key }) {
            let object = DriftObject.version(number)
            if let now = external.tags[number] {
                guard now != recorded else { continue }
                let changed = Set(now.keys).union(recorded.keys).sorted().filter { now[$0] != recorded[$0] }
                let found = changed.map { "\($0): \(now[$0] ?? "(removed)")" }.joined(separator: ", ")
                if let adopted = external.adoptions[object], adopted.value == found, adopted.spec == fingerprint { continue }
                _ = addDrift(object, text: "the tags Capstan wrote on v\(number) were edited outside Capstan (\(found))", found: found,
                             expected: changed.map { "\($0): \(recorded[$0] ?? "(none)")" }.joined(separator: ", "), spec: fingerprint,
                             revertible: true)
            } else if !versions.contains(where: { $0.number == number }), !desired.isRegistryOnly {
                if let adopted = external.adoptions[object], adopted.value == "deleted", adopted.spec == fingerprint { continue }
                let own = recorded[ExternalSlice.fingerprintTag] == fingerprint
                let text = "v\(number), which Capstan registered, was deleted outside Capstan" + (own && policy.drift == .revert
                    ? "; it is registered again from its run (as a new version: MLflow never reuses a number)"
                    : "; MLflow never reuses a version number")
                _ = addDrift(object, text: text, found: "deleted", expected: "v\(number)", spec: fingerprint, revertible: false)
            }
        }
    }

    /// Adds the entry `policy.drift` asks for; false under revert for drift that is reverted by
    /// another entry (`revertible: false`: an alias move, or nothing Capstan can put back).
    mutating func addDrift(_ object: DriftObject, text: String, found: String, expected: String?, spec: String, revertible: Bool) -> Bool {
        let detail = RegistryDriftDetail(object: object, found: found, expected: expected, adoption: DriftAdoption(value: found, spec: spec))
        let id = "\(name)/drift/\(object.key)"
        switch policy.drift {
        case .revert:
            if revertible {
                entries.append(PlanEntry(id: id, action: .revertDrift, name: name,
                                         reason: "\(text); policy.drift is revert: Capstan puts its tags back",
                                         detail: .registryDrift(detail)))
                return true
            }
            // Nothing to put back for versions others made, nor for a deleted version: reported.
            if case .alias = object { return false }
            entries.append(PlanEntry(id: id, action: .drift, name: name, reason: "\(text); reported (policy.drift is revert)",
                                     detail: .registryDrift(detail)))
            return true
        case .alert:
            entries.append(PlanEntry(id: id, action: .drift, name: name,
                                     reason: "\(text); policy.drift is alert: reported only", detail: .registryDrift(detail)))
            return true
        case .adopt:
            entries.append(PlanEntry(id: id, action: .adoptDrift, name: name,
                                     reason: "\(text); policy.drift is adopt: Capstan takes it as it is and stops reporting it until the spec changes",
                                     detail: .registryDrift(detail)))
            return true
        }
    }

    var location: (String) -> String {
        { path in
            let l = desired.manifest.origin.location(of: path)
            return "\(l.file):\(l.line):\(l.column)"
        }
    }

    func summary(_ number: Int?) -> VersionSummary? {
        number.flatMap { n in versions.first { $0.number == n } }.map(VersionSummary.init)
    }

    mutating func planPinned(_ pin: AliasPin, _ number: Int) {
        let current = aliases[pin.name]
        let field = location("spec.aliases.\(pin.name)")
        let id = "\(name)/alias/\(pin.name)"
        guard let version = versions.first(where: { $0.number == number }) else {
            let newest = versions.map(\.number).max()
            entries.append(PlanEntry(
                id: id, action: .blocked, name: name,
                reason: "alias \(pin.name) is pinned to v\(number), which does not exist (\(newest.map { "the newest is v\($0)" } ?? "the model has no versions yet")); change the pin in \(field)",
                detail: .blocked(BlockedDetail(alias: pin.name, version: number, location: field, code: .pinnedVersionMissing))))
            return
        }
        if version.archivedAt != nil {
            blocked(pin, number, field, "v\(number) is archived (beyond retention)")
            return
        }
        switch version.status {
        case .validated:
            guard current != number else { return }
            entries.append(PlanEntry(
                id: id, action: .moveAlias, name: name,
                reason: "the spec pins \(pin.name) to v\(number)" + (current.map { " (now v\($0))" } ?? ""),
                dependsOn: dependencies(),
                detail: .moveAlias(AliasMoveDetail(alias: pin.name, target: pin.target, from: current, to: .number(number),
                                                   current: summary(current), candidate: VersionSummary(version)))))
        case .rejected:
            let failed = version.gateResults.filter { !$0.passed }.map { "\($0.gate): \($0.detail)" }
            blocked(pin, number, field, "v\(number) was rejected by its gates" + (failed.isEmpty ? "" : " (\(failed.joined(separator: "; ")))"))
        case .failed:
            blocked(pin, number, field, "v\(number) failed to train")
        case .training, .trained:
            // Moves once the version is validated in this pass (when it is being trained or
            // validated here), or waits for it.
            let validation = version.fingerprint == desired.fingerprint ? validateID : validateOthers[number]
            if let validation {
                entries.append(PlanEntry(
                    id: id, action: .moveAlias, name: name,
                    reason: "the spec pins \(pin.name) to v\(number); it moves once v\(number) passes its gates",
                    dependsOn: [validation],
                    detail: .moveAlias(AliasMoveDetail(alias: pin.name, target: pin.target, from: current, to: .number(number),
                                                       current: summary(current), candidate: VersionSummary(version)))))
            } else if version.status == .training && desired.isRegistryOnly {
                entries.append(PlanEntry(
                    id: id, action: .wait, name: name,
                    reason: "alias \(pin.name) is pinned to v\(number), which the registry has not finished registering",
                    detail: .wait(WaitDetail(until: nil, version: number))))
            } else if version.status == .training && version.fingerprint != desired.fingerprint && options.applyInProgress == nil {
                // Left `training` by a killed pass of another spec: only that spec trains it (a
                // pass resumes the version of the spec it reconciles), so nothing ever will here.
                entries.append(PlanEntry(
                    id: id, action: .blocked, name: name,
                    reason: "alias \(pin.name) is pinned to v\(number), which an interrupted pass left training under another spec (fingerprint \(version.fingerprint.prefix(12))); this commit does not train that spec, so nothing will finish v\(number). Pin a validated version in \(field), or revert the training spec to the one v\(number) comes from so that the next pass resumes it",
                    detail: .blocked(BlockedDetail(alias: pin.name, version: number, location: field, code: .pinnedVersionUnusable))))
            } else {
                entries.append(PlanEntry(
                    id: id, action: .wait, name: name,
                    reason: "alias \(pin.name) is pinned to v\(number), which is still \(version.status.rawValue)",
                    detail: .wait(WaitDetail(until: nil, version: number))))
            }
        }
    }

    mutating func blocked(_ pin: AliasPin, _ number: Int, _ field: String, _ why: String) {
        entries.append(PlanEntry(
            id: "\(name)/alias/\(pin.name)", action: .blocked, name: name,
            reason: "alias \(pin.name) is pinned to v\(number), but \(why); aliases point only at validated versions. Pin another version in \(field)",
            detail: .blocked(BlockedDetail(alias: pin.name, version: number, location: field, code: .pinnedVersionUnusable))))
    }

    mutating func planLatest(_ pin: AliasPin) {
        let current = aliases[pin.name]
        let id = "\(name)/alias/\(pin.name)"
        if desired.isRegistryOnly {
            planRegisteredLatest(pin)
            return
        }
        let newest = Planner.latest(versions, fingerprint: desired.fingerprint)
        if let validateID, let produced = pendingVersion {
            // Moves to the newest validated version once this pass's candidate has been judged.
            entries.append(PlanEntry(
                id: id, action: .moveAlias, name: name,
                reason: "\(pin.name) follows the newest validated version; it moves if the candidate passes its gates",
                dependsOn: [validateID],
                detail: .moveAlias(AliasMoveDetail(alias: pin.name, target: .latest, from: current, to: produced,
                                                   current: summary(current), candidate: produced.number.flatMap(summary)))))
            return
        }
        guard let newest else {
            if waiting { return }
            let last = versions.max { $0.number < $1.number }
            let why: String
            switch last?.status {
            case .rejected?: why = "v\(last!.number), the newest, was rejected by its gates; change the model so that it passes"
            case .failed?: why = "v\(last!.number), the newest, failed to train"
            default: why = "the model has no validated version"
            }
            blockedLatest(pin, newest: last?.number, why: why)
            return
        }
        guard current != newest.number else { return }
        let why = newest.fingerprint == desired.fingerprint
            ? "\(pin.name) follows the version of the current spec, v\(newest.number)"
            : "\(pin.name) follows the newest validated version, v\(newest.number) (the current spec's version is not validated)"
        entries.append(PlanEntry(
            id: id, action: .moveAlias, name: name,
            reason: why,
            dependsOn: dependencies(),
            detail: .moveAlias(AliasMoveDetail(alias: pin.name, target: .latest, from: current, to: .number(newest.number),
                                               current: summary(current), candidate: VersionSummary(newest)))))
    }

    /// `latest` with nothing to point at, and why.
    mutating func blockedLatest(_ pin: AliasPin, newest: Int?, why: String) {
        entries.append(PlanEntry(
            id: "\(name)/alias/\(pin.name)", action: .blocked, name: name, reason: "alias \(pin.name) (latest) has nothing to point at: \(why)",
            detail: .blocked(BlockedDetail(alias: pin.name, version: newest, location: location("spec.aliases.\(pin.name)"),
                                           code: .noValidatedVersion))))
    }

    /// `latest` of a registry-only model: the newest version that passes the gates, whether it
    /// was judged in an earlier pass or is judged in this one (then the move waits for it).
    mutating func planRegisteredLatest(_ pin: AliasPin) {
        let current = aliases[pin.name]
        let id = "\(name)/alias/\(pin.name)"
        let live = versions.filter { $0.archivedAt == nil }
        let newest = live.filter { $0.status == .validated || ($0.status == .trained && predictedVerdict($0).passed) }
            .max { $0.number < $1.number }
        guard let newest else {
            // A registered model Capstan takes over in this pass (in MLflow): its versions are
            // read once it is Capstan's, and judged in this pass's follow-up rounds.
            if registered == nil, external != nil {
                entries.append(PlanEntry(
                    id: id, action: .wait, name: name,
                    reason: "alias \(pin.name) (latest) waits for the model to be taken over in this pass; its versions are judged then",
                    dependsOn: dependencies(), detail: .wait(WaitDetail(until: nil, version: nil))))
                return
            }
            let last = live.max { $0.number < $1.number }
            let why: String
            switch last?.status {
            case nil: why = "the model has no versions in the registry yet; register one (with MLflow's client, or capstan register)"
            case .training?: why = "v\(last!.number), the newest, is not ready in the registry yet"
            default: why = "no version passes the model's gates (the newest is v\(last!.number))"
            }
            blockedLatest(pin, newest: last?.number, why: why)
            return
        }
        guard current != newest.number else { return }
        let judged = validateOthers[newest.number]
        entries.append(PlanEntry(
            id: id, action: .moveAlias, name: name,
            reason: "\(pin.name) follows the newest registered version that passes the gates, v\(newest.number)"
                + (judged == nil ? "" : " (it moves once v\(newest.number) has passed them in this pass)"),
            dependsOn: judged.map { [$0] } ?? dependencies(),
            detail: .moveAlias(AliasMoveDetail(alias: pin.name, target: .latest, from: current, to: .number(newest.number),
                                               current: summary(current), candidate: VersionSummary(newest)))))
    }

    /// The version this pass trains or validates for the desired fingerprint.
    var pendingVersion: VersionRef? {
        if let trainID { return .produced(by: trainID) }
        if validateID != nil, let v = versions.first(where: { $0.fingerprint == desired.fingerprint }) { return .number(v.number) }
        return nil
    }

    // MARK: Retention

    mutating func planRetention() {
        // Refused when loading for a registry-only model (its versions are others' to delete).
        guard let keep = spec.retention?.keepVersions, !desired.isRegistryOnly else { return }
        // Never a version an alias holds or the spec pins, the one `latest` resolves to, or one a
        // Deployment pins or serves.
        var protected = Set(aliases.values).union(deployed)
        for pin in spec.aliases { if case .version(let n) = pin.target { protected.insert(n) } }
        if let latest = Planner.latest(versions, fingerprint: desired.fingerprint) { protected.insert(latest.number) }
        let live = versions.filter { $0.archivedAt == nil }.sorted { $0.number > $1.number }
        let beyond = live.dropFirst(keep).filter {
            !protected.contains($0.number) && $0.status != .training && $0.status != .trained && $0.fingerprint != desired.fingerprint
        }
        guard !beyond.isEmpty else { return }
        let numbers = beyond.map(\.number).sorted()
        let aliasMoves = entries.filter { $0.action == .moveAlias || $0.action == .deleteAlias }.map(\.id)
        entries.append(PlanEntry(
            id: "\(name)/archive", action: .archiveVersions, name: name,
            reason: "retention keeps the newest \(keep) version\(keep == 1 ? "" : "s"); versions an alias holds or a Deployment uses are kept",
            dependsOn: aliasMoves, detail: .archiveVersions(ArchiveDetail(versions: numbers, keepVersions: keep))))
    }
}

/// One model's part of `RegistrySnapshot.external`.
struct ExternalSlice {
    static let fingerprintTag = "capstan.fingerprint"

    var aliasesSet: [String: Int?]
    var recordedVersions: [Int: [String: String]]
    var adoptions: [DriftObject: DriftAdoption]
    var foreign: [Int]
    var tags: [Int: [String: String]]

    init(_ state: ExternalRegistryState, model: String) {
        aliasesSet = state.ledger.aliases[model] ?? [:]
        recordedVersions = state.ledger.versions[model] ?? [:]
        adoptions = state.ledger.adoptions[model] ?? [:]
        foreign = state.foreignVersions[model] ?? []
        tags = state.versionTags[model] ?? [:]
    }

    /// Versions Capstan registered that the registry no longer holds: number and fingerprint.
    func deletedVersions(present: [ModelVersion]) -> [(number: Int, fingerprint: String)] {
        recordedVersions.compactMap { number, recorded in
            guard tags[number] == nil, !present.contains(where: { $0.number == number }),
                  let fingerprint = recorded[Self.fingerprintTag] else { return nil }
            return (number, fingerprint)
        }
    }
}
