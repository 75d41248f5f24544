import ArgumentParser
import Foundation
import Synchronization

/// The `capstan` command: parses arguments and wires adapters. No decisions are made here.
public struct CapstanMain: AsyncParsableCommand {
    public static let version = "0.1.0"

    public static let configuration = CommandConfiguration(
        commandName: "capstan",
        abstract: "GitOps reconciler for machine-learning models.",
        discussion: """
            Capstan reads model and deployment specs from a repository and closes the gap between \
            what they ask for and what the registry and serving layer hold.
            """,
        version: version,
        subcommands: [ValidateCommand.self, DiffCommand.self, PlanCommand.self, ApplyCommand.self, RunCommand.self, ServeCommand.self, StatusCommand.self, HistoryCommand.self, RegisterCommand.self, PromoteCommand.self, CardCommand.self, UnlockCommand.self, SchemaCommand.self, InitCommand.self]
    )

    public init() {}
}

/// Exit codes shared by all commands.
enum ExitStatus {
    static let ok: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 64
}

/// Terminal output: people read stdout, logs go to stderr.
struct Terminal {
    var color: Bool

    init(noColor: Bool) {
        let env = ProcessInfo.processInfo.environment
        color = !noColor && env["NO_COLOR"].map(\.isEmpty) ?? true && isatty(STDOUT_FILENO) == 1 && env["TERM"] != "dumb"
    }

    static func out(_ s: String) {
        FileHandle.standardOutput.write(Data(s.utf8))
    }

    /// Where `err` writes; the controller sends it to its logger instead of raw stderr.
    static let errorSink = Mutex<(@Sendable (String) -> Void)?>(nil)

    static func err(_ s: String) {
        if let sink = errorSink.withLock({ $0 }) {
            sink(s)
        } else {
            FileHandle.standardError.write(Data(s.utf8))
        }
    }
}

/// A command failure with a message for people; printed as `capstan: error: …`.
struct CommandFailure: Error, CustomStringConvertible {
    var message: String
    var exitCode: Int32 = ExitStatus.failure
    /// The failure came from damaged Git objects (a mirror is then re-created).
    var corrupt = false

    var description: String { message }
}

extension AsyncParsableCommand {
    /// Prints a failure the way every command does and exits with its code.
    static func fail(_ failure: CommandFailure) -> ExitCode {
        Terminal.err("capstan: error: \(failure.message)\n")
        return ExitCode(failure.exitCode)
    }
}
