import CapstanMLflow
import Foundation
import Testing
@testable import CapstanTestSupport

/// A name no other test of the run uses (all tests share one server).
func unique(_ prefix: String) -> String {
    prefix + "-" + UUID().uuidString.prefix(8).lowercased()
}

/// Runs `body` with a client of `server` (shut down afterwards).
func withClient<T>(_ server: MLflowServer, credentials: MLflowCredentials = .none, timeout: Duration = .seconds(30),
                   maxResponseBytes: Int = 64 << 20, _ body: (MLflowClient) async throws -> T) async throws -> T {
    try await withClient(url: server.url, credentials: credentials, timeout: timeout, maxResponseBytes: maxResponseBytes, body)
}

func withClient<T>(url: String, credentials: MLflowCredentials = .none, timeout: Duration = .seconds(30),
                   maxResponseBytes: Int = 64 << 20, _ body: (MLflowClient) async throws -> T) async throws -> T {
    let configuration = MLflowClient.Configuration(url: url, credentials: credentials, timeout: timeout, maxResponseBytes: maxResponseBytes)
    return try await MLflowClient.with(configuration, body)
}

/// The `MLflowError` that `body` throws; records an issue (and returns nil) when it throws
/// something else or nothing.
func mlflowError(_ sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async -> MLflowError? {
    do {
        try await body()
        Issue.record("expected an MLflowError, but the call succeeded", sourceLocation: sourceLocation)
    } catch let error as MLflowError {
        return error
    } catch {
        Issue.record("expected an MLflowError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Writes `files` (relative path → bytes) below `folder`.
func writeFiles(_ files: [String: [UInt8]], into folder: URL) throws {
    for (path, bytes) in files {
        let url = folder.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(bytes).write(to: url)
    }
}

/// Every regular file below `folder` with its bytes.
func readFiles(in folder: URL) throws -> [String: [UInt8]] {
    var out: [String: [UInt8]] = [:]
    let root = folder.resolvingSymlinksInPath().path
    guard let e = FileManager.default.enumerator(atPath: root) else { return [:] }
    for case let relative as String in e {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: root + "/" + relative, isDirectory: &isDirectory), !isDirectory.boolValue {
            out[relative] = Array(try Data(contentsOf: URL(fileURLWithPath: root + "/" + relative)))
        }
    }
    return out
}

/// Deterministic pseudo-random bytes.
func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

/// An HTTP server that answers by a script of canned responses: for what a real MLflow server
/// cannot be made to do (a login page in its place, a hostile artifact listing, a redirect, a
/// certificate nobody trusts). argv[1] is a JSON object: path prefix → {status, headers, body};
/// the longest matching prefix answers. With argv[2] and argv[3] (certificate and key files) it
/// speaks TLS.
enum ScriptedServer {
    struct Response: Encodable {
        var status: Int
        var headers: [String: String] = [:]
        var body: String = ""
    }

    static func start(_ routes: [String: Response], tls: (certificate: String, key: String)? = nil) throws -> PythonServer {
        let spec = String(decoding: try JSONEncoder().encode(routes), as: UTF8.self)
        return try PythonServer(script: script, arguments: [spec] + (tls.map { [$0.certificate, $0.key] } ?? []))
    }

    static let script = #"""
        import http.server, json, socketserver, ssl, sys
        ROUTES = json.loads(sys.argv[1])

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *args):
                pass
            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path
                best = max((p for p in ROUTES if path.startswith(p)), key=len, default=None)
                r = ROUTES[best] if best is not None else {"status": 404, "headers": {}, "body": "no route"}
                body = r["body"].encode()
                self.send_response(r["status"])
                for k, v in r["headers"].items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        server = Server(("127.0.0.1", 0), Handler)
        if len(sys.argv) > 3:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(sys.argv[2], sys.argv[3])
            server.socket = context.wrap_socket(server.socket, server_side=True)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#
}
