import CapstanCore
import Foundation
import Testing
@testable import CapstanCLI

/// The text, JSON and Markdown renderings of a plan (docs/plan.md), over plans built by hand so
/// that every action appears.
struct PlanRendererTests {
    /// 2026-11-05T10:00:00Z.
    static let now: Int64 = 1_793_872_800_000
    static let commit = "45903ab000c0ffee45903ab000c0ffee45903ab0"
    static let fingerprint = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4"
    static let training = TrainingDescription(
        command: ["python3", "train.py"], workdir: "models/churn",
        params: ["learning_rate": .double(0.1), "epochs": .int(20)], env: ["PYTHONHASHSEED": "0"],
        secretEnv: ["API_TOKEN"], inputs: [InputIdentity(input: "data/churn.csv", identity: "git-blob:bbbbbbb2222")])
    static let failure = "line 1\nline 2\nline 3\nline 4\nline 5\nline 6\nValueError: bad \u{1B}[31mred\u{1B}[0m input\n\n"

    static func plan(_ entries: [PlanEntry]) -> Plan {
        Plan(repository: "https://git.example.com/ml.git", ref: "main", commit: commit, actualDigest: "d1g35t",
             createdAt: now, entries: entries)
    }

    /// Every action, over four models; `fraud`'s entries are interleaved with `churn`'s to show grouping.
    static let full: Plan = {
        let trainReasons: [TrainReason] = [
            .paramChanged(name: "learning_rate", from: .double(0.05), to: .double(0.1)),
            .inputChanged(input: "data/churn.csv", from: "git-blob:aaaaaaa1111", to: "git-blob:bbbbbbb2222"),
        ]
        let v3 = VersionSummary(version: 3, status: .validated, metrics: ["accuracy": 0.91, "p95_latency_ms": 41], gateResults: [],
                                commit: "c3c3c3c3")
        let v5 = VersionSummary(version: 5, status: .validated, metrics: ["accuracy": 0.922, "p95_latency_ms": 39.5, "f1": 0.8],
                                gateResults: [GateResult(gate: "metric accuracy >= 0.9", passed: true, detail: "0.922 >= 0.9"),
                                              GateResult(gate: "no regression against champion", passed: true, detail: "accuracy +0.012")],
                                commit: "c5c5c5c5")
        let v4 = VersionSummary(version: 4, status: .validated, metrics: ["accuracy": 0.9], gateResults: [], commit: nil)
        return plan([
            PlanEntry(id: "churn/register", action: .registerModel, name: "churn", reason: "not in the registry yet",
                      detail: .registerModel(ModelMetadataChange(description: "Predicts churn.", labels: ["team": "growth"]))),
            PlanEntry(id: "fraud/update", action: .updateModel, name: "fraud", reason: "description and labels changed",
                      detail: .updateModel(ModelMetadataChange(description: "New.", labels: ["team": "fraud", "tier": "gold"],
                                                               previousDescription: "Old.", previousLabels: ["team": "risk"]))),
            PlanEntry(id: "churn/train", action: .train, name: "churn", reason: trainReasons.map(\.description).joined(separator: "; "),
                      dependsOn: ["churn/register"],
                      detail: .train(TrainDetail(fingerprint: fingerprint, training: training, reasons: trainReasons, version: nil,
                                                 attempt: 1, timeoutMilliseconds: 1_800_000))),
            PlanEntry(id: "churn/validate", action: .validate, name: "churn", reason: "gates for the version this train produces",
                      dependsOn: ["churn/train"],
                      detail: .validate(ValidateDetail(version: .produced(by: "churn/train"),
                                                       gates: ["accuracy >= 0.9", "no regression against champion"]))),
            PlanEntry(id: "churn/alias/champion", action: .moveAlias, name: "churn", reason: "the spec pins champion to v5 (now v3)",
                      dependsOn: ["churn/register"],
                      detail: .moveAlias(AliasMoveDetail(alias: "champion", target: .version(5), from: 3, to: .number(5),
                                                         current: v3, candidate: v5))),
            PlanEntry(id: "churn/alias/candidate", action: .moveAlias, name: "churn",
                      reason: "candidate follows | the newest\nvalidated version", dependsOn: ["churn/validate"],
                      detail: .moveAlias(AliasMoveDetail(alias: "candidate", target: .latest, from: 4, to: .produced(by: "churn/train"),
                                                         current: v4, candidate: nil))),
            PlanEntry(id: "churn/alias/old/delete", action: .deleteAlias, name: "churn", reason: "alias old is no longer in the spec",
                      detail: .deleteAlias(AliasDeleteDetail(alias: "old", from: 2))),
            PlanEntry(id: "fraud/wait", action: .wait, name: "fraud", reason: "training v4 failed twice; retrying after a backoff",
                      detail: .wait(WaitDetail(until: now + 14 * 60_000, version: 4, fingerprint: "feedfacefeedface", lastFailure: failure))),
            PlanEntry(id: "churn/archive", action: .archiveVersions, name: "churn",
                      reason: "retention keeps the newest 10 versions", dependsOn: ["churn/alias/champion", "churn/alias/old/delete"],
                      detail: .archiveVersions(ArchiveDetail(versions: [1, 2], keepVersions: 10))),
            PlanEntry(id: "fraud/alias/champion", action: .blocked, name: "fraud",
                      reason: "alias champion is pinned to v9, which does not exist; change the pin in models/fraud.yaml:12:15",
                      detail: .blocked(BlockedDetail(alias: "champion", version: 9, location: "models/fraud.yaml:12:15"))),
            PlanEntry(id: "ranker/train", action: .train, name: "ranker", reason: "retrying v7 now (--retry-failed)",
                      detail: .train(TrainDetail(fingerprint: "0123456789abcdef", training: training,
                                                 reasons: [.retry(attempt: 3, lastFailure: "Killed")], version: 7, attempt: 3,
                                                 timeoutMilliseconds: 60_000))),
            PlanEntry(id: "ranker/validate/v6", action: .validate, name: "ranker", reason: "v6 was trained but not validated",
                      detail: .validate(ValidateDetail(version: .number(6), gates: []))),
            PlanEntry(id: "old-model/orphaned", action: .orphaned, name: "old-model", reason: "in the registry but no longer in Git",
                      detail: .orphaned(OrphanDetail(versions: 3, aliases: ["champion": 2]))),
        ])
    }()

    // MARK: Text

    @Test func textShowsEveryActionGroupedByModel() {
        let expected = """
            Capstan plan for https://git.example.com/ml.git, main @ 45903ab000

              + register model churn
                  description: "Predicts churn."
                  labels.team: "growth"
              + train churn (new version)
                  why: param learning_rate changed 0.05 → 0.1
                  why: input data/churn.csv changed (blob aaaaaaa → blob bbbbbbb)
                  fingerprint: 3f2a9c1b7d4e
              ~ validate churn (new version; gates: accuracy >= 0.9, no regression against champion)
                  why: gates for the version this train produces
              ~ move alias churn@champion: v3 → v5
                  why: the spec pins champion to v5 (now v3)
              ~ move alias churn@candidate: v4 → the version this train produces
                  why: candidate follows | the newest validated version
              - delete alias churn@old (v2)
                  why: alias old is no longer in the spec
              - archive churn v1, v2 (keep 10)
                  why: retention keeps the newest 10 versions

              ~ update model fraud
                  description: "Old." → "New."
                  labels.team: "risk" → "fraud"
                  labels.tier: (unset) → "gold"
              … wait fraud: training v4 failed twice; retrying after a backoff (until 2026-11-05T10:14:00Z, in 14m)
                  last failure:
                    line 3
                    line 4
                    line 5
                    line 6
                    ValueError: bad red input
              ! blocked fraud@champion: alias champion is pinned to v9, which does not exist; change the pin in models/fraud.yaml:12:15

              + train ranker v7 (again)
                  why: retrying v7 now (--retry-failed)
                  why: retry of a failed training (attempt 3)
                  fingerprint: 0123456789ab
                  attempt: 3
                  last failure:
                    Killed
              ~ validate ranker v6 (no gates)
                  why: v6 was trained but not validated

              ? orphaned model old-model (3 versions, aliases champion→2)
                  why: in the registry but no longer in Git

            Plan: 1 to register, 1 to update, 2 to train, 2 to validate, 2 alias moves, 1 to delete, 1 to archive; 1 waiting, 1 blocked, 1 orphaned.

            """
        let text = PlanRenderer(plan: Self.full, color: false).text()
        #expect(text.split(separator: "\n", omittingEmptySubsequences: false) == expected.split(separator: "\n", omittingEmptySubsequences: false))
        #expect(!text.contains("\u{1B}"))
    }

    @Test func colourOnlyWhenAskedAndOnlyOnSymbols() {
        let plain = PlanRenderer(plan: Self.full, color: false).text()
        let coloured = PlanRenderer(plan: Self.full, color: true).text()
        #expect(!plain.contains("\u{1B}"))
        for (code, symbol, line) in [("32", "+", "register model churn"), ("33", "~", "update model fraud"),
                                     ("31", "-", "delete alias churn@old"), ("36", "…", "wait fraud"),
                                     ("1;31", "!", "blocked fraud@champion"), ("2", "?", "orphaned model old-model")] {
            #expect(coloured.contains("  \u{1B}[\(code)m\(symbol)\u{1B}[0m \(line)"), "\(line)")
        }
        let stripped = coloured.replacing(/\x{1B}\[[0-9;]*m/, with: "")
        #expect(stripped == plain)
    }

    @Test func noChangesSaysTheRegistryMatches() {
        let empty = PlanRenderer(plan: Self.plan([]), color: true).text()
        #expect(empty == "Capstan plan for https://git.example.com/ml.git, main @ 45903ab000\n\nNo changes. The registry matches 45903ab000.\n")

        let waiting = Self.full.entries.filter { !$0.action.isChange && $0.action != .orphaned }
        let text = PlanRenderer(plan: Self.plan(waiting), color: false).text()
        #expect(text.hasSuffix("\nNo changes. The registry matches 45903ab000. 1 waiting, 1 blocked.\n"))
        #expect(!text.contains("Plan:"))
        #expect(PlanRenderer(plan: Self.plan(waiting), color: false).markdown().contains("\nNo changes. The registry matches 45903ab000. 1 waiting, 1 blocked.\n"))
    }

    /// Drift alerts and an unreachable serving layer change nothing, but the summary counts them
    /// like orphans, so a plan with a drift never ends with a bare "No changes.".
    @Test func theSummaryCountsDriftAndServingUnavailable() {
        func deployment(_ action: PlanAction, _ name: String) -> PlanEntry {
            PlanEntry(id: "\(name)/x", action: action, kind: .deployment, name: name, reason: "r",
                      detail: .deployment(DeploymentDetail(model: "churn", from: 1, to: 1, backends: nil, rollout: nil)))
        }
        let one = PlanRenderer(plan: Self.plan([deployment(.drift, "a")]), color: false).text()
        #expect(one.hasSuffix("\nNo changes. The registry matches 45903ab000. 0 waiting, 0 blocked, 1 drift alert.\n"))
        let many = PlanRenderer(plan: Self.plan([deployment(.drift, "a"), deployment(.drift, "b"), deployment(.servingUnavailable, "c"),
                                                 deployment(.servingUnavailable, "d")]), color: false).text()
        #expect(many.hasSuffix(" 0 waiting, 0 blocked, 2 drift alerts, 2 serving unavailable.\n"))
    }

    @Test func controlCharactersNeverReachTheTerminal() {
        let entry = PlanEntry(id: "x/orphaned", action: .orphaned, name: "x", reason: "evil \u{1B}[2J\u{1B}]0;title\u{07} reason\u{7F}",
                              detail: .orphaned(OrphanDetail(versions: 1, aliases: [:])))
        let text = PlanRenderer(plan: Self.plan([entry]), color: false).text()
        #expect(!text.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" || $0.value == 0x7F })
        #expect(text.contains("  ? orphaned model x (1 version, no aliases)\n      why: evil "))
    }

    static let relativeCases: [(Int64, String)] = [
        (45_000, "in 45s"), (840_000, "in 14m"), (899_000, "in 14m"), (7_500_000, "in 2h 5m"),
        (7_200_000, "in 2h"), (273_600_000, "in 3d 4h"), (1, "in 1s"), (0, "now"), (-5_000, "now"),
    ]

    @Test(arguments: relativeCases)
    func relativeTimes(ms: Int64, expected: String) {
        #expect(PlanRenderer.relative(ms) == expected)
    }

    static let timestampCases: [(Int64, Bool, String)] = [
        (0, false, "1970-01-01T00:00:00Z"), (now, false, "2026-11-05T10:00:00Z"), (now, true, "2026-11-05T10:00:00.000Z"),
        (1_709_251_199_999, true, "2024-02-29T23:59:59.999Z"), (951_868_800_000, false, "2000-03-01T00:00:00Z"),
        (-1, true, "1969-12-31T23:59:59.999Z"),
    ]

    @Test(arguments: timestampCases)
    func utcTimestamps(ms: Int64, milliseconds: Bool, expected: String) {
        #expect(PlanRenderer.timestamp(ms, milliseconds: milliseconds) == expected)
    }

    // MARK: JSON

    static func document(_ plan: Plan) throws -> (String, [String: Any]) {
        let json = try PlanRenderer(plan: plan, color: true).json()
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
        return (json, object)
    }

    static func change(_ doc: [String: Any], _ id: String) throws -> [String: Any] {
        let changes = try #require(doc["changes"] as? [[String: Any]])
        return try #require(changes.first { $0["id"] as? String == id }, "no change \(id)")
    }

    @Test func jsonTopLevelAndSummary() throws {
        let (json, doc) = try Self.document(Self.full)
        #expect(json.hasSuffix("}\n"))
        #expect(!json.contains("\u{1B}"))
        #expect(doc["format_version"] as? Int == 1)
        #expect(doc["repository"] as? String == "https://git.example.com/ml.git")
        #expect(doc["ref"] as? String == "main")
        #expect(doc["commit"] as? String == Self.commit)
        #expect(doc["created_at"] as? String == "2026-11-05T10:00:00.000Z")
        #expect(doc["actual_digest"] as? String == "d1g35t")
        #expect(Set(doc.keys) == ["format_version", "repository", "ref", "commit", "created_at", "actual_digest", "summary", "changes"])
        let summary = try #require(doc["summary"] as? [String: Int])
        var expected = Dictionary(uniqueKeysWithValues: PlanAction.allCases.map { ($0.rawValue.replacingOccurrences(of: "-", with: "_"), 0) })
        expected.merge(["register_model": 1, "update_model": 1, "train": 2, "validate": 2, "move_alias": 2, "delete_alias": 1,
                        "archive_versions": 1, "wait": 1, "blocked": 1, "orphaned": 1, "changes": 10]) { _, new in new }
        #expect(summary == expected)
        // Keys are sorted: the top-level ones appear in alphabetical order.
        let order = ["actual_digest", "changes", "commit", "created_at", "format_version", "ref", "repository", "summary"]
            .map { json.range(of: "\n  \"\($0)\"")?.lowerBound }
        #expect(order.allSatisfy { $0 != nil })
        #expect(order.compactMap { $0 } == order.compactMap { $0 }.sorted())
    }

    @Test func jsonListsEveryEntryWithTheCommonFields() throws {
        let (json, doc) = try Self.document(Self.full)
        let changes = try #require(doc["changes"] as? [[String: Any]])
        #expect(changes.compactMap { $0["id"] as? String } == Self.full.entries.map(\.id))
        #expect(changes.compactMap { $0["action"] as? String } == Self.full.entries.map(\.action.rawValue))
        for c in changes {
            #expect(c["kind"] as? String == "Model")
            #expect(c["name"] is String && c["reason"] is String)
            #expect(c["depends_on"] is [String])
        }
        #expect(try Self.change(doc, "churn/archive")["depends_on"] as? [String] == ["churn/alias/champion", "churn/alias/old/delete"])
        // `change` is a JSON boolean: true for the ten changes, false for wait, blocked and orphaned.
        #expect(json.components(separatedBy: "\"change\" : true").count - 1 == 10)
        #expect(json.components(separatedBy: "\"change\" : false").count - 1 == 3)
    }

    @Test func jsonMetadataEntries() throws {
        let (_, doc) = try Self.document(Self.full)
        let register = try Self.change(doc, "churn/register")
        #expect(register["description"] as? String == "Predicts churn.")
        #expect(register["labels"] as? [String: String] == ["team": "growth"])
        #expect(register["previous_description"] is NSNull)
        #expect(register["previous_labels"] is NSNull)
        let update = try Self.change(doc, "fraud/update")
        #expect(update["previous_description"] as? String == "Old.")
        #expect(update["previous_labels"] as? [String: String] == ["team": "risk"])
        let fields = try #require(update["fields"] as? [[String: Any]])
        #expect(fields.compactMap { $0["field"] as? String } == ["description", "labels.team", "labels.tier"])
        #expect(fields[2]["from"] is NSNull)
        #expect(fields[2]["to"] as? String == "gold")
    }

    @Test func jsonTrainEntries() throws {
        let (_, doc) = try Self.document(Self.full)
        let train = try Self.change(doc, "churn/train")
        #expect(train["fingerprint"] as? String == Self.fingerprint)
        #expect(train["version"] is NSNull)
        #expect(train["attempt"] as? Int == 1)
        #expect(train["timeout_ms"] as? Int == 1_800_000)
        #expect(train["reasons"] as? [String] == ["param learning_rate changed 0.05 → 0.1",
                                                   "input data/churn.csv changed (blob aaaaaaa → blob bbbbbbb)"])
        let details = try #require(train["reason_details"] as? [[String: Any]])
        #expect(details.count == 2)
        #expect(details[0]["type"] as? String == "param-changed")
        #expect(details[0]["name"] as? String == "learning_rate")
        #expect(details[0]["from"] as? Double == 0.05)
        #expect(details[0]["to"] as? Double == 0.1)
        #expect(details[1]["type"] as? String == "input-changed")
        #expect(details[1]["from"] as? String == "git-blob:aaaaaaa1111")
        let training = try #require(train["training"] as? [String: Any])
        #expect(training["command"] as? [String] == ["python3", "train.py"])
        #expect(training["secret_env"] as? [String] == ["API_TOKEN"])
        #expect((training["params"] as? [String: Any])?["epochs"] as? Int == 20)
        #expect((training["inputs"] as? [[String: String]])?.first == ["input": "data/churn.csv", "identity": "git-blob:bbbbbbb2222"])

        let retry = try Self.change(doc, "ranker/train")
        #expect(retry["version"] as? Int == 7)
        #expect(retry["attempt"] as? Int == 3)
        let retryReason = try #require((retry["reason_details"] as? [[String: Any]])?.first)
        #expect(retryReason["type"] as? String == "retry")
        #expect(retryReason["attempt"] as? Int == 3)
        #expect(retryReason["last_failure"] as? String == "Killed")
    }

    @Test func jsonValidateAndAliasEntries() throws {
        let (_, doc) = try Self.document(Self.full)
        let validateNew = try Self.change(doc, "churn/validate")
        #expect(validateNew["version"] is NSNull)
        #expect(validateNew["produced_by"] as? String == "churn/train")
        #expect(validateNew["gates"] as? [String] == ["accuracy >= 0.9", "no regression against champion"])
        let validateOld = try Self.change(doc, "ranker/validate/v6")
        #expect(validateOld["version"] as? Int == 6)
        #expect(validateOld["produced_by"] is NSNull)
        #expect(validateOld["gates"] as? [String] == [])

        let champion = try Self.change(doc, "churn/alias/champion")
        #expect(champion["alias"] as? String == "champion")
        #expect(champion["target"] as? Int == 5)
        #expect(champion["from"] as? Int == 3)
        #expect(champion["to"] as? Int == 5)
        #expect(champion["to_produced_by"] is NSNull)
        let current = try #require(champion["current"] as? [String: Any])
        #expect(current["version"] as? Int == 3)
        #expect(current["status"] as? String == "validated")
        #expect(current["metrics"] as? [String: Double] == ["accuracy": 0.91, "p95_latency_ms": 41])
        let candidate = try #require(champion["candidate"] as? [String: Any])
        #expect(candidate["version"] as? Int == 5)
        #expect(candidate["commit"] as? String == "c5c5c5c5")
        let gates = try #require(candidate["gate_results"] as? [[String: Any]])
        #expect(gates.first?["gate"] as? String == "metric accuracy >= 0.9")
        #expect(gates.first?["passed"] as? Bool == true)
        #expect(gates.first?["detail"] as? String == "0.922 >= 0.9")

        let pending = try Self.change(doc, "churn/alias/candidate")
        #expect(pending["target"] as? String == "latest")
        #expect(pending["to"] is NSNull)
        #expect(pending["to_produced_by"] as? String == "churn/train")
        #expect(pending["candidate"] is NSNull)
        #expect((pending["current"] as? [String: Any])?["commit"] is NSNull)

        let delete = try Self.change(doc, "churn/alias/old/delete")
        #expect(delete["alias"] as? String == "old")
        #expect(delete["from"] as? Int == 2)
        let archive = try Self.change(doc, "churn/archive")
        #expect(archive["versions"] as? [Int] == [1, 2])
        #expect(archive["keep_versions"] as? Int == 10)
    }

    @Test func jsonWaitBlockedAndOrphanedEntries() throws {
        let (_, doc) = try Self.document(Self.full)
        let wait = try Self.change(doc, "fraud/wait")
        #expect(wait["until"] as? String == "2026-11-05T10:14:00.000Z")
        #expect(wait["version"] as? Int == 4)
        #expect(wait["fingerprint"] as? String == "feedfacefeedface")
        #expect(wait["last_failure"] as? String == Self.failure)
        let blocked = try Self.change(doc, "fraud/alias/champion")
        #expect(blocked["alias"] as? String == "champion")
        #expect(blocked["version"] as? Int == 9)
        #expect(blocked["location"] as? String == "models/fraud.yaml:12:15")
        let orphan = try Self.change(doc, "old-model/orphaned")
        #expect(orphan["version_count"] as? Int == 3)
        #expect(orphan["aliases"] as? [String: Int] == ["champion": 2])

        let unknown = PlanEntry(id: "x/wait", action: .wait, name: "x", reason: "r", detail: .wait(WaitDetail(until: nil)))
        let (_, small) = try Self.document(Self.plan([unknown]))
        let w = try Self.change(small, "x/wait")
        #expect(w["until"] is NSNull && w["version"] is NSNull && w["fingerprint"] is NSNull && w["last_failure"] is NSNull)
        #expect((small["summary"] as? [String: Int])?["changes"] == 0)
    }

    // MARK: Markdown

    @Test func markdownHeadingSummaryAndTable() {
        let md = PlanRenderer(plan: Self.full, color: true).markdown()
        let lines = md.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "### Capstan plan for main @ 45903ab000")
        #expect(lines.contains("Plan: 1 to register, 1 to update, 2 to train, 2 to validate, 2 alias moves, 1 to delete, 1 to archive; 1 waiting, 1 blocked, 1 orphaned."))
        #expect(lines.contains("|   | object | action | reason |"))
        #expect(lines.contains("| `+` | `churn` | train a new version | param learning_rate changed 0.05 → 0.1; input data/churn.csv changed (blob aaaaaaa → blob bbbbbbb) |"))
        #expect(lines.contains("| `~` | `churn@candidate` | move alias v4 → the version this train produces | candidate follows \\| the newest<br>validated version |"))
        #expect(lines.contains("| `-` | `churn` | archive v1, v2 (keep 10) | retention keeps the newest 10 versions |"))
        #expect(lines.contains("| `+` | `ranker` | train v7 again (attempt 3) | retrying v7 now (--retry-failed) |"))
        // Only changes are rows; wait, blocked and orphaned are listed below with their reasons.
        #expect(lines.filter { $0.hasPrefix("| `") }.count == 10)
        #expect(lines.contains("- … **wait** `fraud`: training v4 failed twice; retrying after a backoff (until 2026-11-05T10:14:00Z, in 14m)"))
        #expect(lines.contains("- ! **blocked** `fraud@champion`: alias champion is pinned to v9, which does not exist; change the pin in models/fraud.yaml:12:15"))
        #expect(lines.contains("- ? **orphaned** `old-model` (3 versions, aliases champion→2): in the registry but no longer in Git"))
        #expect(md.contains("  ```text\n  line 3\n  line 4\n  line 5\n  line 6\n  ValueError: bad red input\n  ```\n"))
        #expect(!md.contains("\u{1B}"))
    }

    @Test func markdownMetricsOfAnAliasMove() throws {
        let md = PlanRenderer(plan: Self.full, color: false).markdown()
        let section = try #require(md.range(of: "#### `churn@champion`: v3 → v5\n\n").map { String(md[$0.lowerBound...]) })
        let expected = """
            #### `churn@champion`: v3 → v5

            | metric | current holder (v3) | candidate (v5) | Δ |
            | --- | ---: | ---: | ---: |
            | accuracy | 0.91 | 0.922 | +0.012 ▲ |
            | f1 | — | 0.8 | — |
            | p95_latency_ms | 41 | 39.5 | -1.5 ▼ |

            Gates of v5:

            - ✅ metric accuracy >= 0.9: 0.922 >= 0.9
            - ✅ no regression against champion: accuracy +0.012

            """
        #expect(section.hasPrefix(expected))
        #expect(md.contains("#### `churn@candidate`: v4 → the version this train produces\n\n(the version this train produces: metrics known after training)\n"))
    }

    @Test func markdownRejectedGatesMissingHolderAndEscapedMetricNames() {
        let candidate = VersionSummary(version: 2, status: .validated, metrics: ["a|b": 1, "loss": 0.25], gateResults: [
            GateResult(gate: "metric loss <= 0.2", passed: false, detail: "0.25 > 0.2"),
        ], commit: nil)
        let entry = PlanEntry(id: "m/alias/champion", action: .moveAlias, name: "m", reason: "first champion",
                              detail: .moveAlias(AliasMoveDetail(alias: "champion", target: .version(2), from: nil, to: .number(2),
                                                                 current: nil, candidate: candidate)))
        let md = PlanRenderer(plan: Self.plan([entry]), color: false).markdown()
        #expect(md.contains("#### `m@champion`: (none) → v2\n"))
        #expect(md.contains("| metric | current holder (none) | candidate (v2) | Δ |\n"))
        #expect(md.contains("| a\\|b | — | 1 | — |\n| loss | — | 0.25 | — |\n"))
        #expect(md.contains("- ❌ metric loss <= 0.2: 0.25 > 0.2\n"))
        #expect(!md.contains("#### Not changed by this plan"))
    }

    static let deltaCases: [(Double?, Double?, String)] = [
        (0.91, 0.922, "+0.012 ▲"), (41, 39.5, "-1.5 ▼"), (0.1, 0.3, "+0.2 ▲"), (0.5, 0.5, "0"),
        (3, 10, "+7 ▲"), (nil, 1, "—"), (1, nil, "—"), (0.00001, 0.00003, "+0.00002 ▲"), (1.5e-7, 1e-7, "-0.00000005 ▼"), (0.15, 0.05, "-0.1 ▼"),
        (1e20, 3e20, "+2e+20 ▲"), (.nan, 1, "—"),
    ]

    @Test(arguments: deltaCases)
    func metricDeltas(before: Double?, after: Double?, expected: String) {
        #expect(PlanRenderer.delta(before, after) == expected)
    }
}
