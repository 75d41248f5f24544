import CapstanServing
import NIOCore
import NIOEmbedded
import NIOHTTP1

/// Request heads as the gateway gets them: the input is bytes on a client connection, parsed by
/// NIO's HTTP/1.1 decoder (not ours, not the subject), and every head it yields goes through the
/// gateway's rules: routing by `/<deployment>/`, the head sent upstream, the head sent back.
///
/// Invariants: a routed request names a non-empty deployment without `/` or `?` and an upstream
/// target starting with `/`; the upstream head has exactly one `Host` (the model server's), no
/// hop-by-hop header, no header the client's `Connection` listed, at most one framing
/// (`Content-Length`, or `Transfer-Encoding: chunked`), the client's method and the target; the
/// response head has one `X-Capstan-Version`, no hop-by-hop header but its own `Connection`, and
/// `Connection: close` whenever the connection is to end (HTTP/1.1); an error body is JSON text
/// that holds no raw control character.
public enum GatewayHeadFuzz {
    static let authority = "127.0.0.1:18080"

    public static func run(_ bytes: [UInt8]) -> [String] {
        var violations: [String] = []
        for head in heads(bytes) {
            violations += check(head)
        }
        return violations
    }

    /// The request heads NIO's decoder finds in `bytes` (stopping at the first parse error).
    static func heads(_ bytes: [UInt8]) -> [HTTPRequestHead] {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish() }
        guard (try? channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))) != nil else {
            return []
        }
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        _ = try? channel.writeInbound(buffer)
        var heads: [HTTPRequestHead] = []
        while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
            if case .head(let head) = part { heads.append(head) }
        }
        return heads
    }

    static func check(_ head: HTTPRequestHead) -> [String] {
        var violations: [String] = []
        let subject = "\(head.method) \(head.uri)"
        let body = GatewayHeadRules.errorBody("no deployment in the request path '\(head.uri)'")
        if body.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\n" }) || !body.hasSuffix("}\n") {
            violations.append("\(subject): the error body is not clean JSON text")
        }
        guard let (deployment, target) = GatewayHeadRules.split(target: head.uri) else { return violations }
        if deployment.isEmpty || deployment.contains("/") || deployment.contains("?") {
            violations.append("\(subject): routed to deployment '\(deployment)'")
        }
        if !target.hasPrefix("/") { violations.append("\(subject): upstream target '\(target)' does not start with /") }

        let upstream = GatewayHeadRules.upstreamRequest(head, target: target, authority: authority)
        if upstream.method != head.method || upstream.uri != target || upstream.version != .http1_1 {
            violations.append("\(subject): upstream head is \(upstream.method) \(upstream.uri) \(upstream.version)")
        }
        let hosts = upstream.headers[canonicalForm: "host"]
        if hosts != [Substring(authority)] { violations.append("\(subject): upstream Host is \(hosts)") }
        let listed = GatewayHeadRules.connectionTokens(head.headers) ?? []
        var framings = 0
        for (name, value) in upstream.headers {
            let lower = name.lowercased()
            if lower == "content-length" { framings += 1; continue }
            if lower == "transfer-encoding" {
                framings += 1
                if value != "chunked" { violations.append("\(subject): upstream Transfer-Encoding '\(value)'") }
                continue
            }
            if lower == "host" { continue }
            if GatewayHeadRules.isHopByHop(name) { violations.append("\(subject): hop-by-hop '\(name)' forwarded") }
            if listed.contains(where: { $0.lowercased() == lower }) { violations.append("\(subject): '\(name)' listed in Connection forwarded") }
        }
        let clientLengths = head.headers[canonicalForm: "content-length"].count
        if framings > max(1, clientLengths) { violations.append("\(subject): \(framings) framing headers upstream") }

        // The answer: the model server's headers echo the client's (whatever they are).
        for version in [HTTPVersion.http1_1, .http1_0] {
            var keepAlive = head.isKeepAlive
            let response = HTTPResponseHead(version: .http1_1, status: .ok, headers: head.headers)
            let out = GatewayHeadRules.clientResponse(response, version: version, capstanVersion: "7", keepAlive: &keepAlive)
            if out.headers[GatewayHeadRules.versionHeader] != ["7"] { violations.append("\(subject): X-Capstan-Version is \(out.headers[GatewayHeadRules.versionHeader])") }
            let connection = out.headers[canonicalForm: "connection"]
            for (name, _) in out.headers where GatewayHeadRules.isHopByHop(name) && name.lowercased() != "connection" {
                violations.append("\(subject): hop-by-hop '\(name)' sent back")
            }
            if version == .http1_1 && !keepAlive && connection != ["close"] {
                violations.append("\(subject): HTTP/1.1 connection ends without Connection: close (\(connection))")
            }
            if version == .http1_1 && keepAlive && !connection.isEmpty {
                violations.append("\(subject): a kept-alive HTTP/1.1 answer says Connection: \(connection)")
            }
            if version == .http1_0 && keepAlive && connection != ["keep-alive"] {
                violations.append("\(subject): a kept-alive HTTP/1.0 answer without Connection: keep-alive")
            }
        }
        return violations
    }
}
