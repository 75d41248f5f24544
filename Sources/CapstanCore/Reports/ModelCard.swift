import Foundation

/// The record a reviewer or an auditor asks for about one version of a model (`capstan card`):
/// what the model is for (the Model's `spec.card`), how the version was made (commit, author,
/// inputs, params, the names of its environment and secrets — never their values), how it was
/// judged (metrics, gates and evidence), and everything that happened to it (alias moves with
/// who, when and the commit that carried them, endpoint changes, drift). Pure data from the
/// manifests, the registry, the audit log and Git; rendered as Markdown here, as HTML by the
/// server module, or as JSON.
public struct ModelCard: Hashable, Sendable, Codable {
    /// A Git commit as people read it.
    public struct Commit: Hashable, Sendable, Codable {
        public var id: String
        public var author: String
        /// ms since the epoch.
        public var time: Int64
        public var summary: String

        public init(id: String, author: String, time: Int64, summary: String) {
            self.id = id
            self.author = author
            self.time = time
            self.summary = summary
        }
    }

    /// One audit event about the version, its model's aliases or its model's drift.
    public struct Event: Hashable, Sendable, Codable {
        public var at: Int64
        public var actor: String
        public var action: AuditAction
        /// What it was about (`model/churn/alias/champion`).
        public var object: String
        /// What changed, in a few words (`champion: v1 → v2`).
        public var change: String
        public var reason: String
        /// The commit Capstan applied when it happened, and that commit's summary (a merged
        /// pull request's title) when Git still has it.
        public var commit: String?
        public var carriedBy: String?

        public init(at: Int64, actor: String, action: AuditAction, object: String, change: String, reason: String,
                    commit: String?, carriedBy: String?) {
            self.at = at
            self.actor = actor
            self.action = action
            self.object = object
            self.change = change
            self.reason = reason
            self.commit = commit
            self.carriedBy = carriedBy
        }
    }

    public var model: String
    public var description: String?
    public var card: CardSpec?
    public var version: VersionSummary
    public var fingerprint: String
    /// The aliases that point at the version now.
    public var aliases: [String]
    /// The commit it was trained at (nil: registered outside Capstan, or Git no longer has it).
    public var trainedAt: Commit?
    public var training: TrainingDescription?
    /// The environment variable names of its training (values of `env` are in the manifest;
    /// secrets only by name).
    public var environment: [String]
    public var history: [Event]
    public var serving: [PromotionReport.ServingEvent]
    /// When the card was made (ms since the epoch).
    public var generatedAt: Int64

    public init(model: String, description: String?, card: CardSpec?, version: VersionSummary, fingerprint: String, aliases: [String],
                trainedAt: Commit?, training: TrainingDescription?, environment: [String], history: [Event],
                serving: [PromotionReport.ServingEvent], generatedAt: Int64) {
        self.model = model
        self.description = description
        self.card = card
        self.version = version
        self.fingerprint = fingerprint
        self.aliases = aliases
        self.trainedAt = trainedAt
        self.training = training
        self.environment = environment
        self.history = history
        self.serving = serving
        self.generatedAt = generatedAt
    }

    public var title: String { "Model card: \(model) v\(version.version)" }

    /// The card in Markdown.
    public var markdown: String {
        let cell = PromotionReport.cell
        var out = "# \(title)\n\n"
        if let description { out += "\(description)\n\n" }
        out += "Status: **\(version.status.rawValue)**" + (aliases.isEmpty ? "" : "; holds " + aliases.map { "`\($0)`" }.joined(separator: ", "))
        out += ". Generated \(PromotionReport.time(generatedAt)).\n\n"

        out += "## About the model\n\n"
        if let card {
            out += "- Owners: " + (card.owners.isEmpty ? "not stated" : card.owners.map(cell).joined(separator: ", ")) + "\n"
            out += "- Intended use: \(card.intendedUse.map(cell) ?? "not stated")\n"
            out += "- Limitations: \(card.limitations.map(cell) ?? "not stated")\n"
            out += "- Ethical considerations: \(card.ethicalConsiderations.map(cell) ?? "not stated")\n"
        } else {
            out += "The Model states no owners, intended use, limitations or ethical considerations (`spec.card`).\n"
        }

        out += "\n## Lineage\n\n"
        if let trainedAt {
            out += "- Trained at commit `\(trainedAt.id)` by \(cell(trainedAt.author)), \(PromotionReport.time(trainedAt.time)): \(cell(trainedAt.summary))\n"
        } else if let commit = version.commit {
            out += "- Trained at commit `\(commit)` (no longer in the repository)\n"
        } else {
            out += "- Registered outside Capstan: not trained at a commit\n"
        }
        out += "- Fingerprint `\(cell(fingerprint))`\n"
        if let training {
            if !training.command.isEmpty { out += "- Command: `\(cell(training.command.joined(separator: " ")))` in `\(cell(training.workdir.isEmpty ? "." : training.workdir))`\n" }
            if !training.params.isEmpty {
                out += "- Params: " + training.params.keys.sorted().map { "`\($0)=\(cell(training.params[$0]!.description))`" }.joined(separator: ", ") + "\n"
            }
            for input in training.inputs { out += "- Input `\(cell(input.input))`: `\(input.identity)`\n" }
        }
        if !environment.isEmpty { out += "- Environment (names only): " + environment.map { "`\($0)`" }.joined(separator: ", ") + "\n" }
        out += "- Data checks: none recorded\n"

        out += "\n## Metrics and gates\n\n"
        if version.metrics.isEmpty {
            out += "No metrics recorded.\n"
        } else {
            out += "| metric | value |\n| --- | --- |\n"
            for key in version.metrics.keys.sorted() { out += "| \(cell(key)) | \(Gates.format(version.metrics[key]!)) |\n" }
        }
        out += "\n"
        if version.gateResults.isEmpty {
            out += "No gates.\n"
        } else {
            for g in version.gateResults { out += "- \(g.passed ? "✅" : "❌") \(cell(g.gate)): \(cell(g.detail))\n" }
        }

        out += "\n## History\n\n"
        if history.isEmpty { out += "Nothing recorded.\n" }
        for e in history {
            out += "- \(PromotionReport.time(e.at)) \(e.action.rawValue) \(cell(e.change)) by \(cell(e.actor))"
            if let commit = e.commit { out += " at `\(commit.prefix(10))`" + (e.carriedBy.map { " (\(cell($0)))" } ?? "") }
            out += (e.reason.isEmpty ? "" : ": \(cell(e.reason))") + "\n"
        }

        out += "\n## Serving\n\n"
        if serving.isEmpty { out += "v\(version.version) has not served in any deployment.\n" }
        for e in serving {
            let share = e.weight.map { "\($0)% of the traffic" } ?? "out of the endpoint"
            out += "- \(PromotionReport.time(e.at)) \(e.deployment): \(e.action.rawValue), \(share) — \(cell(e.reason))\n"
        }
        out += "\nLive performance: not monitored.\n"
        return out
    }
}
