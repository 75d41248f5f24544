import AsyncHTTPClient
import CapstanSystem
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A small model server (Python stdlib), one behaviour per mode (argv[1]):
///
/// - `healthy`: `/healthz` 200; `POST /predict` → `{"version": N, "echo": body}`;
///   `GET /echo…` → the path and headers it received; `GET /env` → its environment;
///   `POST /size` → the size and a checksum of the body (Content-Length or chunked);
///   `GET /big?n=N` → N bytes; `GET /chunked` → a chunked answer in three parts.
/// - `slow`: like healthy, `POST /predict` takes 300 ms.
/// - `erroring`: `POST /predict` → 500.
/// - `hangup`: `POST /predict` closes the connection without answering.
/// - `hang`: `POST /predict` never answers.
/// - `crash-at-start`: prints a line and exits 3 before listening.
/// - `crash-after`: exits right after answering `CRASH_AFTER` predictions.
/// - `never-ready`: `/healthz` 503 forever.
let modelServerScript = #"""
    import http.server, json, os, socket, socketserver, sys, time

    mode = sys.argv[1] if len(sys.argv) > 1 else "healthy"
    version = int(os.environ.get("CAPSTAN_VERSION", "0"))
    limit = int(os.environ.get("CRASH_AFTER", "1"))
    served = 0
    print(f"model server {mode} v{version} starting on port {os.environ.get('PORT')}", flush=True)
    if mode == "crash-at-start":
        print("boom: crashing at start; token", os.environ.get("API_TOKEN", "none"), flush=True)
        sys.exit(3)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are two writes

        def log_message(self, *args):
            pass

        def reply(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            if self.path.startswith("/big"):
                n = int(self.path.split("=")[1])
                self.send_response(200)
                self.send_header("Content-Length", str(n))
                self.end_headers()
                for i in range(0, n, 65536):
                    self.wfile.write(bytes([65 + (i // 65536) % 26]) * min(65536, n - i))
                return
            if self.path.startswith("/chunked"):
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in [b"first,", b"second,", b"third"]:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.flush()
                    time.sleep(0.05)
                self.wfile.write(b"0\r\n\r\n")
                return
            if self.path.startswith("/healthz"):
                return self.reply(503 if mode == "never-ready" else 200, {"ready": mode != "never-ready"})
            if self.path.startswith("/env"):
                return self.reply(200, dict(os.environ))
            if self.path.startswith("/echo"):
                return self.reply(200, {"version": version, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
            self.reply(404, {"error": "no route " + self.path})

        def do_POST(self):
            global served
            data = self.body()
            if self.path.startswith("/size"):
                return self.reply(200, {"size": len(data), "sum": sum(data) % 1000003, "chunked": "Transfer-Encoding" in self.headers})
            if not self.path.startswith("/predict"):
                return self.reply(404, {"error": "no route " + self.path})
            if mode == "hangup":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode == "hang":
                print("hanging", flush=True)
                time.sleep(3600)
            if mode == "slow":
                print("slow prediction started", flush=True)
                time.sleep(0.3)
            if mode == "erroring":
                return self.reply(500, {"error": "the model failed"})
            self.reply(200, {"version": version, "echo": data.decode()})
            served += 1
            if mode == "crash-after" and served >= limit:
                print("crashing after", served, "predictions", flush=True)
                os._exit(1)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    """#

/// The real Python interpreter (not a pyenv shim: faster to start, and its pid is the server's).
let pythonExecutable: String = {
    let r = try? Shell.run("python3", ["-c", "import sys; print(sys.executable)"])
    let path = r?.stdout.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    return path.isEmpty ? "/usr/bin/python3" : path
}()

/// Timings short enough for tests.
var testTiming: SupervisorTiming {
    var t = SupervisorTiming()
    t.initialBackoff = .milliseconds(200)
    t.maximumBackoff = .milliseconds(800)
    t.readinessInterval = .milliseconds(50)
    t.stopGrace = .seconds(2)
    t.drainTimeout = .seconds(3)
    return t
}

/// A folder with the model server script (the workdir) and an artifact folder with its digest.
final class ServingFixture {
    let dir: TempDir
    let workdir: String
    let modelDir: String
    let digest: String
    let stateDir: String
    let events = EventLog()

    init() throws {
        dir = try TempDir()
        workdir = dir.path + "/work"
        modelDir = dir.path + "/model"
        stateDir = dir.path + "/state"
        try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: modelDir, withIntermediateDirectories: true)
        try modelServerScript.write(toFile: workdir + "/serve.py", atomically: true, encoding: .utf8)
        try "weights v1\n".write(toFile: modelDir + "/model.txt", atomically: true, encoding: .utf8)
        digest = try ArtifactDigest.of(modelDir)
    }

    func backend(_ version: Int, weight: Int, replicas: Int = 1, mode: String = "healthy", env: [String: String] = [:],
                 secretEnv: [String: String] = [:], readinessTimeout: Int64 = 20_000, digest: String? = nil) -> BackendSpec {
        BackendSpec(version: version, weight: weight, replicas: replicas, command: [pythonExecutable, "serve.py", mode], workdir: workdir,
                    modelDir: modelDir, artifactDigest: digest ?? self.digest, env: env, secretEnv: secretEnv,
                    readinessPath: "/healthz", readinessTimeoutMilliseconds: readinessTimeout)
    }

    func configuration(token: String? = nil, environment: [String: String] = [:]) -> ServingAgentConfiguration {
        var c = ServingAgentConfiguration(stateDirectory: stateDir)
        c.gracefulShutdownTimeout = .seconds(1)
        c.gateway = ListenAddress(host: "127.0.0.1", port: 0)
        c.admin = ListenAddress(host: "127.0.0.1", port: 0)
        c.adminToken = token
        c.timing = testTiming
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        c.environment = env
        let events = self.events
        c.onEvent = { events.append($0) }
        return c
    }

    /// Runs an agent with `AgentClient` for the duration of `body`; both are shut down after,
    /// and with the agent every model server it started.
    func withAgent<T>(token: String? = nil, environment: [String: String] = [:],
                      _ body: (RunningAgent, AgentClient) async throws -> T) async throws -> T {
        try await ServingAgent.withRunning(configuration(token: token, environment: environment)) { running in
            try await AgentClient.with(adminURL: running.adminURL, token: token) { client in
                try await body(running, client)
            }
        }
    }
}

/// Every supervisor event of one agent.
final class EventLog: Sendable {
    private let events = Mutex<[ServingEvent]>([])

    func append(_ event: ServingEvent) { events.withLock { $0.append(event) } }

    var all: [ServingEvent] { events.withLock { $0 } }

    func of(_ kind: ServingEvent.Kind, version: Int? = nil) -> [ServingEvent] {
        all.filter { $0.kind == kind && (version == nil || $0.version == version) }
    }

    /// The pids of the processes started for `version`.
    func pids(version: Int? = nil) -> [Int32] { of(.started, version: version).compactMap(\.pid) }
}

/// Polls `condition` until it holds; fails the test (with `message`) after `seconds`.
@discardableResult
func eventually(_ message: @autoclosure () -> String, within seconds: Double = 20, sourceLocation: Testing.SourceLocation = #_sourceLocation,
                _ condition: () async throws -> Bool) async rethrows -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + .milliseconds(Int(seconds * 1000))
    while clock.now < end {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(25))
    }
    if try await condition() { return true }
    Issue.record("timed out after \(seconds)s waiting until \(message())", sourceLocation: sourceLocation)
    return false
}

/// Waits until every backend of `deployment` has all its replicas ready.
@discardableResult
func waitReady(_ client: AgentClient, _ deployment: String, within seconds: Double = 30,
               sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws -> EndpointStatus? {
    var last: EndpointStatus?
    let ok = try await eventually("\(deployment) is ready (last: \(String(describing: last?.backends.map { ($0.spec.version, $0.health, $0.lastError) })))",
                                  within: seconds, sourceLocation: sourceLocation) {
        last = try await client.endpoint(deployment)
        return last.map { $0.backends.allSatisfy { $0.health == .ready && $0.readyReplicas == $0.spec.replicas } } ?? false
    }
    return ok ? last : nil
}

/// Whether `pid` can no longer run: gone, or a zombie.
func isGone(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 && errno == ESRCH { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return true }
    return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
}

/// One HTTP exchange, body collected.
struct HTTPAnswer: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: String

    var json: [String: Any]? {
        (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
    }

    var error: String? { json?["error"] as? String }
}

/// Plain HTTP for the tests (the shared client: nothing to shut down).
enum HTTP {
    static func send(_ method: HTTPMethod, _ url: String, body: String? = nil, headers: [(String, String)] = []) async throws -> HTTPAnswer {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let buffer = try await response.body.collect(upTo: 16 << 20)
        return HTTPAnswer(status: Int(response.status.code), headers: response.headers, body: String(buffer: buffer))
    }

    static func get(_ url: String, headers: [(String, String)] = []) async throws -> HTTPAnswer {
        try await send(.GET, url, headers: headers)
    }

    static func post(_ url: String, _ body: String = "{}") async throws -> HTTPAnswer {
        try await send(.POST, url, body: body, headers: [("Content-Type", "application/json")])
    }
}

extension ServingEvent {
    var pidValue: Int32 { pid ?? -1 }
}
