import Foundation
import Testing
@testable import CapstanRunner
@testable import CapstanTestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite struct ProcessGroupsTests {
    @Test func killNeedsTheMarkerInAMembersEnvironment() async throws {
        let dir = try TempDir()
        let seen = Callbacks()
        let request = step(
            ["sh", "-c", "sleep 1000 & echo $! > sleeper.pid; wait"], in: dir, timeout: 60_000,
            environment: ["PATH": testPath, "CAPSTAN_RUN_ID": "run-1"])
        try await withThrowingTaskGroup(of: StepResult.self) { group in
            group.addTask { try await LocalStepRunner().run(request, started: seen.started, line: seen.line) }
            #expect(await eventually(within: 30) { !seen.pids.isEmpty && readPID(dir.path + "/sleeper.pid") != nil })
            let pgid = try #require(seen.pids.first)
            #expect(ProcessGroups.isAlive(pgid))

            // Somebody else's group as far as the marker can tell: left alone.
            #expect(!ProcessGroups.kill(pgid, environmentMarker: (name: "CAPSTAN_RUN_ID", value: "run-2")))
            #expect(!ProcessGroups.kill(pgid, environmentMarker: (name: "OTHER_MARKER", value: "run-1")))
            #expect(ProcessGroups.isAlive(pgid))

            #expect(ProcessGroups.kill(pgid, environmentMarker: (name: "CAPSTAN_RUN_ID", value: "run-1")))
            let result = try #require(try await group.next())
            #expect(result.termination == .signalled(SIGKILL))
            let sleeper = try #require(readPID(dir.path + "/sleeper.pid"))
            #expect(await eventually { isGone(sleeper) && !ProcessGroups.isAlive(pgid) })
        }
    }

    @Test func absentGroupsAreNotAliveAndNotKilled() {
        // Pid numbers above the kernel's maximum are never in use.
        #expect(!ProcessGroups.isAlive(Int32.max - 1))
        #expect(!ProcessGroups.kill(Int32.max - 1, environmentMarker: (name: "CAPSTAN_RUN_ID", value: "x")))
        #expect(!ProcessGroups.kill(Int32.max - 1, environmentMarker: nil))
    }

    @Test func neverKillsItsOwnGroupOrInit() {
        #expect(!ProcessGroups.kill(getpgrp(), environmentMarker: nil))
        #expect(!ProcessGroups.kill(1, environmentMarker: nil))
        #expect(!ProcessGroups.kill(0, environmentMarker: nil))
    }

    @Test(arguments: [
        ("1234 (python3) S 1 1234 1234 0 -1", Character("S"), Int32(1234)),
        ("77 (a) (b c) R 1 70 70 0", Character("R"), Int32(70)),
        ("9 (sleep) Z 1 5 5 0", Character("Z"), Int32(5)),
    ])
    func statLineGivesStateAndGroup(line: String, state: Character, group: Int32) throws {
        let parsed = try #require(ProcessGroups.parseStat(Array(line.utf8)))
        #expect(parsed.state == state)
        #expect(parsed.group == group)
    }
}
