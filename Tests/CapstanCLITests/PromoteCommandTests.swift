import Foundation
import Testing
@testable import CapstanTestSupport

/// `capstan promote` as a team uses it: a bare repository served by `git daemon` (pushes
/// allowed), a clone to propose from, a real agent serving the model; the branch pushed, the
/// pull request merged with git, and the next passes acting on it.
@Suite(.serialized) struct PromoteCommandTests {
    struct Setup {
        let temp: TempDir
        let daemon: GitDaemon
        let remote: String
        let clone: GitRepo
        let state: String
        let agent: ServeApplyTests.Agent

        func apply() throws -> CLI.Result { try CLI.run(["apply", "--repo", remote, "--state-dir", state]) }
        func promote(_ arguments: [String]) throws -> CLI.Result {
            try CLI.run(["promote", "churn", "--repo", clone.path, "--state-dir", state] + arguments)
        }
        /// The remote's branches and what they point at.
        func remoteBranches() throws -> [String: String] {
            let out = try clone.git(["ls-remote", "--heads", remote])
            return Dictionary(uniqueKeysWithValues: out.split(separator: "\n").map { line in
                let parts = line.split(separator: "\t")
                return (String(parts[1].dropFirst("refs/heads/".count)), String(parts[0]))
            })
        }
    }

    /// The quick start on a served bare repository, applied once (v1 serves), then v2 trained
    /// with `champion` pinned to v1: a promotion to propose.
    static func setUp() throws -> Setup {
        let temp = try TempDir()
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        let author = try ServeApplyTests.repository(temp, agent: agent)
        let remotes = temp.sub("remotes")
        let bare = try GitRepo(at: remotes.appendingPathComponent("models.git"), bare: true)
        _ = bare
        let daemon = try GitDaemon(base: remotes, allowPush: true)
        let remote = daemon.url("models.git")
        try author.git(["push", "-q", remote, "HEAD:refs/heads/main"])
        let state = temp.sub("state").path
        let first = try CLI.run(["apply", "--repo", remote, "--state-dir", state])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")

        let cloneURL = temp.sub("clone")
        let cloned = try Shell.run("git", ["clone", "-q", remote, cloneURL.path], environment: GitEnvironment.variables(time: 1_700_000_000))
        #expect(cloned.status == 0, "\(cloned.stderr)")
        let clone = GitRepo(existing: cloneURL)
        try ServeApplyTests.edit(clone, "models/churn/model.yaml") {
            $0.replacingOccurrences(of: "champion: latest", with: "champion: 1")
                .replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,")
                .replacingOccurrences(of: "  aliases:\n", with: """
                      card:
                        owners: [growth-ml@example.com]
                        intendedUse: Rank accounts for retention offers.
                        limitations: Not trained on accounts younger than 30 days.
                      aliases:

                    """)
        }
        try clone.commit("pin champion to v1; train longer")
        try clone.git(["push", "-q", "origin", "main"])
        let second = try CLI.run(["apply", "--repo", remote, "--state-dir", state])
        #expect(second.stdout.contains("churn: validate done: v2 validated"), "\(second.stdout)\n\(second.stderr)")
        return Setup(temp: temp, daemon: daemon, remote: remote, clone: clone, state: state, agent: agent)
    }

    @Test func aPromotionIsProposedMergedAndActedOnWithItsCase() throws {
        let s = try Self.setUp()
        defer { s.agent.stop() }
        let manifest = s.clone.url.appendingPathComponent("models/churn/model.yaml")
        let before = try Data(contentsOf: manifest)

        // A dry run shows the change and the case, and pushes nothing.
        let dry = try s.promote(["--alias", "champion", "--candidate", "--dry-run"])
        #expect(dry.status == 0, "\(dry.stdout)\n\(dry.stderr)")
        #expect(dry.stdout.contains("-    champion: 1"), "\(dry.stdout)")
        #expect(dry.stdout.contains("+    champion: 2"), "\(dry.stdout)")
        #expect(dry.stdout.contains("## Promote churn v2 to champion"), "\(dry.stdout)")
        #expect(dry.stdout.contains("| **accuracy** (gated) |"), "\(dry.stdout)")
        #expect(dry.stdout.contains("✅ no regression against champion"), "\(dry.stdout)")
        #expect(dry.stdout.contains("- Params: `epochs=200`"), "\(dry.stdout)")
        #expect(dry.stdout.contains("v2 has not served in any deployment yet."), "\(dry.stdout)")
        #expect(try s.remoteBranches().keys.sorted() == ["main"])

        // The proposal: one branch, one commit on main, only the pin's bytes changed.
        let pushed = try s.promote(["--alias", "champion", "--candidate", "--format", "json"])
        #expect(pushed.status == 0, "\(pushed.stdout)\n\(pushed.stderr)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(pushed.stdout.utf8)) as? [String: Any])
        let report = try #require(document["report"] as? [String: Any])
        let branch = "capstan/promote/churn/champion-v2"
        #expect(document["pushed"] as? Bool == true)
        #expect(report["branch"] as? String == branch)
        #expect((document["body"] as? String)?.contains("## Promote churn v2 to champion") == true)
        let branches = try s.remoteBranches()
        #expect(branches[branch] == report["commit"] as? String, "\(branches)")
        try s.clone.git(["fetch", "-q", "origin"])
        #expect(try s.clone.git(["rev-parse", "origin/\(branch)^"]) == (try s.clone.git(["rev-parse", "HEAD"])))
        let proposed = try s.clone.git(["show", "origin/\(branch):models/churn/model.yaml"])
        let expected = String(decoding: before, as: UTF8.self).replacingOccurrences(of: "champion: 1", with: "champion: 2")
        #expect(proposed + "\n" == expected, "only the pin changes")
        #expect(try Data(contentsOf: manifest) == before, "the work tree is left alone")
        #expect(try s.clone.git(["log", "-1", "--format=%s", "origin/\(branch)"]) == "Promote churn v2 to champion")

        // Proposing it again replaces the branch (one proposal per alias and version).
        #expect(try s.promote(["--alias", "champion", "--version", "2"]).status == 0)

        // Merged: the next passes move champion and roll v2 out.
        try s.clone.git(["merge", "-q", "--ff-only", "origin/\(branch)"])
        try s.clone.git(["push", "-q", "origin", "main"])
        var passes: [CLI.Result] = []
        for _ in 0..<60 {
            for _ in 0..<8 { _ = s.agent.predict() }
            let r = try s.apply()
            passes.append(r)
            if r.stdout.contains("churn-prod: promote done") { break }
            usleep(300_000)
        }
        let text = passes.map(\.stdout).joined()
        #expect(text.contains("churn: move-alias done: champion: v1 → v2"), "\(text)")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(s.agent.predict() == (200, "2"))

        // The card of v2, the champion: what it is for, how it was made and judged, and its
        // history with the pull request that carried the promotion.
        let card = try CLI.run(["card", "churn", "--repo", s.remote, "--state-dir", s.state])
        #expect(card.status == 0, "\(card.stderr)")
        let parts = card.stdout.components(separatedBy: "\n## Serving\n")
        try Self.compare(Self.normalized(parts[0]), expected: "card-churn-v2.md")
        let serving = parts.count > 1 ? parts[1] : ""
        #expect(serving.contains("churn-prod: start-rollout, 0% of the traffic"), "\(serving)")
        #expect(serving.contains("churn-prod: advance-rollout, 10% of the traffic"), "\(serving)")
        #expect(serving.contains("churn-prod: promote, 100% of the traffic"), "\(serving)")
        let json = try CLI.run(["card", "churn", "2", "--repo", s.remote, "--state-dir", s.state, "--format", "json"])
        let cardDocument = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(((cardDocument["card"] as? [String: Any])?["aliases"] as? [String]) == ["champion"], "\(json.stdout.prefix(400))")
        let page = s.temp.sub("card.html").path
        let html = try CLI.run(["card", "churn", "--repo", s.remote, "--state-dir", s.state, "--format", "html", "--out", page])
        #expect(html.status == 0, "\(html.stderr)")
        #expect(try String(contentsOfFile: page, encoding: .utf8).contains("<dd class=\"owners\">growth-ml@example.com</dd>"))
        let missing = try CLI.run(["card", "churn", "9", "--repo", s.remote, "--state-dir", s.state])
        #expect(missing.status == 1 && missing.stderr.contains("churn has no v9"), "\(missing.stderr)")

        // v1's case now carries its serving record: it served, then left the endpoint.
        let back = try s.promote(["--alias", "champion", "--version", "1", "--dry-run"])
        #expect(back.status == 0, "\(back.stderr)")
        #expect(back.stdout.contains("churn-prod: create-endpoint, v1 100% of the traffic"), "\(back.stdout)")
        #expect(back.stdout.contains("churn-prod: promote, v1 out of the endpoint"), "\(back.stdout)")
    }

    /// Times, commit ids, hashes, durations and the user in `capstan apply (user)` replaced by
    /// placeholders: what is left is the same on every machine.
    static func normalized(_ text: String) -> String {
        var out = text
        let rules: [(String, String)] = [
            (#"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"#, "<time>"),
            (#"[0-9a-f]{64}"#, "<sha256>"),
            (#"[0-9a-f]{40}"#, "<commit>"),
            (#"`[0-9a-f]{10}`"#, "`<commit>`"),
            (#"trained in [0-9.]+m?s"#, "trained in <duration>"),
            (#"capstan apply \([^)]*\)"#, "capstan apply (<user>)"),
        ]
        for (pattern, replacement) in rules {
            out = out.replacingOccurrences(of: pattern, with: replacement, options: .regularExpression)
        }
        return out
    }

    /// Compares with `Expected/<name>` beside this file (`CAPSTAN_UPDATE_GOLDEN=1` writes it).
    static func compare(_ actual: String, expected name: String) throws {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Expected/\(name)")
        if ProcessInfo.processInfo.environment["CAPSTAN_UPDATE_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
            try actual.write(to: file, atomically: true, encoding: .utf8)
            return
        }
        let expected = try String(contentsOf: file, encoding: .utf8)
        #expect(actual == expected, "\(name) differs; the card now reads:\n\(actual)")
    }

    @Test func promotionsThatCannotBeMadeAreRefusedAndPushNothing() throws {
        let s = try Self.setUp()
        defer { s.agent.stop() }
        func refused(_ arguments: [String], _ message: String) throws {
            let r = try s.promote(arguments)
            #expect(r.status == 1, "\(arguments): \(r.stdout)")
            #expect(r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
        try refused(["--alias", "champion", "--version", "9"], "churn has no v9 (the newest is v2)")
        try refused(["--alias", "champion", "--version", "1"], "churn@champion is pinned to v1 already; nothing to promote")
        try refused(["--alias", "stable", "--version", "2"], "Model churn does not declare alias 'stable' (declared: champion)")

        // A rejected version is never proposed.
        try ServeApplyTests.edit(s.clone, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 200,", with: "epochs: 1,") }
        try s.clone.commit("train almost nothing")
        try s.clone.git(["push", "-q", "origin", "main"])
        let third = try s.apply()
        #expect(third.stdout.contains("v3 rejected"), "\(third.stdout)")
        try refused(["--alias", "champion", "--version", "3"], "v3 of churn is rejected, not validated")

        // A clone behind its remote, or on no branch, proposes nothing.
        try s.clone.git(["reset", "-q", "--hard", "HEAD~1"])
        try refused(["--alias", "champion", "--version", "2"], "pull (or push) first")
        try s.clone.git(["checkout", "-q", "--detach", "HEAD"])
        try refused(["--alias", "champion", "--version", "2"], "is not on a branch")
        // Usage errors.
        let neither = try s.promote(["--alias", "champion"])
        #expect(neither.status == 64)
        #expect(neither.stderr.contains("give --version N or --candidate"), "\(neither.stderr)")

        #expect(try s.remoteBranches().keys.sorted() == ["main"], "nothing was pushed")
    }
}
