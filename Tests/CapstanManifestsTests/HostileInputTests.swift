import CapstanCore
import CapstanManifests
import Foundation
import Testing

/// Hostile inputs are refused with one clear diagnostic, never a crash or a hang. (How fast they
/// are refused is measured by scripts/bench-validate.sh, not here.)
struct HostileInputTests {
    let decoder = ManifestDecoder()

    func codes(_ text: String) -> [String] {
        decoder.decode(Array(text.utf8), file: "x.yaml").diagnostics.map { "\($0.severity.rawValue) \($0.code.rawValue) \($0.location.line):\($0.location.column)" }
    }

    static func billionLaughs(asKey: Bool) -> String {
        var lines = [#"a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]"#]
        for i in 1..<10 {
            lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ",") + "]")
        }
        lines.append(asKey ? "bomb: {*a9 : 1}" : "bomb: *a9")
        return lines.joined(separator: "\n") + "\n"
    }

    @Test func billionLaughsInValuesIsRefused() {
        #expect(codes(Self.billionLaughs(asKey: false)) == ["error alias-expansion 1:1"])
    }

    @Test func billionLaughsInKeysIsRefusedBeforeParsing() {
        #expect(codes(Self.billionLaughs(asKey: true)) == ["error alias-expansion 11:8"])
    }

    @Test(arguments: ["? *a\n", "*a : 1\n", "[*a, 1]: 2\n", "{x: *a}: 1\n"])
    func aliasesInKeysAreFound(_ keyLine: String) {
        let text = "base: &a [1, 2]\n" + keyLine
        #expect(codes(text).first?.hasPrefix("error alias-expansion 2:") == true, "\(codes(text))")
    }

    @Test func ordinaryAliasesAndStarsInStringsAreAccepted() {
        let text = """
            apiVersion: capstan/v1
            kind: Config
            metadata: {name: default}
            spec:
              exclude: ["**/params.yaml", 'ci/*']   # stars in quotes and comments: *x: 1
              manifests: &folders [models]
              dataRoots: [/srv/data]
            """
        let result = decoder.decode(Array(text.utf8), file: "capstan.yaml")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.manifests.count == 1)
    }

    @Test func deepNestingIsRefused() {
        let text = "a: " + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "\n"
        #expect(codes(text) == ["error nesting-too-deep 1:67"])
    }

    @Test func nestingBeyondTheParserLimitIsRefused() {
        // Half a million open brackets: libyaml's own limit stops it, reported as the same problem.
        let text = "a: " + String(repeating: "[", count: 500_000) + "\n"
        #expect(codes(text).map { $0.split(separator: " ")[1] } == ["nesting-too-deep"])
    }

    @Test func moreThanAThousandDocumentsIsRefused() {
        let text = String(repeating: "---\na: 1\n", count: 1001)
        #expect(codes(text) == ["error too-many-documents 2002:1"])
    }

    @Test func aFileOverOneMebibyteIsRefusedWithoutParsing() {
        let text = String(repeating: "# padding line\n", count: 80_000)
        #expect(codes(text) == ["error file-too-large 1:1"])
        // The loader refuses by declared size without reading the bytes at all.
        let declared = decoder.decode([], file: "x.yaml", declaredSize: 5 << 20).diagnostics
        #expect(declared.map(\.code) == [.fileTooLarge])
        #expect(declared.first?.message.contains("5 MiB") == true)
    }

    @Test func nonUTF8AndBinaryFilesAreRefused() {
        let latin1: [UInt8] = Array("apiVersion: capstan/v1\nkind: Model\nmetadata: {name: caf".utf8) + [0xE9] + Array("}\n".utf8)
        let d = decoder.decode(latin1, file: "x.yaml").diagnostics
        #expect(d.map { "\($0.code.rawValue) \($0.location.line):\($0.location.column)" } == ["not-utf8 3:21"])
        let binary: [UInt8] = [0x61, 0x3A, 0x20, 0x00, 0x01, 0x0A]
        #expect(decoder.decode(binary, file: "x.yaml").diagnostics.map(\.code) == [.notUTF8])
    }

    @Test func aByteOrderMarkIsAccepted() {
        let text: [UInt8] = [0xEF, 0xBB, 0xBF] + Array("apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\n".utf8)
        #expect(decoder.decode(text, file: "capstan.yaml").diagnostics.isEmpty)
    }

    @Test(arguments: [
        "a: [1, 2\n", "a: \"unterminated\n", "a:\n\t- b\n", "a: b: c\n", "- a\nb: 1\n", "{a: 1, a: 2}\n",
        "a: !!binary 123\n", "%YAML 9.9\n---\na: 1\n", "a: *undefined\n", "&a a: &a\n",
        String(repeating: "- ", count: 2000) + "x\n", "a: |\n  text\n b: 1\n",
    ])
    func malformedYAMLNeverCrashes(_ text: String) {
        let d = decoder.decode(Array(text.utf8), file: "x.yaml").diagnostics
        #expect(!d.isEmpty)
        #expect(d.allSatisfy { $0.location.line >= 1 && $0.location.column >= 1 })
    }
}

private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
    write(fd, bytes.baseAddress, bytes.count) == bytes.count
}

/// A temporary folder for one test, removed afterwards. Names may be raw bytes (not UTF-8).
final class Scratch {
    let url: URL
    var path: String { url.path }

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("capstan-hostile-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    func write(_ relative: String, _ text: String) throws {
        let file = url.appendingPathComponent(relative)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: file)
    }

    func link(_ relative: String, to target: String) throws {
        let file = url.appendingPathComponent(relative)
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: file.path, withDestinationPath: target)
    }

    /// Creates a file or folder whose name is given as bytes.
    func create(_ relative: [UInt8], folder: Bool = false, contents: String = "") throws {
        let full = Array(path.utf8) + [UInt8(ascii: "/")] + relative + [0]
        let ok = full.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { p -> Bool in
                if folder { return mkdir(p.baseAddress!, 0o755) == 0 }
                let fd = open(p.baseAddress!, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                guard fd >= 0 else { return false }
                defer { close(fd) }
                return Array(contents.utf8).withUnsafeBytes { writeAll(fd, $0) }
            }
        }
        guard ok else { throw CocoaError(.fileWriteUnknown) }
    }
}

/// Repository content that must not be read: symlinks out of the repository, special files,
/// names that cannot be shown, files swapped after listing. Nothing outside the root may reach
/// a diagnostic, a snippet or the loaded manifests.
struct UntrustedFolderTests {
    static func model(_ name: String, extra: String = "") -> String {
        "apiVersion: capstan/v1\nkind: Model\nmetadata:\n  name: \(name)\nspec:\n  train:\n    command: [python3, train.py]\n\(extra)"
    }

    static func load(_ root: String) async throws -> LoadResult {
        try await ManifestLoader(source: DirectoryManifestSource(root: root)).load()
    }

    static func render(_ d: Diagnostic) -> String {
        "\(d.severity.rawValue) \(d.code.rawValue) \(d.location.file):\(d.location.line):\(d.location.column)"
    }

    /// Every way the result can be shown: text with snippets, GitHub commands, and the texts kept
    /// for snippets.
    static func everything(_ result: LoadResult) -> String {
        let f = DiagnosticFormatter()
        return result.diagnostics.map { f.text($0, sourceLine: { result.sourceLine(file: $0, line: $1) }) + f.github($0) }.joined()
            + result.sources.values.joined() + result.diagnostics.map(\.message).joined()
    }

    /// The repository's links out: absolute (the issue's /proc/self/environ), relative, chained,
    /// dangling, looping, into .git, a folder out; and links inside, which are followed.
    @Test func symlinksAreFollowedOnlyInsideTheRepository() async throws {
        let s = try Scratch()
        let marker = "MARKER-\(UUID().uuidString)"
        try s.write("outside/secret.yaml", "apiVersion: capstan/v1\nkind: Model\nsecret: \(marker)\n")
        try s.write("outside/folder/model.yaml", Self.model("outsider") + "# \(marker)\n")
        try s.write("repo/capstan.yaml", "apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\nspec:\n  manifests: [models]\n")
        try s.write("repo/models/churn.yaml", Self.model("churn"))
        try s.write("repo/shared/extra.yaml", Self.model("extra"))
        try s.write("repo/.git/config", "[http]\n\textraheader = AUTHORIZATION: basic \(marker)\n")
        try s.link("repo/models/env.yaml", to: "/proc/self/environ")
        try s.link("repo/models/abs.yaml", to: s.path + "/outside/secret.yaml")
        try s.link("repo/models/up.yaml", to: "../../outside/secret.yaml")
        try s.link("repo/models/chain.yaml", to: "hop.yaml")
        try s.link("repo/models/hop.yaml", to: "up.yaml")
        try s.link("repo/models/dangling.yaml", to: "nowhere.yaml")
        try s.link("repo/models/loop-a.yaml", to: "loop-b.yaml")
        try s.link("repo/models/loop-b.yaml", to: "loop-a.yaml")
        try s.link("repo/models/git.yaml", to: "../.git/config")
        try s.link("repo/models/out", to: "../../outside/folder")
        try s.link("repo/models/linked", to: "../shared")
        try s.link("repo/models/again.yaml", to: "churn.yaml")
        try s.link("repo/models/self", to: ".")

        let result = try await Self.load(s.path + "/repo")
        #expect(result.diagnostics.map(Self.render) == [
            "error symlink-escapes-repository models/abs.yaml:1:1",
            "error symlink-escapes-repository models/chain.yaml:1:1",
            "error broken-symlink models/dangling.yaml:1:1",
            "error symlink-escapes-repository models/env.yaml:1:1",
            "error symlink-escapes-repository models/git.yaml:1:1",
            "error symlink-escapes-repository models/hop.yaml:1:1",
            "error broken-symlink models/loop-a.yaml:1:1",
            "error broken-symlink models/loop-b.yaml:1:1",
            "error symlink-escapes-repository models/out:1:1",
            "error symlink-escapes-repository models/up.yaml:1:1",
        ])
        // Inside: a linked folder is walked, a linked file read once under its real path.
        #expect(result.manifests.models.map(\.metadata.name) == ["churn", "extra"])
        #expect(result.manifestFiles == ["capstan.yaml", "models/churn.yaml", "shared/extra.yaml"])
        #expect(!Self.everything(result).contains(marker))
        #expect(!Self.everything(result).contains("PATH="))
        let messages = Dictionary(result.diagnostics.map { ($0.location.file, $0.message) }, uniquingKeysWith: { a, _ in a })
        #expect(messages["models/env.yaml"] == "symlink to the absolute path '/proc/self/environ' leads outside the repository; it is not followed and nothing there is read")
        #expect(messages["models/chain.yaml"]?.contains("'../../outside/secret.yaml' climbs out of the repository") == true)
        #expect(messages["models/git.yaml"]?.contains("hidden path '.git'") == true)
        #expect(messages["models/dangling.yaml"] == "symlink to 'nowhere.yaml' points at nothing in the repository")
    }

    @Test func linksOutAreRefusedWhereverAPathIsNamed() async throws {
        let s = try Scratch()
        try s.write("outside/capstan.yaml", "apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\nspec:\n  manifests: [nothing]\n")
        try s.write("a/models/churn.yaml", Self.model("churn"))
        try s.link("a/capstan.yaml", to: "../outside/capstan.yaml")
        let config = try await Self.load(s.path + "/a")
        // The config out of the repository is not read: the defaults apply (the whole folder).
        #expect(config.diagnostics.map(Self.render) == ["error symlink-escapes-repository capstan.yaml:1:1"])
        #expect(config.manifests.models.map(\.metadata.name) == ["churn"])

        try s.write("b/capstan.yaml", "apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\nspec:\n  manifests: [models, ext]\n")
        try s.write("b/models/churn.yaml", Self.model("churn", extra: "    workdir: work\n    inputs: [data/x.csv, models]\n"))
        try s.link("b/ext", to: "../outside")
        try s.link("b/work", to: "/tmp")
        try s.link("b/data", to: "../outside")
        let paths = try await Self.load(s.path + "/b")
        #expect(paths.diagnostics.map(Self.render) == [
            "error symlink-escapes-repository capstan.yaml:5:23",
            "error symlink-escapes-repository models/churn.yaml:8:14",
            "error symlink-in-path models/churn.yaml:9:14",
        ])
        #expect(paths.diagnostics.map(\.message) == [
            "manifest folder 'ext': symlink to '../outside' climbs out of the repository; it is not followed and nothing there is read",
            "spec.train.workdir 'work': symlink to the absolute path '/tmp' leads outside the repository; it is not followed and nothing there is read",
            "input 'data/x.csv': the path goes through the symlink 'data'; a path named in a manifest is not followed through symlinked folders (an input is identified by what is at its exact path)",
        ])

        // Inside the repository: a link at the path itself is followed; a path through a
        // symlinked folder is refused (an input is identified by what is at its exact path).
        try s.write("c/models/churn.yaml", Self.model("churn", extra: "    workdir: work\n    inputs: [data, linked/x.csv]\n"))
        try s.write("c/real/x.csv", "1\n")
        try s.link("c/work", to: "real")
        try s.link("c/data", to: "real/x.csv")
        try s.link("c/linked", to: "real")
        let inside = try await Self.load(s.path + "/c")
        #expect(inside.diagnostics.map(Self.render) == ["error symlink-in-path models/churn.yaml:9:20"])
        #expect(inside.diagnostics.first?.message.hasPrefix("input 'linked/x.csv': the path goes through the symlink 'linked';") == true)
    }

    /// A FIFO named like a manifest would block a reader forever; a socket cannot be read.
    @Test func specialFilesAreRefusedUnopened() async throws {
        let s = try Scratch()
        try s.write("models/churn.yaml", Self.model("churn"))
        #expect(mkfifo(s.path + "/models/pipe.yaml", 0o644) == 0)
        try s.link("models/to-pipe.yaml", to: "pipe.yaml")
        try s.link("capstan.yaml", to: "models/pipe.yaml")
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let socketPath = Array((s.path + "/models/sock.yml").utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: socketPath.prefix($0.count - 1)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        let result = try await Self.load(s.path)
        #expect(result.diagnostics.map(Self.render) == [
            "error not-a-regular-file capstan.yaml:1:1",
            "error not-a-regular-file models/pipe.yaml:1:1",
            "error not-a-regular-file models/sock.yml:1:1",
            "error not-a-regular-file models/to-pipe.yaml:1:1",
        ])
        #expect(result.diagnostics.first?.message == "this is a FIFO, not a regular file; manifests are read only from regular files")
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
    }

    /// 100 MB (sparse: nothing is written) is refused by its size, before it is opened for reading.
    @Test func aHundredMegabyteFileIsRefusedBySize() async throws {
        let s = try Scratch()
        try s.write("models/big.yaml", "")
        #expect(truncate(s.path + "/models/big.yaml", 100 << 20) == 0)
        let result = try await Self.load(s.path)
        #expect(result.diagnostics.map(Self.render) == ["error file-too-large models/big.yaml:1:1"])
        #expect(result.diagnostics.first?.message == "file is 100 MiB; a manifest file may be at most 1 MiB")
        #expect(result.sources.isEmpty)
    }

    /// Names that are not UTF-8 or hold control characters are refused and shown escaped; a
    /// folder with such a name is not entered. No output line is broken by them.
    @Test func unsafeNamesAreRefusedAndShownEscaped() async throws {
        let s = try Scratch()
        try s.write("models/churn.yaml", Self.model("churn"))
        try s.create(Array("models/bad".utf8) + [0xFF] + Array(".yaml".utf8), contents: Self.model("bad"))
        try s.create(Array("models/nl\nx.yaml".utf8), contents: Self.model("newline"))
        try s.create(Array("models/esc\u{1B}[31m.yml".utf8), contents: Self.model("escape"))
        try s.create(Array("models/rtl\u{202E}lmay.txt".utf8), contents: "")
        try s.create(Array("models/dir".utf8) + [0xFE], folder: true)
        try s.create(Array("models/dir".utf8) + [0xFE] + Array("/inner.yaml".utf8), contents: Self.model("inner"))
        try s.create(Array("models/plain-latin1-\u{E9}.txt".utf8), contents: "")  // not YAML: ignored
        try s.create(Array("models/notes-".utf8) + [0xE9] + Array(".txt".utf8), contents: "")  // not YAML: ignored
        let result = try await Self.load(s.path)
        #expect(result.diagnostics.map(Self.render) == [
            #"error unsafe-file-name models/bad\xFF.yaml:1:1"#,
            #"error unsafe-file-name models/dir\xFE:1:1"#,
            #"error unsafe-file-name models/esc\u{1B}[31m.yml:1:1"#,
            #"error unsafe-file-name models/nl\nx.yaml:1:1"#,
        ])
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
        let f = DiagnosticFormatter()
        for d in result.diagnostics {
            // A header line and a hint line; nothing a terminal or GitHub would take as control.
            let text = f.text(d, sourceLine: { result.sourceLine(file: $0, line: $1) })
            #expect(text.split(separator: "\n").count == 2, "\(text)")
            #expect(!text.unicodeScalars.contains { $0 != "\n" && SafeText.isUnsafe($0) })
            let github = f.github(d)
            #expect(!github.contains("\n") && !github.contains("\r") && github.hasPrefix("::error file=models/"))
        }
    }

    /// Between listing and reading, a file replaced by a link out of the repository is not read.
    @Test func aFileSwappedAfterListingIsNotRead() async throws {
        let s = try Scratch()
        let marker = "MARKER-\(UUID().uuidString)"
        try s.write("outside.yaml", "secret: \(marker)\n")
        try s.write("repo/models/churn.yaml", Self.model("churn"))
        let source = DirectoryManifestSource(root: s.path + "/repo")
        let files = try await source.yamlFiles(under: "")
        #expect(files.map(\.path) == ["models/churn.yaml"])
        try FileManager.default.removeItem(atPath: s.path + "/repo/models/churn.yaml")
        try s.link("repo/models/churn.yaml", to: "../../outside.yaml")
        let reads = try await source.read(files, limit: 1 << 20)
        guard case .unreadable(let error) = reads[0] else {
            Issue.record("read the swapped file: \(reads[0])")
            return
        }
        #expect(error.message.contains("changed while it was being read"))
        await #expect(throws: ManifestSourceError.self) { try await source.read(files[0]) }

        // The same with the folder swapped: the path now leads outside, to another file.
        try s.write("outside/churn.yaml", "secret: \(marker)\n")
        try s.write("repo2/models/churn.yaml", Self.model("churn"))
        let source2 = DirectoryManifestSource(root: s.path + "/repo2")
        let files2 = try await source2.yamlFiles(under: "")
        try FileManager.default.removeItem(atPath: s.path + "/repo2/models")
        try s.link("repo2/models", to: "../outside")
        guard case .unreadable(let error2) = try await source2.read(files2, limit: 1 << 20)[0] else {
            Issue.record("read through the swapped folder")
            return
        }
        #expect(error2.message.contains("changed while it was being read"))
    }

    /// A checked-out submodule (a folder with its own .git) is another repository: not read.
    @Test func aNestedRepositoryIsNotEntered() async throws {
        let s = try Scratch()
        try s.write("models/churn.yaml", Self.model("churn"))
        try s.write("models/vendor/.git", "gitdir: ../../.git/modules/vendor\n")
        try s.write("models/vendor/other.yaml", Self.model("other"))
        let result = try await Self.load(s.path)
        #expect(result.diagnostics.map(Self.render) == ["warning submodule-not-read models/vendor:1:1"])
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
    }
}
