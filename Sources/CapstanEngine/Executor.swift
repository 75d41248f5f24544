import CapstanCore
import Foundation

/// Executes a plan's entries: each model's entries in plan order, models in parallel up to
/// `policy.parallelism` at a time. An entry whose dependency did not succeed is skipped.
struct Executor: Sendable {
    let context: EngineContext

    /// Runs `plan` against the desired state it was made from. Never throws: every failure is an
    /// entry's outcome.
    func execute(_ plan: Plan, desired: DesiredState) async -> [String: EntryOutcome] {
        guard plan.entries.contains(where: \.action.isChange) else { return [:] }
        let models = Dictionary(desired.models.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var groups: [(String, [PlanEntry])] = []
        var index: [String: Int] = [:]
        for entry in plan.entries where entry.action.isChange {
            if let i = index[entry.name] {
                groups[i].1.append(entry)
            } else {
                index[entry.name] = groups.count
                groups.append((entry.name, [entry]))
            }
        }
        let limit = max(1, desired.policy.parallelism)
        var outcomes: [String: EntryOutcome] = [:]
        await withTaskGroup(of: [String: EntryOutcome].self) { group in
            var next = 0
            func launch() {
                guard next < groups.count else { return }
                let (name, entries) = groups[next]
                next += 1
                let pipeline = ModelPipeline(context: context, model: models[name], plan: plan, policy: desired.policy)
                group.addTask { await pipeline.run(entries) }
            }
            for _ in 0..<limit { launch() }
            for await result in group {
                outcomes.merge(result) { a, _ in a }
                launch()
            }
        }
        return outcomes
    }
}

/// One model's entries, in order.
struct ModelPipeline: Sendable {
    let context: EngineContext
    let model: DesiredModel?
    let plan: Plan
    let policy: Policy

    var registry: any Registry { context.registry }

    /// `entries` in plan order, except that an entry never runs before one it depends on.
    static func ordered(_ entries: [PlanEntry]) -> [PlanEntry] {
        let ids = Set(entries.map(\.id))
        var done = Set<String>()
        var pending = entries
        var out: [PlanEntry] = []
        while !pending.isEmpty {
            // The first entry whose dependencies (within this model) have all been placed; a
            // cycle, which the planner never makes, falls back to plan order.
            let index = pending.firstIndex { $0.dependsOn.allSatisfy { !ids.contains($0) || done.contains($0) } } ?? 0
            let entry = pending.remove(at: index)
            done.insert(entry.id)
            out.append(entry)
        }
        return out
    }

    func run(_ entries: [PlanEntry]) async -> [String: EntryOutcome] {
        // An outcome's message may quote what a step returned (its output, metrics, file
        // names): the steps scrub what they quote, and every message is scrubbed once more
        // here, where it leaves the model's pipeline for the output, the log and the state.
        let scrubber = model.map { StepEnvironment.scrubber(spec: $0.manifest.spec.stepSettings, reconciler: context.environment) } ?? .none
        var outcomes: [String: EntryOutcome] = [:]
        var produced: [String: Int] = [:]
        for entry in Self.ordered(entries) {
            if Task.isCancelled {
                outcomes[entry.id] = .skipped("the pass was stopped")
                continue
            }
            // A failed dependency stops its dependents; one skipped because there was nothing
            // left to do does not.
            if let failed = entry.dependsOn.first(where: { outcomes[$0]?.isFailure == true }) {
                let outcome = EntryOutcome.skipped("\(failed) did not succeed")
                outcomes[entry.id] = outcome
                context.events(.finished(entry, outcome, version: nil))
                continue
            }
            context.events(.started(entry))
            var outcome: EntryOutcome
            do {
                // A pass that lost its lease starts no step (its writes would fail anyway).
                try await context.store.checkLease()
                outcome = try await execute(entry, produced: &produced)
            } catch {
                outcome = Self.outcome(of: error, scrubber: scrubber)
            }
            outcome = outcome.scrubbed(scrubber)
            outcomes[entry.id] = outcome
            context.events(.finished(entry, outcome, version: produced[entry.id] ?? EntryReport.version(of: entry)))
        }
        return outcomes
    }

    /// How an entry that threw ended: a lost lease or a stop skips it (the pass is stopping);
    /// anything else fails it with the error's class (a full disk, an unreachable registry:
    /// transient).
    static func outcome(of error: any Error, scrubber: SecretScrubber) -> EntryOutcome {
        let failure = Failures.classify(error, scrubbing: scrubber)
        switch failure.reason {
        case .leaseLost: return .skipped("stopped: \(failure.message)")
        case .interrupted: return .skipped("the pass was stopped")
        default: return .failed(failure)
        }
    }

    func execute(_ entry: PlanEntry, produced: inout [String: Int]) async throws -> EntryOutcome {
        let object = ObjectRef.model(entry.name)
        switch entry.detail {
        case .registerModel(let change), .updateModel(let change):
            let registering = entry.action == .registerModel
            let event = context.event(object, registering ? .register : .update, commit: plan.commit,
                                      before: registering ? nil : Self.metadata(change.previousDescription, change.previousLabels ?? [:]),
                                      after: Self.metadata(change.description, change.labels), reason: entry.reason)
            try await context.journaled(.registerModel(model: entry.name), event: event) {
                try await registry.upsertModel(name: entry.name, description: change.description, labels: change.labels)
            }
            return .done(registering ? "registered" : "updated")

        case .train(let detail):
            guard let model else { return .failed(notDesired(entry)) }
            let training = Training(context: context, model: model, plan: plan, policy: policy)
            let (number, outcome) = try await training.run(detail)
            if let number { produced[entry.id] = number }
            return outcome

        case .validate(let detail):
            guard let model else { return .failed(notDesired(entry)) }
            let number: Int
            switch detail.version {
            case .number(let n): number = n
            case .produced(let by):
                guard let n = produced[by] else { return .skipped("\(by) produced no version") }
                number = n
            }
            let validation = Validation(context: context, model: model, plan: plan)
            return try await validation.run(version: number)

        case .moveAlias(let detail):
            return try await moveAlias(entry, detail, produced: produced)

        case .deleteAlias(let detail):
            guard let current = try await registry.resolveAlias(detail.alias, of: entry.name) else {
                return .skipped("alias \(detail.alias) is already gone")
            }
            let event = context.event(.alias(model: entry.name, alias: detail.alias), .deleteAlias, commit: plan.commit,
                                      before: .int(Int64(current)), reason: entry.reason)
            try await context.journaled(.deleteAlias(model: entry.name, alias: detail.alias), event: event) {
                try await registry.deleteAlias(detail.alias, of: entry.name, commit: plan.commit, reason: entry.reason)
            }
            return .done("deleted (was v\(current))")

        case .archiveVersions(let detail):
            let held = Set(try await registry.aliases(of: entry.name).values)
            var archived: [Int] = []
            let numbers = detail.versions.filter { !held.contains($0) }
            if numbers.isEmpty { return .skipped("every listed version holds an alias now") }
            let event = context.event(object, .archiveVersions, commit: plan.commit,
                                      after: .list(numbers.map { .int(Int64($0)) }), reason: entry.reason)
            try await context.journaled(.archiveVersions(model: entry.name, versions: numbers), event: event) {
                for number in numbers {
                    try await registry.updateVersion(model: entry.name, number: number, VersionUpdate(archivedAt: context.now()))
                    archived.append(number)
                }
            }
            return .done("archived " + archived.map { "v\($0)" }.joined(separator: ", "))

        case .registryDrift(let detail):
            return try await registryDrift(entry, detail)

        case .wait, .blocked, .orphaned, .deployment:
            return .skipped("not a change")
        }
    }

    /// A change made in the registry outside Capstan: adopted (recorded in the ledger, so that
    /// it is not reported again while the spec stays), or Capstan's tags put back.
    func registryDrift(_ entry: PlanEntry, _ detail: RegistryDriftDetail) async throws -> EntryOutcome {
        let object: ObjectRef
        switch detail.object {
        case .alias(let alias): object = .alias(model: entry.name, alias: alias)
        case .version(let n): object = .version(model: entry.name, number: n)
        case .foreignVersions: object = .model(entry.name)
        }
        switch entry.action {
        case .adoptDrift:
            var changes = StateChanges("record the adoption of \(entry.id)")
            changes.record(context.event(object, .adoptDrift, commit: plan.commit, after: .string(detail.found), reason: entry.reason))
            try await registry.adoptDrift(model: entry.name, object: detail.object, detail.adoption)
            try await context.commit(changes)
            return .done("adopted (\(detail.found))")
        case .revertDrift:
            guard case .version(let number) = detail.object else { return .skipped("nothing to put back") }
            var changes = StateChanges("record the revert of \(entry.id)")
            changes.record(context.event(object, .revertDrift, commit: plan.commit, before: .string(detail.found),
                                         after: detail.expected.map(ParamValue.string), reason: entry.reason))
            try await registry.restoreVersion(model: entry.name, number: number)
            try await context.commit(changes)
            return .done("Capstan's tags of v\(number) put back")
        default:
            return .skipped("not a change")
        }
    }

    func moveAlias(_ entry: PlanEntry, _ detail: AliasMoveDetail, produced: [String: Int]) async throws -> EntryOutcome {
        let target: Int
        switch detail.target {
        case .latest:
            // `latest` is resolved when the move runs: the current spec's version if it passed
            // its gates, otherwise the newest validated one.
            let versions = try await registry.versions(of: entry.name)
            guard let newest = Planner.latest(versions, fingerprint: model?.fingerprint ?? "") else {
                return .skipped("no validated version to point \(detail.alias) at")
            }
            target = newest.number
            if case .produced(let by) = detail.to, let candidate = produced[by], candidate != newest.number {
                let current = try await registry.resolveAlias(detail.alias, of: entry.name)
                if current == newest.number {
                    return .skipped("v\(candidate) did not pass its gates; \(detail.alias) stays at v\(newest.number)")
                }
            }
        case .version(let n):
            target = n
        }
        let current = try await registry.resolveAlias(detail.alias, of: entry.name)
        if current == target { return .skipped("\(detail.alias) already points at v\(target)") }
        let version = try await registry.version(of: entry.name, number: target)
        guard let version, version.status == .validated else {
            return .skipped("v\(target) is \(version?.status.rawValue ?? "missing"), not validated; \(detail.alias) stays \(current.map { "at v\($0)" } ?? "unset")")
        }
        let event = context.event(.alias(model: entry.name, alias: detail.alias), .moveAlias, commit: plan.commit,
                                  before: current.map { .int(Int64($0)) }, after: .int(Int64(target)), reason: entry.reason)
        try await context.journaled(.moveAlias(model: entry.name, alias: detail.alias, to: target), event: event) {
            Failpoint.hit("alias.before-set")
            try await registry.setAlias(detail.alias, of: entry.name, to: target, commit: plan.commit, reason: entry.reason)
            Failpoint.hit("alias.after-set")
        }
        return .done("\(detail.alias): \(current.map { "v\($0)" } ?? "unset") → v\(target)")
    }

    func notDesired(_ entry: PlanEntry) -> ReconcileFailure {
        ReconcileFailure(.stalled, .planOutdated, "model \(entry.name) is not in the desired state of \(plan.commit.prefix(7)); make a new plan")
    }

    static func metadata(_ description: String?, _ labels: [String: String]) -> ParamValue {
        .map(["description": description.map(ParamValue.string) ?? .null, "labels": .map(labels.mapValues(ParamValue.string))])
    }
}
