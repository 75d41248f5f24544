import Crypto
import Foundation
import Synchronization

/// Checks that a delivery of MLflow's registry webhooks (MLflow ≥ 3.3) comes from a webhook
/// created with the shared secret, as MLflow signs them:
///
///     X-MLflow-Delivery-Id: <uuid>
///     X-MLflow-Timestamp:   <unix seconds>
///     X-MLflow-Signature:   v1,<base64 HMAC-SHA256(secret, "<delivery id>.<timestamp>.<body>")>
///
/// A delivery older or newer than `tolerance` is refused (a captured delivery cannot be replayed
/// later), and so is a delivery id seen within it (nor replayed at once). Verification takes the
/// same time whatever the signature (HMAC verification).
public final class MLflowWebhookAuthenticator: Sendable {
    public enum Verdict: Equatable, Sendable {
        case accepted(deliveryID: String)
        case duplicate(deliveryID: String)
        case rejected(reason: String)
    }

    private let secret: [UInt8]
    private var key: SymmetricKey { SymmetricKey(data: secret) }
    let tolerance: Int64
    /// Delivery ids accepted within the tolerance, with their timestamp.
    private let seen = Mutex<[String: Int64]>([:])

    public init(secret: String, toleranceSeconds: Int64 = 300) {
        self.secret = Array(secret.utf8)
        tolerance = toleranceSeconds
    }

    /// `header` returns a request header's value by lower-cased name; `now` is Unix seconds.
    public func verify(body: [UInt8], now: Int64 = Int64(Date().timeIntervalSince1970), header: (String) -> String?) -> Verdict {
        guard let signature = header("x-mlflow-signature") else {
            return .rejected(reason: "no X-MLflow-Signature: create the MLflow webhook with the secret of --mlflow-webhook-secret-env")
        }
        guard let delivery = header("x-mlflow-delivery-id"), !delivery.isEmpty, delivery.utf8.count <= 200 else {
            return .rejected(reason: "no X-MLflow-Delivery-Id")
        }
        guard let stamp = header("x-mlflow-timestamp"), let time = Int64(stamp) else {
            return .rejected(reason: "no X-MLflow-Timestamp (Unix seconds)")
        }
        let text = signature.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("v1,"), let mac = Data(base64Encoded: String(text.dropFirst(3))), mac.count == 32 else {
            return .rejected(reason: "X-MLflow-Signature is not of the form v1,<base64 HMAC-SHA256>")
        }
        var signed = Array("\(delivery).\(stamp).".utf8)
        signed += body
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: signed, using: key) else {
            return .rejected(reason: "X-MLflow-Signature does not match the delivery signed with the secret")
        }
        guard abs(now - time) <= tolerance else {
            return .rejected(reason: "the delivery's timestamp is \(abs(now - time)) s away from this machine's clock (more than \(tolerance) s): refused as a replay")
        }
        return seen.withLock { seen in
            seen = seen.filter { abs(now - $0.value) <= tolerance }
            if seen[delivery] != nil { return .duplicate(deliveryID: delivery) }
            seen[delivery] = time
            return .accepted(deliveryID: delivery)
        }
    }

    /// The headers MLflow would send for `body` (tests, tools).
    public func headers(for body: [UInt8], delivery: String = UUID().uuidString.lowercased(),
                        timestamp: Int64 = Int64(Date().timeIntervalSince1970)) -> [String: String] {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("\(delivery).\(timestamp).".utf8) + body, using: key)
        return ["X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": String(timestamp),
                "X-MLflow-Signature": "v1," + Data(mac).base64EncodedString()]
    }
}
