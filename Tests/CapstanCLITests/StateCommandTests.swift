import CapstanCore
import CapstanStore
import Foundation
import Testing

/// `capstan status`, `history` and `unlock` run as a user runs them, over a state directory
/// seeded through the store (no command writes the registry yet).
struct StateCommandTests {
    static func seeded() async throws -> TemporaryDirectory {
        let dir = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: dir.url.path)
        let registry = EmbeddedRegistry(database: database)
        try await registry.upsertModel(name: "churn", description: "Predicts churn.", labels: ["team": "growth"])
        let v1 = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1aaaaaaaaaaaaaa", commit: "c1c1c1c1c1c1"))
        try await registry.updateVersion(model: "churn", number: v1.number, VersionUpdate(status: .validated, metrics: ["accuracy": 0.912]))
        let v2 = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2bbbbbbbbbbbbbb", commit: "c2c2c2c2c2c2"))
        try await registry.updateVersion(model: "churn", number: v2.number, VersionUpdate(status: .failed, logTail: "boom"))
        try await registry.setAlias("champion", of: "churn", to: v1.number, commit: "c1c1c1c1c1c1", reason: "first")
        let log = AuditLog(database: database)
        let now = StoreTime.systemMilliseconds()
        _ = try log.record(AuditEvent(at: now - 7_200_000, actor: "capstan", host: "vm", commit: "c1c1c1c1c1c1",
                                      object: .alias(model: "churn", alias: "champion"), action: .moveAlias, before: nil, after: .int(1),
                                      reason: "first champion"))
        _ = try log.record(AuditEvent(at: now, actor: "capstan", host: "vm", object: .deployment("churn-prod"), action: .startRollout,
                                      reason: "new version"))
        try database.close()
        return dir
    }

    @Test func statusShowsModelsVersionsAndAliases() async throws {
        let dir = try await Self.seeded()
        let r = try CLI.run(["status", "--state-dir", dir.url.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Model churn: Predicts churn."))
        #expect(r.stdout.contains("aliases: champion → 1"))
        #expect(r.stdout.contains("validated"))
        #expect(r.stdout.contains("accuracy=0.912"))
        #expect(r.stdout.contains("failed"))
        #expect(r.stdout.contains("[champion]"))
    }

    @Test func statusJSONCarriesTheDocumentedFields() async throws {
        let dir = try await Self.seeded()
        let r = try CLI.run(["status", "--state-dir", dir.url.path, "--format", "json"])
        #expect(r.status == 0)
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(doc["format_version"] as? Int == 1)
        let models = try #require(doc["models"] as? [[String: Any]])
        #expect(models.map { $0["name"] as? String } == ["churn"])
        #expect(models[0]["aliases"] as? [String: Int] == ["champion": 1])
        let versions = try #require(models[0]["versions"] as? [[String: Any]])
        #expect(versions.compactMap { $0["version"] as? Int } == [1, 2])
        #expect(versions.compactMap { $0["status"] as? String } == ["validated", "failed"])
        #expect(versions[0]["fingerprint"] as? String == "f1aaaaaaaaaaaaaa")
        #expect(versions[0]["commit"] as? String == "c1c1c1c1c1c1")
        #expect((versions[0]["metrics"] as? [String: Double])?["accuracy"] == 0.912)
    }

    @Test func statusOfAnEmptyStateDirectoryCreatesNothing() throws {
        let dir = try TemporaryDirectory()
        let state = dir.url.appendingPathComponent("state").path
        let r = try CLI.run(["status", "--state-dir", state])
        #expect(r.status == 0)
        #expect(r.stdout.contains("nothing has been applied"))
        #expect(!FileManager.default.fileExists(atPath: state))
    }

    @Test func statusRefusesADamagedDatabaseWithoutTouchingIt() throws {
        let dir = try TemporaryDirectory()
        try dir.write("capstan.db", String(repeating: "not a database ", count: 500))
        let before = try Data(contentsOf: dir.url.appendingPathComponent("capstan.db"))
        let r = try CLI.run(["status", "--state-dir", dir.url.path])
        #expect(r.status == 1)
        #expect(r.stderr.hasPrefix("capstan: error: "))
        #expect(r.stderr.contains("capstan.db"))
        #expect(try Data(contentsOf: dir.url.appendingPathComponent("capstan.db")) == before)
    }

    @Test func historyIsNewestFirstAndFilters() async throws {
        let dir = try await Self.seeded()
        let all = try CLI.run(["history", "--state-dir", dir.url.path])
        #expect(all.status == 0)
        let lines = all.stdout.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.first?.contains("deployment/churn-prod  start-rollout") == true)
        #expect(lines.last?.contains("model/churn/alias/champion  move-alias  ∅ → 1  commit c1c1c1c1c1  (first champion)") == true)
        let model = try CLI.run(["history", "--state-dir", dir.url.path, "--model", "churn"])
        #expect(model.stdout.split(separator: "\n").count == 1)
        let recent = try CLI.run(["history", "--state-dir", dir.url.path, "--since", "1h", "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(recent.stdout.utf8)) as? [String: Any])
        #expect((doc["events"] as? [[String: Any]])?.compactMap { $0["object"] as? String } == ["deployment/churn-prod"])
        #expect(try CLI.run(["history", "--state-dir", dir.url.path, "--since", "yesterday"]).status == 64)
    }

    /// A database written before metric names were checked can hold a NUL, an escape sequence
    /// or a newline in a metric name (tails and reasons end at a NUL when read back, but may
    /// hold the rest): status and history print them escaped, one version row and one event
    /// per line.
    @Test func controlCharactersFromOlderStateArePrintedEscaped() async throws {
        let dir = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: dir.url.path)
        let registry = EmbeddedRegistry(database: database)
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        let v1 = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1aaaaaaaaaaaaaa"))
        try await registry.updateVersion(model: "churn", number: v1.number, VersionUpdate(status: .trained, metrics: ["acc\0x\u{1B}[2J\nrow": 0.5]))
        let v2 = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2bbbbbbbbbbbbbb"))
        try await registry.updateVersion(model: "churn", number: v2.number, VersionUpdate(status: .failed, logTail: "first\nsecond\u{1B}]0;title\u{7}\tend"))
        _ = try AuditLog(database: database).record(AuditEvent(at: StoreTime.systemMilliseconds(), actor: "capstan", host: "vm",
                                                               object: .version(model: "churn", number: 2), action: .trainingFailed,
                                                               reason: "Traceback\nValueError: \u{1B}[31mbad"))
        try database.close()

        let status = try CLI.run(["status", "--state-dir", dir.url.path])
        #expect(status.status == 0, "\(status.stderr)")
        for control in ["\0", "\u{1B}", "\u{7}"] { #expect(!status.stdout.contains(control), "\(status.stdout.debugDescription)") }
        #expect(status.stdout.contains(#"acc\0x\u{1B}[2J\nrow=0.5"#), "\(status.stdout)")
        #expect(status.stdout.contains(#"| second\u{1B}]0;title\u{7}"# + "\tend"), "\(status.stdout)")
        let history = try CLI.run(["history", "--state-dir", dir.url.path])
        let lines = history.stdout.split(separator: "\n")
        #expect(lines.count == 1, "\(history.stdout)")
        #expect(history.stdout.contains(#"(Traceback\nValueError: \u{1B}[31mbad)"#), "\(history.stdout)")
    }

    /// A lease whose process is gone is removed; one whose process is alive on this host (here,
    /// the test process itself) is refused without --force, and removed with it after a warning
    /// that says what that breaks.
    @Test func unlockRemovesALeaseOfAGoneProcessAndRefusesALiveOneWithoutForce() async throws {
        let dir = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: dir.url.path)
        let exited = Process()
        exited.executableURL = URL(fileURLWithPath: "/bin/true")
        try exited.run()
        exited.waitUntilExit()
        let gone = StateLock(database: database, pid: Int64(exited.processIdentifier))
        let holder = StateLock.newHolderID()
        _ = try await gone.acquire(holder: holder, command: "capstan apply", ttl: 600)
        try database.close()
        let missing = try CLI.run(["unlock", "nope", "--state-dir", dir.url.path])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("no lease with id 'nope'"))
        #expect(missing.stderr.contains(holder))
        let r = try CLI.run(["unlock", holder, "--state-dir", dir.url.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("Removed lease \(holder)"))
        #expect(r.stdout.contains("its process is gone: there is no process \(exited.processIdentifier) on this host"), "\(r.stdout)")
        #expect(try StateLock(database: try StateDatabase(stateDirectory: dir.url.path)).current().isEmpty)

        let live = StateLock(database: try StateDatabase(stateDirectory: dir.url.path))
        let mine = StateLock.newHolderID()
        _ = try await live.acquire(holder: mine, command: "capstan apply --repo x", ttl: 600)
        let refused = try CLI.run(["unlock", mine, "--state-dir", dir.url.path])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("refusing to remove lease \(mine)"), "\(refused.stderr)")
        #expect(refused.stderr.contains("its holder is alive: pid \(getpid()) on this host"), "\(refused.stderr)")
        #expect(refused.stderr.contains("running 'capstan apply --repo x'"), "\(refused.stderr)")
        #expect(refused.stderr.contains("`capstan unlock \(mine) --force`"), "\(refused.stderr)")
        #expect(try live.current().map(\.holder) == [mine])

        let forced = try CLI.run(["unlock", mine, "--force", "--state-dir", dir.url.path])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(forced.stderr.contains("capstan: warning: removing the lease \(mine) although its holder is alive"), "\(forced.stderr)")
        #expect(forced.stderr.contains("the step it is running is killed, and nothing more it does is recorded"), "\(forced.stderr)")
        #expect(forced.stdout.contains("Removed lease \(mine)"))
        #expect(try live.current().isEmpty)
    }
}

struct RegistryDurabilityTests {
    /// A process reports a version created and is killed with SIGKILL at once: the version is
    /// there when the state is opened again, and `capstan status` shows it.
    @Test func aVersionReportedCreatedSurvivesSIGKILL() async throws {
        let dir = try TemporaryDirectory()
        let bench = CLI.binary.deletingLastPathComponent().appendingPathComponent("capstan-bench")
        let process = Process()
        process.executableURL = bench
        process.arguments = ["registry-create-then-wait", "--state-dir", dir.url.path]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Read until the child says it created the version.
        var received = Data()
        while !String(decoding: received, as: UTF8.self).contains("\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            received.append(chunk)
        }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL)
        #expect(String(decoding: received, as: UTF8.self) == "created 1\n")

        let registry = EmbeddedRegistry(database: try StateDatabase(stateDirectory: dir.url.path))
        #expect(try await registry.version(of: "durable", number: 1)?.status == .training)
        let status = try CLI.run(["status", "--state-dir", dir.url.path, "--format", "json"])
        #expect(status.stdout.contains("\"name\" : \"durable\""))
    }
}
