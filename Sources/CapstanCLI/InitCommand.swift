import ArgumentParser
import Foundation

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a starter model repository.",
        discussion: """
            Writes capstan.yaml, a model (stdlib-only Python training and serving scripts and a small \
            data set) and a deployment into DIR. Refuses to overwrite existing files.
            """
    )

    @Argument(help: "Where to create the repository (created if missing).", completion: .directory)
    var directory: String = "."

    func run() async throws {
        let url = URL(fileURLWithPath: directory, isDirectory: true)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw Self.fail(CommandFailure(message: "'\(directory)' is a file; give a folder to create the repository in", exitCode: ExitStatus.usage))
        }
        let conflicts = Scaffold.conflicts(in: url)
        if !conflicts.isEmpty {
            throw Self.fail(CommandFailure(message: """
                '\(directory)' already has \(conflicts.map { "'\($0)'" }.joined(separator: ", ")); nothing was written. \
                Choose an empty folder, or move those files away first.
                """))
        }
        do {
            try Scaffold.write(to: url)
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch {
            throw Self.fail(CommandFailure(message: "cannot write the starter repository into '\(directory)': \(error.localizedDescription)"))
        }
        Terminal.out("""
            Created a Capstan repository in \(directory):
            \(Scaffold.files.map { "  \($0.path)" }.joined(separator: "\n"))

            Next: capstan validate \(directory)

            """)
    }
}
