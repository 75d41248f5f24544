import CapstanCore
import CapstanServer
import Foundation
import Testing

@Suite struct StatusPageTests {
    func render(_ status: Data, _ history: Data, context: StatusPageContext = StatusFixture.context) throws -> String {
        let (document, events) = try StatusFixture.documents(status, history)
        return StatusPage.render(status: document, history: events, context: context)
    }

    @Test func showsTheHeaderModelsDeploymentsAndHistory() throws {
        let (status, history) = try StatusFixture.rich()
        let html = try render(status, history)
        #expect(html.hasPrefix("<!DOCTYPE html>\n<html lang=\"en\">"))
        #expect(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"))
        // Header: repository @ ref, commit, last pass, lock.
        let header = try #require(html.between("<header id=\"summary\">", "</header>"))
        #expect(header.contains("https://git.example.com/ml/models.git</span> @ <span class=\"ref\">main</span>"))
        #expect(header.contains("<dd id=\"commit\"><code title=\"\(StatusFixture.commit)\">4f07bd3</code></dd>"))
        #expect(header.contains("<span class=\"badge outcome-converged\">converged</span>"))
        #expect(header.contains("Apply complete at 4f07bd3: 3 done, 0 failed, 0 skipped."))
        #expect(header.contains("held</span> by <code>h-1</code> (capstan run, pid 4242 on vm)"))
        #expect(header.contains("expires <time datetime=\"2026-11-27T20:15:45Z\" title=\"2026-11-27 20:15:45 UTC\">in 45s</time>"))
        #expect(header.contains("every 1m"))
        // Models.
        let churn = try #require(html.between("<article class=\"model\" id=\"model-churn\"", "</article>"))
        #expect(churn.contains("<span class=\"badge condition condition-ready\" title=\"v2 is validated; aliases match the spec\">Ready · Converged</span>"))
        #expect(churn.contains("<li class=\"alias\" data-alias=\"champion\" data-version=\"5\"><span class=\"alias-name\">champion</span> → <a href=\"#model-churn-v5\">v5</a></li>"))
        #expect(churn.occurrences(of: "<tr class=\"version ") == 6)
        // Newest first, with status, short commit and the key metric first.
        let rows = churn.components(separatedBy: "<tr class=\"version ").dropFirst().map { $0 }
        #expect(rows.map { $0.between("data-version=\"", "\"") } == ["6", "5", "4", "3", "2", "1"])
        #expect(rows[1].contains("<span class=\"alias-tag\">champion</span>"))
        #expect(rows[1].contains("<span class=\"metric key\" data-metric=\"auc\">auc <b>0.88</b></span> <span class=\"metric\" data-metric=\"log_loss\">log_loss <b>0.45</b></span>"))
        #expect(rows[1].contains("<code title=\"\(StatusFixture.commit)\">4f07bd3</code>"))
        #expect(rows[3].contains("<div class=\"gate failed\">✕ auc &gt;= 0.8: auc = 0.72</div>"))
        #expect(rows[2].contains("<pre>Traceback: ValueError: bad column</pre>"))
        #expect(html.contains("<article class=\"model\" id=\"model-fraud\""))
        // Deployments: traffic, health, rollout, conditions, quarantine.
        let prod = try #require(html.between("<article class=\"deployment\" id=\"deployment-churn-prod\"", "</article>"))
        #expect(prod.contains("model <a href=\"#model-churn\">churn</a>"))
        #expect(prod.contains("endpoint <code class=\"endpoint\">/churn-prod/</code>"))
        #expect(prod.contains("<span class=\"badge condition condition-progressing\" title=\"rolling out v3\">Progressing · RollingOut</span>"))
        #expect(prod.contains("<p class=\"rollout phase-stepping\" data-phase=\"stepping\">Rolling out <b>v5</b> from v2: phase <b>stepping</b>, step 1 since"))
        #expect(prod.occurrences(of: "<tr class=\"backend health-ready\"") == 2)
        #expect(prod.contains("<td>2/2</td>"))
        #expect(prod.contains("<td>12.5 ms</td>"))
        #expect(prod.contains("<div class=\"quarantined\"><h4>Quarantined versions</h4><ul><li data-version=\"3\"><b>v3</b> error rate 12% above 5% during the canary"))
        // History.
        let events = try #require(html.between("<section id=\"history\">", "</section>"))
        #expect(events.occurrences(of: "<tr class=\"event ") == 3)
        #expect(events.contains("<td class=\"object\">deployment/churn-prod</td><td class=\"action\">start-rollout</td><td class=\"change\"><span title=\"2\">2</span> → <span title=\"5\">5</span></td>"))
        // The validated event's `after` is summarized by its status.
        #expect(events.contains("<span title=\"trained\">trained</span> → <span title=\"{gates: [{gate: &quot;auc &gt;= 0.8&quot;, passed: true}], status: validated}\">validated</span>"))
        // Nothing external, nothing executable.
        #expect(!html.contains("<script"))
        #expect(!html.contains("src="))
        #expect(!html.contains("<link"))
        #expect(!html.contains("id=\"empty\""))
    }

    @Test func everyStringFromTheDocumentsIsEscaped() throws {
        let evil = "<script>alert('x')</script>"
        let attribute = "\" onmouseover=\"alert(1)"
        let model = StatusFixture.model(evil, versions: [
            StatusFixture.version(1, "validated", metrics: [evil: 0.5, "auc": 0.8], commit: evil,
                                  extra: ["created": evil]),
            StatusFixture.version(2, "rejected", metrics: [evil: 0.4], commit: attribute,
                                  gates: [["gate": evil, "passed": false, "detail": attribute]]),
            StatusFixture.version(3, evil, extra: ["log_tail": "</pre>" + evil]),
        ], aliases: [evil: 1, attribute: 2], extra: [
            "description": evil, "labels": [evil: attribute],
            "conditions": [["type": evil, "status": "True", "reason": attribute, "message": evil, "observed_commit": attribute, "last_update": evil]],
        ])
        let deployment = StatusFixture.deployment(evil, model: evil, weights: [(1, 50), (2, 50)],
                                                  rollout: ["to": 2, "phase": evil, "step": 1, "step_started": attribute, "started": evil],
                                                  quarantined: [["version": 2, "reason": evil, "at": attribute]])
        var withError = deployment
        withError["backends"] = [["version": 1, "weight": 1, "replicas": 1, "ready_replicas": 0, "health": evil, "restarts": 0,
                                  "last_error": evil, "requests": 0, "errors_5xx": 0, "connection_errors": 0]]
        withError["name"] = attribute
        withError["endpoint"] = evil
        let status = try StatusFixture.status(models: [model], deployments: [deployment, withError],
                                              lastPass: ["command": evil, "commit": attribute, "outcome": evil, "started": evil, "summary": evil],
                                              locks: [["holder": evil, "generation": 1, "command": attribute, "pid": 1, "host": evil, "started": evil, "expires": attribute]])
        let history = try StatusFixture.history([
            StatusFixture.event(1, reason: evil, secondsAgo: 10, before: evil, after: [evil: attribute], actor: evil),
        ])
        let context = StatusPageContext(repository: evil, ref: attribute, pollInterval: evil, lastObservedCommit: evil, now: StatusFixture.now)
        let html = try render(status, history, context: context)
        #expect(!html.contains("<script"))
        #expect(!html.contains("onmouseover=\""))
        #expect(!html.contains("alert('x')"))
        #expect(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"))
        #expect(html.contains("&quot; onmouseover=&quot;alert(1)"))
        // Ids built from names keep only safe characters.
        #expect(html.contains("id=\"model--script-alert--x----script-\""))
        // The page's own markup is intact: every article and table closes.
        #expect(html.occurrences(of: "<article") == html.occurrences(of: "</article>"))
        #expect(html.occurrences(of: "<table") == html.occurrences(of: "</table>"))
        #expect(html.occurrences(of: "<svg") == html.occurrences(of: "</svg>"))
    }

    /// A database written before metric names were checked may hold a NUL or an escape
    /// sequence in a metric name or a tail: the page shows them as U+FFFD, never raw.
    @Test func controlCharactersFromOlderStateNeverReachThePage() throws {
        let name = "acc\0uracy\u{1B}[31m"
        let model = StatusFixture.model("churn", versions: [
            StatusFixture.version(1, "validated", metrics: [name: 0.5, "auc": 0.8]),
            StatusFixture.version(2, "failed", extra: ["log_tail": "line\0one\u{7}\nline two\ttabbed\u{9B}"]),
        ])
        let status = try StatusFixture.status(models: [model], deployments: [])
        let history = try StatusFixture.history([StatusFixture.event(1, object: "model/churn", action: "trained", reason: "r\0\u{1B}", secondsAgo: 5)])
        let html = try render(status, history)
        for control in ["\0", "\u{1B}", "\u{7}", "\u{9B}"] {
            #expect(!html.contains(control), "\(control.debugDescription) reached the page")
        }
        #expect(html.contains("acc\u{FFFD}uracy\u{FFFD}[31m"))
        #expect(html.contains("line\u{FFFD}one\u{FFFD}\nline two\ttabbed\u{FFFD}"))
    }

    @Test func anEmptyStateRendersAHelpfulPage() throws {
        let status = try StatusFixture.status(models: [], lastPass: nil)
        let html = try render(status, try StatusFixture.history([]))
        let empty = try #require(html.between("<section id=\"empty\" class=\"empty\">", "</section>"))
        #expect(empty.contains("<h2>Nothing applied yet</h2>"))
        #expect(empty.contains("The controller follows <code>https://git.example.com/ml/models.git</code> @ <code>main</code>, checking it every 1m."))
        #expect(empty.contains("capstan init"))
        #expect(empty.contains("/api/v1/reconcile"))
        #expect(html.contains("<span class=\"muted\">no pass yet</span>"))
        #expect(html.contains("<span class=\"badge lock-free\">free</span>"))
        #expect(html.contains("No changes recorded yet."))
        #expect(!html.contains("id=\"models\""))
        #expect(!html.contains("<svg"))

        // A pass that ran but left no models (say, the manifests are invalid) says so.
        let failed = try StatusFixture.status(models: [], lastPass: [
            "command": "run", "outcome": "failed", "started": StatusFixture.time(5), "summary": "2 manifest errors; nothing changed.",
        ])
        let after = try render(failed, try StatusFixture.history([]))
        #expect(after.contains("<h2>No models yet</h2>"))
        #expect(after.contains("The last pass (failed) left the registry without models: 2 manifest errors; nothing changed."))
        #expect(after.contains("<span class=\"badge outcome-failed\">failed</span>"))
    }

    struct PlotCase: Sendable, CustomTestStringConvertible {
        var name: String
        /// (status, metrics) per version, numbered from 1.
        var versions: [(String, [String: Double])]
        var keyMetric: String?
        var expectedMetric: String
        var validated: Int
        var rejected: Int

        var testDescription: String { name }
    }

    static let plotCases: [PlotCase] = [
        PlotCase(name: "validated and rejected with the metric; failed, training and trained versions are left out",
                 versions: [("validated", ["auc": 0.8]), ("rejected", ["auc": 0.7]), ("failed", [:]), ("validated", ["auc": 0.9]),
                            ("trained", ["auc": 0.95]), ("training", [:]), ("rejected", ["auc": 0.6])],
                 expectedMetric: "auc", validated: 2, rejected: 2),
        PlotCase(name: "the metric most versions have, first in name order among equals",
                 versions: [("validated", ["b": 1, "a": 2]), ("validated", ["b": 1.5, "a": 2.5, "c": 1]), ("rejected", ["c": 3, "b": 0.5])],
                 expectedMetric: "b", validated: 2, rejected: 1),
        PlotCase(name: "ties go to the first name in sorted order",
                 versions: [("validated", ["zeta": 1, "alpha": 2]), ("validated", ["zeta": 2, "alpha": 3])],
                 expectedMetric: "alpha", validated: 2, rejected: 0),
        PlotCase(name: "key_metric when the document names it, even if few versions have it",
                 versions: [("validated", ["auc": 0.8, "f1": 0.5]), ("validated", ["auc": 0.85]), ("rejected", ["auc": 0.7, "f1": 0.3])],
                 keyMetric: "f1", expectedMetric: "f1", validated: 1, rejected: 1),
        PlotCase(name: "one version", versions: [("validated", ["auc": 0.8])], expectedMetric: "auc", validated: 1, rejected: 0),
    ]

    @Test(arguments: plotCases)
    func thePlotHasAPointPerValidatedOrRejectedVersionWithTheMetric(_ plotCase: PlotCase) throws {
        let versions = plotCase.versions.enumerated().map { StatusFixture.version($0.offset + 1, $0.element.0, metrics: $0.element.1) }
        let model = StatusFixture.model("m", versions: versions, extra: plotCase.keyMetric.map { ["key_metric": $0] } ?? [:])
        let html = try render(try StatusFixture.status(models: [model]), try StatusFixture.history([]))
        let svg = try #require(html.between("<svg class=\"plot\" id=\"plot-m\"", "</svg>"))
        #expect(svg.occurrences(of: "class=\"point ") == plotCase.validated + plotCase.rejected)
        #expect(svg.occurrences(of: "<circle class=\"point validated\"") == plotCase.validated)
        #expect(svg.occurrences(of: "<path class=\"point rejected\"") == plotCase.rejected)
        #expect(svg.contains(">\(plotCase.expectedMetric)</text>"))
        #expect(html.contains("<figcaption><code>\(plotCase.expectedMetric)</code> by version (\(plotCase.validated + plotCase.rejected) versions)"))
        // The axes carry the lowest and highest value.
        let values = versions.compactMap { v -> Double? in
            guard ["validated", "rejected"].contains(v["status"] as? String) else { return nil }
            return (v["metrics"] as? [String: Double])?[plotCase.expectedMetric]
        }
        #expect(svg.contains("y-max\"") || svg.contains("y-max y-min\""))
        #expect(svg.contains(">\(Self.format(values.max()!))</text>") && svg.contains(">\(Self.format(values.min()!))</text>"))
        #expect(svg.occurrences(of: "<polyline class=\"line\"") == (plotCase.validated > 1 ? 1 : 0))
    }

    static func format(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }

    @Test func aPlotPutsHigherValuesHigherAndLaterVersionsFurtherRight() throws {
        let model = StatusFixture.model("m", versions: [
            StatusFixture.version(1, "validated", metrics: ["auc": 0.5]),
            StatusFixture.version(2, "validated", metrics: ["auc": 0.9]),
            StatusFixture.version(3, "rejected", metrics: ["auc": 0.7]),
        ], aliases: ["champion": 2])
        let html = try render(try StatusFixture.status(models: [model]), try StatusFixture.history([]))
        let svg = try #require(html.between("<svg class=\"plot\"", "</svg>"))
        let circles = svg.components(separatedBy: "<circle class=\"point validated\"").dropFirst()
        let points = circles.compactMap { c -> (Double, Double)? in
            guard let x = c.between("cx=\"", "\"").flatMap(Double.init), let y = c.between("cy=\"", "\"").flatMap(Double.init) else { return nil }
            return (x, y)
        }
        #expect(points.count == 2)
        #expect(points[0].0 < points[1].0)
        #expect(points[0].1 > points[1].1)  // SVG y grows downwards
        #expect(svg.contains("<title>v3 rejected: auc 0.7</title>"))
        #expect(svg.contains("class=\"alias-label\"") && svg.contains(">champion</text>"))
    }

    @Test(arguments: [
        ([(2, 90), (5, 10)], ["90", "10"]),
        ([(1, 1), (2, 1), (3, 1)], nil),
        ([(1, 2), (2, 1)], ["67", "33"]),
        ([(1, 100), (2, 0)], ["100"]),
    ] as [([(Int, Int)], [String]?)])
    func trafficSharesArePercentagesThatAddUpTo100(weights: [(Int, Int)], expected: [String]?) throws {
        let deployment = StatusFixture.deployment("prod", model: "churn", weights: weights)
        let html = try render(try StatusFixture.status(models: [], deployments: [deployment]), try StatusFixture.history([]))
        let traffic = try #require(html.between("<div class=\"traffic\"", "</div>"))
        let percents = traffic.components(separatedBy: "data-percent=\"").dropFirst().compactMap { $0.split(separator: "\"").first.map(String.init) }
        if let expected { #expect(percents == expected) }
        #expect(percents.compactMap(Int.init).reduce(0, +) == 100)
        // Bar widths are the exact shares.
        let total = Double(weights.map(\.1).reduce(0, +))
        let widths = traffic.components(separatedBy: "style=\"width: ").dropFirst().compactMap { $0.split(separator: "%").first.flatMap { Double($0) } }
        #expect(widths.count == weights.filter { $0.1 > 0 }.count)
        for (width, weight) in zip(widths, weights.filter { $0.1 > 0 }) {
            #expect(abs(width - Double(weight.1) * 100 / total) < 0.01)
        }
    }

    @Test func aDeploymentWithoutTrafficSaysSo() throws {
        let deployment = StatusFixture.deployment("prod", model: "gone", weights: [])
        let html = try render(try StatusFixture.status(models: [], deployments: [deployment]), try StatusFixture.history([]))
        #expect(html.contains("<div class=\"traffic no-traffic\"><span class=\"muted\">No traffic: no backends observed yet</span></div>"))
        #expect(html.contains("<p class=\"rollout phase-stable\" data-phase=\"stable\">No rollout in progress.</p>"))
        // A model the registry does not hold is named, not linked.
        #expect(html.contains("model gone · endpoint"))
    }

    @Test func historyIsNewestFirstAndAtMostFifty() throws {
        // Oldest first in the document, on purpose: the page orders them itself.
        let events = (1...60).map { StatusFixture.event($0, object: "model/churn/v\($0)", secondsAgo: Double(1000 - $0)) }
        let html = try render(try StatusFixture.status(models: []), try StatusFixture.history(events))
        let history = try #require(html.between("<section id=\"history\">", "</section>"))
        let objects = history.components(separatedBy: "<td class=\"object\">").dropFirst().compactMap { $0.split(separator: "<").first.map(String.init) }
        #expect(objects.count == StatusPage.historyLimit)
        #expect(objects.first == "model/churn/v60")
        #expect(objects.last == "model/churn/v11")
        #expect(history.contains("The 50 newest changes; <code>capstan history</code> has them all."))
    }

    @Test func refreshFollowsTheContext() throws {
        let status = try StatusFixture.status(models: []), history = try StatusFixture.history([])
        var context = StatusFixture.context
        context.refreshSeconds = 30
        #expect(try render(status, history, context: context).contains("<meta http-equiv=\"refresh\" content=\"30\">"))
        context.refreshSeconds = 0
        let html = try render(status, history, context: context)
        #expect(!html.contains("http-equiv=\"refresh\""))
        #expect(html.contains("This page does not reload by itself."))
        #expect(StatusPageContext().refreshSeconds == 5)
    }

    @Test func unknownFieldsOfANewerCapstanAreIgnored() throws {
        // Fields are added within format_version 1: a page of an older controller ignores them.
        let status = Data("""
            {"format_version": 1, "state_dir": "/s", "future_field": {"x": [1, 2]}, "locks": [],
             "models": [{"name": "churn", "key_metric": "auc", "shiny": true, "labels": {}, "aliases": {}, "conditions": [],
                         "versions": [{"version": 1, "status": "validated", "fingerprint": "f", "metrics": {"auc": 0.9}, "params": {},
                                       "gate_results": [], "attempts": 1, "new": "x"}]}],
             "deployments": []}
            """.utf8)
        let history = Data(#"{"format_version": 1, "events": [{"id": 1, "object": "model/churn", "action": "register", "at": "2026-11-27T20:00:00Z", "actor": "a", "host": "h", "reason": "", "later": true}]}"#.utf8)
        let html = try render(status, history)
        #expect(html.contains("id=\"model-churn\""))
        #expect(html.occurrences(of: "<tr class=\"version ") == 1)
        #expect(html.contains("<td class=\"action\">register</td>"))
    }

    @Test func theQuickStartDocumentsRender() throws {
        // The output of `capstan status --format json` and `capstan history --format json` after
        // the quick start (docs/state.md), verbatim but for the hashes.
        let status = Data(#"""
            {
              "deployments" : [],
              "format_version" : 1,
              "last_pass" : {"command" : "apply", "commit" : "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5", "finished" : "2026-11-27T18:07:27Z",
                             "outcome" : "converged", "started" : "2026-11-27T18:07:26Z", "summary" : "Apply complete at 4f07bd3: 3 done, 0 failed, 0 skipped."},
              "locks" : [],
              "models" : [{
                  "aliases" : {"champion" : 2},
                  "conditions" : [{"last_update" : "2026-11-27T18:07:27Z", "message" : "v2 is validated; aliases match the spec",
                                   "observed_commit" : "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5", "reason" : "Converged", "status" : "True", "type" : "Ready"}],
                  "description" : "Predicts whether a customer churns in the next 30 days.",
                  "labels" : {"team" : "growth"},
                  "name" : "churn",
                  "versions" : [
                    {"artifact_digest" : "sha256:7a3b", "attempts" : 1, "commit" : "d564d3345f8e96813886b149a42b8f4e643e32b9", "created" : "2026-11-27T18:07:26Z",
                     "fingerprint" : "a4e8", "gate_results" : [{"detail" : "accuracy = 0.6833", "gate" : "accuracy >= 0.65", "passed" : true}],
                     "metrics" : {"accuracy" : 0.6833, "log_loss" : 0.5454}, "params" : {"epochs" : 20, "learning_rate" : 0.3, "seed" : 7},
                     "status" : "validated", "version" : 1},
                    {"artifact_digest" : "sha256:5f17", "attempts" : 1, "commit" : "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5", "created" : "2026-11-27T18:07:26Z",
                     "fingerprint" : "d47f", "gate_results" : [], "metrics" : {"accuracy" : 0.6833, "log_loss" : 0.5274},
                     "params" : {"epochs" : 200, "learning_rate" : 0.3, "seed" : 7}, "status" : "validated", "version" : 2}
                  ]
              }],
              "state_dir" : "/tmp/capstan-quickstart/state"
            }
            """#.utf8)
        let history = Data(#"""
            {"events" : [
              {"action" : "move-alias", "actor" : "capstan apply (root)", "after" : 2, "at" : "2026-11-27T18:07:27Z", "before" : 1,
               "commit" : "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5", "host" : "vm", "id" : 9, "object" : "model/churn/alias/champion",
               "reason" : "champion follows the newest validated version; it moves if the candidate passes its gates"},
              {"action" : "create-version", "actor" : "capstan apply (root)", "after" : {"attempt" : 1, "fingerprint" : "d47f", "status" : "training"},
               "at" : "2026-11-27T18:07:26Z", "commit" : "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5", "host" : "vm", "id" : 6,
               "object" : "model/churn/v2", "reason" : "param epochs changed 20 → 200"}
            ], "format_version" : 1}
            """#.utf8)
        let html = try render(status, history)
        #expect(html.contains("id=\"model-churn\""))
        #expect(html.contains("<figcaption><code>accuracy</code> by version (2 versions)"))
        #expect(html.occurrences(of: "<circle class=\"point validated\"") == 2)
        #expect(html.contains("<p class=\"muted\">No deployments.</p>"))
        #expect(html.contains("<td class=\"change\"><span title=\"{attempt: 1, fingerprint: d47f, status: training}\">training</span></td>"))
        #expect(html.contains("param epochs changed 20 → 200"))
    }
}
