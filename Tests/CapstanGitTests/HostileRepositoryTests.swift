import CapstanCore
import CapstanManifests
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// Hostile repositories, read both ways: from a checkout (`capstan validate PATH`) and from the
/// commit (`--repo`, the controller). Both refuse the same things with the same diagnostics, and
/// nothing outside the repository reaches the output.
struct HostileRepositoryTests {
    static func model(_ name: String) -> String {
        "apiVersion: capstan/v1\nkind: Model\nmetadata:\n  name: \(name)\nspec:\n  train:\n    command: [python3, train.py]\n"
    }

    static func render(_ d: Diagnostic) -> String {
        "\(d.severity.rawValue) \(d.code.rawValue) \(d.location.file):\(d.location.line):\(d.location.column) \(d.message)"
    }

    /// Creates a file whose path is given as bytes (not necessarily UTF-8).
    static func create(_ path: [UInt8], _ text: String) throws {
        let fd = (path + [0]).withUnsafeBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT | O_TRUNC, 0o644) }
        }
        guard fd >= 0 else { throw FixtureError("cannot create \(String(decoding: path, as: UTF8.self))") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        handle.write(Data(text.utf8))
    }

    @Test func aCheckoutAndItsCommitRefuseTheSameThings() async throws {
        let dir = try TempDir()
        let marker = "MARKER-\(UUID().uuidString)"
        try Data("apiVersion: capstan/v1\nkind: Model\nsecret: \(marker)\n".utf8).write(to: dir.sub("secret.yaml"))
        let repo = try GitRepo(at: dir.sub("repo"))
        try repo.write("capstan.yaml", "apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\nspec:\n  manifests: [models]\n")
        try repo.write("models/churn.yaml", Self.model("churn"))
        try repo.write("shared/extra.yaml", Self.model("extra"))
        try repo.symlink("models/env.yaml", to: "/proc/self/environ")
        try repo.symlink("models/abs.yaml", to: dir.sub("secret.yaml").path)
        try repo.symlink("models/up.yaml", to: "../../secret.yaml")
        try repo.symlink("models/chain.yaml", to: "hop.yaml")
        try repo.symlink("models/hop.yaml", to: "up.yaml")
        try repo.symlink("models/dangling.yaml", to: "nowhere.yaml")
        try repo.symlink("models/loop-a.yaml", to: "loop-b.yaml")
        try repo.symlink("models/loop-b.yaml", to: "loop-a.yaml")
        try repo.symlink("models/git.yaml", to: "../.git/config")
        try repo.symlink("models/out", to: "../..")
        try repo.symlink("models/linked", to: "../shared")
        try repo.symlink("models/again.yaml", to: "churn.yaml")
        // Paths named in a manifest: a link at the path is followed, one through a folder link is not.
        try repo.write("models/paths.yaml", Self.model("paths") + "    workdir: work-link\n    inputs: [shared-link/extra.yaml, data-link]\n")
        try repo.symlink("work-link", to: "shared")
        try repo.symlink("shared-link", to: "shared")
        try repo.symlink("data-link", to: "shared/extra.yaml")
        try Self.create(Array(repo.url.appendingPathComponent("models").path.utf8) + Array("/bad".utf8) + [0xFF] + Array(".yaml".utf8), Self.model("bad"))
        try Self.create(Array(repo.url.appendingPathComponent("models").path.utf8) + Array("/nl\nx.yaml".utf8), Self.model("newline"))
        // A submodule: a repository of its own inside the manifests folder (a gitlink in the commit).
        let vendor = try GitRepo(at: repo.url.appendingPathComponent("models/vendor"))
        try vendor.write("other.yaml", Self.model("other"))
        try vendor.commit("vendor")
        try repo.commit("hostile")
        #expect(try repo.git("ls-files", "-s", "models/vendor").hasPrefix("160000 "))

        let fromFolder = try await ManifestLoader(source: DirectoryManifestSource(root: repo.path)).load()
        let (fromCommit, _) = try await loadCommit(try await openLocal(repo.path), "main")
        let expected = [
            "error symlink-escapes-repository models/abs.yaml:1:1",
            #"error unsafe-file-name models/bad\xFF.yaml:1:1"#,
            "error symlink-escapes-repository models/chain.yaml:1:1",
            "error broken-symlink models/dangling.yaml:1:1",
            "error symlink-escapes-repository models/env.yaml:1:1",
            "error symlink-escapes-repository models/git.yaml:1:1",
            "error symlink-escapes-repository models/hop.yaml:1:1",
            "error broken-symlink models/loop-a.yaml:1:1",
            "error broken-symlink models/loop-b.yaml:1:1",
            #"error unsafe-file-name models/nl\nx.yaml:1:1"#,
            "error symlink-escapes-repository models/out:1:1",
            "error symlink-in-path models/paths.yaml:9:14",
            "error symlink-escapes-repository models/up.yaml:1:1",
            "warning submodule-not-read models/vendor:1:1",
        ]
        #expect(fromFolder.diagnostics.map(\.summary) == expected)
        #expect(fromCommit.diagnostics.map(Self.render) == fromFolder.diagnostics.map(Self.render))
        for result in [fromFolder, fromCommit] {
            #expect(result.manifests.models.map(\.metadata.name) == ["churn", "paths", "extra"])
            #expect(result.manifestFiles == ["capstan.yaml", "models/churn.yaml", "models/paths.yaml", "shared/extra.yaml"])
            let f = DiagnosticFormatter()
            let shown = result.diagnostics.map { f.text($0, sourceLine: { result.sourceLine(file: $0, line: $1) }) + f.github($0) }.joined()
                + result.sources.values.joined()
            #expect(!shown.contains(marker))
            #expect(!shown.contains("PATH="))
        }
    }

    /// A 100 MB blob named like a manifest is refused by the size in its object header: never
    /// inflated, never read for a snippet.
    @Test func aHundredMegabyteBlobIsRefusedByItsHeader() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo.git"), bare: true)
        let stream = try FastImport(at: dir.sub("stream"))
        stream.file("models/churn.yaml", Self.model("churn"))
        stream.file("models/big.yaml", repeating: UInt8(ascii: "#"), count: 100 << 20)
        try stream.commit(into: repo)
        let (result, source) = try await loadCommit(try await openLocal(repo.path), "main")
        #expect(result.diagnostics.map(\.summary) == ["error file-too-large models/big.yaml:1:1"])
        #expect(result.diagnostics.first?.message == "file is 100 MiB; a manifest file may be at most 1 MiB")
        #expect(result.sources.isEmpty)
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
        let big = try #require(try await source.file(at: "models/big.yaml"))
        let reads = try await source.read([big], limit: 1 << 20)
        guard case .tooLarge(let size) = reads[0] else { Issue.record("read: \(reads[0])"); return }
        #expect(size == 100 << 20)
    }

    /// A commit with names a checkout could not even hold the same way: refused, shown escaped;
    /// names that collide once repaired do not hide each other's refusal.
    @Test func unsafeNamesInACommitAreRefusedAndEscaped() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo.git"), bare: true)
        let stream = try FastImport(at: dir.sub("stream"))
        stream.file("models/churn.yaml", Self.model("churn"))
        stream.file(Array("models/a".utf8) + [0xC3, 0x28] + Array(".yaml".utf8), Array(Self.model("a").utf8))
        stream.file(Array("models/tab\t.yaml".utf8), Array(Self.model("tab").utf8))
        stream.file(Array("models/d".utf8) + [0x80] + Array("/inner.yaml".utf8), Array(Self.model("inner").utf8))
        stream.gitlink("models/sub", commit: String(repeating: "ab", count: 20))
        try stream.commit(into: repo)
        let (result, _) = try await loadCommit(try await openLocal(repo.path), "main")
        #expect(result.diagnostics.map(\.summary) == [
            #"error unsafe-file-name models/a\xC3(.yaml:1:1"#,
            #"error unsafe-file-name models/d\x80:1:1"#,
            "warning submodule-not-read models/sub:1:1",
            #"error unsafe-file-name models/tab\t.yaml:1:1"#,
        ])
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
    }

    /// 100,000 files in 1,000 folders: a third valid models, a third empty (a warning each), a
    /// third not UTF-8 (an error each, and no text to show). All are reported, and the load stays
    /// linear (scripts/bench-hostile.sh measures its time and memory).
    @Test func aHundredThousandFilesAreAllReported() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo.git"), bare: true)
        let stream = try FastImport(at: dir.sub("stream"))
        for i in 0..<100_000 {
            let path = "models/d\(i % 1000)/f\(i).yaml"
            switch i % 3 {
            case 0: stream.file(path, Self.model("m\(i)"))
            case 1: stream.file(path, "# nothing here\n")
            default: stream.file(Array(path.utf8), Array("name: caf".utf8) + [0xE9] + [0x0A])
            }
        }
        try stream.commit(into: repo)
        let (result, _) = try await loadCommit(try await openLocal(repo.path), "main")
        #expect(result.fileCount == 100_000)
        #expect(result.manifests.models.count == 33_334)
        var codes: [DiagnosticCode: Int] = [:]
        for d in result.diagnostics { codes[d.code, default: 0] += 1 }
        #expect(codes == [.emptyDocument: 33_333, .notUTF8: 33_333])
    }
}
