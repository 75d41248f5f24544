import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanRunner
import CapstanStore
import Foundation
import Synchronization

struct ApplyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "One reconcile pass: lock, plan, train, validate, move aliases, report.",
        discussion: """
            Takes the state directory's lock, finishes what a killed pass left, computes the plan for \
            the commit and executes it. With PLANFILE (from capstan plan --out) it executes exactly \
            that plan, and refuses it when the commit or the registry changed since it was made.
            Exit status: 0 converged or progressing, 1 error (a training failed, a candidate was \
            rejected, the state is locked…), 64 usage error.
            """)

    @Argument(help: ArgumentHelp("A plan saved by capstan plan --out.", valueName: "planfile"))
    var planFile: String?

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .customLong("lock-timeout"), help: ArgumentHelp(
        "Wait this long for another apply to release the state (default: fail at once).", valueName: "duration"))
    var lockTimeout: String = "0s"

    @Flag(name: .customLong("retry-failed"), help: "Retry failed trainings now, ignoring their backoff.")
    var retryFailed = false

    @Flag(name: .customLong("no-color"), help: "No colour (also NO_COLOR).")
    var noColor = false

    func validate() throws {
        _ = try ManifestDuration.option(lockTimeout, "--lock-timeout")
        if planFile != nil && retryFailed {
            throw ValidationError("--retry-failed changes the plan; pass it to capstan plan --out instead of apply PLANFILE")
        }
    }

    func run() async throws {
        do {
            try await apply()
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        }
    }

    func apply() async throws {
        let saved = try planFile.map(SavedPlan.read)
        var options = repository
        if let saved {
            // The plan names its repository and ref; flags may still say them (they must agree).
            if options.repo == nil { options.repo = saved.repository }
            if options.ref == nil { options.ref = saved.ref }
        }
        let database = try PassPreparation.openDatabase(options.stateDirectory)
        let lock = StateLock(database: database)
        let holder = StateLock.newHolderID()
        let command = (["capstan"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        let ttl: TimeInterval = 60
        let wait = Double(try ManifestDuration.option(lockTimeout, "--lock-timeout").milliseconds) / 1000
        let acquired: StateLock.Acquired
        do {
            acquired = try await lock.acquire(holder: holder, command: command, ttl: ttl, wait: wait, pollInterval: 0.2)
            if let previous = acquired.tookOver {
                Terminal.err("capstan: note: took over the lock of holder \(previous.holder) (pid \(previous.pid) on \(previous.host), running '\(previous.command)'): \(acquired.tookOverBecause ?? "it is gone")\n")
            }
        } catch let error as StoreError {
            throw CommandFailure(message: error.message)
        }
        // Every write of the pass checks this lease (its holder and generation): once it is lost
        // (`capstan unlock --force`, a takeover), the pass writes nothing more and stops.
        let keeper = LeaseKeeper(lock: lock, fence: acquired.fence, ttl: ttl)
        let passDatabase = keeper.fenced(database)
        let terminal = Terminal(noColor: noColor)
        let work = Task { try await self.pass(options: options, saved: saved, database: passDatabase, terminal: terminal) }
        // SIGINT/SIGTERM stop the pass: the running step's process group is terminated, the
        // version it trained is left for the next pass, the lock is released. A second signal
        // exits at once (the next pass recovers, as after a crash).
        let stopper = SignalStopper { signal in
            Terminal.err("capstan: \(signal == SIGINT ? "interrupted" : "terminated"); stopping the running step and releasing the lock (send it again to stop at once)\n")
            work.cancel()
        }
        keeper.start { _ in
            Terminal.err("capstan: the lease on the state folder was lost; stopping the running step, writing nothing more\n")
            work.cancel()
        }
        let result = await work.result
        keeper.stop()
        if keeper.lost == nil { _ = try? lock.release(holder: holder) }
        stopper.stop()
        if let signal = stopper.received {
            throw CommandFailure(message: "the pass was stopped by \(signal == SIGINT ? "SIGINT" : "SIGTERM"); the next apply finishes it",
                                 exitCode: 128 + signal)
        }
        if let lost = keeper.lost {
            throw CommandFailure(message: lost.message)
        }
        try result.get()
    }

    func pass(options: RepositoryOptions, saved: Plan?, database: StateDatabase, terminal: Terminal) async throws {
        let color = terminal.color
        let pass = ReconcilePass(
            options: options, database: database, actor: Self.actor(), command: "apply",
            planOptions: PlanOptions(retryFailed: retryFailed), saved: saved,
            events: { ApplyOutput.print($0, color: color) },
            report: { report in
                switch report {
                case .note(let note): Terminal.out("capstan: \(note)\n")
                case .plan(let plan):
                    Terminal.out(PlanReport(plan: plan, color: color).text())
                    if plan.hasChanges { Terminal.out("\n") }
                case .summary(let summary): Terminal.out(summary + "\n")
                }
            })
        let outcome = try await pass.run()
        if outcome.result.outcome == .failed {
            throw CommandFailure(message: "the pass at \(outcome.commit.prefix(7)) did not converge: " +
                                 ApplyOutput.failures(outcome.plan, outcome.result).joined(separator: "; "))
        }
    }

    /// A saved plan runs only against the commit and registry it was computed from.
    static func check(_ plan: Plan, against prepared: PreparedPass) throws {
        let now = prepared.desired.commit
        guard plan.commit == now else {
            throw CommandFailure(message: "the saved plan was made at commit \(plan.commit.prefix(12)), but \(plan.ref) is now at \(now.prefix(12)); nothing was applied. Make a new plan (capstan plan --out FILE) and review it")
        }
        guard plan.actualDigest == prepared.actual.digest else {
            throw CommandFailure(message: "the registry changed since the saved plan was made (another apply ran, or a version, alias or model changed); nothing was applied. Make a new plan (capstan plan --out FILE) and review it")
        }
    }

    static func actor() -> String {
        let env = ProcessInfo.processInfo.environment
        let account = getpwuid(getuid()).flatMap { $0.pointee.pw_name.map { String(cString: $0) } }
        let user = env["USER"] ?? env["LOGNAME"] ?? account ?? "uid \(getuid())"
        return "capstan apply (\(user))"
    }
}

enum Signals {
    /// Unblocks SIGINT and SIGTERM in this thread's mask (inherited by the threads started after),
    /// in case the parent process left them blocked.
    static func unblockStopSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}

/// Turns SIGINT and SIGTERM into a graceful stop; a second signal exits at once. SIGPIPE is
/// ignored (a closed pipe on stdout must not kill a pass half-way).
final class SignalStopper {
    private var sources: [any DispatchSourceSignal] = []
    /// The first signal received (shared with the handlers).
    private let state = SignalState()

    final class SignalState: Sendable {
        let first = Mutex<Int32?>(nil)
        let second = Mutex(false)
    }

    /// `onSecond` nil: a second signal exits the process at once (128 + signal).
    convenience init(_ onFirst: @escaping @Sendable (Int32) -> Void) {
        self.init(onFirst: onFirst, onSecond: nil)
    }

    init(onFirst: @escaping @Sendable (Int32) -> Void, onSecond: (@Sendable (Int32) -> Void)?) {
        Signals.unblockStopSignals()
        signal(SIGPIPE, SIG_IGN)
        var sources: [any DispatchSourceSignal] = []
        let state = self.state
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let first = state.first.withLock { seen -> Bool in
                    if seen != nil { return false }
                    seen = sig
                    return true
                }
                if first {
                    onFirst(sig)
                } else if let onSecond {
                    let again = state.second.withLock { seen -> Bool in
                        defer { seen = true }
                        return !seen
                    }
                    if again { onSecond(sig) }
                } else {
                    exit(128 + sig)
                }
            }
            source.resume()
            sources.append(source)
        }
        self.sources = sources
    }

    /// The first signal received, if any.
    var received: Int32? { state.first.withLock { $0 } }

    /// Whether a second signal came.
    var secondSignal: Bool { state.second.withLock { $0 } }

    func stop() {
        for source in sources { source.cancel() }
    }
}

/// What `apply` prints while and after it runs.
enum ApplyOutput {
    static let lock = NSLock()

    static func print(_ event: PassEvent, color: Bool) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .started(let entry):
            Terminal.out("\(entry.name): \(verb(entry.action))…\n")
        case .finished(let entry, let outcome):
            let (mark, paint): (String, String) = switch outcome {
            case .done: ("done", "\u{1B}[32m")
            case .skipped: ("skipped", "\u{1B}[2m")
            case .failed: ("FAILED", "\u{1B}[31;1m")
            case .transient: ("FAILED (transient)", "\u{1B}[33;1m")
            }
            let label = color ? "\(paint)\(mark)\u{1B}[0m" : mark
            Terminal.out("\(entry.name): \(entry.action.rawValue) \(label): \(outcome.message)\n")
        case .output(let line):
            Terminal.err(line + "\n")
        case .note(let text):
            Terminal.err(text + "\n")
        case .deploymentPlan(let entries):
            let plan = Plan(repository: "", ref: "", commit: "", actualDigest: "", createdAt: StoreTime.systemMilliseconds(), entries: entries)
            let lines = PlanReport(plan: plan, color: color).entryLines()
            Terminal.out("\nDeployments, after the registry changes:\n" + lines.joined(separator: "\n") + "\n\n")
        }
    }

    static func verb(_ action: PlanAction) -> String {
        switch action {
        case .registerModel: return "registering"
        case .updateModel: return "updating"
        case .train: return "training"
        case .validate: return "validating"
        case .moveAlias: return "moving alias"
        case .deleteAlias: return "deleting alias"
        case .archiveVersions: return "archiving"
        default: return action.rawValue
        }
    }

    static func summary(_ plan: Plan, _ result: PassResult) -> String {
        let changes = plan.changes.filter { $0.kind == .model } + result.followUps
            + result.deploymentEntries.filter { $0.action.isChange }
        let rollouts = result.deploymentResidual.filter { $0.action == .wait || $0.action == .blocked || $0.action == .servingUnavailable }
            .map { "\n  \($0.name): \($0.reason)" }.joined()
        if changes.isEmpty {
            var text = "Apply complete: no changes; the registry already matches \(plan.commit.prefix(7))."
            let left = result.residual.entries.filter { !$0.action.isChange && $0.action != .orphaned }
            if !left.isEmpty { text += " \(left.count) waiting or blocked (see the plan above)." }
            return text + rollouts
        }
        var done = 0, failed = 0, skipped = 0
        for entry in changes {
            switch result.outcomes[entry.id] {
            case .done?: done += 1
            case .failed?, .transient?: failed += 1
            default: skipped += 1
            }
        }
        var text = "Apply \(failed > 0 ? "finished with failures" : "complete") at \(plan.commit.prefix(7)): \(done) done, \(failed) failed, \(skipped) skipped."
        let waiting = result.residual.count(.wait), blocked = result.residual.count(.blocked)
        if waiting + blocked > 0 { text += " Left for later: \(waiting) waiting, \(blocked) blocked." }
        return text + rollouts
    }

    static func failures(_ plan: Plan, _ result: PassResult) -> [String] {
        (plan.changes.filter { $0.kind == .model } + result.followUps + result.deploymentEntries).compactMap { entry in
            guard let outcome = result.outcomes[entry.id], outcome.isFailure else { return nil }
            return "\(entry.name) \(entry.action.rawValue): \(outcome.message)"
        }
    }
}
