import Foundation

/// The case for a promotion (`capstan promote`): the candidate against the alias's current holder,
/// the candidate's gate evidence, lineage and serving record, and where to open the pull request.
/// Built from the registry and the state store; rendered as the pull request's body (Markdown)
/// or as JSON. Pure data: every field is a record read elsewhere.
public struct PromotionReport: Hashable, Sendable, Codable {
    /// One metric of the candidate beside the holder's.
    public struct MetricRow: Hashable, Sendable, Codable {
        public var metric: String
        public var candidate: Double?
        public var holder: Double?
        /// Whether a gate of the model reads it.
        public var gated: Bool
        /// Whether higher values are better (`Gates.higherIsBetter`: a metric gated by a `max`
        /// alone is better lower).
        public var higherIsBetter: Bool

        public init(metric: String, candidate: Double?, holder: Double?, gated: Bool, higherIsBetter: Bool = true) {
            self.metric = metric
            self.candidate = candidate
            self.holder = holder
            self.gated = gated
            self.higherIsBetter = higherIsBetter
        }

        /// `better`, `worse` or `same` for a gated metric with both values; nil otherwise.
        public var verdict: String? {
            guard gated, let delta else { return nil }
            if delta == 0 { return "same" }
            return (delta > 0) == higherIsBetter ? "better" : "worse"
        }

        public var delta: Double? { candidate.flatMap { c in holder.map { c - $0 } } }
    }

    /// One change of an endpoint that the candidate took part in (a canary step, a promotion, a
    /// rollback), from the audit log.
    public struct ServingEvent: Hashable, Sendable, Codable {
        public var at: Int64
        public var deployment: String
        public var action: AuditAction
        /// The candidate's share of the traffic after the change (nil: it left the endpoint).
        public var weight: Int?
        public var reason: String

        public init(at: Int64, deployment: String, action: AuditAction, weight: Int?, reason: String) {
            self.at = at
            self.deployment = deployment
            self.action = action
            self.weight = weight
            self.reason = reason
        }
    }

    public var model: String
    public var alias: String
    public var candidate: VersionSummary
    /// The version the alias points at now (nil: none yet).
    public var holder: VersionSummary?
    /// What the spec writes now (`latest`, `5`).
    public var pinnedBefore: String
    public var metrics: [MetricRow]
    public var fingerprint: String
    /// Params and input identities of the candidate's training (nil: registered outside Capstan).
    public var training: TrainingDescription?
    public var serving: [ServingEvent]
    public var quarantines: [Quarantine]
    /// The manifest file and line of the pin.
    public var file: String
    public var line: Int
    /// The branch pushed (`capstan/promote/<model>/<alias>-v<N>`), the commit on it, and the
    /// branch it is proposed against.
    public var branch: String
    public var base: String
    public var commit: String?
    /// Where to open the pull request (nil: the remote's forge is not known).
    public var pullRequestURL: String?

    public init(model: String, alias: String, candidate: VersionSummary, holder: VersionSummary?, pinnedBefore: String,
                metrics: [MetricRow], fingerprint: String, training: TrainingDescription?, serving: [ServingEvent],
                quarantines: [Quarantine], file: String, line: Int, branch: String, base: String, commit: String? = nil,
                pullRequestURL: String? = nil) {
        self.model = model
        self.alias = alias
        self.candidate = candidate
        self.holder = holder
        self.pinnedBefore = pinnedBefore
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.training = training
        self.serving = serving
        self.quarantines = quarantines
        self.file = file
        self.line = line
        self.branch = branch
        self.base = base
        self.commit = commit
        self.pullRequestURL = pullRequestURL
    }

    /// The metric rows: the gated metrics first, in the gates' order, then the others by name.
    public static func metricRows(candidate: [String: Double], holder: [String: Double]?, gates: ValidateSpec?) -> [MetricRow] {
        let gated = (gates?.metrics.map(\.metric) ?? []).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        let others = Set(candidate.keys).union(holder?.keys ?? [:].keys).subtracting(gated).sorted()
        return (gated + others).map { metric in
            MetricRow(metric: metric, candidate: candidate[metric], holder: holder?[metric], gated: gated.contains(metric),
                      higherIsBetter: gates.map { Gates.higherIsBetter(metric, in: $0) } ?? true)
        }
    }

    /// `Promote churn v7 to champion`: the commit's and the pull request's title.
    public var title: String { "Promote \(model) v\(candidate.version) to \(alias)" }

    /// The commit message: the title, then the gated metrics against the holder.
    public var commitMessage: String {
        var lines = [title, ""]
        let holderText = holder.map { "v\($0.version)" } ?? "no holder"
        lines.append("\(alias): \(pinnedBefore) → \(candidate.version) (now \(holderText)).")
        for row in metrics where row.gated {
            lines.append("\(row.metric): \(Self.number(row.candidate))"
                + (row.delta.map { " (\(Self.signed($0))" + (row.verdict.map { ", \($0)" } ?? "") + " against \(holderText))" } ?? ""))
        }
        lines.append("")
        lines.append("Proposed with capstan promote.")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The pull request's body, in Markdown.
    public var markdown: String {
        var out = "## \(title)\n\n"
        let holderName = holder.map { "v\($0.version)" } ?? "—"
        out += "`\(file)` line \(line): `\(alias): \(pinnedBefore)` → `\(alias): \(candidate.version)`. "
        out += holder.map { "\(alias) is v\($0.version) now." } ?? "No version holds \(alias) yet."
        out += " Merging this pull request is the approval; the next pass moves the alias.\n\n"

        out += "### Metrics\n\n| metric | v\(candidate.version) (candidate) | \(holderName) (\(alias) now) | change |\n| --- | --- | --- | --- |\n"
        for row in metrics {
            let name = row.gated ? "**\(Self.cell(row.metric))** (gated)" : Self.cell(row.metric)
            let change = row.delta.map { Self.signed($0) + (row.verdict.map { " (\($0))" } ?? "") } ?? "—"
            out += "| \(name) | \(Self.number(row.candidate)) | \(Self.number(row.holder)) | \(change) |\n"
        }
        if metrics.isEmpty { out += "| (no metrics) | | | |\n" }

        out += "\n### Gates\n\n"
        if candidate.gateResults.isEmpty {
            out += "No gates: every version of this model is valid as it is.\n"
        } else {
            for g in candidate.gateResults { out += "- \(g.passed ? "✅" : "❌") \(Self.cell(g.gate)): \(Self.cell(g.detail))\n" }
        }

        out += "\n### Lineage\n\n"
        if let commit = candidate.commit {
            out += "- Trained at commit `\(commit)`, fingerprint `\(fingerprint.prefix(16))`\n"
        } else {
            out += "- Registered outside Capstan (`\(Self.cell(fingerprint))`): not trained at a commit\n"
        }
        if let training {
            if !training.params.isEmpty {
                out += "- Params: " + training.params.keys.sorted().map { "`\($0)=\(Self.cell(training.params[$0]!.description))`" }.joined(separator: ", ") + "\n"
            }
            for input in training.inputs { out += "- Input `\(Self.cell(input.input))`: `\(input.identity)`\n" }
            if !training.secretEnv.isEmpty { out += "- Secrets it read (names only): " + training.secretEnv.map { "`\($0)`" }.joined(separator: ", ") + "\n" }
        }

        out += "\n### Serving record\n\n"
        if serving.isEmpty && quarantines.isEmpty {
            out += "v\(candidate.version) has not served in any deployment yet.\n"
        }
        for e in serving {
            let share = e.weight.map { "\($0)% of the traffic" } ?? "out of the endpoint"
            out += "- \(Self.time(e.at)) \(e.deployment): \(e.action.rawValue), v\(candidate.version) \(share) — \(Self.cell(e.reason))\n"
        }
        for q in quarantines {
            out += "- ⚠️ \(Self.time(q.at)) quarantined in \(q.deployment): \(Self.cell(q.reason))\n"
        }
        out += "\n---\nBranch `\(branch)` against `\(base)`" + (commit.map { " (commit `\($0.prefix(10))`)" } ?? "") + ", proposed with `capstan promote`.\n"
        return out
    }

    static func number(_ value: Double?) -> String { value.map(Gates.format) ?? "—" }
    static func signed(_ value: Double) -> String { (value > 0 ? "+" : value < 0 ? "−" : "±") + Gates.format(abs(value)) }
    /// Text inside a table cell or list item: no line breaks, no column separators.
    static func cell(_ text: String) -> String {
        text.replacingOccurrences(of: "\n", with: " ").replacingOccurrences(of: "|", with: "\\|")
    }
    /// An ISO 8601 UTC time, to the second, of ms since the epoch.
    public static func time(_ ms: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(ms) / 1000))
    }
}
