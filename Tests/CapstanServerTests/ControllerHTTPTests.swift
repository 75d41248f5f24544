import CapstanServer
import Crypto
import Foundation
import Logging
import Synchronization
import Testing

@Suite struct WebhookAuthenticatorTests {
    let auth = WebhookAuthenticator(secret: "It's a Secret to Everybody")
    let body = Array("Hello, World!".utf8)

    func headers(_ pairs: [String: String]) -> (String) -> String? {
        { name in pairs.first { $0.key.lowercased() == name }?.value }
    }

    @Test func gitHubsDocumentedExampleIsAccepted() {
        // The example of GitHub's "Validating webhook deliveries" page.
        let signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        #expect(auth.signature(of: body) == signature)
        #expect(auth.verify(body: body, header: headers(["X-Hub-Signature-256": signature])) == .accepted(provider: "github"))
    }

    @Test func aWrongBodyOrSecretOrMalformedSignatureIsRejected() {
        let signature = auth.signature(of: body)
        let other = Array("Hello, World?".utf8)
        guard case .rejected(let reason) = auth.verify(body: other, header: headers(["X-Hub-Signature-256": signature])) else {
            Issue.record("accepted a signature of another body"); return
        }
        #expect(reason.contains("does not match"))
        let forged = WebhookAuthenticator(secret: "guess").signature(of: body)
        #expect(auth.verify(body: body, header: headers(["X-Hub-Signature-256": forged])) != .accepted(provider: "github"))
        for malformed in ["sha1=abcd", "sha256=", "sha256=zz", "sha256=" + String(repeating: "a", count: 63), String(signature.dropFirst(7))] {
            guard case .rejected(let reason) = auth.verify(body: body, header: headers(["X-Capstan-Signature": malformed])) else {
                Issue.record("accepted \(malformed)"); continue
            }
            #expect(reason.contains("sha256=<64 hex digits>"))
        }
        // Upper-case hex is still the same MAC.
        #expect(auth.verify(body: body, header: headers(["X-Capstan-Signature": signature.uppercased().replacingOccurrences(of: "SHA256=", with: "sha256=")]))
                == .accepted(provider: "generic"))
    }

    @Test func gitLabTokensAndMissingSignatures() {
        #expect(auth.verify(body: body, header: headers(["X-Gitlab-Token": "It's a Secret to Everybody"])) == .accepted(provider: "gitlab"))
        #expect(auth.verify(body: body, header: headers(["X-Gitlab-Token": "It's a Secret to Everybody "])) != .accepted(provider: "gitlab"))
        #expect(auth.verify(body: body, header: headers(["X-Gitlab-Token": ""])) != .accepted(provider: "gitlab"))
        guard case .rejected(let reason) = auth.verify(body: body, header: headers([:])) else { Issue.record("accepted no signature"); return }
        #expect(reason.contains("no signature"))
        guard case .rejected(let sha1) = auth.verify(body: body, header: headers(["X-Hub-Signature": "sha1=0"])) else { Issue.record("accepted sha1"); return }
        #expect(sha1.contains("X-Hub-Signature-256"))
    }
}

@Suite struct ControllerMetricsTests {
    @Test func labelledSeriesAreReplacedNotAccumulated() {
        let metrics = ControllerMetrics()
        metrics.recordAppliedCommit("aaa")
        metrics.recordAppliedCommit("bbb")
        metrics.recordRollouts([(deployment: "churn-prod", phase: "stepping", canaryWeight: 10, step: 1)])
        metrics.recordRollouts([(deployment: "churn-prod", phase: "stable", canaryWeight: 0, step: 0)])
        metrics.recordPass(outcome: "converged", duration: .milliseconds(120), changes: 3, waiting: 1)
        metrics.recordStep(kind: "train", result: "done")
        metrics.recordStep(kind: "train", result: "done")
        let text = metrics.exposition()
        #expect(!text.contains("commit=\"aaa\""))
        #expect(text.contains("capstan_last_applied_commit_info{commit=\"bbb\"} 1"))
        #expect(!text.contains("phase=\"stepping\""))
        #expect(text.contains("capstan_rollout_phase{deployment=\"churn-prod\",phase=\"stable\"} 1"))
        #expect(text.contains("capstan_rollout_canary_weight_percent{deployment=\"churn-prod\"} 0"))
        #expect(text.contains("capstan_passes_total{outcome=\"converged\"} 1"))
        #expect(text.contains("capstan_passes_total{outcome=\"failed\"} 0"))
        #expect(text.contains("capstan_steps_total{kind=\"train\",result=\"done\"} 2"))
        #expect(text.contains("capstan_plan_changes 3"))
        #expect(text.contains("capstan_pass_duration_seconds_count 1"))
        #expect(text.contains("# TYPE capstan_pass_duration_seconds histogram"))
    }
}

@Suite struct LogFormatTests {
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        func append(_ s: String) { lines.withLock { $0.append(s) } }
    }

    @Test func jsonLinesCarryTheMetadata() throws {
        let captured = Lines()
        var logger = Logger(label: "capstan") { CapstanLogHandler(label: $0, format: .json, sink: { captured.append($0) }) }
        logger[metadataKey: "commit"] = "4f07bd3"
        logger.info("pass started", metadata: ["trigger": "github webhook", "model": "churn"])
        logger.debug("not shown at info")
        let lines = captured.lines.withLock { $0 }
        #expect(lines.count == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
        #expect(object["msg"] as? String == "pass started")
        #expect(object["level"] as? String == "info")
        #expect(object["commit"] as? String == "4f07bd3")
        #expect(object["trigger"] as? String == "github webhook")
        #expect(object["model"] as? String == "churn")
        let ts = try #require(object["ts"] as? String)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let at = try #require(formatter.date(from: ts))
        #expect(abs(at.timeIntervalSinceNow) < 60)
        #expect(lines[0].hasSuffix("}\n"))
    }

    @Test func textLinesQuoteValuesWithSpaces() {
        let captured = Lines()
        let logger = Logger(label: "capstan") { CapstanLogHandler(label: $0, format: .text, sink: { captured.append($0) }) }
        logger.warning("state locked", metadata: ["holder": "capstan apply (alice)", "pid": "42"])
        let line = captured.lines.withLock { $0 }.first ?? ""
        #expect(line.contains(" warning state locked holder=\"capstan apply (alice)\" pid=42\n"))
    }
}

@Suite struct MLflowWebhookAuthenticatorTests {
    let body = Array(#"{"entity": "model_version_alias", "action": "created"}"#.utf8)
    let now: Int64 = 1_800_000_000

    func header(_ headers: [String: String]) -> (String) -> String? {
        let lower = Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value) })
        return { lower[$0] }
    }

    /// The signature MLflow computes (mlflow/webhooks/delivery.py): base64 of
    /// HMAC-SHA256(secret, "<delivery id>.<timestamp>.<payload>"), prefixed `v1,`.
    @Test func acceptsMLflowsSignatureOnce() {
        let auth = MLflowWebhookAuthenticator(secret: "whsec-test")
        let headers = auth.headers(for: body, delivery: "d-1", timestamp: now)
        let mac = HMAC<SHA256>.authenticationCode(for: Array("d-1.\(now).".utf8) + body, using: SymmetricKey(data: Data("whsec-test".utf8)))
        #expect(headers["X-MLflow-Signature"] == "v1," + Data(mac).base64EncodedString())
        #expect(auth.verify(body: body, now: now + 10, header: header(headers)) == .accepted(deliveryID: "d-1"))
        // The same delivery again (a retry, or a replay within the tolerance): not a second pass.
        #expect(auth.verify(body: body, now: now + 20, header: header(headers)) == .duplicate(deliveryID: "d-1"))
    }

    @Test func refusesWhatMLflowWouldNotSend() {
        let auth = MLflowWebhookAuthenticator(secret: "whsec-test")
        let good = auth.headers(for: body, delivery: "d-2", timestamp: now)
        var noID = good
        noID["X-MLflow-Delivery-Id"] = nil
        var otherID = good
        otherID["X-MLflow-Delivery-Id"] = "d-3"
        var badForm = good
        badForm["X-MLflow-Signature"] = "sha256=00"
        for headers in [[:], noID, otherID, badForm, MLflowWebhookAuthenticator(secret: "guess").headers(for: body, delivery: "d-2", timestamp: now)] {
            guard case .rejected = auth.verify(body: body, now: now, header: header(headers)) else {
                Issue.record("accepted \(headers)")
                continue
            }
        }
        guard case .rejected(let reason) = auth.verify(body: body, now: now + 301, header: header(good)) else {
            Issue.record("a delivery older than the tolerance was accepted")
            return
        }
        #expect(reason.contains("replay"))
        guard case .rejected = auth.verify(body: Array("{}".utf8), now: now, header: header(good)) else {
            Issue.record("a changed body was accepted")
            return
        }
    }
}
