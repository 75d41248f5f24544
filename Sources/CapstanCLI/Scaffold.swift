import Foundation

/// One file of the starter repository written by `capstan init`.
struct ScaffoldFile: Sendable {
    var path: String
    var executable: Bool
    /// The text without its final newline (a multi-line literal drops it; `write` adds it back).
    var contents: String
}

/// The starter repository (the same files as examples/quickstart).
enum Scaffold {
    /// Paths of the scaffold that already exist under `directory`.
    static func conflicts(in directory: URL) -> [String] {
        files.map(\.path).filter { FileManager.default.fileExists(atPath: directory.appendingPathComponent($0).path) }
    }

    /// Writes every file; each one is written to a temporary name first and renamed, so an
    /// interrupted init never leaves a half-written file.
    static func write(to directory: URL) throws {
        let fm = FileManager.default
        for file in files {
            let url = directory.appendingPathComponent(file.path)
            try fm.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let text = file.contents + "\n"
            let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).capstan-tmp")
            try Data(text.utf8).write(to: temporary)
            if file.executable {
                try fm.setAttributes([.posixPermissions: 0o755], ofItemAtPath: temporary.path)
            }
            if rename(temporary.path, url.path) != 0 {
                throw CommandFailure(message: "cannot write '\(url.path)': \(String(cString: strerror(errno)))")
            }
        }
    }
}
