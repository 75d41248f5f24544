import CapstanCore
@testable import CapstanStore
import Foundation
import Testing
@testable import CapstanCLI
@testable import CapstanEngine
@testable import CapstanTestSupport

/// The persistent plan cache of `capstan plan` (issue 14 §3): a plan from the cache is the plan
/// computed from scratch, whatever changed in between; a damaged, foreign or stale cache is
/// ignored and replaced. In process against real repositories and state folders (with a clock the
/// test sets), and through the binary as a user runs it.
struct PlanCacheTests {
    /// A repository of two models with inputs in the repository, and a state folder.
    final class Fixture {
        let temp: TempDir
        let repo: GitRepo
        let state: String

        init(external: Bool = false) throws {
            temp = try TempDir()
            repo = try GitRepo(at: temp.sub("repo"))
            state = temp.sub("state").path
            let data = temp.sub("data").path
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
            try Data("a,b\n1,2\n".utf8).write(to: URL(fileURLWithPath: data + "/x.csv"))
            try repo.write("capstan.yaml", """
                apiVersion: capstan/v1
                kind: Config
                metadata: {name: default}
                spec:
                  manifests: [models]
                  policy: {retry: {initial: 1h, max: 2h}}
                \(external ? "  dataRoots: [\(data)]\n" : "")
                """)
            for name in ["churn", "ltv"] {
                try repo.write("models/\(name)/model.yaml", """
                    apiVersion: capstan/v1
                    kind: Model
                    metadata: {name: \(name)}
                    spec:
                      train:
                        command: [python3, train.py]
                        workdir: models/\(name)
                        inputs: [models/\(name), data/\(name).csv\(external && name == "ltv" ? ", \(data)/x.csv" : "")]
                        params: {learning_rate: 0.1}
                      aliases: {champion: latest}

                    """)
                try repo.write("models/\(name)/train.py", "print('train')\n")
                try repo.write("data/\(name).csv", "a,b\n1,2\n")
            }
            _ = try repo.commit("two models")
        }

        var options: RepositoryOptions {
            get throws { try RepositoryOptions.parse(["--repo", repo.url.path, "--state-dir", state, "--ref", "main"]) }
        }

        /// A reconciler over the ports `capstan plan` wires, with the clock at `now`.
        func reconciler(now: Int64) async throws -> (Reconciler, PlanCache, SQLiteStateStore) {
            let store = try Wiring.store(state)
            var ports = try await Wiring.ports(try options, store: store, actor: "test")
            ports.now = { now }
            let registry = store.registry
            let cache = PlanCache(store: PlanCacheFile(stateDirectory: state), build: "test-build",
                                  registryGeneration: { try await registry.generation() })
            return (Reconciler(ports: ports), cache, store)
        }

        var cacheFile: String { state + "/cache/plan-cache" }
    }

    /// The plan as JSON, without its creation time (the one field a cached plan sets anew).
    static func comparable(_ plan: Plan) throws -> String {
        var plan = plan
        plan.createdAt = 0
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(plan), as: UTF8.self)
    }

    /// Plans through the cache and from scratch at `now`, and checks they agree.
    static func planBothWays(_ f: Fixture, now: Int64, options: PlanOptions = PlanOptions()) async throws -> CachedPlanReport {
        let (reconciler, cache, _) = try await f.reconciler(now: now)
        let cached = try await reconciler.cachedPlan(at: "main", cache: cache, options: options, fetch: false)
        let (fresh, _, _) = try await f.reconciler(now: now)
        let expected = try await fresh.plan(at: "main", options: options, fetch: false).plan
        #expect(try comparable(cached.plan) == comparable(expected))
        #expect(cached.plan.createdAt == now)
        return cached
    }

    @Test func aSecondPlanComesFromTheCacheAndEqualsAFreshOne() async throws {
        let f = try Fixture()
        let first = try await Self.planBothWays(f, now: 1_000_000)
        #expect(!first.fromCache)
        #expect(first.plan.count(.train) == 2)
        #expect(FileManager.default.fileExists(atPath: f.cacheFile))
        let second = try await Self.planBothWays(f, now: 2_000_000)
        #expect(second.fromCache)
        #expect(try Self.comparable(second.plan) == Self.comparable(first.plan))
    }

    @Test func aNewCommitARegistryWriteOrAnotherOptionPlansAfresh() async throws {
        let f = try Fixture()
        _ = try await Self.planBothWays(f, now: 1_000)
        #expect(try await Self.planBothWays(f, now: 2_000).fromCache)

        // A new commit (one input changed).
        try f.repo.write("data/ltv.csv", "a,b\n1,3\n")
        _ = try f.repo.commit("new ltv data")
        #expect(try await !Self.planBothWays(f, now: 3_000).fromCache)
        #expect(try await Self.planBothWays(f, now: 4_000).fromCache)

        // The registry written (by anyone): the generation moves.
        let (_, _, store) = try await f.reconciler(now: 5_000)
        try await store.registry.upsertModel(name: "churn", description: "registered elsewhere", labels: [:])
        #expect(try await !Self.planBothWays(f, now: 6_000).fromCache)
        #expect(try await Self.planBothWays(f, now: 7_000).fromCache)

        // Another option: planned afresh, and cached under that option.
        #expect(try await !Self.planBothWays(f, now: 8_000, options: PlanOptions(retryFailed: true)).fromCache)
        #expect(try await Self.planBothWays(f, now: 9_000, options: PlanOptions(retryFailed: true)).fromCache)
        #expect(try await !Self.planBothWays(f, now: 10_000).fromCache)
    }

    @Test func aBackoffEndingMakesTheCachedPlanStale() async throws {
        let f = try Fixture()
        let fresh = try await Self.planBothWays(f, now: 1_000)
        // churn's training failed at 1,000: a backoff of 1h (the policy's initial retry).
        guard case .train(let train) = try #require(fresh.plan.entries.first { $0.name == "churn" && $0.action == .train }).detail
        else { Issue.record("no training of churn"); return }
        let (_, _, store) = try await f.reconciler(now: 1_000)
        _ = try await store.registry.upsertModel(name: "churn", description: nil, labels: [:])
        let version = try await store.registry.createVersion(NewVersion(model: "churn", fingerprint: train.fingerprint))
        try await store.registry.updateVersion(model: "churn", number: version.number,
                                               VersionUpdate(status: .failed, logTail: "boom", attempts: 1, failedAt: 1_000))
        let hour: Int64 = 3_600_000
        let waiting = try await Self.planBothWays(f, now: 2_000)
        #expect(!waiting.fromCache)
        let wait = try #require(waiting.plan.entries.first { $0.name == "churn" })
        #expect(wait.action == .wait)
        #expect(try await Self.planBothWays(f, now: 1_000 + hour - 1).fromCache)
        // The backoff is over: the cached plan (a wait) is not used; churn trains again.
        let due = try await Self.planBothWays(f, now: 1_000 + hour)
        #expect(!due.fromCache)
        #expect(due.plan.entries.first { $0.name == "churn" }?.action == .train)
    }

    @Test func inputsOutsideTheRepositoryAreNeverCached() async throws {
        let f = try Fixture(external: true)
        #expect(try await !Self.planBothWays(f, now: 1_000).fromCache)
        #expect(!FileManager.default.fileExists(atPath: f.cacheFile))
        try Data("a,b\n9,9\n".utf8).write(to: URL(fileURLWithPath: f.temp.sub("data").path + "/x.csv"))
        #expect(try await !Self.planBothWays(f, now: 2_000).fromCache)
    }

    @Test(arguments: ["flip a byte", "cut short", "other format", "not a file", "empty", "other record format"])
    func aDamagedOrForeignCacheIsIgnoredAndReplaced(_ damage: String) async throws {
        let f = try Fixture()
        _ = try await Self.planBothWays(f, now: 1_000)
        let good = try Data(contentsOf: URL(fileURLWithPath: f.cacheFile))
        switch damage {
        case "flip a byte":
            var bytes = good
            bytes[bytes.count - 10] ^= 0x20
            try bytes.write(to: URL(fileURLWithPath: f.cacheFile))
        case "cut short":
            try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: f.cacheFile))
        case "other format":
            var text = String(decoding: good, as: UTF8.self)
            text = text.replacingOccurrences(of: "capstan-plan-cache \(PlanCacheFile.format)\n", with: "capstan-plan-cache 99\n")
            try Data(text.utf8).write(to: URL(fileURLWithPath: f.cacheFile))
        case "not a file":
            try FileManager.default.removeItem(atPath: f.cacheFile)
            try FileManager.default.createDirectory(atPath: f.cacheFile, withIntermediateDirectories: false)
        case "empty":
            try Data().write(to: URL(fileURLWithPath: f.cacheFile))
        default:
            // A record of another engine format, sealed correctly.
            let record = try #require(PlanCacheFile.open(good))
            var text = String(decoding: record, as: UTF8.self)
            text = text.replacingOccurrences(of: "\"format\":\(PlanCache.format)", with: "\"format\":\(PlanCache.format + 1)")
            #expect(text != String(decoding: record, as: UTF8.self))
            try PlanCacheFile.seal(Data(text.utf8)).write(to: URL(fileURLWithPath: f.cacheFile))
        }
        let after = try await Self.planBothWays(f, now: 2_000)
        #expect(!after.fromCache, "\(damage)")
        if damage != "not a file" {
            #expect(try await Self.planBothWays(f, now: 3_000).fromCache, "\(damage): the cache is written again")
        }
    }

    /// The cache is really read: a record sealed correctly for the same key is what `capstan
    /// plan` prints (so the equality above is not the fresh plan twice).
    @Test func theBinaryUsesTheCacheAndNoCacheBypassesIt() async throws {
        let f = try Fixture()
        let arguments = ["plan", "--repo", f.repo.url.path, "--state-dir", f.state, "--ref", "main", "--no-fetch"]
        let first = try CLI.run(arguments)
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stdout.contains("+ train churn"), "\(first.stdout)")
        let record = try #require(PlanCacheFile.open(try Data(contentsOf: URL(fileURLWithPath: f.cacheFile))))
        var text = String(decoding: record, as: UTF8.self)
        #expect(text.contains("\"name\":\"churn\""))
        text = text.replacingOccurrences(of: "\"name\":\"churn\"", with: "\"name\":\"cached-churn\"")
        try PlanCacheFile.seal(Data(text.utf8)).write(to: URL(fileURLWithPath: f.cacheFile))
        let second = try CLI.run(arguments)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stdout.contains("cached-churn"), "\(second.stdout)")
        let bypassed = try CLI.run(arguments + ["--no-cache"])
        #expect(bypassed.status == 0, "\(bypassed.stderr)")
        #expect(!bypassed.stdout.contains("cached-churn"))
        #expect(bypassed.stdout.contains("+ train churn"))
        // The cache file is private, like everything in the state folder.
        let mode = try FileManager.default.attributesOfItem(atPath: f.cacheFile)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}
