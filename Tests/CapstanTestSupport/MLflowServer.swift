// A real `mlflow server` for the tests: started once per test process (it needs 10–30 s), on
// 127.0.0.1 with a free port, a SQLite store and an artifact folder in a temporary folder, and
// stopped when the test process ends, however it ends.
//
// The server runs under a small Python guard (`guard` below) that puts it in a process group of
// its own and watches its standard input: the test process holds the only write end of that pipe
// (close-on-exec, so no other child inherits it), so when the test process exits or is killed the
// guard reads end-of-file, stops the whole group (SIGTERM, then SIGKILL) and removes the
// temporary folder. (PR_SET_PDEATHSIG is not used: it fires when the *thread* that started the
// child ends, and Swift's cooperative threads are not the process.)
//
// MLflow comes from the Python of `CAPSTAN_TEST_PYTHON` (scripts/test.sh installs the pinned one
// of scripts/test-peers.txt there), else from PATH.

import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One running `mlflow server`.
final class MLflowServer: Sendable {
    /// `http://127.0.0.1:PORT`.
    let url: String
    let port: UInt16
    /// The temporary folder: `mlflow.db` (the store), `artifacts/`, `server.log`.
    let directory: String
    var databasePath: String { directory + "/mlflow.db" }
    var logPath: String { directory + "/server.log" }
    /// The Python that has `mlflow` (for the judge scripts).
    let python: String
    /// Seconds from starting the process to `/health` answering `OK`.
    let startSeconds: Double
    /// Set for a server started with `--app-name basic-auth`.
    let auth: Auth?
    /// The guard process, and our end of its standard input: closing it stops the server.
    private let guardProcess: Process
    private let lifeline: Int32

    struct Auth: Sendable {
        var adminUsername: String
        var adminPassword: String
        /// The bearer token the server's test authorization function accepts (as the admin).
        var token: String
    }

    private init(url: String, port: UInt16, directory: String, python: String, startSeconds: Double, auth: Auth?,
                 guardProcess: Process, lifeline: Int32) {
        self.url = url
        self.port = port
        self.directory = directory
        self.python = python
        self.startSeconds = startSeconds
        self.auth = auth
        self.guardProcess = guardProcess
        self.lifeline = lifeline
    }

    /// Stops the server now (it also stops when the test process ends).
    func stop() {
        if stopped.exchange(true, ordering: .acquiringAndReleasing) { return }
        close(lifeline)
        guardProcess.waitUntilExit()
    }

    private let stopped = Atomic(false)

    // MARK: The shared servers

    /// The suite's plain server (no auth), started on first use.
    static func shared() async throws -> MLflowServer { try await plainServer.get() }

    /// The suite's server with MLflow's basic-auth app, started on first use. Its authorization
    /// function (`capstan_test_auth`) accepts basic auth, as MLflow's does, and also a bearer
    /// token, so both of the client's schemes meet a real 401 or a real success.
    static func sharedWithAuth() async throws -> MLflowServer { try await authServer.get() }

    private static let plainServer = Shared(withAuth: false)
    private static let authServer = Shared(withAuth: true)

    private actor Shared {
        let withAuth: Bool
        var task: Task<MLflowServer, any Error>?

        init(withAuth: Bool) { self.withAuth = withAuth }

        func get() async throws -> MLflowServer {
            if let task { return try await task.value }
            let withAuth = self.withAuth
            // Starting blocks for many seconds: on a thread of its own, not the cooperative pool.
            let task = Task { try await MLflowServer.offThePool { try MLflowServer.start(withAuth: withAuth) } }
            self.task = task
            return try await task.value
        }
    }

    // MARK: Starting

    /// The Python of CAPSTAN_TEST_PYTHON, or the one whose `bin` holds `mlflow` on PATH.
    static func findPython() throws -> String {
        let env = ProcessInfo.processInfo.environment
        var candidates: [String] = []
        if let python = env["CAPSTAN_TEST_PYTHON"], !python.isEmpty { candidates.append(python) }
        for dir in (env["PATH"] ?? "").split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/mlflow") {
            candidates.append("\(dir)/python3")
        }
        for python in candidates where FileManager.default.isExecutableFile(atPath: python) {
            let bin = (python as NSString).deletingLastPathComponent
            if FileManager.default.isExecutableFile(atPath: bin + "/mlflow") { return python }
        }
        throw FixtureError("""
            MLflow is not installed for the tests (no `mlflow` beside CAPSTAN_TEST_PYTHON or on PATH). \
            Run the tests with scripts/test.sh, which installs the pinned MLflow of scripts/test-peers.txt \
            into .build/test-peers (for example: scripts/test.sh --filter CapstanMLflowTests)
            """)
    }

    /// Starts a server and waits until it answers `/health` (up to 180 s on a busy machine).
    /// Blocks: call it off the cooperative pool (`Shared` does).
    static func start(withAuth: Bool) throws -> MLflowServer {
        let python = try findPython()
        let mlflow = (python as NSString).deletingLastPathComponent + "/mlflow"
        var lastFailure = ""
        for _ in 0..<3 {
            let base = URL(fileURLWithPath: NSTemporaryDirectory()).resolvingSymlinksInPath()
            let directory = base.appendingPathComponent("capstan-mlflow-\(withAuth ? "auth-" : "")\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: directory + "/artifacts", withIntermediateDirectories: true)
            let port = try freePort()
            var environment = ProcessInfo.processInfo.environment
            environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            // Registry webhooks to a controller on 127.0.0.1 over plain HTTP (MLflow's defaults
            // allow only https to public addresses), read again within a second of a change.
            environment["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] = "http,https"
            environment["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] = "true"
            environment["MLFLOW_WEBHOOK_CACHE_TTL"] = "1"
            environment["PYTHONUNBUFFERED"] = "1"
            for key in ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"] {
                environment[key] = nil
            }
            var arguments = [mlflow, "server", "--host", "127.0.0.1", "--port", String(port),
                             "--backend-store-uri", "sqlite:///\(directory)/mlflow.db",
                             "--artifacts-destination", "\(directory)/artifacts", "--workers", "1"]
            var auth: Auth?
            if withAuth {
                let a = Auth(adminUsername: "capstan-admin", adminPassword: "admin-" + UUID().uuidString,
                             token: "token-" + UUID().uuidString)
                auth = a
                try writeAuthFiles(directory: directory)
                arguments += ["--app-name", "basic-auth"]
                environment["MLFLOW_AUTH_CONFIG_PATH"] = directory + "/auth.ini"
                environment["MLFLOW_AUTH_ADMIN_USERNAME"] = a.adminUsername
                environment["MLFLOW_AUTH_ADMIN_PASSWORD"] = a.adminPassword
                environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] = UUID().uuidString
                environment["CAPSTAN_TEST_MLFLOW_TOKEN"] = a.token
                environment["PYTHONPATH"] = directory + "/auth-module" + (environment["PYTHONPATH"].map { ":" + $0 } ?? "")
            }

            let process = Process()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = ["-c", guardScript, directory, "http://127.0.0.1:\(port)/health"] + arguments
            process.environment = environment
            // The lifeline: only the guard may hold a copy of our end. Both ends are created
            // close-on-exec at once (so no child that another test starts meanwhile inherits
            // them); the guard's end becomes its stdin, which clears the flag there.
            var ends: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0 else {
                throw FixtureError("socketpair: \(errno)")
            }
            let lifeline = ends[1]
            let readEnd = FileHandle(fileDescriptor: ends[0], closeOnDealloc: true)
            let ready = Pipe()
            process.standardInput = readEnd
            process.standardOutput = ready
            process.standardError = FileHandle.nullDevice
            let started = Date()
            do {
                try process.run()
            } catch {
                close(lifeline)
                throw error
            }
            try? readEnd.close()
            // The first line (not end-of-file: a child another test starts at this moment could
            // hold a copy of the pipe's write end for a while).
            var data = Data()
            while !data.contains(0x0A) {
                let chunk = ready.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                data.append(chunk)
            }
            let line = String(decoding: data.prefix { $0 != 0x0A }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            if line == "READY" {
                return MLflowServer(url: "http://127.0.0.1:\(port)", port: port, directory: directory, python: python,
                                    startSeconds: Date().timeIntervalSince(started), auth: auth, guardProcess: process, lifeline: lifeline)
            }
            close(lifeline)
            process.waitUntilExit()
            lastFailure = line
            // Lost the port to another process between choosing it and binding: try another.
            if !line.contains("address already in use") { break }
        }
        throw FixtureError("mlflow server did not start: \(lastFailure)")
    }

    private static let portsGiven = Mutex<Set<UInt16>>([])

    /// A free port not given to another server of this process (two starting at once).
    private static func freePort() throws -> UInt16 {
        for _ in 0..<20 {
            let port = try Ports.free()
            if portsGiven.withLock({ $0.insert(port).inserted }) { return port }
        }
        throw FixtureError("no free port")
    }

    /// The auth app's configuration, and an authorization function that accepts a bearer token
    /// besides MLflow's basic auth (MLflow's documented `authorization_function` hook).
    private static func writeAuthFiles(directory: String) throws {
        try """
            [mlflow]
            default_permission = READ
            database_uri = sqlite:///\(directory)/auth.db
            authorization_function = capstan_test_auth:authenticate

            """.write(toFile: directory + "/auth.ini", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: directory + "/auth-module", withIntermediateDirectories: true)
        try """
            import hmac, os
            from flask import request
            from werkzeug.datastructures import Authorization
            from mlflow.server import auth as mlflow_auth

            def authenticate():
                header = request.headers.get("Authorization", "")
                if header.startswith("Bearer "):
                    if hmac.compare_digest(header[len("Bearer "):], os.environ["CAPSTAN_TEST_MLFLOW_TOKEN"]):
                        return Authorization("bearer", {"username": os.environ["MLFLOW_AUTH_ADMIN_USERNAME"]})
                    return mlflow_auth.make_basic_auth_response()
                return mlflow_auth.authenticate_request_basic_auth()

            """.write(toFile: directory + "/auth-module/capstan_test_auth.py", atomically: true, encoding: .utf8)
    }

    /// The guard: argv = [folder, health URL, command…]. Starts the command in a process group of
    /// its own, prints READY once the health URL answers OK (or FAILED and the log's tail), then
    /// waits for end-of-file on stdin and stops the group and removes the folder.
    private static let guardScript = #"""
        import os, signal, subprocess, sys, threading, time, urllib.request, shutil

        folder, health, command = sys.argv[1], sys.argv[2], sys.argv[3:]
        # Children of a test inherit the test thread's signal mask; the server must see SIGTERM.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])
        log = open(os.path.join(folder, "server.log"), "ab")
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        lock = threading.Lock()

        def stop_and_exit(code):
            with lock:
                try:
                    os.killpg(server.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.killpg(server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                shutil.rmtree(folder, ignore_errors=True)
                os._exit(code)

        def watch_lifeline():
            while sys.stdin.buffer.read(65536):
                pass
            stop_and_exit(0)

        threading.Thread(target=watch_lifeline, daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: stop_and_exit(0))

        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                log.flush()
                with open(os.path.join(folder, "server.log"), "rb") as f:
                    tail = f.read()[-1500:].decode("utf-8", "replace").replace("\n", " | ")
                print("FAILED: the server exited with status %s: %s" % (server.returncode, tail), flush=True)
                os.close(1)
                stop_and_exit(1)
            try:
                with urllib.request.urlopen(health, timeout=2) as answer:
                    if answer.status == 200 and answer.read().strip() == b"OK":
                        break
            except Exception:
                pass
            if time.monotonic() > deadline:
                print("FAILED: no answer from %s within 180 s" % health, flush=True)
                os.close(1)
                stop_and_exit(1)
            time.sleep(0.2)
        print("READY", flush=True)
        os.close(1)
        server.wait()
        stop_and_exit(0)
        """#

    // MARK: Helpers for tests

    /// Runs a Python program with MLflow's client pointed at this server (with the admin's
    /// credentials on the auth server); returns its stdout, or throws with its stderr.
    func python(_ script: String, _ arguments: [String] = []) async throws -> String {
        var variables = ["MLFLOW_TRACKING_URI": url, "PYTHONWARNINGS": "ignore", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"]
        if let auth {
            variables["MLFLOW_TRACKING_USERNAME"] = auth.adminUsername
            variables["MLFLOW_TRACKING_PASSWORD"] = auth.adminPassword
        }
        let python = self.python
        let environment = variables
        let result = try await Self.offThePool {
            try Shell.run(python, ["-c", script] + arguments, environment: environment)
        }
        guard result.status == 0 else {
            throw FixtureError("the Python MLflow client failed (\(result.status)): \(result.stderr.suffix(3000))")
        }
        return result.stdout
    }

    /// Runs SQL on the server's SQLite store (as another writer of the database would): how a test
    /// puts a version into a state only asynchronous registry backends produce.
    func sql(_ statement: String) async throws {
        _ = try await python("""
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1], timeout=30)
            db.execute(sys.argv[2])
            db.commit()
            """, [databasePath, statement])
    }

    /// Runs blocking work (a subprocess) on a thread of its own, not on the cooperative pool.
    static func offThePool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(with: Result { try work() })
            }
        }
    }
}
