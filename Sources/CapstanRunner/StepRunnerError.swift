/// A step that could not be run at all (as opposed to one that ran and failed, which is a
/// `StepResult`). The message quotes the command and the path involved and says what to do.
/// Environment values never appear in it: they may be secrets.
public struct StepRunnerError: Error, Sendable, CustomStringConvertible {
    public enum Code: Hashable, Sendable {
        /// The request itself is malformed (empty argv, a relative workdir, a NUL byte).
        case invalidRequest
        /// `argv[0]` is not in the step's PATH, does not exist, or is not executable.
        case executableNotFound
        /// The working directory does not exist or is not a directory.
        case workdirMissing
        /// The log file could not be opened or written.
        case logUnwritable
        /// The operating system refused to start the process.
        case spawnFailed
        /// Reading the process's output failed.
        case outputUnreadable
    }

    public var code: Code
    public var message: String
    /// The command as it would be typed (arguments quoted where needed).
    public var command: String
    /// The file or directory the problem is about, if any.
    public var path: String?
    /// What the operating system or swift-subprocess reported.
    public var cause: (any Error)?
    /// Where in Capstan the error was raised (`CapstanRunner/LocalStepRunner.swift:120`).
    public var location: String

    public init(
        _ code: Code, _ message: String, command: String, path: String? = nil, cause: (any Error)? = nil,
        fileID: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.message = message
        self.command = command
        self.path = path
        self.cause = cause
        self.location = "\(fileID):\(line)"
    }

    public var description: String { message }
}

extension StepRunnerError {
    /// Renders argv for a message: words with spaces or shell metacharacters are single-quoted.
    static func render(_ argv: [String]) -> String {
        argv.map { word in
            let plain = !word.isEmpty && word.unicodeScalars.allSatisfy { scalar in
                scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "-_./=:,+@%".unicodeScalars.contains(scalar)
            }
            return plain ? word : "'" + word.replacing("'", with: #"'\''"#) + "'"
        }.joined(separator: " ")
    }
}
