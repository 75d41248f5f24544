import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import GRDB
import Synchronization
import Testing
@testable import CapstanTestSupport

/// The kill-anywhere suite (issue 13): `capstan apply` on a real repository, and `capstan run
/// --serve` during canaries, are killed with SIGKILL at random moments — during trainings (some
/// of which fail), validation commands, alias moves and promotions by pin, rollout steps — and
/// after each kill the next pass runs and the invariants are checked:
///
/// - the state database passes `PRAGMA integrity_check` (right after the kill, and after the
///   next pass);
/// - one version per fingerprint; version numbers never reused (a number keeps its fingerprint
///   for ever, and numbers have no gaps);
/// - every alias points at a validated version;
/// - no training or validation process of a killed pass outlives the next pass (and, under
///   `run --serve`, no model server of the killed agent does); nor do half-made artifact copies
///   or step folders;
/// - the audit log has one event per change made: one registration per model; per version one
///   creation, one `retrain-version` per later attempt, one `trained` when it has an artifact,
///   one verdict when validated or rejected, one `training-failed` when it failed; per alias one
///   event per move, in the order of the alias history; no drift reverted that nobody caused;
/// - the next pass converges: after it the plan has nothing left to change (under `run`, the
///   model and the deployment become Ready and the gateway serves the champion).
///
/// The moments are drawn from a seeded generator; the seed is printed, and `CAPSTAN_KILL_SEED`
/// replays it (the draws, not the machine's timing). `CAPSTAN_KILL_POINTS` sets how many kills
/// (default 50: about 2 minutes here); `scripts/kill-anywhere.sh` runs more, and
/// `CAPSTAN_KILL_KEEP=DIR` keeps the folder of each point that broke an invariant.
@Suite(.serialized) struct KillAnywhereTests {
    @Test func killedAnywhereTheNextPassConvergesAndTheInvariantsHold() async throws {
        let configuration = KillAnywhere.Configuration.fromEnvironment()
        // Minutes of blocking waits (processes, sleeps) run on a thread of their own, not on one
        // of the few threads of Swift's cooperative pool that the other suites' tasks need.
        let report = try await KillAnywhere.onOwnThread { () throws -> KillAnywhere.Report in
            KillAnywhere.say("kill-anywhere: seed \(configuration.seed) (replay with CAPSTAN_KILL_SEED=\(configuration.seed)), \(configuration.applyPoints) apply points, \(configuration.canaryPoints) canary points")
            var generator = SeededGenerator(seed: configuration.seed)
            let report = KillAnywhere.Report()
            try KillAnywhere.applyScenario(points: configuration.applyPoints, generator: &generator, report: report)
            try KillAnywhere.canaryScenario(points: configuration.canaryPoints, generator: &generator, report: report)
            return report
        }
        let summary = "kill-anywhere: seed \(configuration.seed): \(report.points) points, \(report.violations.count) violations"
        KillAnywhere.say(summary)
        #expect(report.points >= configuration.applyPoints + configuration.canaryPoints, "\(summary)")
        #expect(report.violations.isEmpty, "\(summary)\n\(report.violations.joined(separator: "\n"))")
    }
}

/// SplitMix64: a small generator whose draws depend only on the seed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum KillAnywhere {
    /// Runs `body` on a new thread and waits for it without holding a cooperative thread.
    static func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// One line on stderr, unbuffered: the report survives a runner that is stopped half way.
    static func say(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    struct Configuration {
        var seed: UInt64
        var applyPoints: Int
        var canaryPoints: Int

        static func fromEnvironment() -> Configuration {
            let env = ProcessInfo.processInfo.environment
            let seed = env["CAPSTAN_KILL_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
            let total = max(2, env["CAPSTAN_KILL_POINTS"].flatMap { Int($0) } ?? 50)
            let canary = env["CAPSTAN_KILL_CANARY_POINTS"].flatMap { Int($0) } ?? max(1, total / 6)
            return Configuration(seed: seed, applyPoints: max(1, total - canary), canaryPoints: canary)
        }
    }

    /// What the points found. Shared by the scenarios. With `CAPSTAN_KILL_KEEP=DIR`, the folder
    /// of a point that broke an invariant (state, logs, repository) is copied to DIR to look at.
    final class Report: Sendable {
        private let state = Mutex<(points: Int, violations: [String], kept: Set<String>)>((0, [], []))
        let keep = ProcessInfo.processInfo.environment["CAPSTAN_KILL_KEEP"].flatMap { $0.isEmpty ? nil : $0 }

        var points: Int { state.withLock { $0.points } }
        var violations: [String] { state.withLock { $0.violations } }

        func point() { state.withLock { $0.points += 1 } }

        func violation(_ point: String, _ text: String, evidence: URL? = nil) {
            let first = state.withLock { state -> Bool in
                state.violations.append("\(point): \(text)")
                return state.kept.insert(point).inserted
            }
            KillAnywhere.say("kill-anywhere: VIOLATION \(point): \(text)")
            if first, let keep, let evidence {
                let name = point.map { $0.isLetter || $0.isNumber ? $0 : "-" }
                let target = URL(fileURLWithPath: keep).appendingPathComponent(String(name))
                try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
                do {
                    try FileManager.default.copyItem(at: evidence, to: target)
                    KillAnywhere.say("kill-anywhere: kept \(target.path)")
                } catch {
                    KillAnywhere.say("kill-anywhere: could not keep \(evidence.path): \(error)")
                }
            }
        }
    }

    // MARK: - apply

    /// Each point commits a change (a new training, a promotion by pin, back to `latest`), starts
    /// `capstan apply`, kills it after a random delay within the pass's usual duration, checks
    /// the database, runs the next pass and checks the invariants.
    static func applyScenario(points: Int, generator: inout SeededGenerator, report: Report) throws {
        let validate = "validate: {metrics: {accuracy: {min: 0.8}}, command: [python3, validate.py]}"
        let t = try TrainingRepo(behavior: #"{"sleep": 0.2, "accuracy": 0.9}"#, validate: validate)
        // The validation command lasts what `validate-seconds` (outside the repository) says.
        let validateSeconds = t.temp.sub("validate-seconds").path
        try "0.2".write(toFile: validateSeconds, atomically: true, encoding: .utf8)
        try t.repo.write("models/churn/validate.py", """
            import os, time
            p = os.path.join(os.environ["MARKER_DIR"], "validate-seconds")
            time.sleep(float(open(p).read()) if os.path.exists(p) else 0.2)
            print("gates ok", flush=True)

            """)
        try t.repo.commit("validation command")
        let database = t.state + "/capstan.db"
        let clock = ContinuousClock()
        var started = clock.now
        let first = try t.capstan(["apply"])
        let trainPass = (clock.now - started).seconds
        guard first.status == 0 else {
            report.violation("apply setup", "the first apply failed: \(first.stdout)\n\(first.stderr)", evidence: t.temp.url)
            return
        }
        var learningRate = 100
        var pinned: Int?
        var known: [String: String] = [:]
        var kills = 0
        var tries = 0
        var alias: Double?
        while kills < points && tries < points * 3 {
            tries += 1
            // The change this point commits.
            let validated = try validatedVersions(database)
            let roll = Int.random(in: 0..<100, using: &generator)
            var kind: String
            var maxDelay = trainPass * 1.2
            let others = validated.filter { $0 != pinned }
            if roll < 25, validated.count >= 2, !others.isEmpty {
                let target = others[Int.random(in: 0..<others.count, using: &generator)]
                pinned = target
                try t.writeModel(learningRate: "0.\(learningRate)", champion: String(target), validate: validate)
                kind = "pin champion to v\(target)"
                maxDelay = (alias ?? trainPass / 2) * 1.2
            } else if roll < 40, pinned != nil {
                pinned = nil
                try t.writeModel(learningRate: "0.\(learningRate)", champion: "latest", validate: validate)
                kind = "champion back to latest"
                maxDelay = (alias ?? trainPass / 2) * 1.2
            } else if roll < 48 {
                // A training that fails: it waits out its backoff, the alias stays.
                learningRate += 1
                try t.repo.write("models/churn/behavior.json", #"{"sleep": 0.2, "fail": "point \#(tries)"}"#)
                try t.writeModel(learningRate: "0.\(learningRate)", champion: pinned.map(String.init) ?? "latest", validate: validate)
                kind = "failing training (lr 0.\(learningRate))"
            } else {
                learningRate += 1
                let sleep = Double(Int.random(in: 1...5, using: &generator)) / 10
                try t.repo.write("models/churn/behavior.json", #"{"sleep": \#(sleep), "accuracy": 0.9}"#)
                try t.writeModel(learningRate: "0.\(learningRate)", champion: pinned.map(String.init) ?? "latest", validate: validate)
                kind = "train (lr 0.\(learningRate), \(sleep)s)"
            }
            // Now and then a long validation command, to kill the pass while it runs; the next
            // pass's is short again, so a validation left running would outlive it.
            if kind.hasPrefix("train"), Int.random(in: 0..<100, using: &generator) < 20 {
                try "3".write(toFile: validateSeconds, atomically: true, encoding: .utf8)
                kind += ", 3s validation"
                maxDelay += 2.8
            }
            try t.repo.commit("point \(tries): \(kind)", allowEmpty: true)
            let delay = Double.random(in: 0.02...max(0.05, maxDelay), using: &generator)
            let name = "apply point \(tries) [\(kind), SIGKILL after \(String(format: "%.3f", delay))s]"

            let process = Process()
            process.executableURL = CLI.binary
            process.arguments = ["apply", "--repo", t.repo.path, "--state-dir", t.state]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            started = clock.now
            try process.run()
            usleep(UInt32(delay * 1_000_000))
            let killed = process.isRunning
            if killed { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
            if killed {
                kills += 1
                report.point()
            } else if !kind.hasPrefix("train") {
                // A pass that moves an alias only: learn how long it takes.
                alias = (clock.now - started).seconds
            }
            check(integrity: database, name + " (after the kill)", report, evidence: t.temp.url)
            try "0.2".write(toFile: validateSeconds, atomically: true, encoding: .utf8)

            // The next pass may run into the failing training itself (exit 1, the failure
            // recorded); otherwise it succeeds. Either way it leaves nothing to change: the plan
            // after it is empty (a failed training only waits out its backoff).
            let next = try t.capstan(["apply"])
            let failedItself = kind.hasPrefix("failing") && next.status == 1 && next.stdout.contains("training exited with status 3")
            if next.status != 0 && !failedItself {
                report.violation(name, "the next pass failed (\(next.status)): \(next.stdout.suffix(1500))\n\(next.stderr.suffix(1500))", evidence: t.temp.url)
            }
            let plan = try t.capstan(["plan", "--detailed-exitcode"])
            if plan.status != 0 {
                report.violation(name, "the next pass did not converge: the plan after it still has changes (\(plan.status)): \(plan.stdout.suffix(1500))", evidence: t.temp.url)
            }
            check(integrity: database, name + " (after the next pass)", report, evidence: t.temp.url)
            for problem in try registryProblems(database, known: &known, expectSettled: true) { report.violation(name, problem, evidence: t.temp.url) }
            for problem in try auditProblems(database) { report.violation(name, problem, evidence: t.temp.url) }
            let left = ControllerTests.processes(withEnvironment: "MARKER_DIR=\(t.temp.url.path)")
            if !left.isEmpty { report.violation(name, "training or validation processes outlived the next pass: \(left)", evidence: t.temp.url) }
            for problem in leftoverFiles(t.state) { report.violation(name, problem, evidence: t.temp.url) }
        }
        if kills < points { report.violation("apply scenario", "only \(kills) of \(points) kills hit a running pass in \(tries) tries") }
    }

    // MARK: - run --serve during a canary

    /// `capstan run --serve` serves the quick start's churn model with a canary; each point
    /// commits a new version, kills the controller (and with it the in-process agent) at a random
    /// moment of training, validation, promotion or the canary, starts it again, and waits for the
    /// rollout to finish before checking the invariants.
    static func canaryScenario(points: Int, generator: inout SeededGenerator, report: Report) throws {
        guard points > 0 else { return }
        let temp = try TempDir()
        let state = temp.sub("state").path
        let database = state + "/capstan.db"
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        try repo.copy(example: example) { original in
            return original
                .replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:1")
                .replacingOccurrences(of: "pause: 5s", with: "pause: 1s")
                .replacingOccurrences(of: "interval: 5s", with: "interval: 1s")
                .replacingOccurrences(of: "minRequests: 20", with: "minRequests: 3")
                // Any seed passes: the point is the kill, not the gates.
                .replacingOccurrences(of: "    noRegressionAgainst: champion\n    tolerance: {accuracy: 0.01}\n", with: "")
                .replacingOccurrences(of: "accuracy: {min: 0.65}", with: "accuracy: {min: 0.1}")
                .replacingOccurrences(of: "log_loss: {max: 0.6}", with: "log_loss: {max: 5}")
        }
        try repo.commit("quick start")
        // Whatever happens, no model server of this scenario outlives it.
        defer {
            for pid in ControllerTests.processes(withEnvironment: "CAPSTAN_MODEL_DIR=\(state)") { kill(pid, SIGKILL) }
        }
        let gateway = try Ports.free(), admin = try Ports.free()
        let arguments = ["--interval", "1s", "--tick", "1s", "--serve", "--gateway", "127.0.0.1:\(gateway)", "--admin", "127.0.0.1:\(admin)"]
        var run = 0
        func start() throws -> ControllerTests.RunningController {
            run += 1
            return try ControllerTests.RunningController(repo: repo.path, state: state, log: temp.sub("run-\(run).log"), arguments: arguments)
        }
        let traffic = Traffic(gateway: gateway)
        defer { traffic.stop() }
        var startedAt = Date()
        var controller = try start()
        defer { if controller.process.isRunning { _ = controller.stop(SIGKILL, within: 10) } }
        var known: [String: String] = [:]
        if let problem = waitUntilSettled(database: database, gateway: gateway, since: startedAt, within: 120) {
            report.violation("canary setup", "the first rollout did not settle: \(problem)\n\(controller.logText.suffix(3000))", evidence: temp.url)
            return
        }
        let model = repo.url.appendingPathComponent("models/churn/model.yaml")
        for point in 1...points {
            let text = try String(contentsOf: model, encoding: .utf8)
            let seeded = text.replacingOccurrences(of: #"seed: \d+"#, with: "seed: \(100 + point)", options: .regularExpression)
            try repo.write("models/churn/model.yaml", seeded)
            try repo.commit("canary point \(point)")
            // Polled every second; trains (~0.5 s), validates, moves the alias, starts the new
            // version (~1 s), two steps of 1 s with analysis, promotes.
            let delay = Double.random(in: 0.5...9, using: &generator)
            let name = "canary point \(point) [SIGKILL of run --serve after \(String(format: "%.3f", delay))s]"
            usleep(UInt32(delay * 1_000_000))
            let phase = (try? rolloutPhase(database)) ?? "?"
            kill(controller.process.processIdentifier, SIGKILL)
            _ = controller.waitForExit(within: 10)
            report.point()
            check(integrity: database, name + " (after the kill, rollout \(phase))", report, evidence: temp.url)

            startedAt = Date()
            controller = try start()
            if let problem = waitUntilSettled(database: database, gateway: gateway, since: startedAt, within: 120) {
                report.violation(name, "the next passes did not settle within 120 s: \(problem)\n\(controller.logText.suffix(3000))", evidence: temp.url)
            }
            check(integrity: database, name + " (after the next pass)", report, evidence: temp.url)
            // The controller keeps running: look between its passes, and count only what is still
            // wrong a moment later (not a pass caught half way).
            waitForQuiet(database, within: 30)
            var scratch = known
            let first = try registryProblems(database, known: &scratch, expectSettled: false) + auditProblems(database)
            var lasting = first
            if !first.isEmpty {
                usleep(2_000_000)
                waitForQuiet(database, within: 30)
                scratch = known
                let second = try registryProblems(database, known: &scratch, expectSettled: false) + auditProblems(database)
                lasting = first.filter(second.contains)
            }
            _ = try registryProblems(database, known: &known, expectSettled: false)
            for problem in lasting { report.violation(name, problem, evidence: temp.url) }
            let trainings = ControllerTests.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)")
            if !trainings.isEmpty { report.violation(name, "training processes outlived the next pass: \(trainings)", evidence: temp.url) }
            // A model server leads its own process group; its group leader must be a child of
            // the running controller (the processes a server starts, such as a pyenv shim's,
            // are in its group).
            let strays = ControllerTests.processes(withEnvironment: "CAPSTAN_MODEL_DIR=\(state)").filter {
                let leader = processGroup(of: $0) ?? $0
                return parent(of: leader) != controller.process.processIdentifier
            }
            if !strays.isEmpty { report.violation(name, "model servers of the killed agent outlived the next pass: \(strays)", evidence: temp.url) }
        }
        _ = controller.stop()
    }

    /// Requests through the gateway, all the time, so that canary analyses have traffic.
    final class Traffic: Sendable {
        final class Flag: Sendable {
            let raised = Mutex(false)
        }

        private let stopped = Flag()

        init(gateway: UInt16) {
            let stopped = self.stopped
            Thread {
                while !stopped.raised.withLock({ $0 }) {
                    _ = Traffic.predict(gateway: gateway)
                    usleep(50_000)
                }
            }.start()
        }

        func stop() { stopped.raised.withLock { $0 = true } }

        static func predict(gateway: UInt16) -> (Int, String?) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway)/churn-prod/predict")!)
            request.httpMethod = "POST"
            request.httpBody = Data(#"{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}"#.utf8)
            request.timeoutInterval = 5
            let result = Mutex<(Int, String?)>((0, nil))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { _, response, _ in
                let http = response as? HTTPURLResponse
                result.withLock { $0 = (http?.statusCode ?? 0, http?.value(forHTTPHeaderField: "X-Capstan-Version")) }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 6)
            return result.withLock { $0 }
        }
    }

    /// Waits until the registry and the deployment are settled: the model's condition Ready, no
    /// rollout in progress, the deployment Ready, and the gateway answering with the champion.
    /// Nil when settled, else what was seen last.
    static func waitUntilSettled(database: String, gateway: UInt16, since: Date, within seconds: Double) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        let sinceMilliseconds = Int64(since.timeIntervalSince1970 * 1000)
        var last = "nothing read yet"
        while Date() < deadline {
            do {
                let (text, champion) = try DatabaseQueue(path: database).read { db -> (String, Int?) in
                    let model = try Row.fetchOne(db, sql: "SELECT type, reason FROM conditions WHERE object = 'model/churn'")
                    let deployment = try Row.fetchOne(db, sql: "SELECT type, reason FROM conditions WHERE object = 'deployment/churn-prod'")
                    let rollouts = try Int.fetchOne(db, sql: "SELECT count(*) FROM rollouts") ?? 0
                    let champion = try Int.fetchOne(db, sql: "SELECT version FROM aliases WHERE model = 'churn' AND alias = 'champion'")
                    // What an earlier controller left is not settled: a pass of this one must have ended.
                    let passes = try Int.fetchOne(db, sql: "SELECT count(*) FROM passes WHERE started_at >= ? AND outcome != 'running'",
                                                  arguments: [sinceMilliseconds]) ?? 0
                    let modelText = model.map { "\($0["type"] as String)/\($0["reason"] as String)" } ?? "-"
                    let deploymentText = deployment.map { "\($0["type"] as String)/\($0["reason"] as String)" } ?? "-"
                    let text = "model \(modelText), deployment \(deploymentText), \(rollouts) rollouts, champion \(champion.map(String.init) ?? "-"), \(passes) passes of this controller"
                    let settled = passes > 0 && modelText == "Ready/Converged" && deploymentText == "Ready/Serving" && rollouts == 0
                    return (text, settled ? champion : nil)
                }
                last = text
                if let champion {
                    let answer = Traffic.predict(gateway: gateway)
                    if answer.0 == 200 && answer.1 == String(champion) { return nil }
                    last += "; the gateway answered \(answer.0) from v\(answer.1 ?? "-")"
                }
            } catch {
                last = "\(error)"
            }
            usleep(300_000)
        }
        return last
    }

    /// Waits until no pass is running and the journal has nothing `started`.
    static func waitForQuiet(_ database: String, within seconds: Double) {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let busy = (try? DatabaseQueue(path: database).read { db in
                (try Int.fetchOne(db, sql: "SELECT count(*) FROM passes WHERE outcome = 'running'") ?? 0)
                    + (try Int.fetchOne(db, sql: "SELECT count(*) FROM journal WHERE state = 'started'") ?? 0)
            }) ?? 1
            if busy == 0 { return }
            usleep(100_000)
        }
    }

    static func parent(of pid: Int32) -> Int32? { statField(pid, 1) }

    static func processGroup(of pid: Int32) -> Int32? { statField(pid, 2) }

    /// Field `index + 3` of `/proc/<pid>/stat` (0: state, 1: ppid, 2: pgrp).
    static func statField(_ pid: Int32, _ index: Int) -> Int32? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > index ? Int32(fields[index]) : nil
    }

    // MARK: - Invariants

    static func check(integrity database: String, _ point: String, _ report: Report, evidence: URL) {
        do {
            let result = try DatabaseQueue(path: database).read { db in try String.fetchAll(db, sql: "PRAGMA integrity_check") }
            if result != ["ok"] { report.violation(point, "PRAGMA integrity_check: \(result.prefix(5).joined(separator: "; "))", evidence: evidence) }
        } catch {
            report.violation(point, "the database cannot be read: \(error)", evidence: evidence)
        }
    }

    static func validatedVersions(_ database: String) throws -> [Int] {
        try DatabaseQueue(path: database).read { db in
            try Int.fetchAll(db, sql: "SELECT number FROM versions WHERE model = 'churn' AND status = 'validated' ORDER BY number")
        }
    }

    static func lastPassOutcome(_ database: String) throws -> String? {
        try DatabaseQueue(path: database).read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM passes ORDER BY id DESC LIMIT 1")
        }
    }

    static func rolloutPhase(_ database: String) throws -> String {
        try DatabaseQueue(path: database).read { db in
            try String.fetchOne(db, sql: "SELECT json_extract(state, '$.phase') || ' step ' || json_extract(state, '$.step') FROM rollouts")
        } ?? "none"
    }

    /// Versions and aliases: one version per fingerprint, numbers never reused and without gaps,
    /// aliases only on validated versions; with `expectSettled`, no version left half done.
    static func registryProblems(_ database: String, known: inout [String: String], expectSettled: Bool) throws -> [String] {
        let (versions, aliases) = try DatabaseQueue(path: database).read { db in
            (try Row.fetchAll(db, sql: "SELECT model, number, fingerprint, status FROM versions ORDER BY model, number"),
             try Row.fetchAll(db, sql: """
                SELECT a.model, a.alias, a.version, v.status FROM aliases a
                LEFT JOIN versions v ON v.model = a.model AND v.number = a.version
                """))
        }
        var problems: [String] = []
        var byFingerprint: [String: [Int]] = [:]
        var numbers: [String: [Int]] = [:]
        for row in versions {
            let model: String = row["model"], number: Int = row["number"], fingerprint: String = row["fingerprint"], status: String = row["status"]
            byFingerprint["\(model) \(fingerprint)", default: []].append(number)
            numbers[model, default: []].append(number)
            let key = "\(model)/v\(number)"
            if let earlier = known[key], earlier != fingerprint {
                problems.append("version number \(key) was reused: fingerprint \(earlier.prefix(12)) before, \(fingerprint.prefix(12)) now")
            }
            known[key] = fingerprint
            if expectSettled && status != "validated" && status != "failed" {
                problems.append("\(key) is \(status) after the next pass")
            }
        }
        for (key, list) in byFingerprint where list.count > 1 { problems.append("fingerprint \(key) has versions \(list)") }
        for (model, list) in numbers where list != Array(1...list.count) { problems.append("\(model) has version numbers \(list)") }
        for key in known.keys where !versions.contains(where: { "\($0["model"] as String)/v\($0["number"] as Int)" == key }) {
            problems.append("version \(key) disappeared")
        }
        for row in aliases where (row["status"] as String?) != "validated" {
            problems.append("alias \(row["model"] as String)@\(row["alias"] as String) points at v\(row["version"] as Int), which is \((row["status"] as String?) ?? "missing")")
        }
        return problems
    }

    /// What a killed pass may leave in the state folder and the next pass must clean: half-made
    /// artifact copies, step folders.
    static func leftoverFiles(_ state: String) -> [String] {
        let fm = FileManager.default
        var problems: [String] = []
        let temporary = ((try? fm.contentsOfDirectory(atPath: state + "/artifacts")) ?? []).filter { $0.hasPrefix(".tmp-") }
        if !temporary.isEmpty { problems.append("half-made artifact copies left: \(temporary)") }
        let runs = ((try? fm.subpathsOfDirectory(atPath: state + "/runs")) ?? []).filter { $0.split(separator: "/").count == 2 }
        if !runs.isEmpty { problems.append("step folders left in runs/: \(runs)") }
        return problems
    }

    /// The audit log against the registry: one event per change.
    static func auditProblems(_ database: String) throws -> [String] {
        try DatabaseQueue(path: database).read { db in
            var problems: [String] = []
            func count(_ object: String, _ actions: [String]) throws -> Int {
                try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_log WHERE object = ? AND action IN (\(actions.map { _ in "?" }.joined(separator: ", ")))",
                                 arguments: StatementArguments([object] + actions)) ?? 0
            }
            for name in try String.fetchAll(db, sql: "SELECT name FROM models") {
                let n = try count("model/\(name)", ["register"])
                if n != 1 { problems.append("model/\(name) has \(n) register events") }
            }
            for row in try Row.fetchAll(db, sql: "SELECT model, number, status, artifact_digest, attempts FROM versions") {
                let model: String = row["model"], number: Int = row["number"], status: String = row["status"]
                let object = "model/\(model)/v\(number)"
                let created = try count(object, ["create-version"])
                if created != 1 { problems.append("\(object) has \(created) create-version events") }
                let attempts: Int = row["attempts"]
                let retrained = try count(object, ["retrain-version"])
                if retrained != attempts - 1 { problems.append("\(object) has \(retrained) retrain-version events for \(attempts) attempts") }
                let trained = try count(object, ["trained"])
                let expectTrained = (row["artifact_digest"] as String?) != nil ? 1 : 0
                if trained != expectTrained { problems.append("\(object) (\(status)) has \(trained) trained events") }
                let verdicts = try count(object, ["validated", "rejected"])
                let expectVerdict = status == "validated" || status == "rejected" ? 1 : 0
                if verdicts != expectVerdict { problems.append("\(object) (\(status)) has \(verdicts) validated/rejected events") }
                let failed = try count(object, ["training-failed"])
                let expectFailed = status == "failed" ? 1 : 0
                if failed != expectFailed { problems.append("\(object) (\(status)) has \(failed) training-failed events") }
            }
            for pair in try Row.fetchAll(db, sql: "SELECT DISTINCT model, alias FROM alias_history") {
                let model: String = pair["model"], alias: String = pair["alias"]
                let moves = try Int.fetchAll(db, sql: "SELECT coalesce(to_version, 0) FROM alias_history WHERE model = ? AND alias = ? ORDER BY id",
                                             arguments: [model, alias])
                let events = try Int.fetchAll(db, sql: """
                    SELECT coalesce(CAST("after" AS INTEGER), 0) FROM audit_log WHERE object = ? AND action IN ('move-alias', 'delete-alias') ORDER BY id
                    """, arguments: ["model/\(model)/alias/\(alias)"])
                if moves != events { problems.append("alias \(model)@\(alias) moved \(moves) but the audit log says \(events)") }
            }
            let drift = try Int.fetchOne(db, sql: "SELECT count(*) FROM audit_log WHERE action IN ('revert-drift', 'adopt-drift')") ?? 0
            if drift != 0 { problems.append("\(drift) drift events, but nobody changed the serving layer by hand") }
            return problems
        }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
