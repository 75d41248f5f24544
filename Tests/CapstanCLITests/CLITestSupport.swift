import Foundation
import Testing
@testable import CapstanTestSupport

/// Runs the built `capstan` binary as a user would and captures what it prints.
struct CLI {
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// The `capstan` executable next to the test bundle (SwiftPM builds it because the test
    /// target depends on it), or the one `CAPSTAN_TEST_BINARY` names: CI runs the controller
    /// tests again against the shipped build of scripts/build-release.sh.
    static let binary: URL = {
        if let path = ProcessInfo.processInfo.environment["CAPSTAN_TEST_BINARY"], !path.isEmpty {
            return URL(fileURLWithPath: path)
        }
        let runner = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = runner.deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("capstan")
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate.path, isDirectory: &isDir), !isDir.boolValue {
                return candidate
            }
            dir = dir.deletingLastPathComponent()
        }
        fatalError("capstan binary not found near \(runner.path)")
    }()

    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @discardableResult
    static func run(_ arguments: [String], in directory: URL? = nil, environment: [String: String] = [:]) throws -> Result {
        var env = ["NO_COLOR": "1"]
        for (k, v) in environment { env[k] = v }
        let r = try Shell.run(binary.path, arguments, in: directory ?? packageRoot, environment: env)
        return Result(status: r.status, stdout: r.stdout, stderr: r.stderr)
    }
}

/// A fresh temporary folder, removed when the value goes away.
final class TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(at: url)
    }

    func write(_ path: String, _ text: String) throws {
        let file = url.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: file)
    }
}
