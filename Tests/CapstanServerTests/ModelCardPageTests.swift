import CapstanCore
@testable import CapstanServer
@testable import CapstanTestSupport
import Foundation
import Hummingbird
import NIOCore
import Testing

/// The model card page (`capstan card --format html`): every record escaped, and the page as
/// headless Chromium parses it.
struct ModelCardPageTests {
    /// A card with a full history, and text from the records that tries to be markup.
    static func card() -> ModelCard {
        let t0: Int64 = 1_793_872_800_000
        let version = VersionSummary(version: 7, status: .validated, metrics: ["accuracy": 0.93, "log_loss": 0.21],
                                     gateResults: [GateResult(gate: "accuracy >= 0.9", passed: true, detail: "accuracy = 0.93"),
                                                   GateResult(gate: "no regression against champion", passed: true, detail: "against v5")],
                                     commit: String(repeating: "a", count: 40))
        let training = TrainingDescription(command: ["python3", "train.py"], workdir: "models/churn", params: ["epochs": .int(200)],
                                           env: ["PYTHONHASHSEED": "0"], secretEnv: ["FEATURE_TOKEN"],
                                           inputs: [InputIdentity(input: "data/churn.csv", identity: "git-blob:" + String(repeating: "b", count: 40))])
        return ModelCard(
            model: "churn", description: "Predicts churn <script>alert(1)</script>",
            card: CardSpec(owners: ["growth-ml@example.com", "<b>eve</b>"], intendedUse: "Retention offers & nothing else",
                           limitations: "Accounts younger than 30 days", ethicalConsiderations: nil),
            version: version, fingerprint: String(repeating: "c", count: 64), aliases: ["champion"],
            trainedAt: ModelCard.Commit(id: String(repeating: "a", count: 40), author: "Ada <ada@example.com>", time: t0,
                                        summary: "Train longer (#41)"),
            training: training, environment: ["FEATURE_TOKEN", "PYTHONHASHSEED"],
            history: [
                ModelCard.Event(at: t0 + 1000, actor: "capstan apply (ci)", action: .trained, object: "model/churn/v7", change: "v7",
                                reason: "trained in 2s", commit: String(repeating: "a", count: 40), carriedBy: "Train longer (#41)"),
                ModelCard.Event(at: t0 + 2000, actor: "capstan run", action: .moveAlias, object: "model/churn/alias/champion",
                                change: "champion: v5 → v7", reason: "the spec pins champion to v7 \"<img src=x>\"",
                                commit: String(repeating: "d", count: 40), carriedBy: "Promote churn v7 to champion (#42)"),
            ],
            serving: [PromotionReport.ServingEvent(at: t0 + 3000, deployment: "churn-prod", action: .startRollout, weight: 10, reason: "canary"),
                      PromotionReport.ServingEvent(at: t0 + 9000, deployment: "churn-prod", action: .promote, weight: 100, reason: "analysis passed")],
            generatedAt: t0 + 10_000)
    }

    @Test func recordsAreEscapedAndEverySectionIsThere() {
        let html = ModelCardPage.render(Self.card())
        #expect(!html.contains("<script>alert(1)</script>"))
        #expect(html.contains("Predicts churn &lt;script&gt;alert(1)&lt;/script&gt;"))
        #expect(!html.contains("<b>eve</b>") && !html.contains("<img src=x>"))
        #expect(html.contains("Retention offers &amp; nothing else"))
        for id in ["card", "about", "lineage", "metrics", "gates", "history", "serving"] { #expect(html.contains("id=\"\(id)\""), "\(id)") }
        #expect(html.occurrences(of: "<tr class=\"event\">") == 2)
        #expect(html.occurrences(of: "<tr class=\"serving\">") == 2)
        #expect(html.occurrences(of: "<li class=\"gate passed\">") == 2)
        #expect(html.contains("Promote churn v7 to champion (#42)"))
        #expect(!html.contains("<script") && !html.contains("src=\"http"), "no scripts, no external resources")
        let markdown = Self.card().markdown
        #expect(markdown.contains("- Owners: growth-ml@example.com, <b>eve</b>"))
        #expect(markdown.contains("move-alias champion: v5 → v7 by capstan run at `dddddddddd` (Promote churn v7 to champion (#42))"))
        #expect(markdown.contains("- Environment (names only): `FEATURE_TOKEN`, `PYTHONHASHSEED`"))
    }

    @Test func chromiumParsesTheCardAsWritten() async throws {
        guard let chromium = Chromium.executable() else {
            Issue.record("Chromium is not installed: apt-get install chromium (CI installs it); this test drives it headless")
            return
        }
        let folder = try TempDir()
        let html = ModelCardPage.render(Self.card())
        try await withHTTPServer({ request in
            guard request.uri.path == "/" else { return Response(status: .notFound) }
            return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
        }) { port in
            let dump = try await Chromium.run(chromium, ["--dump-dom", "http://127.0.0.1:\(port)/"], in: folder.url, name: "card")
            #expect(!dump.timedOut && dump.status == 0, "chromium --dump-dom exited \(dump.status): \(dump.stderr.suffix(2000))")
            let dom = String(decoding: dump.stdout, as: UTF8.self)
            #expect(dom.contains("<h1>Model card: churn v7</h1>"), "\(dom.prefix(2000))")
            #expect(dom.occurrences(of: "<tr class=\"event\">") == 2)
            #expect(dom.occurrences(of: "<tr class=\"serving\">") == 2)
            #expect(dom.occurrences(of: "<tr") == html.occurrences(of: "<tr"), "the parser moved nothing out of place")
            #expect(!dom.contains("<script>alert"), "escaped text stays text")
            #expect(dom.contains("<dd class=\"owners\">growth-ml@example.com, &lt;b&gt;eve&lt;/b&gt;</dd>"))
        }
    }
}
