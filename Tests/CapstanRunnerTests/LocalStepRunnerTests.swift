import CapstanRunner
import Foundation
import Testing
@testable import CapstanTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Real processes (/bin/sh, python3, coreutils) run through `LocalStepRunner`.
@Suite struct LocalStepRunnerTests {
    let runner = LocalStepRunner()

    // MARK: - Results

    @Test func childSeesExactlyTheGivenEnvironmentAndWorkdir() async throws {
        let dir = try TempDir()
        let environment = ["PATH": testPath, "CAPSTAN_TEST_VALUE": "a b=c"]
        let seen = Callbacks()
        let result = try await runner.run(step(["env"], in: dir, environment: environment), started: seen.started, line: seen.line)
        #expect(result.termination == .exited(0))
        #expect(result.succeeded)
        #expect(seen.lines.sorted() == ["CAPSTAN_TEST_VALUE=a b=c", "PATH=\(testPath)"])

        let pwd = Callbacks()
        _ = try await runner.run(step(["pwd"], in: dir), started: pwd.started, line: pwd.line)
        #expect(pwd.lines == [dir.path])
    }

    @Test func relativeCommandIsTakenFromTheWorkdir() async throws {
        let dir = try TempDir()
        let script = dir.path + "/train.sh"
        try "#!/bin/sh\necho trained \"$@\"\n".write(toFile: script, atomically: true, encoding: .utf8)
        chmod(script, 0o755)
        let seen = Callbacks()
        let result = try await runner.run(step(["./train.sh", "x y"], in: dir), started: seen.started, line: seen.line)
        #expect(result.termination == .exited(0))
        #expect(seen.lines == ["trained x y"])
    }

    @Test func nonZeroExitIsAResultWithTheTail() async throws {
        let dir = try TempDir()
        let log = dir.path + "/step.log"
        let script = "i=1; while [ $i -le 100 ]; do echo line$i; i=$((i+1)); done; echo oops >&2; exit 3"
        let result = try await runner.run(step(["sh", "-c", script], in: dir, log: log), started: { _ in }, line: { _ in })
        #expect(result.termination == .exited(3))
        #expect(!result.succeeded)
        let tail = result.outputTail.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(tail.count == 40)
        #expect(tail.first == "line62")
        #expect(tail.last == "oops")
        let logged = try String(contentsOfFile: log, encoding: .utf8)
        #expect(logged.split(separator: "\n").count == 101)
        #expect(logged.hasPrefix("line1\nline2\n"))
        #expect(logged.hasSuffix("line100\noops\n"))
    }

    @Test func signalledChildIsReportedWithItsSignal() async throws {
        let dir = try TempDir()
        let result = try await runner.run(step(["sh", "-c", "echo bye; kill -KILL $$"], in: dir), started: { _ in }, line: { _ in })
        #expect(result.termination == .signalled(SIGKILL))
        #expect(result.outputTail == "bye")
    }

    @Test func linesArePrefixedAndInOrderAcrossStdoutAndStderr() async throws {
        let dir = try TempDir()
        let log = dir.path + "/step.log"
        let seen = Callbacks()
        let script = "i=1; while [ $i -le 50 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; printf 'no newline'"
        let result = try await runner.run(
            step(["sh", "-c", script], in: dir, log: log, prefix: "[churn v3] "), started: seen.started, line: seen.line)
        #expect(result.termination == .exited(0))
        let expected = (1...50).flatMap { ["out\($0)", "err\($0)"] } + ["no newline"]
        #expect(seen.lines == expected.map { "[churn v3] " + $0 })
        #expect(try String(contentsOfFile: log, encoding: .utf8) == expected.joined(separator: "\n") + "\n")
    }

    @Test func logIsAppendedTo() async throws {
        let dir = try TempDir()
        let log = dir.path + "/step.log"
        try "earlier attempt\n".write(toFile: log, atomically: true, encoding: .utf8)
        _ = try await runner.run(step(["echo", "again"], in: dir, log: log), started: { _ in }, line: { _ in })
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "earlier attempt\nagain\n")
    }

    @Test func secretsAreRedactedEverywhere() async throws {
        let dir = try TempDir()
        let log = dir.path + "/step.log"
        let seen = Callbacks()
        let result = try await runner.run(
            step(["sh", "-c", "echo token=$TOKEN; exit 1"], in: dir, environment: ["PATH": testPath, "TOKEN": "hunter22"],
                 log: log, redact: ["hunter22"]),
            started: seen.started, line: seen.line)
        #expect(seen.lines == ["token=[secret]"])
        #expect(result.outputTail == "token=[secret]")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == "token=[secret]\n")
    }

    @Test func hugeOutputIsCappedWhileThePipeKeepsDraining() async throws {
        let dir = try TempDir()
        let log = dir.path + "/step.log"
        let counter = Callbacks()
        // 80 MiB of 1 KiB lines, then a last line.
        let program = """
            import sys
            block = (('x' * 1023) + '\\n').encode() * 1024
            for _ in range(80):
                sys.stdout.buffer.write(block)
            sys.stdout.buffer.write(b'done\\n')
            """
        let result = try await runner.run(
            step(["python3", "-c", program], in: dir, timeout: 120_000, log: log), started: counter.started,
            line: { text in if !text.hasPrefix("x") { counter.line(text) } })
        #expect(result.termination == .exited(0))
        #expect(result.outputTruncated)
        let note = "[output truncated after 50 MiB; the rest was discarded]"
        #expect(result.outputTail.hasSuffix("\ndone"))
        #expect(result.outputTail.utf8.count <= 8 << 10)
        #expect(counter.lines == [note])
        let size = try #require(try FileManager.default.attributesOfItem(atPath: log)[.size] as? Int)
        #expect(size == (50 << 20) + note.utf8.count + 1)
        let handle = try #require(FileHandle(forReadingAtPath: log))
        defer { try? handle.close() }
        try handle.seek(toOffset: UInt64(size - note.utf8.count - 1 - 1024))
        let end = String(decoding: try #require(try handle.readToEnd()), as: UTF8.self)
        #expect(end == String(repeating: "x", count: 1023) + "\n" + note + "\n")
    }

    @Test func startedReceivesThePidThatLeadsANewGroup() async throws {
        let dir = try TempDir()
        let seen = Callbacks()
        let program = "import os; print(os.getpid(), os.getpgrp())"
        let result = try await runner.run(step(["python3", "-c", program], in: dir), started: seen.started, line: seen.line)
        #expect(result.termination == .exited(0))
        let pid = try #require(seen.pids.first)
        #expect(seen.pids.count == 1)
        #expect(seen.lines == ["\(pid) \(pid)"])
        #expect(pid != getpgrp())
    }

    // MARK: - Stopping

    @Test func timeoutKillsGrandchildrenToo() async throws {
        let dir = try TempDir()
        let pidFile = dir.path + "/grandchild.pid"
        let seen = Callbacks()
        let result = try await runner.run(
            step(["sh", "-c", "sleep 1000 & echo $! > grandchild.pid; wait"], in: dir, timeout: 300, grace: 300),
            started: seen.started, line: seen.line)
        #expect(result.termination == .timedOut)
        #expect(!result.succeeded)
        let grandchild = try #require(readPID(pidFile))
        #expect(await eventually { isGone(grandchild) })
        #expect(!ProcessGroups.isAlive(try #require(seen.pids.first)))
    }

    @Test func childIgnoringSIGTERMIsKilledAfterTheGrace() async throws {
        let dir = try TempDir()
        let seen = Callbacks()
        let result = try await runner.run(
            step(["sh", "-c", "trap '' TERM; echo ready; sleep 1000 & echo $! > sleeper.pid; wait; echo survived"], in: dir,
                 timeout: 300, grace: 300),
            started: seen.started, line: seen.line)
        #expect(result.termination == .timedOut)
        // SIGTERM did nothing, so the end came from SIGKILL, after the timeout and the grace.
        #expect(result.durationMilliseconds >= 600)
        #expect(seen.lines == ["ready"])
        let sleeper = try #require(readPID(dir.path + "/sleeper.pid"))
        #expect(await eventually { isGone(sleeper) })
    }

    @Test func backgroundProcessesAreKilledWhenTheChildExits() async throws {
        let dir = try TempDir()
        // The background sleep keeps the output pipe open; the run must still end.
        let result = try await runner.run(
            step(["sh", "-c", "sleep 1000 & echo $! > left.pid; echo finished"], in: dir), started: { _ in }, line: { _ in })
        #expect(result.termination == .exited(0))
        #expect(result.outputTail == "finished")
        let leftover = try #require(readPID(dir.path + "/left.pid"))
        #expect(await eventually { isGone(leftover) })
    }

    @Test func cancellingTheCallingTaskTerminatesTheGroup() async throws {
        let dir = try TempDir()
        let pidFile = dir.path + "/grandchild.pid"
        let seen = Callbacks()
        let request = step(["sh", "-c", "sleep 1000 & echo $! > grandchild.pid; wait"], in: dir, timeout: 60_000, grace: 300)
        let runner = self.runner
        await withThrowingTaskGroup(of: StepResult.self) { group in
            group.addTask { try await runner.run(request, started: seen.started, line: seen.line) }
            #expect(await eventually(within: 30) { !seen.pids.isEmpty && readPID(pidFile) != nil })
            group.cancelAll()
            do {
                let result = try await group.next()
                Issue.record("run returned \(String(describing: result)) instead of throwing")
            } catch is CancellationError {
            } catch {
                Issue.record("run threw \(error) instead of CancellationError")
            }
        }
        let child = try #require(seen.pids.first)
        let grandchild = try #require(readPID(pidFile))
        #expect(await eventually { isGone(child) && isGone(grandchild) })
        #expect(!ProcessGroups.isAlive(child))
    }

    @Test func cancellationKillsAChildIgnoringSIGTERMAfterTheGrace() async throws {
        let dir = try TempDir()
        let seen = Callbacks()
        let request = step(["sh", "-c", "trap '' TERM; echo ready; sleep 1000"], in: dir, timeout: 60_000, grace: 300)
        let runner = self.runner
        let clock = ContinuousClock()
        var cancelledAt = clock.now
        await withThrowingTaskGroup(of: StepResult.self) { group in
            group.addTask { try await runner.run(request, started: seen.started, line: seen.line) }
            #expect(await eventually(within: 30) { seen.lines == ["ready"] })
            cancelledAt = clock.now
            group.cancelAll()
            await #expect(throws: CancellationError.self) { _ = try await group.next() }
        }
        // SIGTERM was ignored, so only the SIGKILL after the grace ended it.
        #expect(clock.now - cancelledAt >= .milliseconds(300))
        let child = try #require(seen.pids.first)
        #expect(await eventually { !ProcessGroups.isAlive(child) })
    }

    @Test func logThatCannotBeWrittenStopsTheStep() async throws {
        let dir = try TempDir()
        let seen = Callbacks()
        // /dev/full opens fine and fails every write with ENOSPC.
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(
                step(["sh", "-c", "echo hello; sleep 1000"], in: dir, grace: 300, log: "/dev/full"),
                started: seen.started, line: seen.line)
        }
        #expect(error?.code == .logUnwritable)
        #expect(error?.description.contains("writing its log file '/dev/full' failed") == true)
        let child = try #require(seen.pids.first)
        #expect(await eventually { !ProcessGroups.isAlive(child) })
    }

    // MARK: - Errors

    @Test func missingExecutableInPathIsAnError() async throws {
        let dir = try TempDir()
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(step(["capstan-no-such-tool", "--flag"], in: dir), started: { _ in Issue.record("started") }, line: { _ in })
        }
        #expect(error?.code == .executableNotFound)
        #expect(error?.description.contains("'capstan-no-such-tool' was not found in the step's PATH (\(testPath))") == true)
        #expect(error?.description.contains("`capstan-no-such-tool --flag`") == true)
    }

    @Test func missingExecutablePathIsAnError() async throws {
        let dir = try TempDir()
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(step(["./missing.py"], in: dir), started: { _ in }, line: { _ in })
        }
        #expect(error?.code == .executableNotFound)
        #expect(error?.path == dir.path + "/missing.py")
        #expect(error?.description.contains("'\(dir.path)/missing.py' does not exist") == true)
    }

    @Test func nonExecutableFileIsAnError() async throws {
        let dir = try TempDir()
        try "print(1)\n".write(toFile: dir.path + "/train.py", atomically: true, encoding: .utf8)
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(step(["./train.py"], in: dir), started: { _ in }, line: { _ in })
        }
        #expect(error?.code == .executableNotFound)
        #expect(error?.description.contains("is not an executable file") == true)
    }

    @Test func missingWorkdirIsAnError() async throws {
        let dir = try TempDir()
        var request = step(["true"], in: dir)
        request.workdir = dir.path + "/nowhere"
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(request, started: { _ in }, line: { _ in })
        }
        #expect(error?.code == .workdirMissing)
        #expect(error?.description.contains("working directory '\(dir.path)/nowhere' does not exist") == true)
    }

    @Test func unwritableLogIsAnErrorBeforeAnythingRuns() async throws {
        let dir = try TempDir()
        let marker = dir.path + "/ran"
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(
                step(["touch", marker], in: dir, log: dir.path + "/no/such/dir/step.log"), started: { _ in }, line: { _ in })
        }
        #expect(error?.code == .logUnwritable)
        #expect(error?.description.contains("'\(dir.path)/no/such/dir/step.log'") == true)
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    @Test func environmentWithoutPathCannotLookUpNames() async throws {
        let dir = try TempDir()
        let error = await #expect(throws: StepRunnerError.self) {
            try await runner.run(step(["env"], in: dir, environment: [:]), started: { _ in }, line: { _ in })
        }
        #expect(error?.code == .executableNotFound)
        #expect(error?.description.contains("has no PATH") == true)
    }
}
