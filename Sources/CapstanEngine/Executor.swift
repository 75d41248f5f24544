import CapstanGit
import CapstanStore
import Foundation

/// How one plan entry ended.
public enum EntryOutcome: Hashable, Sendable {
    case done(String)
    /// Not run: a dependency did not succeed, or there was nothing left to do.
    case skipped(String)
    case failed(String)
    /// Failed for a reason outside the spec and the data, such as a full disk: nothing is held
    /// against the version (no failure, no backoff) and the next pass tries again. (The first
    /// of the failure classes: `transient`.)
    case transient(String)

    public var succeeded: Bool {
        if case .done = self { return true }
        return false
    }

    /// Failed, whatever the class: its dependents do not run and the pass did not converge.
    public var isFailure: Bool {
        switch self {
        case .failed, .transient: return true
        case .done, .skipped: return false
        }
    }

    public var message: String {
        switch self {
        case .done(let m), .skipped(let m), .failed(let m), .transient(let m): return m
        }
    }

    func scrubbed(_ scrubber: SecretScrubber) -> EntryOutcome {
        guard !scrubber.isEmpty else { return self }
        switch self {
        case .done(let m): return .done(scrubber.scrub(m))
        case .skipped(let m): return .skipped(scrubber.scrub(m))
        case .failed(let m): return .failed(scrubber.scrub(m))
        case .transient(let m): return .transient(scrubber.scrub(m))
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
    /// The deployment entries, decided once the registry changes are done.
    case deploymentPlan([PlanEntry])
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
        // Absolute: steps run in folders under it, from their own working directories.
        let stateDirectory = URL(fileURLWithPath: stateDirectory).standardizedFileURL.path
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
        do {
            _ = try audit.record(event(object, action, commit: commit, before: before, after: after, reason: reason))
        } catch let error as StoreError where error.code == .leaseLost {
            // The pass is stopping; the lost lease is reported once, by whoever stops it.
        } catch {
            events(.note("capstan: warning: could not write the audit log: \(error)"))
        }
    }

    func event(_ object: String, _ action: String, commit: String?, before: ParamValue? = nil, after: ParamValue? = nil,
               reason: String) -> AuditEvent {
        AuditEvent(at: StoreTime.date(now()), actor: actor, commit: commit, object: object, action: action,
                   before: before, after: after, reason: reason)
    }

    /// Runs one registry change under the journal, so that its audit event is never lost: the
    /// operation is journaled (with the event to record and how to tell whether the change
    /// happened) before `body` runs, and the event is recorded in the same transaction that
    /// closes the journal entry. A pass killed in between leaves the entry `started`; the next
    /// pass checks the registry and records the event if the change was made
    /// (`Reconciler.recover`).
    @discardableResult
    func journaled<T: Sendable>(_ operation: String, subject: String, check: [String: ParamValue], event: AuditEvent,
                                _ body: () async throws -> T) async throws -> T {
        let id = try journal.begin(operation: operation, subject: subject,
                                   detail: .map(["check": .map(check), "audit": try AuditCodec.value(event)]))
        let value: T
        do {
            value = try await body()
        } catch {
            try? journal.fail(id: id, detail: .map(["check": .map(check), "error": .string(String(describing: error))]))
            throw error
        }
        try finish(id, recording: event)
        return value
    }

    /// Replaces a started entry's detail and records `event`, in one transaction.
    func journalVersion(_ id: Int64, detail: ParamValue, recording event: AuditEvent) throws {
        let journal = self.journal, audit = self.audit
        try database.write("journal the version of entry \(id)") { db in
            _ = try audit.record(db, event)
            try journal.update(db, id: id, detail: detail)
        }
    }

    /// Records `event` and closes journal entry `id` in one transaction.
    func finish(_ id: Int64, recording event: AuditEvent?, detail: ParamValue? = nil) throws {
        try close(id, failed: false, recording: event, detail: detail)
    }

    /// Records `event` and closes journal entry `id` as finished or failed, in one transaction.
    func close(_ id: Int64, failed: Bool, recording event: AuditEvent?, detail: ParamValue? = nil) throws {
        let journal = self.journal, audit = self.audit
        try database.write("record the end of journal entry \(id)") { db in
            if let event { _ = try audit.record(db, event) }
            if failed {
                try journal.fail(db, id: id, detail: detail)
            } else {
                try journal.finish(db, id: id, detail: detail)
            }
        }
    }
}

/// Audit events as JSON values, to keep one in a journal entry until it is recorded.
enum AuditCodec {
    static func value(_ event: AuditEvent) throws -> ParamValue {
        let data = try JSONEncoder().encode(event)
        return try JSONDecoder().decode(ParamValue.self, from: data)
    }

    static func event(_ value: ParamValue) -> AuditEvent? {
        guard let data = try? JSONEncoder().encode(value) else { return nil }
        return try? JSONDecoder().decode(AuditEvent.self, from: data)
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
        let scrubber = model.map { StepEnvironment.scrubber(spec: $0.manifest.spec.train, reconciler: context.environment) } ?? .none
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
                context.events(.finished(entry, outcome))
                continue
            }
            context.events(.started(entry))
            var outcome: EntryOutcome
            do {
                // A pass that lost its lease starts no step (its writes would fail anyway).
                try context.database.checkLease()
                outcome = try await execute(entry, produced: &produced)
            } catch {
                outcome = Self.outcome(of: error)
            }
            outcome = outcome.scrubbed(scrubber)
            outcomes[entry.id] = outcome
            context.events(.finished(entry, outcome))
        }
        return outcomes
    }

    static func describe(_ error: any Error) -> String {
        String(describing: error)
    }

    /// How an entry that threw ended: a lost lease stops it (the pass is stopping), a full disk
    /// is transient, anything else is a failure.
    static func outcome(of error: any Error) -> EntryOutcome {
        if let error = error as? StoreError, error.code == .leaseLost {
            return .skipped("stopped: \(error.message)")
        }
        if error is CancellationError {
            return .skipped("the pass was stopped")
        }
        if FileSystemFailure.isDiskFull(error) {
            return .transient("disk full: \(describe(error))")
        }
        return .failed(describe(error))
    }

    func execute(_ entry: PlanEntry, produced: inout [String: Int]) async throws -> EntryOutcome {
        let object = "model/\(entry.name)"
        switch entry.detail {
        case .registerModel(let change), .updateModel(let change):
            let registering = entry.action == .registerModel
            let event = context.event(object, registering ? "register" : "update", commit: plan.commit,
                                      before: registering ? nil : Self.metadata(change.previousDescription, change.previousLabels ?? [:]),
                                      after: Self.metadata(change.description, change.labels), reason: entry.reason)
            try await context.journaled("register-model", subject: object, check: ["model": .string(entry.name)], event: event) {
                try await registry.upsertModel(name: entry.name, description: change.description, labels: change.labels)
            }
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
            let event = context.event("\(object)/alias/\(detail.alias)", "delete-alias", commit: plan.commit,
                                      before: .int(Int64(current)), reason: entry.reason)
            try await context.journaled("delete-alias", subject: object,
                                        check: ["model": .string(entry.name), "alias": .string(detail.alias)], event: event) {
                try await registry.deleteAlias(detail.alias, of: entry.name, commit: plan.commit, reason: entry.reason)
            }
            return .done("deleted (was v\(current))")

        case .archiveVersions(let detail):
            let held = Set(try await registry.aliases(of: entry.name).values)
            var archived: [Int] = []
            let numbers = detail.versions.filter { !held.contains($0) }
            if numbers.isEmpty { return .skipped("every listed version holds an alias now") }
            let event = context.event(object, "archive-versions", commit: plan.commit,
                                      after: .list(numbers.map { .int(Int64($0)) }), reason: entry.reason)
            try await context.journaled("archive-versions", subject: object,
                                        check: ["model": .string(entry.name), "versions": .list(numbers.map { .int(Int64($0)) })], event: event) {
                for number in numbers {
                    try await registry.updateVersion(model: entry.name, number: number, VersionUpdate(archivedAt: context.now()))
                    archived.append(number)
                }
            }
            return .done("archived " + archived.map { "v\($0)" }.joined(separator: ", "))

        case .wait, .blocked, .orphaned, .deployment:
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
        let event = context.event("model/\(entry.name)/alias/\(detail.alias)", "move-alias", commit: plan.commit,
                                  before: current.map { .int(Int64($0)) }, after: .int(Int64(target)), reason: entry.reason)
        try await context.journaled("move-alias", subject: "model/\(entry.name)",
                                    check: ["model": .string(entry.name), "alias": .string(detail.alias), "to": .int(Int64(target))],
                                    event: event) {
            Failpoint.hit("alias.before-set")
            try await registry.setAlias(detail.alias, of: entry.name, to: target, commit: plan.commit, reason: entry.reason)
            Failpoint.hit("alias.after-set")
        }
        return .done("\(detail.alias): \(current.map { "v\($0)" } ?? "unset") → v\(target)")
    }

    static func metadata(_ description: String?, _ labels: [String: String]) -> ParamValue {
        .map(["description": description.map(ParamValue.string) ?? .null, "labels": .map(labels.mapValues(ParamValue.string))])
    }
}
