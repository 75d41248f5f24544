import CapstanGit
import Foundation
import Testing
@testable import CapstanTestSupport

/// Fetches over real SSH: an OpenSSH server (Debian's openssh-server, installed by .ci/run) on
/// 127.0.0.1 with a throw-away host key, serving a bare repository made in the test.
@Suite(.serialized)
struct SSHTransportTests {
    /// A repository, an sshd on a free loopback port, and key files, all in one temporary folder.
    final class SSHServer {
        let root: URL
        let port: Int
        let repository: String
        /// sshd's pid. Started with posix_spawn, not Foundation's Process: Process reaps children
        /// with a blocking wait on each one it knows, so a long-lived child stalls every later
        /// waitUntilExit.
        let pid: pid_t
        var url: String { "ssh://\(NSUserName())@127.0.0.1:\(port)\(repository)" }

        init() throws {
            let sshd = "/usr/sbin/sshd"
            guard FileManager.default.isExecutableFile(atPath: sshd) else {
                throw SSHTestError("\(sshd) is missing: install openssh-server (bash .ci/run does)")
            }
            root = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-ssh-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
            for key in ["host", "user", "stranger", "other-host"] {
                try Self.run("/usr/bin/ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", key, "-f", root.appendingPathComponent(key).path])
            }
            try FileManager.default.copyItem(at: root.appendingPathComponent("user.pub"), to: root.appendingPathComponent("authorized_keys"))
            // A repository with one valid manifest.
            let work = root.appendingPathComponent("work")
            try FileManager.default.createDirectory(at: work.appendingPathComponent("models"), withIntermediateDirectories: true)
            try Data("""
                apiVersion: capstan/v1
                kind: Model
                metadata: {name: churn}
                spec:
                  train: {command: [python3, train.py]}

                """.utf8).write(to: work.appendingPathComponent("models/churn.yaml"))
            try Self.run("/usr/bin/git", ["init", "-q", "-b", "main", work.path])
            try Self.run("/usr/bin/git", ["-C", work.path, "add", "-A"])
            try Self.run("/usr/bin/git", ["-C", work.path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"])
            repository = root.appendingPathComponent("served.git").path
            try Self.run("/usr/bin/git", ["clone", "-q", "--bare", work.path, repository])

            port = try Self.freePort()
            let config = root.appendingPathComponent("sshd_config")
            try Data("""
                Port \(port)
                ListenAddress 127.0.0.1
                HostKey \(root.path)/host
                PidFile \(root.path)/sshd.pid
                AuthorizedKeysFile \(root.path)/authorized_keys
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                PubkeyAuthentication yes
                PermitRootLogin prohibit-password
                StrictModes no
                UsePAM no

                """.utf8).write(to: config)
            try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
            pid = try Self.spawn(sshd, ["-D", "-e", "-f", config.path, "-E", root.appendingPathComponent("sshd.log").path])
            // Wait until it accepts connections.
            for _ in 0..<100 {
                if Self.accepts(port) { return }
                Thread.sleep(forTimeInterval: 0.05)
            }
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw SSHTestError("sshd did not start on port \(port)")
        }

        deinit {
            kill(pid, SIGTERM)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            try? FileManager.default.removeItem(at: root)
        }

        static func spawn(_ tool: String, _ arguments: [String]) throws -> pid_t {
            var pid: pid_t = 0
            let argv = ([tool] + arguments).map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            let rc = posix_spawn(&pid, tool, nil, nil, argv, environ)
            guard rc == 0 else { throw SSHTestError("cannot start \(tool): \(String(cString: strerror(rc)))") }
            return pid
        }

        func path(_ name: String) -> String { root.appendingPathComponent(name).path }

        /// A known_hosts file with the server's key (optionally hashed) or another key.
        func knownHosts(hashed: Bool = false, key: String = "host") throws -> String {
            let pub = try String(contentsOfFile: path("\(key).pub"), encoding: .utf8).split(separator: " ")
            let file = path("known_hosts-\(key)-\(hashed)")
            try Data("[127.0.0.1]:\(port) \(pub[0]) \(pub[1])\n".utf8).write(to: URL(fileURLWithPath: file))
            if hashed { try Self.run("/usr/bin/ssh-keygen", ["-q", "-H", "-f", file]) }
            return file
        }

        func source(key: String?, knownHosts: String, agent: Bool = false) -> GitSource {
            var credentials = GitCredentials(environment: agent ? ProcessInfo.processInfo.environment : ["HOME": root.path])
            credentials.sshKeyPath = key.map(path)
            credentials.knownHostsPath = knownHosts
            let options = GitSourceOptions(stateDirectory: root.appendingPathComponent("state-\(UUID().uuidString)").path,
                                           credentials: credentials, fetchTimeout: 10)
            return GitSource(location: .remote(url: url), options: options)
        }

        static func run(_ tool: String, _ arguments: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: tool)
            p.arguments = arguments
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw SSHTestError("\(tool) \(arguments.joined(separator: " ")) failed") }
        }

        static func freePort() throws -> Int {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = 0
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard bound else { throw SSHTestError("cannot find a free port") }
            return Int(UInt16(bigEndian: addr.sin_port))
        }

        static func accepts(_ port: Int) -> Bool {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = UInt16(port).bigEndian
            return withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
        }
    }

    struct SSHTestError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    @Test func fetchesWithAKeyFileAndAKnownHostKey() async throws {
        let server = try SSHServer()
        let opened = try await server.source(key: "user", knownHosts: try server.knownHosts()).open()
        let revision = try await opened.resolve("main")
        #expect(revision.summary == "init")
        #expect(opened.mirrorPath.map { FileManager.default.fileExists(atPath: $0) } == true)
    }

    @Test func acceptsAHashedKnownHostsEntry() async throws {
        let server = try SSHServer()
        let file = try server.knownHosts(hashed: true)
        #expect(try String(contentsOfFile: file, encoding: .utf8).hasPrefix("|1|"))
        let opened = try await server.source(key: "user", knownHosts: file).open()
        #expect(try await opened.resolve(nil).summary == "init")
    }

    @Test func refusesAnUnknownHost() async throws {
        let server = try SSHServer()
        let empty = server.path("known_hosts-empty")
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        do {
            _ = try await server.source(key: "user", knownHosts: empty).open()
            Issue.record("fetch from an unknown host succeeded")
        } catch {
            #expect(error.kind == .hostKey)
            #expect(error.message.contains("is not in \(empty)"))
            #expect(error.message.contains("ssh-keyscan -p \(server.port) 127.0.0.1"))
        }
    }

    @Test func refusesAChangedHostKey() async throws {
        let server = try SSHServer()
        let known = try server.knownHosts(key: "other-host")
        do {
            _ = try await server.source(key: "user", knownHosts: known).open()
            Issue.record("fetch with a changed host key succeeded")
        } catch {
            #expect(error.kind == .hostKey)
            #expect(error.message.contains("does not match"))
        }
    }

    @Test func aKeyTheServerDoesNotKnowIsAnAuthenticationError() async throws {
        let server = try SSHServer()
        let known = try server.knownHosts()
        do {
            _ = try await server.source(key: "stranger", knownHosts: known).open()
            Issue.record("fetch with an unauthorized key succeeded")
        } catch {
            #expect(error.kind == .authentication)
            #expect(error.message.contains(server.path("stranger")))
            #expect(error.description.contains(server.url))
        }
    }

    @Test func withoutKeyOrAgentItSaysWhatToDo() async throws {
        let server = try SSHServer()
        let known = try server.knownHosts()
        do {
            _ = try await server.source(key: nil, knownHosts: known).open()
            Issue.record("fetch without credentials succeeded")
        } catch {
            #expect(error.kind == .authentication)
            #expect(error.message.contains("--ssh-key"))
        }
    }
}
