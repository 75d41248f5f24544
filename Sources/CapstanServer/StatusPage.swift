import CapstanCore
import Foundation

/// What the status page knows besides the state documents: the controller's own settings and
/// clock.
public struct StatusPageContext: Sendable {
    /// The repository the controller follows (URL or path), as given to `capstan run --repo`.
    public var repository: String
    /// The ref it follows; nil for the repository's default branch.
    public var ref: String?
    /// How often it polls, as given (`1m`).
    public var pollInterval: String
    /// The commit the last fetch saw, which may be ahead of the last pass.
    public var lastObservedCommit: String?
    /// When the controller started.
    public var startedAt: Date
    /// The page reloads itself every so many seconds; 0 or less: never.
    public var refreshSeconds: Int
    /// The time the page is rendered at (relative times are computed against it).
    public var now: Date

    public init(repository: String = "", ref: String? = nil, pollInterval: String = "", lastObservedCommit: String? = nil,
                startedAt: Date = Date(), refreshSeconds: Int = 5, now: Date = Date()) {
        self.repository = repository
        self.ref = ref
        self.pollInterval = pollInterval
        self.lastObservedCommit = lastObservedCommit
        self.startedAt = startedAt
        self.refreshSeconds = refreshSeconds
        self.now = now
    }
}

/// A state document the page cannot read.
public struct StatusPageError: Error, CustomStringConvertible, Sendable {
    /// `status` or `history`.
    public var document: String
    public var message: String

    public var description: String {
        "cannot read the \(document) document (the JSON of capstan \(document) --format json): \(message)"
    }
}

/// The controller's status page (`GET /`, docs/status-page.md): one self-contained HTML5
/// document — inline CSS and SVG, no scripts, no external resources — rendered from the JSON of
/// `capstan status` and `capstan history`, reloading itself every few seconds.
///
/// Element ids and classes tests and users can rely on: `#summary` (with `#commit`,
/// `#last-pass`, `#lock`), `#empty` (nothing applied yet), `#models`, `.model#model-<name>`,
/// `table.versions`, `tr.version`, `svg.plot#plot-<name>` (`.point.validated` circles,
/// `.point.rejected` crosses), `#deployments`, `.deployment#deployment-<name>`, `.traffic`
/// (`.share` per version, `data-percent`), `table.backends`, `.rollout`, `.quarantined`,
/// `#history` (`tr.event`, newest first, at most 50).
public enum StatusPage {
    /// At most this many history events are shown.
    public static let historyLimit = 50
    /// At most this many versions per model are listed (newest first); the plot has them all.
    public static let versionLimit = 25

    public static func render(status: StatusDocument, history: [AuditEvent], context: StatusPageContext) -> String {
        Self.page(state: status, events: history, context: context).html
    }

    // MARK: - The page

    static func page(state: StatusDocument, events: [HistoryEntry], context: StatusPageContext) -> Markup {
        let target = context.repository.isEmpty ? "(repository)" : context.repository
        let title = target + (context.ref.map { " @ " + $0 } ?? "")
        let refresh: Markup = context.refreshSeconds > 0 ? "<meta http-equiv=\"refresh\" content=\"\(context.refreshSeconds)\">\n" : .empty
        let nothingYet = state.models.isEmpty && state.deployments.isEmpty
        var body: Markup = summary(state: state, context: context)
        body += "<main>\n"
        if nothingYet {
            body += empty(state: state, context: context)
        } else {
            body += models(state, context: context)
            body += deployments(state, context: context)
        }
        body += history(events, context: context)
        body += "</main>\n"
        let refreshNote: Markup = context.refreshSeconds > 0
            ? "This page reloads every \(context.refreshSeconds) s."
            : "This page does not reload by itself."
        body += """
            <footer>Rendered \(PageFormat.absolute(context.now)). \(refreshNote) \
            The same data as JSON: <a href="/api/v1/status">/api/v1/status</a> · \
            <a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a></footer>

            """
        return """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            \(refresh)<title>Capstan · \(title)</title>
            <style>\(stylesheet)</style>
            </head>
            <body>
            \(body)</body>
            </html>

            """
    }

    // MARK: Header

    static func summary(state: StatusDocument, context: StatusPageContext) -> Markup {
        let now = context.now
        let repository: Markup = context.repository.isEmpty ? "<span class=\"muted\">(no repository)</span>" : "<span class=\"repo\">\(context.repository)</span>"
        let ref: Markup = context.ref.map { "<span class=\"ref\">\($0)</span>" } ?? "<span class=\"ref muted\">default branch</span>"

        let observed = context.lastObservedCommit
        let applied = state.lastPass?.commit
        var commit: Markup
        if let observed {
            commit = "<code title=\"\(observed)\">\(PageFormat.shortCommit(observed))</code>"
            if let applied, applied != observed {
                commit += " <span class=\"muted\">(last pass at <code title=\"\(applied)\">\(PageFormat.shortCommit(applied))</code>)</span>"
            }
        } else if let applied {
            commit = "<code title=\"\(applied)\">\(PageFormat.shortCommit(applied))</code> <span class=\"muted\">(last pass)</span>"
        } else {
            commit = "<span class=\"muted\">not fetched yet</span>"
        }

        var pass: Markup
        if let last = state.lastPass {
            let when = last.finished ?? last.started
            pass = "<span class=\"badge outcome-\(PageFormat.token(last.outcome))\">\(last.outcome)</span> \(PageFormat.time(when, now: now))"
            if !last.command.isEmpty { pass += " <span class=\"muted\">by \(last.command)</span>" }
            if !last.summary.isEmpty { pass += "<div class=\"pass-summary\">\(last.summary)</div>" }
        } else {
            pass = "<span class=\"muted\">no pass yet</span>"
        }

        var lock: Markup
        if state.locks.isEmpty {
            lock = "<span class=\"badge lock-free\">free</span>"
        } else {
            lock = .empty
            for entry in state.locks {
                let pid: Markup = ", pid \(entry.pid)"
                let host: Markup = entry.host.isEmpty ? .empty : " on \(entry.host)"
                lock += """
                    <div class="lock-entry"><span class="badge lock-held">held</span> by <code>\(entry.holder)</code> \
                    (\(entry.command)\(pid)\(host)), since \(PageFormat.time(entry.started, now: now)), \
                    expires \(PageFormat.time(entry.expires, now: now))</div>
                    """
            }
        }

        let poll: Markup = context.pollInterval.isEmpty ? "<span class=\"muted\">—</span>" : "every \(context.pollInterval)"
        let started = PageFormat.iso8601(context.startedAt)
        var nav: [Markup] = []
        if !state.models.isEmpty { nav.append("<a href=\"#models\">Models (\(state.models.count))</a>") }
        if !state.deployments.isEmpty { nav.append("<a href=\"#deployments\">Deployments (\(state.deployments.count))</a>") }
        nav.append("<a href=\"#history\">History</a>")
        return """
            <header id="summary">
            <h1><span class="brand">Capstan</span> \(repository) @ \(ref)</h1>
            <dl class="facts">
            <div><dt>Commit</dt><dd id="commit">\(commit)</dd></div>
            <div><dt>Last pass</dt><dd id="last-pass">\(pass)</dd></div>
            <div><dt>Lock</dt><dd id="lock">\(lock)</dd></div>
            <div><dt>Polling</dt><dd id="poll">\(poll)</dd></div>
            <div><dt>Controller started</dt><dd id="started">\(PageFormat.time(started, now: now))</dd></div>
            </dl>
            <nav>\(nav.joined(" · "))</nav>
            </header>

            """
    }

    static func empty(state: StatusDocument, context: StatusPageContext) -> Markup {
        let source: Markup = context.repository.isEmpty ? "its repository" : "<code>\(context.repository)</code>"
        let ref: Markup = context.ref.map { " @ <code>\($0)</code>" } ?? .empty
        let poll: Markup = context.pollInterval.isEmpty ? .empty : ", checking it every \(context.pollInterval)"
        let heading: Markup
        let lead: Markup
        if let last = state.lastPass {
            heading = "No models yet"
            lead = "The last pass (\(last.outcome)) left the registry without models: \(last.summary)"
        } else {
            heading = "Nothing applied yet"
            lead = "No pass has finished yet. The first one starts when the controller starts; models, deployments and their history appear here once it ends."
        }
        return """
            <section id="empty" class="empty">
            <h2>\(heading)</h2>
            <p>\(lead)</p>
            <p>The controller follows \(source)\(ref)\(poll). To see something here:</p>
            <ul>
            <li>commit a <code>Model</code> manifest to that repository (<code>capstan init</code> writes a starter repository; <code>capstan validate</code> checks it);</li>
            <li>ask for a pass at once with a signed webhook to <code>/hooks/git</code> or <code>POST /api/v1/reconcile</code>;</li>
            <li>read the controller's log for the outcome of each pass (a commit with manifest errors changes nothing and says why).</li>
            </ul>
            </section>

            """
    }

    // MARK: Models

    static func models(_ state: StatusDocument, context: StatusPageContext) -> Markup {
        var out: Markup = "<section id=\"models\">\n<h2>Models</h2>\n"
        if state.models.isEmpty {
            out += "<p class=\"muted\">The registry holds no models yet.</p>\n"
        }
        for model in state.models {
            out += self.model(model, context: context)
        }
        return out + "</section>\n"
    }

    static func model(_ model: ModelEntry, context: StatusPageContext) -> Markup {
        let slug = PageFormat.slug(model.name)
        let keyMetric = MetricPlot.keyMetric(of: model)
        var out: Markup = "<article class=\"model\" id=\"model-\(slug)\" data-model=\"\(model.name)\">\n"
        out += "<h3>\(model.name) \(conditionBadges(model.conditions)) <a class=\"card-link\" href=\"/models/\(model.name)/card\">model card</a></h3>\n"
        if let description = model.description, !description.isEmpty {
            out += "<p class=\"description\">\(description)</p>\n"
        }
        if !model.labels.isEmpty {
            let labels = model.labels.keys.sorted().map { key -> Markup in "<span class=\"label\">\(key)=\(model.labels[key]!)</span>" }
            out += "<p class=\"labels\">\(labels.joined(" "))</p>\n"
        }
        out += conditionMessages(model.conditions, context: context)
        if model.aliases.isEmpty {
            out += "<p class=\"aliases muted\">No aliases.</p>\n"
        } else {
            let aliases = model.aliases.keys.sorted().map { alias -> Markup in
                let version = model.aliases[alias]!
                return "<li class=\"alias\" data-alias=\"\(alias)\" data-version=\"\(version)\"><span class=\"alias-name\">\(alias)</span> → <a href=\"#model-\(slug)-v\(version)\">v\(version)</a></li>"
            }
            out += "<ul class=\"aliases\">\(aliases)</ul>\n"
        }
        out += plot(model, slug: slug, metric: keyMetric)
        out += versions(model, slug: slug, keyMetric: keyMetric, context: context)
        return out + "</article>\n"
    }

    static func plot(_ model: ModelEntry, slug: String, metric: String?) -> Markup {
        guard let metric else {
            return "<figure class=\"plot-figure\" id=\"plot-figure-\(slug)\"><p class=\"plot-empty muted\">No version has metrics yet: nothing to plot.</p></figure>\n"
        }
        let plot = MetricPlot(model: model, metric: metric)
        guard !plot.points.isEmpty else {
            return "<figure class=\"plot-figure\" id=\"plot-figure-\(slug)\"><p class=\"plot-empty muted\">No validated or rejected version has <code>\(metric)</code> yet: nothing to plot.</p></figure>\n"
        }
        let rejected = plot.points.filter(\.rejected).count
        let legend: Markup = rejected > 0
            ? "<span class=\"legend validated\">●</span> validated · <span class=\"legend rejected\">✕</span> rejected"
            : "<span class=\"legend validated\">●</span> validated"
        return """
            <figure class="plot-figure" id="plot-figure-\(slug)">
            \(plot.svg(id: "plot-\(slug)", modelName: model.name))
            <figcaption><code>\(metric)</code> by version (\(plot.points.count) versions) · \(legend)</figcaption>
            </figure>

            """
    }

    static func versions(_ model: ModelEntry, slug: String, keyMetric: String?, context: StatusPageContext) -> Markup {
        guard !model.versions.isEmpty else {
            return "<p class=\"muted\">No versions yet: the first one is trained on the next pass that sees this model.</p>\n"
        }
        var holders: [Int: [String]] = [:]
        for (alias, version) in model.aliases { holders[version, default: []].append(alias) }
        let newestFirst = model.versions.sorted { $0.version > $1.version }
        var rows: [Markup] = []
        for version in newestFirst.prefix(versionLimit) {
            let tags = (holders[version.version] ?? []).sorted().map { alias -> Markup in "<span class=\"alias-tag\">\(alias)</span>" }
            let commit: Markup = version.commit.map { "<code title=\"\($0)\">\(PageFormat.shortCommit($0))</code>" } ?? "<span class=\"muted\">—</span>"
            rows.append("""
                <tr class="version status-\(PageFormat.token(version.status))" id="model-\(slug)-v\(version.version)" data-version="\(version.version)">\
                <td class="number">v\(version.version) \(tags)</td>\
                <td><span class="badge status-\(PageFormat.token(version.status))">\(version.status)</span></td>\
                <td>\(commit)</td>\
                <td>\(PageFormat.time(version.created, now: context.now))</td>\
                <td class="metrics">\(metrics(version.metrics, key: keyMetric))</td>\
                <td class="notes">\(notes(version, context: context))</td></tr>

                """)
        }
        let hidden = model.versions.count - min(model.versions.count, versionLimit)
        let more: Markup = hidden > 0
            ? "<p class=\"muted\">\(hidden) older versions are not listed (<code>capstan status</code> shows them all).</p>\n"
            : .empty
        return """
            <table class="versions">
            <thead><tr><th>Version</th><th>Status</th><th>Commit</th><th>Created</th><th>Key metrics</th><th>Notes</th></tr></thead>
            <tbody>
            \(rows)</tbody>
            </table>
            \(more)
            """
    }

    /// The key metric first (marked), then the others in name order; at most four.
    static func metrics(_ metrics: [String: Double], key: String?) -> Markup {
        guard !metrics.isEmpty else { return "<span class=\"muted\">—</span>" }
        var names = metrics.keys.sorted()
        if let key, let index = names.firstIndex(of: key) {
            names.remove(at: index)
            names.insert(key, at: 0)
        }
        var parts = names.prefix(4).map { name -> Markup in
            "<span class=\"metric\(name == key ? " key" : "")\" data-metric=\"\(name)\">\(name) <b>\(PageFormat.number(metrics[name]!))</b></span>"
        }
        if names.count > 4 { parts.append("<span class=\"muted\">+\(names.count - 4)</span>") }
        return parts.joined(" ")
    }

    static func notes(_ version: VersionEntry, context: StatusPageContext) -> Markup {
        var out: [Markup] = []
        let failedGates = version.gateResults.filter { !$0.passed }
        for gate in failedGates {
            out.append("<div class=\"gate failed\">✕ \(gate.gate)\(gate.detail.isEmpty ? "" : ": " + gate.detail)</div>")
        }
        if version.attempts > 1 {
            let attempts = version.attempts
            out.append("<div>\(attempts) attempts</div>")
        }
        if let failedAt = version.failedAt {
            out.append("<div>failed \(PageFormat.time(failedAt, now: context.now))</div>")
        }
        if let archivedAt = version.archivedAt {
            out.append("<div>archived \(PageFormat.time(archivedAt, now: context.now))</div>")
        }
        if let tail = version.logTail, !tail.isEmpty {
            out.append("<details class=\"log-tail\"><summary>output</summary><pre>\(tail)</pre></details>")
        }
        return out.joined("")
    }

    // MARK: Conditions

    static func conditionBadges(_ conditions: [ConditionEntry]) -> Markup {
        conditions.map { condition -> Markup in
            "<span class=\"badge condition condition-\(PageFormat.token(condition.type))\" title=\"\(condition.message)\">\(condition.type)\(condition.reason.isEmpty ? "" : " · " + condition.reason)</span>"
        }.joined(" ")
    }

    static func conditionMessages(_ conditions: [ConditionEntry], context: StatusPageContext) -> Markup {
        var out: Markup = .empty
        for condition in conditions where !condition.message.isEmpty {
            let commit: Markup = condition.observedCommit.map { " at <code title=\"\($0)\">\(PageFormat.shortCommit($0))</code>" } ?? .empty
            out += "<p class=\"condition-message condition-\(PageFormat.token(condition.type))\">\(condition.message) <span class=\"muted\">(\(PageFormat.time(condition.lastUpdate, now: context.now))\(commit))</span></p>\n"
        }
        return out
    }

    // MARK: Deployments

    static func deployments(_ state: StatusDocument, context: StatusPageContext) -> Markup {
        guard !state.deployments.isEmpty else {
            return "<section id=\"deployments\">\n<h2>Deployments</h2>\n<p class=\"muted\">No deployments.</p>\n</section>\n"
        }
        var out: Markup = "<section id=\"deployments\">\n<h2>Deployments</h2>\n"
        for deployment in state.deployments {
            out += self.deployment(deployment, models: Set(state.models.map(\.name)), context: context)
        }
        return out + "</section>\n"
    }

    /// Whole percentages of each weight that add up to 100 (largest remainders), or nil when
    /// every weight is 0.
    static func percentages(_ weights: [Double]) -> [Int]? {
        let total = weights.reduce(0, +)
        guard total > 0 else { return nil }
        let exact = weights.map { $0 * 100 / total }
        var whole = exact.map { Int($0.rounded(.down)) }
        let order = exact.indices.sorted { (exact[$0] - Double(whole[$0])) > (exact[$1] - Double(whole[$1])) }
        var missing = 100 - whole.reduce(0, +)
        for index in order where missing > 0 {
            whole[index] += 1
            missing -= 1
        }
        return whole
    }

    static func deployment(_ deployment: DeploymentEntry, models: Set<String>, context: StatusPageContext) -> Markup {
        let slug = PageFormat.slug(deployment.name)
        let now = context.now
        var out: Markup = "<article class=\"deployment\" id=\"deployment-\(slug)\" data-deployment=\"\(deployment.name)\">\n"
        out += "<h3>\(deployment.name) \(conditionBadges(deployment.conditions))</h3>\n"
        var facts: [Markup] = []
        if let model = deployment.model {
            facts.append(models.contains(model)
                ? "model <a href=\"#model-\(PageFormat.slug(model))\">\(model)</a>"
                : "model \(model)")
        }
        facts.append("endpoint <code class=\"endpoint\">/\(deployment.name)/</code>")
        out += "<p class=\"facts\">\(facts.joined(" · "))</p>\n"
        out += conditionMessages(deployment.conditions, context: context)

        // Traffic
        let backends = deployment.backends.sorted { $0.version < $1.version }
        let canary = deployment.rollout?.to
        if let shares = percentages(backends.map { Double($0.weight) }) {
            var bar: [Markup] = []
            var legend: [Markup] = []
            let total = Double(backends.map(\.weight).reduce(0, +))
            for (index, backend) in backends.enumerated() {
                let width = PageFormat.coordinate(Double(backend.weight) * 100 / total)
                let role = backend.version == canary ? " canary" : ""
                let label: Markup = "v\(backend.version) \(shares[index])%"
                if backend.weight > 0 {
                    bar.append("<span class=\"share color-\(index % 6)\(role)\" data-version=\"\(backend.version)\" data-percent=\"\(shares[index])\" style=\"width: \(width)%\" title=\"v\(backend.version): \(shares[index])% of the traffic\">\(label)</span>")
                }
                legend.append("<li class=\"color-\(index % 6)\(role)\"><span class=\"swatch\"></span>\(label)\(backend.version == canary ? " (canary)" : "")</li>")
            }
            out += """
                <div class="traffic" role="img" aria-label="traffic split of \(deployment.name)">\(bar)</div>
                <ul class="traffic-legend">\(legend)</ul>

                """
        } else {
            out += "<div class=\"traffic no-traffic\"><span class=\"muted\">No traffic: \(backends.isEmpty ? "no backends observed yet" : "every weight is 0")</span></div>\n"
        }

        // Rollout
        if let rollout = deployment.rollout {
            let from: Markup = rollout.from.map { " from v\($0)" } ?? .empty
            let step: Markup = rollout.step.map { ", step \($0) since \(PageFormat.time(rollout.stepStarted, now: now))" } ?? .empty
            out += """
                <p class="rollout phase-\(PageFormat.token(rollout.phase))" data-phase="\(rollout.phase)">Rolling out <b>v\(rollout.to)</b>\(from): \
                phase <b>\(rollout.phase)</b>\(step); started \(PageFormat.time(rollout.started, now: now))</p>

                """
        } else {
            out += "<p class=\"rollout phase-stable\" data-phase=\"stable\">No rollout in progress.</p>\n"
        }

        // Health
        if !backends.isEmpty {
            let shares = percentages(backends.map { Double($0.weight) })
            let rows = backends.enumerated().map { index, backend -> Markup in
                func count<T: BinaryInteger>(_ value: T?) -> String { value.map { String($0) } ?? "—" }
                let traffic = shares.map { String($0[index]) + "%" } ?? "0%"
                let replicas = String(backend.readyReplicas) + "/" + String(backend.replicas)
                let p95 = backend.p95Milliseconds.map { PageFormat.number($0) + " ms" } ?? "—"
                let error: Markup = backend.lastError.map { "<span class=\"error\">\($0)</span>" } ?? .empty
                return """
                    <tr class="backend health-\(PageFormat.token(backend.health))" data-version="\(backend.version)"><td>v\(backend.version)</td>\
                    <td>\(traffic)</td><td>\(replicas)</td>\
                    <td><span class="badge health-\(PageFormat.token(backend.health))">\(backend.health)</span></td>\
                    <td>\(count(backend.restarts))</td><td>\(count(backend.requests))</td>\
                    <td>\(count(backend.errors5xx))</td><td>\(count(backend.connectionErrors))</td>\
                    <td>\(p95)</td><td>\(error)</td></tr>

                    """
            }
            out += """
                <table class="backends">
                <thead><tr><th>Version</th><th>Traffic</th><th>Ready</th><th>Health</th><th>Restarts</th><th>Requests</th><th>5xx</th><th>Conn. errors</th><th>p95</th><th>Last error</th></tr></thead>
                <tbody>
                \(rows)</tbody>
                </table>

                """
        }

        // Quarantine
        if !deployment.quarantined.isEmpty {
            let items = deployment.quarantined.sorted { $0.version < $1.version }.map { entry -> Markup in
                "<li data-version=\"\(entry.version)\"><b>v\(entry.version)</b> \(entry.reason) <span class=\"muted\">(\(PageFormat.time(entry.at, now: now)))</span></li>"
            }
            out += "<div class=\"quarantined\"><h4>Quarantined versions</h4><ul>\(items)</ul></div>\n"
        }
        return out + "</article>\n"
    }

    // MARK: History

    static func history(_ events: [HistoryEntry], context: StatusPageContext) -> Markup {
        var out: Markup = "<section id=\"history\">\n<h2>Recent history</h2>\n"
        guard !events.isEmpty else {
            return out + "<p class=\"muted\">No changes recorded yet.</p>\n</section>\n"
        }
        // Newest first: by time, then by id (the document is already in that order).
        let ordered = events.enumerated().sorted { a, b in
            let (ta, tb) = (a.element.at, b.element.at)
            if ta != tb { return ta > tb }
            if let ia = a.element.id, let ib = b.element.id, ia != ib { return ia > ib }
            return a.offset < b.offset
        }.map(\.element)
        let rows = ordered.prefix(historyLimit).map { event -> Markup in
            let commit: Markup = event.commit.map { "<code title=\"\($0)\">\(PageFormat.shortCommit($0))</code>" } ?? .empty
            return """
                <tr class="event action-\(PageFormat.token(event.action.rawValue))"><td>\(PageFormat.time(Timestamp.iso8601(milliseconds: event.at, fractional: false), now: context.now))</td>\
                <td class="object">\(event.object.description)</td><td class="action">\(event.action.rawValue)</td>\
                <td class="change">\(change(event))</td><td class="reason">\(event.reason)</td>\
                <td class="actor">\(event.actor)</td><td>\(commit)</td></tr>

                """
        }
        out += """
            <table class="events">
            <thead><tr><th>When</th><th>Object</th><th>Action</th><th>Change</th><th>Reason</th><th>By</th><th>Commit</th></tr></thead>
            <tbody>
            \(rows)</tbody>
            </table>

            """
        if events.count > historyLimit {
            out += "<p class=\"muted\">The \(historyLimit) newest changes; <code>capstan history</code> has them all.</p>\n"
        }
        return out + "</section>\n"
    }

    static func change(_ event: HistoryEntry) -> Markup {
        func short(_ value: ParamValue) -> (String, String) {
            let full = value.description
            if case .map(let fields) = value, let status = fields["status"] {
                return (status.description, full)
            }
            return (PageFormat.truncated(full, 60), full)
        }
        switch (event.before.map(short), event.after.map(short)) {
        case (nil, nil): return .empty
        case (let before?, nil): return "<span title=\"\(before.1)\">\(before.0)</span> → <span class=\"muted\">∅</span>"
        case (nil, let after?): return "<span title=\"\(after.1)\">\(after.0)</span>"
        case (let before?, let after?): return "<span title=\"\(before.1)\">\(before.0)</span> → <span title=\"\(after.1)\">\(after.0)</span>"
        }
    }
}

extension Array where Element == Markup {
    func joined(_ separator: Markup) -> Markup {
        var out: Markup = .empty
        for (index, part) in enumerated() {
            if index > 0 { out += separator }
            out += part
        }
        return out
    }
}

extension PageFormat {
    /// RFC 3339, UTC, seconds.
    static func iso8601(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle())
    }
}
