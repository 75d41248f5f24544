import CapstanCore
import Foundation

/// A model card as one self-contained HTML5 page (`capstan card --format html`, and the
/// controller's `GET /models/<name>/card`): inline CSS (the status page's), no scripts, no
/// external resources; every value from the records is escaped.
///
/// Ids tests and users can rely on: `#card`, `#about` (`.owners`, `.intended-use`,
/// `.limitations`, `.ethics`), `#lineage`, `#metrics` (`tr.metric`), `#gates` (`li.gate.passed`,
/// `li.gate.failed`), `#history` (`tr.event`), `#serving` (`tr.serving`).
public enum ModelCardPage {
    public static func render(_ card: ModelCard) -> String {
        page(card).html
    }

    static func page(_ card: ModelCard) -> Markup {
        func time(_ ms: Int64) -> Markup { .text(PromotionReport.time(ms)) }
        var body: Markup = "<header id=\"card\"><h1>\(card.title)</h1>\n"
        if let description = card.description { body += "<p class=\"description\">\(description)</p>\n" }
        let holds: Markup = card.aliases.isEmpty ? .empty : "; holds \(card.aliases.joined(separator: ", "))"
        body += "<p>Status <strong class=\"status \(card.version.status.rawValue)\">\(card.version.status.rawValue)</strong>\(holds). Generated \(time(card.generatedAt)).</p></header>\n<main>\n"

        body += "<section id=\"about\"><h2>About the model</h2>\n<dl>\n"
        let about = card.card ?? CardSpec()
        body += "<dt>Owners</dt><dd class=\"owners\">\(about.owners.isEmpty ? "not stated" : about.owners.joined(separator: ", "))</dd>\n"
        body += "<dt>Intended use</dt><dd class=\"intended-use\">\(about.intendedUse ?? "not stated")</dd>\n"
        body += "<dt>Limitations</dt><dd class=\"limitations\">\(about.limitations ?? "not stated")</dd>\n"
        body += "<dt>Ethical considerations</dt><dd class=\"ethics\">\(about.ethicalConsiderations ?? "not stated")</dd>\n</dl></section>\n"

        body += "<section id=\"lineage\"><h2>Lineage</h2>\n<ul>\n"
        if let commit = card.trainedAt {
            body += "<li>Trained at commit <code>\(commit.id)</code> by \(commit.author), \(time(commit.time)): \(commit.summary)</li>\n"
        } else if let commit = card.version.commit {
            body += "<li>Trained at commit <code>\(commit)</code> (no longer in the repository)</li>\n"
        } else {
            body += "<li>Registered outside Capstan: not trained at a commit</li>\n"
        }
        body += "<li>Fingerprint <code>\(card.fingerprint)</code></li>\n"
        if let training = card.training {
            if !training.command.isEmpty {
                body += "<li>Command <code>\(training.command.joined(separator: " "))</code> in <code>\(training.workdir.isEmpty ? "." : training.workdir)</code></li>\n"
            }
            for key in training.params.keys.sorted() { body += "<li>Param <code>\(key)=\(training.params[key]!.description)</code></li>\n" }
            for input in training.inputs { body += "<li>Input <code>\(input.input)</code>: <code>\(input.identity)</code></li>\n" }
        }
        if !card.environment.isEmpty { body += "<li>Environment (names only): <code>\(card.environment.joined(separator: ", "))</code></li>\n" }
        body += "<li>Data checks: none recorded</li>\n</ul></section>\n"

        body += "<section id=\"metrics\"><h2>Metrics and gates</h2>\n"
        if card.version.metrics.isEmpty {
            body += "<p>No metrics recorded.</p>\n"
        } else {
            body += "<table class=\"metrics\"><thead><tr><th>metric</th><th>value</th></tr></thead><tbody>\n"
            for key in card.version.metrics.keys.sorted() {
                body += "<tr class=\"metric\"><td>\(key)</td><td class=\"num\">\(Gates.format(card.version.metrics[key]!))</td></tr>\n"
            }
            body += "</tbody></table>\n"
        }
        body += "<ul id=\"gates\">\n"
        if card.version.gateResults.isEmpty { body += "<li>No gates.</li>\n" }
        for g in card.version.gateResults {
            body += "<li class=\"gate \(g.passed ? "passed" : "failed")\">\(g.passed ? "✅" : "❌") \(g.gate): \(g.detail)</li>\n"
        }
        body += "</ul></section>\n"

        body += "<section id=\"history\"><h2>History</h2>\n"
        if card.history.isEmpty {
            body += "<p>Nothing recorded.</p>\n"
        } else {
            body += "<table><thead><tr><th>time</th><th>action</th><th>change</th><th>by</th><th>commit</th><th>reason</th></tr></thead><tbody>\n"
            for e in card.history {
                let commit: Markup = e.commit.map { "<code>\(String($0.prefix(10)))</code>" + (e.carriedBy.map { " \($0)" } ?? "") } ?? "—"
                body += "<tr class=\"event\"><td>\(time(e.at))</td><td>\(e.action.rawValue)</td><td>\(e.change)</td><td>\(e.actor)</td><td>\(commit)</td><td>\(e.reason)</td></tr>\n"
            }
            body += "</tbody></table>\n"
        }
        body += "</section>\n<section id=\"serving\"><h2>Serving</h2>\n"
        if card.serving.isEmpty {
            body += "<p>v\(String(card.version.version)) has not served in any deployment.</p>\n"
        } else {
            body += "<table><thead><tr><th>time</th><th>deployment</th><th>action</th><th>share</th><th>reason</th></tr></thead><tbody>\n"
            for e in card.serving {
                let share = e.weight.map { "\($0)%" } ?? "left"
                body += "<tr class=\"serving\"><td>\(time(e.at))</td><td>\(e.deployment)</td><td>\(e.action.rawValue)</td><td class=\"num\">\(share)</td><td>\(e.reason)</td></tr>\n"
            }
            body += "</tbody></table>\n"
        }
        body += "<p>Live performance: not monitored.</p></section>\n</main>\n"
        return """
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(card.title)</title>
            <style>\(StatusPage.stylesheet)</style>
            </head>
            <body>
            \(body)</body>
            </html>

            """
    }
}
