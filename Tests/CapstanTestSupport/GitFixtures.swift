// Real Git for tests: repositories built with the `git` CLI, a `git daemon` on 127.0.0.1, and
// small Python servers (one that never answers, one that serves `git http-backend` behind Basic
// auth). Nothing here imports Capstan.
//
// A library shared by the test targets (they import it with `@testable import`, since tests
// are built with testing enabled).

import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Damages every pack of a mirror at `mirror` (`truncated`, `deleted`, or overwritten in the
/// middle for anything else). Returns how many packs there were.
@discardableResult
func damagePacks(inMirror mirror: String, _ damage: String) throws -> Int {
    let packDir = mirror + "/objects/pack"
    let packs = try FileManager.default.contentsOfDirectory(atPath: packDir).filter { $0.hasSuffix(".pack") }.map { packDir + "/" + $0 }
    for pack in packs {
        if damage == "deleted" {
            try FileManager.default.removeItem(atPath: pack)
            continue
        }
        guard let h = FileHandle(forWritingAtPath: pack) else { throw FixtureError("cannot open \(pack) for writing") }
        if damage == "truncated" {
            try h.truncate(atOffset: 100)
        } else {
            try h.seek(toOffset: 200)
            h.write(Data(repeating: 0x41, count: 400))
        }
        try h.close()
    }
    return packs.count
}

/// Runs a program to completion and captures what it prints.
enum Shell {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String], in directory: URL? = nil,
                    environment: [String: String] = [:], input: Data? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [executable] + arguments
        if let directory { process.currentDirectoryURL = directory }
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        let stdin = Pipe()
        process.standardInput = input == nil ? FileHandle.nullDevice : stdin
        try process.run()
        if let input {
            stdin.fileHandleForWriting.write(input)
            try stdin.fileHandleForWriting.close()
        }
        let group = DispatchGroup()
        nonisolated(unsafe) var outData = Data(), errData = Data()
        group.enter()
        DispatchQueue.global().async { outData = out.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.enter()
        DispatchQueue.global().async { errData = err.fileHandleForReading.readDataToEndOfFile(); group.leave() }
        group.wait()
        process.waitUntilExit()
        return Result(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                      stderr: String(decoding: errData, as: UTF8.self))
    }
}

/// A fresh temporary folder, removed when the value goes away.
final class TempDir {
    let url: URL
    var path: String { url.path }

    init() throws {
        // Resolve symlinks (/tmp may be one) so paths compare equal to what libgit2 reports.
        let base = URL(fileURLWithPath: NSTemporaryDirectory()).resolvingSymlinksInPath()
        url = base.appendingPathComponent("capstan-git-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: url)
    }

    func sub(_ name: String) -> URL { url.appendingPathComponent(name) }

    /// Every regular file below the folder, as paths relative to it.
    func files(under folder: URL? = nil) -> [String] {
        let root = folder ?? url
        guard let e = FileManager.default.enumerator(at: root, includingPropertiesForKeys: [.isRegularFileKey]) else { return [] }
        var out: [String] = []
        for case let file as URL in e where (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
            out.append(String(file.resolvingSymlinksInPath().path.dropFirst(root.resolvingSymlinksInPath().path.count + 1)))
        }
        return out.sorted()
    }
}

/// The environment every `git` in the tests runs with: no user or system config, fixed identity.
enum GitEnvironment {
    static func variables(time: Int) -> [String: String] {
        [
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_AUTHOR_NAME": "Capstan Test",
            "GIT_AUTHOR_EMAIL": "test@capstan.invalid",
            "GIT_COMMITTER_NAME": "Capstan Test",
            "GIT_COMMITTER_EMAIL": "test@capstan.invalid",
            "GIT_AUTHOR_DATE": "@\(time) +0000",
            "GIT_COMMITTER_DATE": "@\(time) +0000",
            "GIT_TERMINAL_PROMPT": "0",
        ]
    }
}

/// A Git repository driven through the `git` CLI, with deterministic commits.
final class GitRepo {
    let url: URL
    var path: String { url.path }
    /// Seconds since the epoch of the next commit; every commit advances it.
    private var clock = 1_700_000_000

    /// Creates a repository (work tree, or bare) with `main` as its initial branch.
    init(at url: URL, bare: Bool = false) throws {
        self.url = url
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        try git(["init", "-q", "--initial-branch=main"] + (bare ? ["--bare"] : []))
    }

    /// Wraps an existing repository (a clone).
    init(existing url: URL) {
        self.url = url
    }

    /// Runs git in the repository and returns its trimmed stdout; throws when git fails.
    @discardableResult
    func git(_ arguments: [String], input: Data? = nil) throws -> String {
        let r = try Shell.run("git", arguments, in: url, environment: GitEnvironment.variables(time: clock), input: input)
        guard r.status == 0 else {
            throw FixtureError("git \(arguments.joined(separator: " ")) failed (\(r.status)): \(r.stderr)")
        }
        return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @discardableResult
    func git(_ arguments: String...) throws -> String { try git(arguments) }

    func write(_ path: String, _ text: String, executable: Bool = false) throws {
        try write(path, bytes: Array(text.utf8), executable: executable)
    }

    func write(_ path: String, bytes: [UInt8], executable: Bool = false) throws {
        let file = url.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: file)
        try Data(bytes).write(to: file)
        chmod(file.path, executable ? 0o755 : 0o644)
    }

    /// Writes every file of the folder `example` (an example of the package) into the
    /// repository, each file's text passed through `edit` first (the tests' ports, shorter
    /// pauses, another model name). Does not commit.
    func copy(example: URL, _ edit: (String) -> String = { $0 }) throws {
        for file in try FileManager.default.subpathsOfDirectory(atPath: example.path) {
            var isDir: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: example.appendingPathComponent(file).path, isDirectory: &isDir)
            if isDir.boolValue { continue }
            try write(file, edit(try String(contentsOf: example.appendingPathComponent(file), encoding: .utf8)))
        }
    }

    func symlink(_ path: String, to destination: String) throws {
        let file = url.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? FileManager.default.removeItem(at: file)
        try FileManager.default.createSymbolicLink(atPath: file.path, withDestinationPath: destination)
    }

    func remove(_ path: String) throws {
        try FileManager.default.removeItem(at: url.appendingPathComponent(path))
    }

    /// Stages everything and commits; returns the new commit id.
    @discardableResult
    func commit(_ message: String, allowEmpty: Bool = false) throws -> String {
        clock += 60
        try git("add", "-A")
        try git(["commit", "-q", "-m", message] + (allowEmpty ? ["--allow-empty"] : []))
        return try rev("HEAD")
    }

    /// Writes the files, then commits them.
    @discardableResult
    func commit(_ message: String, files: [String: String]) throws -> String {
        for (path, text) in files { try write(path, text) }
        return try commit(message)
    }

    func rev(_ spec: String) throws -> String { try git("rev-parse", "--verify", "-q", spec) }

    /// Pushes `refspec` to a repository given by path or URL.
    func push(to remote: String, _ refspecs: [String] = ["main"], force: Bool = false) throws {
        try git(["push", "-q"] + (force ? ["--force"] : []) + [remote] + refspecs)
    }

    /// The path of a loose object's file.
    func looseObjectPath(_ id: String) throws -> URL {
        let gitDir = try git("rev-parse", "--git-dir")
        let base = gitDir.hasPrefix("/") ? URL(fileURLWithPath: gitDir) : url.appendingPathComponent(gitDir)
        return base.appendingPathComponent("objects/\(id.prefix(2))/\(id.dropFirst(2))")
    }
}

/// A small but complete desired state: a config, a model whose input folder holds its own
/// manifest, and a deployment.
enum Manifests {
    static let config = """
        apiVersion: capstan/v1
        kind: Config
        metadata: {name: default}
        spec:
          manifests: [models, deployments]

        """

    static func model(name: String = "churn", learningRate: String = "0.1", champion: String = "latest",
                      inputs: String = "[models/churn, data/x.csv]") -> String {
        """
        apiVersion: capstan/v1
        kind: Model
        metadata: {name: \(name)}
        spec:
          train:
            command: [python3, train.py]
            workdir: models/churn
            inputs: \(inputs)
            params: {learning_rate: \(learningRate), epochs: 10}
          serve:
            command: [python3, serve.py]
            workdir: models/churn
          aliases:
            champion: \(champion)

        """
    }

    static let deployment = """
        apiVersion: capstan/v1
        kind: Deployment
        metadata: {name: churn-prod}
        spec:
          model: churn
          alias: champion

        """

    /// A manifest with a typo'd field on line 7, column 5 (`comand`).
    static let broken = """
        apiVersion: capstan/v1
        kind: Model
        metadata:
          name: churn
        spec:
          train:
            comand: [python3, train.py]

        """

    /// Writes the whole desired state into `repo` (not committed).
    static func write(into repo: GitRepo, learningRate: String = "0.1", champion: String = "latest") throws {
        try repo.write("capstan.yaml", config)
        try repo.write("models/churn/model.yaml", model(learningRate: learningRate, champion: champion))
        try repo.write("models/churn/train.py", "print('training')\n", executable: true)
        try repo.write("models/churn/serve.py", "print('serving')\n")
        try repo.write("data/x.csv", "a,b\n1,2\n")
        try repo.write("deployments/churn-prod.yaml", deployment)
        try repo.write("README.md", "# models\n")
    }
}

// MARK: - Sockets

enum Ports {
    private static func loopback(port: UInt16) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return addr
    }

    #if canImport(Glibc)
    private static let stream = Int32(SOCK_STREAM.rawValue)
    #else
    private static let stream = SOCK_STREAM
    #endif

    /// A port nothing listens on right now: bind to port 0, read the port back, close.
    static func free() throws -> UInt16 {
        let fd = socket(AF_INET, stream, 0)
        guard fd >= 0 else { throw FixtureError("socket: \(errno)") }
        defer { close(fd) }
        var addr = loopback(port: 0)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw FixtureError("bind: \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw FixtureError("getsockname: \(errno)") }
        return UInt16(bigEndian: addr.sin_port)
    }

    /// True when something accepts TCP connections on 127.0.0.1:`port`.
    static func accepts(_ port: UInt16) -> Bool {
        let fd = socket(AF_INET, stream, 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = loopback(port: port)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    /// Waits until `port` accepts connections or `process` exits. Not a timing assertion: it
    /// only bounds how long a broken fixture can stall the suite.
    static func waitUntilListening(_ port: UInt16, process: Process, attempts: Int = 400) -> Bool {
        for _ in 0..<attempts {
            if Ports.accepts(port) { return true }
            if !process.isRunning { return false }
            usleep(10_000)
        }
        return false
    }
}

// MARK: - Servers

enum Processes {
    /// Stops a server for good. SIGKILL, because children started from a test inherit the test
    /// thread's signal mask, in which SIGTERM is blocked.
    static func stop(_ process: Process) {
        if process.isRunning { _ = kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}

/// `git daemon` serving every repository below `base` on 127.0.0.1 (git://). Stopped on deinit.
final class GitDaemon {
    let base: URL
    private(set) var port: UInt16 = 0
    private var process: Process?

    /// Whether clients may push (`git daemon --enable=receive-pack`).
    let allowPush: Bool

    init(base: URL, allowPush: Bool = false) throws {
        self.base = base
        self.allowPush = allowPush
        try start()
    }

    func start() throws {
        for _ in 0..<5 {
            let port = try Ports.free()
            let p = Process()
            // The daemon itself, not the `git` wrapper, so that stopping it stops the listener.
            p.executableURL = URL(fileURLWithPath: try GitDaemon.executable())
            p.arguments = ["--reuseaddr", "--base-path=\(base.path)", "--export-all",
                           "--listen=127.0.0.1", "--port=\(port)", "--informative-errors"]
                + (allowPush ? ["--enable=receive-pack"] : []) + [base.path]
            p.environment = ProcessInfo.processInfo.environment.merging(GitEnvironment.variables(time: 1_700_000_000)) { $1 }
            p.standardInput = FileHandle.nullDevice
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            if Ports.waitUntilListening(port, process: p) {
                self.port = port
                self.process = p
                return
            }
            // Lost a race for the port, or it never came up: try another.
            Processes.stop(p)
        }
        throw FixtureError("git daemon did not start")
    }

    /// `git://127.0.0.1:PORT/<name>`.
    func url(_ name: String) -> String { "git://127.0.0.1:\(port)/\(name)" }

    static func executable() throws -> String {
        let r = try Shell.run("git", ["--exec-path"])
        let path = r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) + "/git-daemon"
        guard r.status == 0, FileManager.default.isExecutableFile(atPath: path) else { throw FixtureError("git-daemon not found") }
        return path
    }

    func stop() {
        guard let process else { return }
        Processes.stop(process)
        self.process = nil
    }

    deinit { stop() }
}

/// A Python program that prints its port on its first line and serves until stopped.
final class PythonServer {
    let port: UInt16
    private let process: Process

    init(script: String, arguments: [String] = [], environment: [String: String] = [:]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-u", "-c", script] + arguments
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let out = Pipe()
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        var line = Data()
        while !line.contains(0x0A) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        guard let port = UInt16(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            Processes.stop(p)
            throw FixtureError("python server did not print its port: \(String(decoding: line, as: UTF8.self))")
        }
        self.port = port
        self.process = p
    }

    func stop() {
        Processes.stop(process)
    }

    deinit { stop() }

    /// `gitHTTP` over the repositories below `root`, with its options (see `gitHTTP`).
    static func gitHTTP(root: String, user: String, password: String, options: [String: Any] = [:]) throws -> PythonServer {
        let encoded = options.isEmpty ? [] : [String(decoding: try JSONSerialization.data(withJSONObject: options), as: UTF8.self)]
        return try PythonServer(script: gitHTTP, arguments: [root, user, password] + encoded)
    }

    /// The `Authorization` header of each request a `gitHTTP` server logged (`log` option), nil
    /// for a request without one.
    static func loggedAuthorizations(_ log: String) -> [String?] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map { line in
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return object?["authorization"] as? String
        }
    }

    /// Accepts every TCP connection and never sends a byte.
    static let silent = """
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        print(s.getsockname()[1], flush=True)
        held = []
        while True:
            c, _ = s.accept()
            held.append(c)
        """

    /// Accepts every TCP connection and answers with the start of a long pkt-line, one byte at a
    /// time, 0.2s apart: never silent for long, never done.
    static let trickle = """
        import socket, threading, time
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        print(s.getsockname()[1], flush=True)
        def drip(c):
            try:
                c.sendall(b"fff0")
                while True:
                    time.sleep(0.2)
                    c.sendall(b"a")
            except OSError:
                pass
        while True:
            c, _ = s.accept()
            threading.Thread(target=drip, args=(c,), daemon=True).start()
        """

    /// Serves `git http-backend` for the repositories below argv[1], behind HTTP Basic auth with
    /// user argv[2] and password argv[3]; requests without the right credentials get 401.
    /// argv[4], optional, is a JSON object of options:
    /// - `bind`: the address to listen on (default 127.0.0.1);
    /// - `log`: a file that gets one JSON line per request (`method`, `path`, `authorization`);
    /// - `open`: no credentials needed;
    /// - `redirectFrom` + `redirectTo`: a request whose path starts with `redirectFrom` is
    ///   answered 302 to `redirectTo` + the rest of its path and query (`redirectTo` is a URL,
    ///   or a path on this server);
    /// - `redirectAfterAuth`: only requests with the right credentials are redirected (the others
    ///   get 401), and `challengeOnRedirect`: the 302 carries `WWW-Authenticate: Basic`.
    static let gitHTTP = #"""
        import base64, http.server, json, os, socketserver, subprocess, sys

        ROOT, USER, PASSWORD = sys.argv[1], sys.argv[2], sys.argv[3]
        OPTIONS = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
        EXPECTED = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

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

            def handle_git(self, method):
                authorization = self.headers.get("Authorization")
                if OPTIONS.get("log"):
                    with open(OPTIONS["log"], "a") as log:
                        log.write(json.dumps({"method": method, "path": self.path, "authorization": authorization}) + "\n")
                authorized = OPTIONS.get("open") or authorization == EXPECTED
                source = OPTIONS.get("redirectFrom")
                if source and self.path.startswith(source) and (authorized or not OPTIONS.get("redirectAfterAuth")):
                    if method == "POST":
                        self.body()
                    self.send_response(302)
                    self.send_header("Location", OPTIONS["redirectTo"] + self.path[len(source):])
                    if OPTIONS.get("challengeOnRedirect"):
                        self.send_header("WWW-Authenticate", 'Basic realm="capstan-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not authorized:
                    if method == "POST":
                        self.body()
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="capstan-test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                data = self.body() if method == "POST" else b""
                env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
                           QUERY_STRING=query, REQUEST_METHOD=method, REMOTE_USER=USER, REMOTE_ADDR="127.0.0.1",
                           CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(data)),
                           GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
                out = subprocess.run(["git", "http-backend"], input=data, env=env, stdout=subprocess.PIPE).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self.handle_git("GET")

            def do_POST(self):
                self.handle_git("POST")

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        server = Server((OPTIONS.get("bind", "127.0.0.1"), 0), Handler)
        print(server.server_address[1], flush=True)
        server.serve_forever()
        """#
}

// MARK: - Bounding a call that might hang

/// True for the first caller only.
final class ResumeOnce: Sendable {
    private let resumed = Mutex(false)
    func claim() -> Bool { resumed.withLock { done in defer { done = true }; return !done } }
}

/// Runs `operation` and returns its result, or nil when it has not finished after `seconds`
/// (the operation is left running). Bounds a test that checks something does not hang; it is
/// not a timing assertion.
func withDeadline<T: Sendable>(seconds: Double, _ operation: @escaping @Sendable () async -> T) async -> T? {
    let once = ResumeOnce()
    return await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
        Task {
            let value = await operation()
            if once.claim() { continuation.resume(returning: value) }
        }
        Task {
            try? await Task.sleep(for: .seconds(seconds))
            if once.claim() { continuation.resume(returning: nil) }
        }
    }
}

// MARK: - Addresses

/// The first non-loopback IPv4 address of this machine, if it has one.
enum NonLoopbackAddress {
    static let ipv4: String? = {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        defer { freeifaddrs(list) }
        var next = list
        while let entry = next {
            defer { next = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == sa_family_t(AF_INET),
                  entry.pointee.ifa_flags & UInt32(IFF_UP) != 0, entry.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0 else { continue }
            var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                var a = sin.pointee.sin_addr
                _ = inet_ntop(AF_INET, &a, &text, socklen_t(text.count))
            }
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return nil
    }()
}

/// A `git fast-import` stream written to a file (big blobs in chunks, never whole in memory),
/// then imported as one commit on `main`: 100,000 files in seconds, paths of any bytes.
final class FastImport {
    private let url: URL
    private let handle: FileHandle
    private var nextMark = 1
    private var entries: [(mode: String, dataref: String, path: [UInt8])] = []

    init(at url: URL) throws {
        self.url = url
        guard FileManager.default.createFile(atPath: url.path, contents: nil) else { throw FixtureError("cannot create \(url.path)") }
        handle = try FileHandle(forWritingTo: url)
    }

    /// Written to the file a mebibyte at a time.
    private var buffer = Data()

    private func write(_ text: String) { write(Data(text.utf8)) }

    private func write(_ data: Data) {
        buffer.append(data)
        if buffer.count >= 1 << 20 { flush() }
    }

    private func flush() {
        handle.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    private func mark() -> Int {
        defer { nextMark += 1 }
        return nextMark
    }

    /// A file with these bytes.
    func file(_ path: [UInt8], _ bytes: [UInt8], mode: String = "100644") {
        let m = mark()
        write("blob\nmark :\(m)\ndata \(bytes.count)\n")
        write(Data(bytes))
        write("\n")
        entries.append((mode, ":\(m)", path))
    }

    func file(_ path: String, _ text: String) { file(Array(path.utf8), Array(text.utf8)) }

    /// A file of `count` copies of `byte`, written a mebibyte at a time.
    func file(_ path: String, repeating byte: UInt8, count: Int) {
        let m = mark()
        write("blob\nmark :\(m)\ndata \(count)\n")
        let chunk = Data(repeating: byte, count: 1 << 20)
        var left = count
        while left > 0 {
            let n = min(left, chunk.count)
            write(n == chunk.count ? chunk : chunk.prefix(n))
            left -= n
        }
        write("\n")
        entries.append(("100644", ":\(m)", Array(path.utf8)))
    }

    func symlink(_ path: String, to target: String) { file(Array(path.utf8), Array(target.utf8), mode: "120000") }

    /// A submodule entry (a commit id; the commit need not exist here).
    func gitlink(_ path: String, commit: String) { entries.append(("160000", commit, Array(path.utf8))) }

    /// Imports everything as one commit on `main` of `repo`; returns the commit id.
    @discardableResult
    func commit(into repo: GitRepo, message: String = "import") throws -> String {
        write("commit refs/heads/main\ncommitter Capstan Test <test@capstan.invalid> 1700000000 +0000\ndata \(message.utf8.count)\n\(message)\n")
        for e in entries {
            write(Data("M \(e.mode) \(e.dataref) ".utf8) + Data(Self.quoted(e.path)) + Data("\n".utf8))
        }
        write("\n")
        flush()
        try handle.close()
        let r = try Shell.run("sh", ["-c", "git fast-import --quiet < \"$0\"", url.path], in: repo.url,
                              environment: GitEnvironment.variables(time: 1_700_000_000))
        guard r.status == 0 else { throw FixtureError("git fast-import failed (\(r.status)): \(r.stderr)") }
        try? FileManager.default.removeItem(at: url)
        return try repo.rev("main")
    }

    /// A path as fast-import reads it: C-style quoted, other bytes in octal.
    static func quoted(_ path: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "\"")]
        for b in path {
            switch b {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), b]
            case 0x20..<0x7F: out.append(b)
            default: out += Array("\\\(String(b, radix: 8).leftPad(3))".utf8)
            }
        }
        out.append(UInt8(ascii: "\""))
        return out
    }
}

private extension String {
    func leftPad(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
