import CapstanCore
import Foundation

/// The three renderings of a plan, documented in docs/plan.md:
/// - `text()` for a terminal, like `terraform plan` (colour only when `color` is true);
/// - `json()` for people and tools: stable, versioned by `format_version`. It is *not* the saved
///   plan file that `capstan apply PLANFILE` executes; that one is `Plan`'s own `Codable` form;
/// - `markdown()` for a pull-request comment, with the metric deltas of every alias move.
struct PlanRenderer {
    var plan: Plan
    /// ANSI colours in `text()`; set only when stdout is a terminal (`Terminal.color`).
    var color: Bool

    /// `format_version` of `json()`: additions keep it, removals and renames bump it.
    static let jsonFormatVersion = 1
    /// How many lines of a failed run's output are shown under a wait or a retry.
    static let failureTailLines = 5

    var shortCommit: String { String(plan.commit.prefix(10)) }

    /// The entries grouped by model, groups in the order their first entry appears.
    var groups: [[PlanEntry]] {
        var order: [String] = []
        var byName: [String: [PlanEntry]] = [:]
        for entry in plan.entries {
            if byName[entry.name] == nil { order.append(entry.name) }
            byName[entry.name, default: []].append(entry)
        }
        return order.map { byName[$0]! }
    }

    /// `Plan: 1 to register, …; 1 waiting, 0 blocked.` or `No changes. The registry matches …`.
    var summary: String {
        let waiting = plan.count(.wait), blocked = plan.count(.blocked)
        var notChanging = "\(waiting) waiting, \(blocked) blocked"
        // Counted only when there are some.
        let others = [(plan.count(.orphaned), "orphaned", "orphaned"), (plan.count(.drift), "drift alert", "drift alerts"),
                      (plan.count(.servingUnavailable), "serving unavailable", "serving unavailable")]
        for (n, one, many) in others where n > 0 { notChanging += ", \(n) \(n == 1 ? one : many)" }
        guard plan.hasChanges else {
            let reported = waiting + blocked + others.reduce(0) { $0 + $1.0 }
            return "No changes. The registry matches \(shortCommit)." + (reported > 0 ? " \(notChanging)." : "")
        }
        let moves = plan.count(.moveAlias)
        let deployments = plan.changes.count { $0.kind == .deployment }
        // Drift in a registry others write too (MLflow), reverted or adopted.
        let registryDrift = plan.changes.count { $0.kind == .model && ($0.action == .revertDrift || $0.action == .adoptDrift) }
        return "Plan: \(plan.count(.registerModel)) to register, \(plan.count(.updateModel)) to update, "
            + "\(plan.count(.train)) to train, \(plan.count(.validate)) to validate, "
            + "\(moves) alias move\(moves == 1 ? "" : "s"), \(plan.count(.deleteAlias)) to delete, "
            + "\(plan.count(.archiveVersions)) to archive"
            + (registryDrift > 0 ? ", \(registryDrift) registry drift\(registryDrift == 1 ? "" : "s") to revert or adopt" : "")
            + (deployments > 0 ? ", \(deployments) deployment change\(deployments == 1 ? "" : "s")" : "") + "; \(notChanging)."
    }
}

// MARK: - Text

extension PlanRenderer {
    func text() -> String {
        var out = "Capstan plan for \(Self.oneLine(plan.repository)), \(Self.oneLine(plan.ref)) @ \(shortCommit)\n"
        for group in groups {
            out += "\n"
            for entry in group {
                for line in textLines(entry) { out += line + "\n" }
            }
        }
        return out + "\n" + summary + "\n"
    }

    /// The entries alone, grouped as in `text()`, without header or summary.
    func entryLines() -> [String] {
        groups.flatMap { group in group.flatMap(textLines) }
    }

    /// The headline of an entry and the indented lines under it.
    func textLines(_ e: PlanEntry) -> [String] {
        let indent = "      "
        let name = Self.oneLine(e.name)
        let why = e.reason.isEmpty ? [] : [indent + "why: " + Self.oneLine(e.reason)]
        var headline: String
        var more: [String] = []
        switch e.detail {
        case .registerModel(let m):
            headline = "register model \(name)"
            more = Self.metadataFields(m).map { indent + "\($0.field): \(Self.quote($0.to))" }
        case .updateModel(let m):
            headline = "update model \(name)"
            more = Self.metadataFields(m).map { indent + "\($0.field): \(Self.quote($0.from)) → \(Self.quote($0.to))" }
        case .train(let t):
            headline = "train \(name) " + (t.version.map { "v\($0) (again)" } ?? "(new version)")
            let reasons = t.reasons.map(\.description)
            if !e.reason.isEmpty && e.reason != reasons.joined(separator: "; ") { more += why }
            more += reasons.map { indent + "why: " + Self.oneLine($0) }
            more.append(indent + "fingerprint: \(t.fingerprint.prefix(12))")
            if t.attempt > 1 { more.append(indent + "attempt: \(t.attempt)") }
            for case .retry(_, let failure?) in t.reasons {
                more += Self.failureLines(failure, indent: indent)
            }
        case .validate(let v):
            let gates = v.gates.isEmpty ? "no gates" : "gates: " + v.gates.map(Self.oneLine).joined(separator: ", ")
            switch v.version {
            case .number(let n): headline = "validate \(name) v\(n) (\(gates))"
            case .produced: headline = "validate \(name) (new version; \(gates))"
            }
            more = why
        case .moveAlias(let m):
            headline = "move alias \(name)@\(Self.oneLine(m.alias)): \(m.from.map { "v\($0)" } ?? "(none)") → \(m.to)"
            more = why
        case .deleteAlias(let d):
            headline = "delete alias \(name)@\(Self.oneLine(d.alias)) (v\(d.from))"
            more = why
        case .archiveVersions(let a):
            headline = "archive \(name) \(a.versions.map { "v\($0)" }.joined(separator: ", ")) (keep \(a.keepVersions))"
            more = why
        case .wait(let w):
            headline = "wait \(name): \(Self.oneLine(e.reason))"
            if let until = w.until {
                headline += " (until \(Self.timestamp(until, milliseconds: false)), \(Self.relative(until - plan.createdAt)))"
            }
            more = w.lastFailure.map { Self.failureLines($0, indent: indent) } ?? []
        case .blocked(let b):
            headline = "blocked \(name)\(b.alias.map { "@" + Self.oneLine($0) } ?? ""): \(Self.oneLine(e.reason))"
        case .orphaned(let o):
            headline = "orphaned model \(name) (\(Self.orphanFacts(o)))"
            more = why
        case .registryDrift(let d):
            headline = "\(Self.driftVerb(e.action)) \(name) \(Self.oneLine(d.object.description)): \(Self.oneLine(d.found))"
                + (d.expected.map { " (Capstan set \(Self.oneLine($0)))" } ?? "")
            more = why
        case .deployment(let d):
            headline = Self.deploymentHeadline(e, d)
            more = why
            if let b = d.backends { more.append(indent + "traffic: " + Self.traffic(b)) }
            if let a = d.analysis { more.append(indent + "analysis: " + a.summary) }
        }
        return ["  \(paint(e.action)) \(headline)"] + more
    }

    /// The action's symbol, coloured when `color` is set: green +, yellow ~, red -, cyan …,
    /// bold red !, dim ?.
    func paint(_ action: PlanAction) -> String {
        guard color else { return action.symbol }
        let code: String
        switch action {
        case .registerModel, .train: code = "32"
        case .updateModel, .moveAlias, .validate: code = "33"
        case .deleteAlias, .archiveVersions: code = "31"
        case .wait: code = "36"
        case .blocked, .drift: code = "1;31"
        case .orphaned, .servingUnavailable: code = "2"
        case .createEndpoint: code = "32"
        case .startRollout, .advanceRollout, .promote, .abortRollout, .scale, .revertDrift, .adoptDrift: code = "33"
        case .rollback, .retireEndpoint: code = "31"
        }
        return "\u{1B}[\(code)m\(action.symbol)\u{1B}[0m"
    }

    static func failureLines(_ output: String, indent: String) -> [String] {
        let tail = failureTail(output)
        guard !tail.isEmpty else { return [] }
        return [indent + "last failure:"] + tail.map { indent + "  " + $0 }
    }

    /// `3 versions, aliases champion→2` / `1 version, no aliases`.
    static func orphanFacts(_ o: OrphanDetail) -> String {
        let aliases = o.aliases.sorted { $0.key < $1.key }.map { "\(oneLine($0.key))→\($0.value)" }
        return "\(o.versions) version\(o.versions == 1 ? "" : "s"), "
            + (aliases.isEmpty ? "no aliases" : "aliases " + aliases.joined(separator: ", "))
    }
}

// MARK: - JSON

extension PlanRenderer {
    func json() throws -> String {
        var counts: [String: JSON] = ["changes": .int(plan.changes.count)]
        for action in PlanAction.allCases { counts[Self.snake(action.rawValue)] = .int(plan.count(action)) }
        let document: JSON = .object([
            "format_version": .int(Self.jsonFormatVersion),
            "repository": .string(plan.repository),
            "ref": .string(plan.ref),
            "commit": .string(plan.commit),
            "created_at": .string(Self.timestamp(plan.createdAt, milliseconds: true)),
            "actual_digest": .string(plan.actualDigest),
            "summary": .object(counts),
            "changes": .array(plan.entries.map(jsonEntry)),
        ])
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(document), as: UTF8.self) + "\n"
    }

    func jsonEntry(_ e: PlanEntry) -> JSON {
        var o: [String: JSON] = [
            "id": .string(e.id),
            "action": .string(e.action.rawValue),
            "change": .bool(e.action.isChange),
            "kind": .string(e.kind.rawValue),
            "name": .string(e.name),
            "reason": .string(e.reason),
            "depends_on": .array(e.dependsOn.map(JSON.string)),
        ]
        switch e.detail {
        case .registerModel(let m), .updateModel(let m):
            o["description"] = .optional(m.description, JSON.string)
            o["labels"] = .strings(m.labels)
            o["previous_description"] = .optional(m.previousDescription, JSON.string)
            o["previous_labels"] = .optional(m.previousLabels, JSON.strings)
            o["fields"] = .array(Self.metadataFields(m).map {
                .object(["field": .string($0.field), "from": .optional($0.from, JSON.string), "to": .optional($0.to, JSON.string)])
            })
        case .train(let t):
            o["fingerprint"] = .string(t.fingerprint)
            o["version"] = .optional(t.version, JSON.int)
            o["attempt"] = .int(t.attempt)
            o["timeout_ms"] = .int64(t.timeoutMilliseconds)
            o["reasons"] = .array(t.reasons.map { .string($0.description) })
            o["reason_details"] = .array(t.reasons.map(Self.jsonReason))
            o["training"] = .object([
                "command": .array(t.training.command.map(JSON.string)),
                "workdir": .string(t.training.workdir),
                "params": .object(t.training.params.mapValues(JSON.param)),
                "env": .strings(t.training.env),
                "secret_env": .array(t.training.secretEnv.map(JSON.string)),
                "inputs": .array(t.training.inputs.map { .object(["input": .string($0.input), "identity": .string($0.identity)]) }),
            ])
        case .validate(let v):
            o["version"] = .optional(v.version.number, JSON.int)
            o["produced_by"] = Self.producedBy(v.version)
            o["gates"] = .array(v.gates.map(JSON.string))
        case .moveAlias(let m):
            o["alias"] = .string(m.alias)
            switch m.target {
            case .version(let n): o["target"] = .int(n)
            case .latest: o["target"] = .string("latest")
            }
            o["from"] = .optional(m.from, JSON.int)
            o["to"] = .optional(m.to.number, JSON.int)
            o["to_produced_by"] = Self.producedBy(m.to)
            o["current"] = .optional(m.current, Self.jsonSummary)
            o["candidate"] = .optional(m.candidate, Self.jsonSummary)
        case .deleteAlias(let d):
            o["alias"] = .string(d.alias)
            o["from"] = .int(d.from)
        case .archiveVersions(let a):
            o["versions"] = .array(a.versions.map(JSON.int))
            o["keep_versions"] = .int(a.keepVersions)
        case .wait(let w):
            o["until"] = .optional(w.until) { .string(Self.timestamp($0, milliseconds: true)) }
            o["version"] = .optional(w.version, JSON.int)
            o["fingerprint"] = .optional(w.fingerprint, JSON.string)
            o["last_failure"] = .optional(w.lastFailure, JSON.string)
        case .blocked(let b):
            o["alias"] = .optional(b.alias, JSON.string)
            o["version"] = .optional(b.version, JSON.int)
            o["location"] = .optional(b.location, JSON.string)
        case .orphaned(let r):
            o["version_count"] = .int(r.versions)
            o["aliases"] = .object(r.aliases.mapValues(JSON.int))
        case .registryDrift(let d):
            o["object"] = .string(d.object.key)
            o["found"] = .string(d.found)
            o["expected"] = .optional(d.expected, JSON.string)
        case .deployment(let d):
            o["model"] = .string(d.model)
            o["from"] = .optional(d.from, JSON.int)
            o["to"] = .optional(d.to, JSON.int)
            o["backends"] = .optional(d.backends) { list in
                .array(list.map { .object(["version": .int($0.version), "weight": .int($0.weight), "replicas": .int($0.replicas)]) })
            }
            o["progress"] = .optional(d.progress, JSON.string)
            o["analysis"] = .optional(d.analysis) { a in
                .object(["requests": .int64(a.requests), "failures": .int64(a.failures),
                         "error_rate": .optional(a.errorRate, JSON.double), "p95_ms": .optional(a.p95Milliseconds, JSON.double),
                         "failure": .optional(a.failure, JSON.string)])
            }
            o["quarantine"] = .optional(d.quarantine) { q in
                .object(["version": .int(q.version), "reason": .string(q.reason)])
            }
        }
        return .object(o)
    }

    static func producedBy(_ ref: VersionRef) -> JSON {
        if case .produced(let id) = ref { return .string(id) }
        return .null
    }

    static func jsonSummary(_ s: VersionSummary) -> JSON {
        .object([
            "version": .int(s.version),
            "status": .string(s.status.rawValue),
            "metrics": .object(s.metrics.mapValues(JSON.double)),
            "gate_results": .array(s.gateResults.map {
                .object(["gate": .string($0.gate), "passed": .bool($0.passed), "detail": .string($0.detail)])
            }),
            "commit": .optional(s.commit, JSON.string),
        ])
    }

    /// A train reason as data: `type` (kebab-case) and the fields of that type.
    static func jsonReason(_ r: TrainReason) -> JSON {
        func object(_ type: String, _ fields: [String: JSON] = [:]) -> JSON {
            .object(fields.merging(["type": .string(type)]) { a, _ in a })
        }
        switch r {
        case .newModel:
            return object("new-model")
        case .paramChanged(let name, let from, let to):
            return object("param-changed", ["name": .string(name), "from": .optional(from, JSON.param), "to": .optional(to, JSON.param)])
        case .inputChanged(let input, let from, let to):
            return object("input-changed", ["input": .string(input), "from": .optional(from, JSON.string), "to": .optional(to, JSON.string)])
        case .commandChanged(let from, let to):
            return object("command-changed", ["from": .array(from.map(JSON.string)), "to": .array(to.map(JSON.string))])
        case .workdirChanged(let from, let to):
            return object("workdir-changed", ["from": .string(from), "to": .string(to)])
        case .envChanged(let name, let from, let to):
            return object("env-changed", ["name": .string(name), "from": .optional(from, JSON.string), "to": .optional(to, JSON.string)])
        case .secretEnvChanged(let name, let added):
            return object("secret-env-changed", ["name": .string(name), "added": .bool(added)])
        case .fingerprintChanged(let from, let to):
            return object("fingerprint-changed", ["from": .string(from), "to": .string(to)])
        case .retry(let attempt, let lastFailure):
            return object("retry", ["attempt": .int(attempt), "last_failure": .optional(lastFailure, JSON.string)])
        case .resumeInterrupted(let version):
            return object("resume-interrupted", ["version": .int(version)])
        case .resumeAttempt(let fingerprint):
            return object("resume-attempt", ["fingerprint": .string(fingerprint)])
        }
    }

    /// `drift`, `adopt drift`, `revert drift`.
    static func driftVerb(_ action: PlanAction) -> String {
        switch action {
        case .adoptDrift: return "adopt drift of"
        case .revertDrift: return "revert drift of"
        default: return "drift of"
        }
    }

    static func snake(_ s: String) -> String { s.replacingOccurrences(of: "-", with: "_") }

    /// A JSON value built by hand, so that absent values are written as `null` (JSONEncoder
    /// leaves nil optionals out) and every key is chosen here, not derived from Swift names.
    enum JSON: Encodable {
        case null
        case bool(Bool)
        case int64(Int64)
        case double(Double)
        case string(String)
        case array([JSON])
        case object([String: JSON])

        static func int(_ i: Int) -> JSON { .int64(Int64(i)) }
        static func strings(_ m: [String: String]) -> JSON { .object(m.mapValues(JSON.string)) }
        static func optional<T>(_ value: T?, _ make: (T) -> JSON) -> JSON { value.map(make) ?? .null }

        static func param(_ p: ParamValue) -> JSON {
            switch p {
            case .null: return .null
            case .bool(let b): return .bool(b)
            case .int(let i): return .int64(i)
            case .double(let d): return .double(d)
            case .string(let s): return .string(s)
            case .list(let l): return .array(l.map(param))
            case .map(let m): return .object(m.mapValues(param))
            }
        }

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            switch self {
            case .object(let fields):
                var c = encoder.container(keyedBy: Key.self)
                for (k, v) in fields { try c.encode(v, forKey: Key(stringValue: k)) }
            case .array(let items):
                var c = encoder.unkeyedContainer()
                for v in items { try c.encode(v) }
            case .null:
                var c = encoder.singleValueContainer()
                try c.encodeNil()
            case .bool(let b):
                var c = encoder.singleValueContainer()
                try c.encode(b)
            case .int64(let i):
                var c = encoder.singleValueContainer()
                try c.encode(i)
            case .double(let d):
                // JSON has no NaN or infinity: such a metric is written as null.
                var c = encoder.singleValueContainer()
                if d.isFinite { try c.encode(d) } else { try c.encodeNil() }
            case .string(let s):
                var c = encoder.singleValueContainer()
                try c.encode(s)
            }
        }
    }
}

// MARK: - Markdown

extension PlanRenderer {
    func markdown() -> String {
        var out = "### Capstan plan for \(Self.oneLine(plan.ref)) @ \(shortCommit)\n\n\(summary)\n"
        let changes = plan.changes
        if !changes.isEmpty {
            out += "\n|   | object | action | reason |\n| --- | --- | --- | --- |\n"
            for e in changes {
                out += "| `\(e.action.symbol)` | \(Self.codeCell(object(e))) | \(Self.cell(markdownAction(e))) | \(Self.cell(e.reason)) |\n"
            }
        }
        for e in changes {
            guard case .moveAlias(let m) = e.detail else { continue }
            out += "\n" + Self.aliasSection(name: e.name, m)
        }
        let others = plan.entries.filter { !$0.action.isChange }
        if !others.isEmpty {
            out += "\n#### Not changed by this plan\n\n"
            for e in others { out += markdownItem(e) }
        }
        return out
    }

    /// `churn`, or `churn@champion` for an entry about an alias.
    func object(_ e: PlanEntry) -> String {
        switch e.detail {
        case .moveAlias(let m): return "\(e.name)@\(m.alias)"
        case .deleteAlias(let d): return "\(e.name)@\(d.alias)"
        case .blocked(let b): return e.name + (b.alias.map { "@\($0)" } ?? "")
        default: return e.name
        }
    }

    func markdownAction(_ e: PlanEntry) -> String {
        switch e.detail {
        case .registerModel: return "register model"
        case .updateModel(let m): return "update model: " + Self.metadataFields(m).map(\.field).joined(separator: ", ")
        case .train(let t):
            return "train " + (t.version.map { "v\($0) again" } ?? "a new version") + (t.attempt > 1 ? " (attempt \(t.attempt))" : "")
        case .validate(let v):
            let gates = v.gates.isEmpty ? "no gates" : "gates: " + v.gates.joined(separator: ", ")
            return "validate " + (v.version.number.map { "v\($0)" } ?? "the new version") + " (\(gates))"
        case .moveAlias(let m): return "move alias \(m.from.map { "v\($0)" } ?? "(none)") → \(m.to)"
        case .deleteAlias(let d): return "delete alias (v\(d.from))"
        case .archiveVersions(let a): return "archive \(a.versions.map { "v\($0)" }.joined(separator: ", ")) (keep \(a.keepVersions))"
        case .wait: return "wait"
        case .blocked: return "blocked"
        case .orphaned(let o): return "orphaned (\(Self.orphanFacts(o)))"
        case .registryDrift(let d):
            return "\(Self.driftVerb(e.action)) \(d.object): \(d.found)" + (d.expected.map { " (Capstan set \($0))" } ?? "")
        case .deployment(let d): return Self.deploymentHeadline(e, d) + (d.backends.map { " — " + Self.traffic($0) } ?? "")
        }
    }

    /// `start rollout churn-prod: v1 → v2 (starting)`.
    static func deploymentHeadline(_ e: PlanEntry, _ d: DeploymentDetail) -> String {
        let verb = e.action.rawValue.replacingOccurrences(of: "-", with: " ")
        let versions: String
        switch (d.from, d.to) {
        // A rollback sends the traffic back: from the version rolled back to the stable one.
        case (let f?, let t?) where f != t && e.action == .rollback: versions = "v\(t) → v\(f)"
        case (let f?, let t?) where f != t: versions = "v\(f) → v\(t)"
        // A rollout to the version a train of the same plan produces (no number yet).
        case (let f?, nil) where e.action == .startRollout: versions = "v\(f) → the version this plan trains"
        case (nil, nil) where e.action == .createEndpoint: versions = "the version this plan trains"
        case (_, let t?): versions = "v\(t)"
        case (let f?, nil): versions = "v\(f)"
        default: versions = ""
        }
        let progress = d.progress.map { " (\($0))" } ?? ""
        return "\(verb) \(oneLine(e.name))" + (versions.isEmpty ? "" : ": \(versions)") + progress + " [model \(oneLine(d.model))]"
    }

    /// `v1 90% ×1, v2 10% ×1`.
    static func traffic(_ backends: [BackendWeight]) -> String {
        backends.isEmpty ? "none" : backends.map { "v\($0.version) \($0.weight)% ×\($0.replicas)" }.joined(separator: ", ")
    }

    /// One list item for a wait, blocked or orphaned entry, with a wait's last failure.
    func markdownItem(_ e: PlanEntry) -> String {
        var item = "- \(e.action.symbol) **\(e.action.rawValue)** `\(Self.oneLine(object(e)).replacingOccurrences(of: "`", with: "'"))`"
        if case .orphaned(let o) = e.detail { item += " (\(Self.orphanFacts(o)))" }
        item += ": \(Self.oneLine(e.reason))"
        guard case .wait(let w) = e.detail else { return item + "\n" }
        if let until = w.until {
            item += " (until \(Self.timestamp(until, milliseconds: false)), \(Self.relative(until - plan.createdAt)))"
        }
        item += "\n"
        let tail = w.lastFailure.map(Self.failureTail) ?? []
        if !tail.isEmpty {
            let fence = Self.fence(for: tail)
            item += "\n  Last failure:\n\n  \(fence)text\n" + tail.map { "  \($0)\n" }.joined() + "  \(fence)\n"
        }
        return item
    }

    /// The metrics of an alias's current holder and candidate side by side, and the candidate's
    /// gate results.
    static func aliasSection(name: String, _ m: AliasMoveDetail) -> String {
        var out = "#### `\(oneLine("\(name)@\(m.alias)").replacingOccurrences(of: "`", with: "'"))`: "
            + "\(m.from.map { "v\($0)" } ?? "(none)") → \(m.to)\n\n"
        guard let candidate = m.candidate, candidate.status != .training else {
            switch m.to {
            case .produced: return out + "(the version this train produces: metrics known after training)\n"
            case .number(let n): return out + "(v\(n) is not trained yet: metrics known after training)\n"
            }
        }
        let current = m.current?.metrics ?? [:]
        let names = Set(current.keys).union(candidate.metrics.keys).sorted()
        if names.isEmpty {
            out += "No metrics recorded.\n"
        } else {
            let holder = m.current.map { "v\($0.version)" } ?? "none"
            out += "| metric | current holder (\(holder)) | candidate (v\(candidate.version)) | Δ |\n| --- | ---: | ---: | ---: |\n"
            for metric in names {
                let before = current[metric], after = candidate.metrics[metric]
                out += "| \(cell(metric)) | \(before.map(number) ?? "—") | \(after.map(number) ?? "—") | \(delta(before, after)) |\n"
            }
        }
        if !candidate.gateResults.isEmpty {
            out += "\nGates of v\(candidate.version):\n\n"
            for g in candidate.gateResults {
                out += "- \(g.passed ? "✅" : "❌") \(oneLine(g.gate)): \(oneLine(g.detail))\n"
            }
        }
        return out
    }

    /// `+0.012 ▲`, `-1.5 ▼`, `0`, or `—` when either side is missing. The difference is rounded
    /// to the decimals of its operands, so `0.922 - 0.91` shows as `+0.012`.
    static func delta(_ before: Double?, _ after: Double?) -> String {
        guard let before, let after, before.isFinite, after.isFinite else { return "—" }
        let places = max(decimals(before), decimals(after))
        let scale = pow(10, Double(places))
        let scaled = (abs(after - before) * scale).rounded()
        guard scaled < 1e15 else { return after > before ? "+\(after - before) ▲" : "\(after - before) ▼" }
        let units = Int64(scaled), divisor = Int64(scale)
        if units == 0 { return "0" }
        var magnitude = String(units / divisor)
        if places > 0 {
            var fraction = String(units % divisor)
            fraction = String(repeating: "0", count: places - fraction.count) + fraction
            while fraction.hasSuffix("0") { fraction.removeLast() }
            if !fraction.isEmpty { magnitude += "." + fraction }
        }
        return after > before ? "+\(magnitude) ▲" : "-\(magnitude) ▼"
    }

    /// Digits after the point in the shortest form of `x` (`0.922` → 3, `1.5e-07` → 8), at most 12.
    static func decimals(_ x: Double) -> Int {
        let s = "\(x)"
        let parts = s.split(separator: "e", maxSplits: 1)
        let mantissa = parts[0], exponent = parts.count == 2 ? Int(parts[1]) ?? 0 : 0
        var digits = 0
        if let dot = mantissa.firstIndex(of: ".") {
            let fraction = mantissa[mantissa.index(after: dot)...]
            digits = fraction == "0" ? 0 : fraction.count
        }
        return min(max(digits - exponent, 0), 12)
    }

    /// `41` for a whole number, the shortest form otherwise.
    static func number(_ x: Double) -> String {
        if x.isFinite, x == x.rounded(), abs(x) < 1e15 { return String(Int64(x)) }
        return "\(x)"
    }

    /// A table cell: `|` escaped, line breaks as `<br>`.
    static func cell(_ s: String) -> String {
        sanitized(s).replacingOccurrences(of: "\r\n", with: "\n").replacingOccurrences(of: "\r", with: "\n")
            .replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: "<br>")
    }

    static func codeCell(_ s: String) -> String {
        "`" + oneLine(s).replacingOccurrences(of: "`", with: "'").replacingOccurrences(of: "|", with: "\\|") + "`"
    }

    /// A code fence longer than any run of backticks in `lines`.
    static func fence(for lines: [String]) -> String {
        var longest = 0
        for line in lines {
            var run = 0
            for ch in line {
                run = ch == "`" ? run + 1 : 0
                longest = max(longest, run)
            }
        }
        return String(repeating: "`", count: max(3, longest + 1))
    }
}

// MARK: - Shared

extension PlanRenderer {
    /// A field of a model's metadata that a register or update entry sets: `description`,
    /// `labels.<key>`; nil for unset.
    struct MetadataField: Equatable {
        var field: String
        var from: String?
        var to: String?
    }

    static func metadataFields(_ m: ModelMetadataChange) -> [MetadataField] {
        var fields: [MetadataField] = []
        if (m.previousDescription ?? "") != (m.description ?? "") {
            fields.append(MetadataField(field: "description", from: m.previousDescription, to: m.description))
        }
        let previous = m.previousLabels ?? [:]
        for key in Set(previous.keys).union(m.labels.keys).sorted() where previous[key] != m.labels[key] {
            fields.append(MetadataField(field: "labels.\(key)", from: previous[key], to: m.labels[key]))
        }
        return fields
    }

    /// A string value for a text plan: quoted and escaped, or `(unset)`.
    static func quote(_ s: String?) -> String {
        guard let s else { return "(unset)" }
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case _ where isControl(u): out += "\\u{\(String(u.value, radix: 16))}"
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }

    /// Text on one line: line breaks and tabs become spaces, terminal escape sequences and other
    /// control characters are dropped (a reason or a run's output must not repaint a terminal).
    static func oneLine(_ s: String) -> String {
        sanitized(s.replacingOccurrences(of: "\r\n", with: " ").replacingOccurrences(of: "\n", with: " ")
            .replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\t", with: " "))
    }

    /// `s` without ANSI escape sequences and control characters other than tabs and line breaks.
    static func sanitized(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        var scalars = s.unicodeScalars.makeIterator()
        while let u = scalars.next() {
            if u == "\u{1B}" {
                // CSI (`ESC [ … final`): skip through the final byte; otherwise drop the next one.
                guard let next = scalars.next(), next == "[" else { continue }
                while let p = scalars.next(), !(0x40...0x7E).contains(p.value) {}
                continue
            }
            if u == "\n" || u == "\t" || u == "\r" || !isControl(u) { out.append(u) }
        }
        return String(out)
    }

    static func isControl(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || (0x7F...0x9F).contains(u.value)
    }

    /// The last `failureTailLines` non-empty-ended lines of a failed run's output, sanitized.
    static func failureTail(_ output: String) -> [String] {
        var lines = sanitized(output).replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
            .map { String($0).replacingOccurrences(of: "\r", with: "").replacingOccurrences(of: "\t", with: "    ") }
        while let last = lines.last, last.allSatisfy(\.isWhitespace) { lines.removeLast() }
        return Array(lines.suffix(failureTailLines))
    }

    /// `2026-11-05T10:14:00Z` (or `…:00.000Z` with milliseconds), UTC, from ms since the epoch.
    static func timestamp(_ ms: Int64, milliseconds: Bool) -> String {
        let (seconds, millis) = floorDivision(ms, 1000)
        let (days, secondOfDay) = floorDivision(seconds, 86_400)
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = floorDivision(z, 146_097).0
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func pad(_ n: Int64, _ width: Int) -> String {
            let s = String(n)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        var out = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T"
            + "\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2))"
        if milliseconds { out += ".\(pad(millis, 3))" }
        return out + "Z"
    }

    static func floorDivision(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
        let q = a / b, r = a % b
        return r < 0 ? (q - 1, r + b) : (q, r)
    }

    /// `in 45s`, `in 14m`, `in 2h 5m`, `in 3d 4h`; `now` when the time has come.
    static func relative(_ ms: Int64) -> String {
        guard ms > 0 else { return "now" }
        let s = (ms + 999) / 1000
        switch s {
        case ..<60: return "in \(s)s"
        case ..<3600: return "in \(s / 60)m"
        case ..<86_400: return "in \(s / 3600)h" + (s / 60 % 60 == 0 ? "" : " \(s / 60 % 60)m")
        default: return "in \(s / 86_400)d" + (s / 3600 % 24 == 0 ? "" : " \(s / 3600 % 24)h")
        }
    }
}
