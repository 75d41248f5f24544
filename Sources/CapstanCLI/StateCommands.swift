import ArgumentParser
import CapstanCore
import CapstanStore
import Foundation

/// `--state-dir`, for commands that read Capstan's state but no repository.
struct StateDirectoryOption: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: ArgumentHelp(
        "Capstan's state directory (default: $CAPSTAN_STATE_DIR or .capstan).", valueName: "dir"))
    var stateDir: String?

    var path: String {
        stateDir ?? ProcessInfo.processInfo.environment["CAPSTAN_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? ".capstan"
    }

    var databaseExists: Bool {
        FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(StateDatabase.fileName))
    }

    /// Opens the state database; a command that only reads never creates one.
    func open() throws -> StateDatabase {
        try PassPreparation.openDatabase(path)
    }
}

struct StatusCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show what the registry holds: models, versions with status and key metrics, aliases.")

    @OptionGroup var state: StateDirectoryOption

    @Option(name: .long, help: "text or json (documented in docs/state.md).")
    var format: Format = .text

    func run() async throws {
        var models: [StatusReport.ModelEntry] = []
        var extras = StatusReport.Extras()
        if state.databaseExists {
            do {
                (models, extras) = try await StatusReport.load(try state.open())
            } catch let f as CommandFailure {
                throw Self.fail(f)
            } catch {
                throw Self.fail(CommandFailure(message: "\(error)"))
            }
        }
        switch format {
        case .json:
            Terminal.out(try StatusReport.json(stateDirectory: state.path, models: models, extras: extras))
        case .text:
            if !state.databaseExists {
                Terminal.out("No state in \(state.path) yet: nothing has been applied there.\n")
            } else if models.isEmpty {
                Terminal.out("\(state.path): the registry holds no models yet.\n" + StatusReport.footer(extras))
            } else {
                Terminal.out(StatusReport.text(models: models, extras: extras))
            }
        }
    }
}

enum StatusReport {
    typealias ModelEntry = (RegisteredModel, [ModelVersion], [String: Int])

    /// Everything `status` shows, read from the state database.
    static func load(_ database: StateDatabase) async throws -> ([ModelEntry], Extras) {
        let snapshot = try await EmbeddedRegistry(database: database).snapshot()
        let models = snapshot.models.map { ($0, snapshot.versions[$0.name] ?? [], snapshot.aliases[$0.name] ?? [:]) }
        var extras = Extras()
        let records = PassRecords(database: database)
        extras.conditions = try records.conditions()
        extras.lastPass = try records.recent(limit: 1).first
        extras.leases = try StateLock(database: database).current()
        let serving = ServingRecords(database: database)
        extras.endpoints = try serving.observed()
        extras.rollouts = try serving.rollouts()
        extras.quarantine = try serving.quarantine()
        return (models, extras)
    }

    /// One formatter for a whole report (creating one per timestamp dominated large reports).
    nonisolated(unsafe) static let formatter: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f
    }()

    static func time(_ ms: Int64) -> String {
        formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    static func metrics(_ m: [String: Double]) -> String {
        m.keys.sorted().prefix(4).map { "\(PrintableText.escaped($0))=\(String(format: "%.4g", m[$0]!))" }.joined(separator: " ")
    }

    /// What the state holds besides the registry: conditions, the last pass, the lock.
    struct Extras {
        var conditions: [String: ObjectCondition] = [:]
        var lastPass: PassRecords.Pass?
        var leases: [StateLock.Lease] = []
        var endpoints: [String: EndpointStatus] = [:]
        var rollouts: [String: RolloutState] = [:]
        var quarantine: [Quarantine] = []

        /// Every deployment Capstan knows of: with a condition, an endpoint or a rollout.
        var deploymentNames: [String] {
            let fromConditions = conditions.keys.filter { $0.hasPrefix("deployment/") }.map { String($0.dropFirst("deployment/".count)) }
            return Set(fromConditions).union(endpoints.keys).union(rollouts.keys).sorted()
        }
    }

    static func deploymentsText(_ extras: Extras) -> String {
        var out = ""
        for name in extras.deploymentNames {
            let endpoint = extras.endpoints[name]
            out += "Deployment \(name)" + (endpoint.map { " (model \($0.model))" } ?? "") + "\n"
            if let c = extras.conditions["deployment/\(name)"] {
                out += "  condition: \(c.type.rawValue) (\(c.reason)) at \((c.commit ?? "-").prefix(7)): \(PrintableText.escaped(c.message))\n"
            }
            if let endpoint {
                let traffic = endpoint.backends.sorted { $0.spec.version < $1.spec.version }.map { b in
                    "v\(b.spec.version) \(b.spec.weight)% (\(b.health.rawValue), \(b.readyReplicas)/\(b.spec.replicas) ready"
                        + (b.restarts > 0 ? ", \(b.restarts) restarts" : "") + ", \(b.stats.requests) requests, \(b.stats.failures) failed)"
                }
                out += "  traffic: " + (traffic.isEmpty ? "none" : traffic.joined(separator: "; ")) + "\n"
            }
            if let r = extras.rollouts[name] {
                let step = r.phase == .starting ? "starting v\(r.to)" : "step \(r.step + 1)"
                out += "  rollout: v\(r.from.map(String.init) ?? "-") → v\(r.to), \(step) since \(time(r.stepStartedAt))\n"
            }
            for q in extras.quarantine where q.deployment == name {
                out += "  quarantined: v\(q.version) since \(time(q.at)): \(q.reason)\n"
            }
        }
        return out
    }

    static func footer(_ extras: Extras) -> String {
        var out = ""
        if let p = extras.lastPass {
            out += "Last pass: \(p.command) \(p.outcome.rawValue)" + (p.commit.map { " at \($0.prefix(7))" } ?? "") +
                ", started \(time(p.startedAt))" + (p.summary.isEmpty ? "" : " — \(p.summary)") + "\n"
        }
        for lease in extras.leases {
            out += "Locked by \(lease.holder): \(lease.command) (pid \(lease.pid) on \(lease.host)) since \(time(lease.startedAtMilliseconds)), lease until \(time(lease.expiresAtMilliseconds))\n"
        }
        return out
    }

    static func text(models: [(RegisteredModel, [ModelVersion], [String: Int])], extras: Extras = Extras()) -> String {
        var out = ""
        for (model, versions, aliases) in models {
            out += "Model \(model.name)" + (model.description.map { ": \($0)" } ?? "") + "\n"
            if let c = extras.conditions["model/\(model.name)"] {
                out += "  condition: \(c.type.rawValue) (\(c.reason)) at \((c.commit ?? "-").prefix(7)): \(PrintableText.escaped(c.message))\n"
            }
            if !aliases.isEmpty {
                out += "  aliases: " + aliases.keys.sorted().map { "\($0) → \(aliases[$0]!)" }.joined(separator: ", ") + "\n"
            }
            if versions.isEmpty {
                out += "  no versions\n"
                continue
            }
            let holders = Dictionary(grouping: aliases.keys.sorted(), by: { aliases[$0]! })
            out += "  VERSION  STATUS     COMMIT      FINGERPRINT   CREATED               METRICS\n"
            for v in versions.reversed() {
                let commit = String((v.commit ?? "-").prefix(10))
                let tags = holders[v.number].map { "  [" + $0.joined(separator: ", ") + "]" } ?? ""
                out += "  " + [
                    String(v.number).padding(toLength: 7, withPad: " ", startingAt: 0),
                    v.status.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0),
                    commit.padding(toLength: 10, withPad: " ", startingAt: 0),
                    String(v.fingerprint.prefix(12)).padding(toLength: 12, withPad: " ", startingAt: 0),
                    time(v.createdAt).padding(toLength: 20, withPad: " ", startingAt: 0),
                    metrics(v.metrics),
                ].joined(separator: "  ") + tags + (v.archivedAt != nil ? "  (archived)" : "") + "\n"
                if v.status == .failed, let tail = v.logTail, !tail.isEmpty {
                    for line in tail.split(separator: "\n").suffix(3) { out += "           | \(PrintableText.escaped(String(line), keepingTabs: true))\n" }
                }
                if v.status == .rejected {
                    for g in v.gateResults where !g.passed { out += "           ✗ \(PrintableText.escaped(g.gate)): \(PrintableText.escaped(g.detail))\n" }
                }
            }
        }
        return out + deploymentsText(extras) + footer(extras)
    }

    static func json(stateDirectory: String, models: [(RegisteredModel, [ModelVersion], [String: Int])], extras: Extras = Extras()) throws -> String {
        struct Version: Encodable {
            var version: Int
            var status: String
            var fingerprint: String
            var commit: String?
            var metrics: [String: Double]
            var params: [String: ParamValue]
            var artifact_digest: String?
            var gate_results: [GateResult]
            var created: String
            var attempts: Int
            var failed_at: String?
            var archived_at: String?
            var log_tail: String?
        }
        struct Condition: Encodable {
            var type: String
            var status = "True"
            var reason: String
            var message: String
            var observed_commit: String?
            var last_update: String
        }
        struct Model: Encodable {
            var name: String
            var description: String?
            var labels: [String: String]
            var aliases: [String: Int]
            var conditions: [Condition]
            var versions: [Version]
        }
        struct Pass: Encodable {
            var command: String
            var commit: String?
            var outcome: String
            var started: String
            var finished: String?
            var summary: String
        }
        struct Lock: Encodable {
            var holder: String
            var generation: Int64
            var command: String
            var pid: Int64
            var host: String
            var started: String
            var expires: String
        }
        struct Backend: Encodable {
            var version: Int
            var weight: Int
            var replicas: Int
            var ready_replicas: Int
            var health: String
            var restarts: Int
            var last_error: String?
            var requests: Int64
            var errors_5xx: Int64
            var connection_errors: Int64
            var p95_ms: Double?
        }
        struct Rollout: Encodable {
            var from: Int?
            var to: Int
            var phase: String
            var step: Int?
            var step_started: String
            var started: String
        }
        struct Quarantined: Encodable {
            var version: Int
            var reason: String
            var at: String
        }
        struct Deployment: Encodable {
            var name: String
            var model: String?
            var conditions: [Condition]
            var backends: [Backend]
            var rollout: Rollout?
            var quarantined: [Quarantined]
        }
        struct Document: Encodable {
            var format_version = 1
            var state_dir: String
            var models: [Model]
            var deployments: [Deployment]
            var last_pass: Pass?
            var locks: [Lock]
        }
        /// The current condition of `object`, as a one-item list (none before its first pass).
        func conditions(_ object: String) -> [Condition] {
            extras.conditions[object].map {
                [Condition(type: $0.type.rawValue, reason: $0.reason, message: $0.message, observed_commit: $0.commit,
                           last_update: time($0.updatedAt))]
            } ?? []
        }
        let doc = Document(state_dir: stateDirectory, models: models.map { model, versions, aliases in
            Model(name: model.name, description: model.description, labels: model.labels, aliases: aliases,
                  conditions: conditions("model/\(model.name)"),
                  versions: versions.map {
                      Version(version: $0.number, status: $0.status.rawValue, fingerprint: $0.fingerprint, commit: $0.commit,
                              metrics: $0.metrics, params: $0.params, artifact_digest: $0.artifactDigest,
                              gate_results: $0.gateResults, created: time($0.createdAt), attempts: $0.attempts,
                              failed_at: $0.failedAt.map(time), archived_at: $0.archivedAt.map(time),
                              log_tail: $0.status == .failed ? $0.logTail : nil)
                  })
        }, deployments: extras.deploymentNames.map { name in
            let endpoint = extras.endpoints[name]
            return Deployment(
                name: name, model: endpoint?.model ?? extras.rollouts[name]?.model,
                conditions: conditions("deployment/\(name)"),
                backends: (endpoint?.backends ?? []).sorted { $0.spec.version < $1.spec.version }.map { b in
                    let p95 = b.stats.latency.quantile(0.95)
                    return Backend(version: b.spec.version, weight: b.spec.weight, replicas: b.spec.replicas, ready_replicas: b.readyReplicas,
                                   health: b.health.rawValue, restarts: b.restarts, last_error: b.lastError, requests: b.stats.requests,
                                   errors_5xx: b.stats.errors5xx, connection_errors: b.stats.connectionErrors,
                                   p95_ms: p95.flatMap { $0.isFinite ? $0 : nil })
                },
                rollout: extras.rollouts[name].map {
                    Rollout(from: $0.from, to: $0.to, phase: $0.phase.rawValue, step: $0.phase == .stepping ? $0.step + 1 : nil,
                            step_started: time($0.stepStartedAt), started: time($0.startedAt))
                },
                quarantined: extras.quarantine.filter { $0.deployment == name }.map {
                    Quarantined(version: $0.version, reason: $0.reason, at: time($0.at))
                })
        }, last_pass: extras.lastPass.map {
            Pass(command: $0.command, commit: $0.commit, outcome: $0.outcome.rawValue, started: time($0.startedAt),
                 finished: $0.finishedAt.map(time), summary: $0.summary)
        }, locks: extras.leases.map {
            Lock(holder: $0.holder, generation: $0.generation, command: $0.command, pid: $0.pid, host: $0.host, started: time($0.startedAtMilliseconds),
                 expires: time($0.expiresAtMilliseconds))
        })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(doc), as: UTF8.self) + "\n"
    }
}

struct UnlockCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unlock",
        abstract: "Remove a lease on the state directory by its holder id.",
        discussion: """
            Removes the lease when its process is gone (no such pid on this host, a zombie, or a pid \
            now used by another process) or the lease expired. A lease whose process is alive on this \
            host, or of another host and still renewed, is removed only with --force: that process then \
            stops at its next check of the lease (within a second) and writes nothing more; the step it \
            was running is killed and done again by the next pass. The error of a refused command names \
            the id. Exit status: 0 removed, 1 refused or no such lease.
            """)

    @Argument(help: "The holder id of the lease to remove.")
    var id: String

    @Flag(name: .long, help: "Remove the lease even though its process may be alive (that process stops; its running step is lost).")
    var force = false

    @OptionGroup var state: StateDirectoryOption

    func run() async throws {
        guard state.databaseExists else {
            throw Self.fail(CommandFailure(message: "no state in \(state.path): there is nothing to unlock"))
        }
        do {
            let lock = StateLock(database: try state.open())
            guard let lease = try lock.lease(id: id) else {
                let held = try lock.current().map { "\($0.holder) (\($0.command), pid \($0.pid) on \($0.host))" }
                throw CommandFailure(message: "no lease with id '\(id)' in \(state.path)" +
                                     (held.isEmpty ? "; the state is not locked" : "; held: " + held.joined(separator: ", ")))
            }
            let why: String
            switch lock.unlockCheck(lease) {
            case .safe(let reason):
                why = reason
            case .holderMayBeAlive(let reason):
                guard force else {
                    throw CommandFailure(message: "refusing to remove lease \(lease.holder) on '\(lease.name)' in \(state.path): \(reason). Removing it would let another apply or run change the state beside that process. Wait for it to finish (or stop it: SIGTERM stops a pass cleanly), or, if you are sure, run `capstan unlock \(lease.holder) --force`")
                }
                Terminal.err("capstan: warning: removing the lease \(lease.holder) although \(reason). That process finds its lease gone within a second (or at its next write to the state) and stops: the step it is running is killed, and nothing more it does is recorded (the version it was training is trained again by the next pass, which also stops that step's leftover processes). Meanwhile the next apply or run may take the lock.\n")
                why = "forced: \(reason)"
            }
            guard let removed = try lock.forceUnlock(id: lease.holder, generation: lease.generation) else {
                throw CommandFailure(message: "lease \(lease.holder) was released or replaced meanwhile; nothing was removed")
            }
            Terminal.out("Removed lease \(removed.holder) on '\(removed.name)' (\(removed.command), pid \(removed.pid) on \(removed.host)): \(why).\n")
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch {
            throw Self.fail(CommandFailure(message: "\(error)"))
        }
    }
}

struct HistoryCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    static let configuration = CommandConfiguration(
        commandName: "history",
        abstract: "Show the audit log: every change Capstan made, newest first.")

    @OptionGroup var state: StateDirectoryOption

    @Option(name: .long, help: "Only changes to this model.")
    var model: String?

    @Option(name: .long, help: "Only changes to this deployment.")
    var deployment: String?

    @Option(name: .long, help: ArgumentHelp("Only changes since a duration ago (24h, 7d) or a time (2026-11-27T10:00:00Z).", valueName: "when"))
    var since: String?

    @Option(name: .long, help: "At most this many entries.")
    var limit: Int = 200

    @Option(name: .long, help: "text or json.")
    var format: Format = .text

    func validate() throws {
        if model != nil && deployment != nil { throw ValidationError("give --model or --deployment, not both") }
        if let since, Self.parseSince(since, now: Date()) == nil {
            throw ValidationError("--since '\(since)' is neither a duration (24h, 7d) nor a time such as 2026-11-27T10:00:00Z")
        }
        if limit < 1 { throw ValidationError("--limit must be at least 1") }
    }

    /// The JSON document of `history --format json` (docs/state.md).
    static func json(_ events: [AuditEvent]) throws -> Data {
        struct Document: Encodable { var format_version = 1; var events: [AuditEvent] }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(Document(events: events))
    }

    static func parseSince(_ text: String, now: Date) -> Date? {
        if case .success(let d) = ManifestDuration.parse(text) { return now.addingTimeInterval(-d.seconds) }
        let f = ISO8601DateFormatter()
        if let date = f.date(from: text) { return date }
        f.formatOptions = [.withFullDate]
        return f.date(from: text)
    }

    func run() async throws {
        var events: [AuditEvent] = []
        if state.databaseExists {
            do {
                let log = AuditLog(database: try state.open())
                let filter: AuditLog.Filter = model.map { .model($0) } ?? deployment.map { .deployment($0) } ?? .all
                events = try log.query(filter, since: since.flatMap { Self.parseSince($0, now: Date()) }, limit: limit)
            } catch let failure as CommandFailure {
                throw Self.fail(failure)
            } catch {
                throw Self.fail(CommandFailure(message: "\(error)"))
            }
        }
        switch format {
        case .json:
            Terminal.out(String(decoding: try Self.json(events), as: UTF8.self) + "\n")
        case .text:
            if events.isEmpty {
                Terminal.out(state.databaseExists ? "No changes recorded.\n" : "No state in \(state.path) yet: nothing has been applied there.\n")
                return
            }
            let f = ISO8601DateFormatter()
            for e in events {
                var line = "\(f.string(from: e.at))  \(e.actor)@\(e.host)  \(e.object)  \(e.action)"
                if e.before != nil || e.after != nil {
                    line += "  \(e.before.map { "\($0)" } ?? "∅") → \(e.after.map { "\($0)" } ?? "∅")"
                }
                if let commit = e.commit { line += "  commit \(commit.prefix(10))" }
                if !e.reason.isEmpty { line += "  (\(e.reason))" }
                // One event per line, whatever its texts hold (a failed step's tail has newlines).
                line = PrintableText.escaped(line)
                Terminal.out(line + "\n")
            }
        }
    }
}
