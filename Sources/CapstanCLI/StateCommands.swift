import ArgumentParser
import CapstanCore
import CapstanEngine
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

    /// Opens the state store (check `databaseExists` first: a command that only reads never
    /// creates one).
    func open() throws -> SQLiteStateStore {
        try Wiring.store(path)
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
        var document = StatusDocument(stateDir: state.path)
        if state.databaseExists {
            do {
                let store = try state.open()
                // The registry the last pass used (an MLflow server, or the embedded one).
                let registry = try Wiring.registry(for: try await store.registryInUse() ?? .embedded, store: store).unfenced
                document = try await StatusReader.document(store: store, registry: registry, stateDirectory: state.path)
            } catch {
                throw Self.fail(Wiring.failure(error))
            }
        }
        switch format {
        case .json:
            Terminal.out(try StatusText.json(document))
        case .text:
            if !state.databaseExists {
                Terminal.out("No state in \(state.path) yet: nothing has been applied there.\n")
            } else if document.models.isEmpty {
                Terminal.out("\(state.path): the registry holds no models yet.\n" + StatusText.deployments(document) + StatusText.footer(document))
            } else {
                Terminal.out(StatusText.text(document))
            }
        }
    }
}

/// `capstan status` for people, and the status document as JSON (docs/state.md).
enum StatusText {
    static func json(_ document: StatusDocument) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(document), as: UTF8.self) + "\n"
    }

    static func metrics(_ m: [String: Double]) -> String {
        m.keys.sorted().prefix(4).map { "\(PrintableText.escaped($0))=\(String(format: "%.4g", m[$0]!))" }.joined(separator: " ")
    }

    static func condition(_ c: StatusDocument.Condition) -> String {
        var text = "  condition: \(c.type) (\(c.reason)) at \((c.observedCommit ?? "-").prefix(7)): \(PrintableText.escaped(c.message))"
        if let failureClass = c.failureClass { text += " [\(failureClass)\(c.until.map { " until \($0)" } ?? "")]" }
        return text + "\n"
    }

    static func deployments(_ document: StatusDocument) -> String {
        var out = ""
        for d in document.deployments {
            out += "Deployment \(d.name)" + (d.model.map { " (model \($0))" } ?? "") + "\n"
            for c in d.conditions { out += condition(c) }
            if !d.backends.isEmpty || d.model != nil {
                let traffic = d.backends.map { b in
                    "v\(b.version) \(b.weight)% (\(b.health), \(b.readyReplicas)/\(b.replicas) ready"
                        + (b.restarts > 0 ? ", \(b.restarts) restarts" : "") + ", \(b.requests) requests, \(b.errors5xx + b.connectionErrors) failed)"
                }
                out += "  traffic: " + (traffic.isEmpty ? "none" : traffic.joined(separator: "; ")) + "\n"
            }
            if let r = d.rollout {
                let step = r.phase == RolloutPhase.starting.rawValue ? "starting v\(r.to)" : "step \(r.step ?? 0)"
                out += "  rollout: v\(r.from.map(String.init) ?? "-") → v\(r.to), \(step) since \(r.stepStarted ?? "-")\n"
            }
            for q in d.quarantined {
                out += "  quarantined: v\(q.version) since \(q.at ?? "-"): \(q.reason)\n"
            }
        }
        return out
    }

    static func footer(_ document: StatusDocument) -> String {
        var out = ""
        if let p = document.lastPass {
            out += "Last pass: \(p.command) \(p.outcome)" + (p.commit.map { " at \($0.prefix(7))" } ?? "") +
                ", started \(p.started ?? "-")" + (p.summary.isEmpty ? "" : " — \(p.summary)") + "\n"
        }
        for lease in document.locks {
            out += "Locked by \(lease.holder): \(lease.command) (pid \(lease.pid) on \(lease.host)) since \(lease.started ?? "-"), lease until \(lease.expires ?? "-")\n"
        }
        return out
    }

    static func text(_ document: StatusDocument) -> String {
        var out = ""
        for model in document.models {
            out += "Model \(model.name)" + (model.description.map { ": \($0)" } ?? "") + "\n"
            for c in model.conditions { out += condition(c) }
            let aliases = model.aliases
            if !aliases.isEmpty {
                out += "  aliases: " + aliases.keys.sorted().map { "\($0) → \(aliases[$0]!)" }.joined(separator: ", ") + "\n"
            }
            if model.versions.isEmpty {
                out += "  no versions\n"
                continue
            }
            let holders = Dictionary(grouping: aliases.keys.sorted(), by: { aliases[$0]! })
            out += "  VERSION  STATUS     COMMIT      FINGERPRINT   CREATED               METRICS\n"
            for v in model.versions.reversed() {
                let commit = String((v.commit ?? "-").prefix(10))
                let tags = holders[v.version].map { "  [" + $0.joined(separator: ", ") + "]" } ?? ""
                out += "  " + [
                    String(v.version).padding(toLength: 7, withPad: " ", startingAt: 0),
                    v.status.padding(toLength: 9, withPad: " ", startingAt: 0),
                    commit.padding(toLength: 10, withPad: " ", startingAt: 0),
                    String(v.fingerprint.prefix(12)).padding(toLength: 12, withPad: " ", startingAt: 0),
                    (v.created ?? "-").padding(toLength: 20, withPad: " ", startingAt: 0),
                    metrics(v.metrics),
                ].joined(separator: "  ") + tags + (v.archivedAt != nil ? "  (archived)" : "") + "\n"
                if v.status == VersionStatus.failed.rawValue, let tail = v.logTail, !tail.isEmpty {
                    for line in tail.split(separator: "\n").suffix(3) { out += "           | \(PrintableText.escaped(String(line), keepingTabs: true))\n" }
                }
                if v.status == VersionStatus.rejected.rawValue {
                    for g in v.gateResults where !g.passed { out += "           ✗ \(PrintableText.escaped(g.gate)): \(PrintableText.escaped(g.detail))\n" }
                }
            }
        }
        return out + deployments(document) + footer(document)
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
            let lock = try state.open()
            guard let lease = try lock.lease(holder: id) else {
                let held = try await lock.leases().map { "\($0.holder) (\($0.command), pid \($0.pid) on \($0.host))" }
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
            guard let removed = try lock.forceUnlock(holder: lease.holder, generation: lease.generation) else {
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
                let store = try state.open()
                let filter: AuditQuery.Filter = model.map { .object(.model($0)) } ?? deployment.map { .object(.deployment($0)) } ?? .all
                let sinceTime = since.flatMap { Self.parseSince($0, now: Date()) }.map { Int64(($0.timeIntervalSince1970 * 1000).rounded(.down)) }
                events = try await store.auditEvents(AuditQuery(filter, since: sinceTime, limit: limit))
            } catch {
                throw Self.fail(Wiring.failure(error))
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
            for e in events {
                var line = "\(Timestamp.iso8601(milliseconds: e.at, fractional: false))  \(e.actor)@\(e.host)  \(e.object)  \(e.action.rawValue)"
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
