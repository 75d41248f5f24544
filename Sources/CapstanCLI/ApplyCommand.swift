import ArgumentParser
import CapstanCore
import CapstanEngine
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
        let store = try Wiring.store(options.stateDirectory)
        let reconciler = Reconciler(ports: try await Wiring.ports(options, store: store, actor: Self.actor()))
        let command = (["capstan"] + CommandLine.arguments.dropFirst()).joined(separator: " ")
        let wait = try ManifestDuration.option(lockTimeout, "--lock-timeout").milliseconds
        let keeper: LeaseKeeper
        do {
            keeper = try await LeaseKeeper.acquire(store, holder: UUID().uuidString.lowercased(), command: command, waitMilliseconds: wait)
            if let previous = keeper.grant.tookOver {
                Terminal.err("capstan: note: took over the lock of holder \(previous.holder) (pid \(previous.pid) on \(previous.host), running '\(previous.command)'): \(keeper.grant.tookOverBecause ?? "it is gone")\n")
            }
        } catch {
            throw Wiring.failure(error)
        }
        // Every write of the pass checks this lease (its holder and generation): once it is lost
        // (`capstan unlock --force`, a takeover), the pass writes nothing more and stops.
        let terminal = Terminal(noColor: noColor)
        let retry = retryFailed
        let work = Task {
            try await Self.pass(reconciler, keeper: keeper, ref: options.ref, fetch: !options.noFetch, saved: saved,
                                retryFailed: retry, color: terminal.color)
        }
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
        await keeper.release()
        stopper.stop()
        if let signal = stopper.received {
            throw CommandFailure(message: "the pass was stopped by \(signal == SIGINT ? "SIGINT" : "SIGTERM"); the next apply finishes it",
                                 exitCode: 128 + signal)
        }
        if let lost = keeper.lost {
            throw CommandFailure(message: lost.message)
        }
        do {
            try result.get()
        } catch {
            throw Wiring.failure(error)
        }
    }

    /// Runs the pass, printing its progress, the plan and the summary; fails when it did not
    /// converge or progress.
    static func pass(_ reconciler: Reconciler, keeper: LeaseKeeper, ref: String?, fetch: Bool, saved: Plan?, retryFailed: Bool,
                     color: Bool) async throws {
        let report = try await reconciler.pass(
            at: ref, fence: keeper.fence, command: "apply", options: PlanOptions(retryFailed: retryFailed), saved: saved,
            fetch: fetch, events: { ApplyOutput.print($0, color: color) }, onLeaseLost: { keeper.reportLost($0) })
        Terminal.out(report.summary + "\n")
        if report.outcome == .failed {
            throw CommandFailure(message: "the pass at \(report.revision.commit.prefix(7)) did not converge: "
                                 + report.failureLines.joined(separator: "; "))
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

/// What `apply` prints while it runs.
enum ApplyOutput {
    static let lock = NSLock()

    static func print(_ event: PassEvent, color: Bool) {
        lock.lock()
        defer { lock.unlock() }
        switch event {
        case .started(let entry):
            Terminal.out("\(entry.name): \(verb(entry.action))…\n")
        case .finished(let entry, let outcome, _):
            let (mark, paint): (String, String) = switch outcome {
            case .done: ("done", "\u{1B}[32m")
            case .skipped: ("skipped", "\u{1B}[2m")
            // A transient failure is retried by the next pass with nothing held against it.
            case .failed(let f) where f.failureClass == .transient: ("FAILED (transient)", "\u{1B}[33;1m")
            case .failed: ("FAILED", "\u{1B}[31;1m")
            }
            let label = color ? "\(paint)\(mark)\u{1B}[0m" : mark
            Terminal.out("\(entry.name): \(entry.action.rawValue) \(label): \(outcome.message)\n")
        case .output(let line):
            Terminal.err(line + "\n")
        case .recovered(let text):
            Terminal.out("capstan: \(text)\n")
        case .note(let text):
            Terminal.err("capstan: note: \(text)\n")
        case .warning(let text):
            Terminal.err("capstan: warning: \(text)\n")
        case .planned(let plan):
            Terminal.out(PlanRenderer(plan: plan, color: color).text())
            if plan.hasChanges { Terminal.out("\n") }
        case .deploymentPlan(let entries):
            let plan = Plan(repository: "", ref: "", commit: "", actualDigest: "", createdAt: 0, entries: entries)
            let lines = PlanRenderer(plan: plan, color: color).entryLines()
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
}
