import CapstanGit
import CapstanStore
import Foundation

/// How one plan entry ended.
public enum EntryOutcome: Hashable, Sendable {
    case done(String)
    /// Not run: a dependency did not succeed, or there was nothing left to do.
    case skipped(String)
    case failed(String)

    public var succeeded: Bool {
        if case .done = self { return true }
        return false
    }

    public var message: String {
        switch self {
        case .done(let m), .skipped(let m), .failed(let m): return m
        }
    }
}

/// What a pass reports while it runs (the CLI prints it; the controller logs it).
public enum PassEvent: Sendable {
    case started(PlanEntry)
    case finished(PlanEntry, EntryOutcome)
    /// A line of a step's output, already prefixed (`[churn v3] …`).
    case output(String)
    case note(String)
}

/// Everything a pass needs from the outside world.
public struct EngineContext: Sendable {
    public var stateDirectory: String
    public var database: StateDatabase
    public var registry: any Registry
    public var runner: any StepRunner
    public var artifacts: ArtifactStore
    public var materializer: Materializer
    public var journal: Journal
    public var audit: AuditLog
    public var passes: PassRecords
    /// Who is acting, for the audit log (`capstan apply (alice)`).
    public var actor: String
    /// The reconciler's environment: `secretEnv` values and PATH are taken from it.
    public var environment: [String: String]
    public var now: @Sendable () -> Int64
    public var events: @Sendable (PassEvent) -> Void
    /// How long a step gets after SIGTERM before SIGKILL.
    public var killGrace: ManifestDuration

    public init(stateDirectory: String, database: StateDatabase, registry: any Registry, runner: any StepRunner,
                actor: String, environment: [String: String] = ProcessInfo.processInfo.environment,
                now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds,
                killGrace: ManifestDuration = .init(milliseconds: 10_000, text: "10s"),
                events: @escaping @Sendable (PassEvent) -> Void = { _ in }) {
        self.stateDirectory = stateDirectory
        self.database = database
        self.registry = registry
        self.runner = runner
        self.artifacts = ArtifactStore(stateDirectory: stateDirectory)
        self.materializer = Materializer(stateDirectory: stateDirectory)
        self.journal = Journal(database: database, now: now)
        self.audit = AuditLog(database: database)
        self.passes = PassRecords(database: database, now: now)
        self.actor = actor
        self.environment = environment
        self.now = now
        self.events = events
        self.killGrace = killGrace
    }

    func record(_ object: String, _ action: String, commit: String?, before: ParamValue? = nil, after: ParamValue? = nil,
                reason: String) {
        let event = AuditEvent(at: StoreTime.date(now()), actor: actor, commit: commit, object: object, action: action,
                               before: before, after: after, reason: reason)
        do {
            _ = try audit.record(event)
        } catch {
            events(.note("capstan: warning: could not write the audit log: \(error)"))
        }
    }
}

/// Executes a plan's entries: each model's entries in plan order, models in parallel up to
/// `policy.parallelism` at a time. An entry whose dependency did not succeed is skipped.
public struct Executor: Sendable {
    public let context: EngineContext

    public init(context: EngineContext) {
        self.context = context
    }

    /// Runs `plan` against the desired state it was made from. Never throws: every failure is an
    /// entry's outcome.
    public func execute(_ plan: Plan, desired: DesiredState, repository: GitRepository, commit: ObjectID) async -> [String: EntryOutcome] {
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
                let pipeline = ModelPipeline(context: context, model: models[name], plan: plan, repository: repository, commit: commit)
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
    let repository: GitRepository
    let commit: ObjectID

    var registry: any Registry { context.registry }

    func run(_ entries: [PlanEntry]) async -> [String: EntryOutcome] {
        var outcomes: [String: EntryOutcome] = [:]
        var produced: [String: Int] = [:]
        for entry in entries {
            if Task.isCancelled {
                outcomes[entry.id] = .skipped("the pass was stopped")
                continue
            }
            if let failed = entry.dependsOn.first(where: { outcomes[$0].map { !$0.succeeded } ?? false }) {
                let outcome = EntryOutcome.skipped("\(failed) did not succeed")
                outcomes[entry.id] = outcome
                context.events(.finished(entry, outcome))
                continue
            }
            context.events(.started(entry))
            let outcome: EntryOutcome
            do {
                outcome = try await execute(entry, produced: &produced)
            } catch {
                outcome = .failed(Self.describe(error))
            }
            outcomes[entry.id] = outcome
            context.events(.finished(entry, outcome))
        }
        return outcomes
    }

    static func describe(_ error: any Error) -> String {
        String(describing: error)
    }

    func execute(_ entry: PlanEntry, produced: inout [String: Int]) async throws -> EntryOutcome {
        let object = "model/\(entry.name)"
        switch entry.detail {
        case .registerModel(let change), .updateModel(let change):
            let registering = entry.action == .registerModel
            try await registry.upsertModel(name: entry.name, description: change.description, labels: change.labels)
            context.record(object, registering ? "register" : "update", commit: plan.commit,
                           before: registering ? nil : Self.metadata(change.previousDescription, change.previousLabels ?? [:]),
                           after: Self.metadata(change.description, change.labels), reason: entry.reason)
            return .done(registering ? "registered" : "updated")

        case .train(let detail):
            guard let model else { return .failed("model \(entry.name) is not in the desired state of \(plan.commit.prefix(7))") }
            let training = Training(context: context, model: model, plan: plan, repository: repository, commit: commit)
            let (number, outcome) = try await training.run(detail)
            if let number { produced[entry.id] = number }
            return outcome

        case .validate(let detail):
            guard let model else { return .failed("model \(entry.name) is not in the desired state of \(plan.commit.prefix(7))") }
            let number: Int
            switch detail.version {
            case .number(let n): number = n
            case .produced(let by):
                guard let n = produced[by] else { return .skipped("\(by) produced no version") }
                number = n
            }
            let validation = Validation(context: context, model: model, plan: plan, repository: repository, commit: commit)
            return try await validation.run(version: number)

        case .moveAlias(let detail):
            return try await moveAlias(entry, detail, produced: produced)

        case .deleteAlias(let detail):
            guard let current = try await registry.resolveAlias(detail.alias, of: entry.name) else {
                return .skipped("alias \(detail.alias) is already gone")
            }
            try await registry.deleteAlias(detail.alias, of: entry.name, commit: plan.commit, reason: entry.reason)
            context.record("\(object)/alias/\(detail.alias)", "delete-alias", commit: plan.commit, before: .int(Int64(current)),
                           reason: entry.reason)
            return .done("deleted (was v\(current))")

        case .archiveVersions(let detail):
            let held = Set(try await registry.aliases(of: entry.name).values)
            var archived: [Int] = []
            for number in detail.versions where !held.contains(number) {
                try await registry.updateVersion(model: entry.name, number: number, VersionUpdate(archivedAt: context.now()))
                archived.append(number)
            }
            if archived.isEmpty { return .skipped("every listed version holds an alias now") }
            context.record(object, "archive-versions", commit: plan.commit,
                           after: .list(archived.map { .int(Int64($0)) }), reason: entry.reason)
            return .done("archived " + archived.map { "v\($0)" }.joined(separator: ", "))

        case .wait, .blocked, .orphaned, .deployment:
            return .skipped("not a change")
        }
    }

    func moveAlias(_ entry: PlanEntry, _ detail: AliasMoveDetail, produced: [String: Int]) async throws -> EntryOutcome {
        let target: Int
        switch detail.target {
        case .latest:
            // `latest` is the newest validated version when the move runs: the candidate of this
            // pass if it passed its gates, otherwise the one before.
            guard let newest = try await registry.newestValidated(of: entry.name) else {
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
        Failpoint.hit("alias.before-set")
        try await registry.setAlias(detail.alias, of: entry.name, to: target, commit: plan.commit, reason: entry.reason)
        Failpoint.hit("alias.after-set")
        context.record("model/\(entry.name)/alias/\(detail.alias)", "move-alias", commit: plan.commit,
                       before: current.map { .int(Int64($0)) }, after: .int(Int64(target)), reason: entry.reason)
        return .done("\(detail.alias): \(current.map { "v\($0)" } ?? "unset") → v\(target)")
    }

    static func metadata(_ description: String?, _ labels: [String: String]) -> ParamValue {
        .map(["description": description.map(ParamValue.string) ?? .null, "labels": .map(labels.mapValues(ParamValue.string))])
    }
}
