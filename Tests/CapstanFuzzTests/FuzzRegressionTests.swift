import CapstanFuzz
import Foundation
import Testing

/// The fuzz targets' seeds and past findings, run through the same invariants as under libFuzzer
/// (scripts/fuzz.sh): a seed or a regression input that breaks one fails here, in a plain
/// `swift test`, without a fuzzing build.
struct FuzzRegressionTests {
    static let here = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let root = here.deletingLastPathComponent().deletingLastPathComponent()

    /// Regular files in a folder (symlinks are never followed: a fixture may point at /proc).
    static func files(in folder: URL) -> [URL] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
        return names.sorted().map { folder.appendingPathComponent($0) }.filter {
            (try? $0.resourceValues(forKeys: [.isRegularFileKey, .isSymbolicLinkKey])).map { $0.isRegularFile == true && $0.isSymbolicLink != true } == true
        }
    }

    /// A manifest fixture folder as one fuzz input: `#@@ PATH` before each file (scripts/fuzz.sh
    /// writes the same seeds).
    static func manifestSeed(_ folder: URL) -> [UInt8] {
        var out: [UInt8] = []
        let prefix = folder.path + "/"
        let walker = FileManager.default.enumerator(at: folder, includingPropertiesForKeys: [.isRegularFileKey, .isSymbolicLinkKey])
        var paths: [String] = []
        while let url = walker?.nextObject() as? URL {
            let values = try? url.resourceValues(forKeys: [.isRegularFileKey, .isSymbolicLinkKey])
            guard values?.isRegularFile == true, values?.isSymbolicLink != true,
                  url.pathExtension == "yaml" || url.pathExtension == "yml" else { continue }
            paths.append(String(url.path.dropFirst(prefix.count)))
        }
        for path in paths.sorted() {
            out += Array("#@@ \(path)\n".utf8)
            out += [UInt8](FileManager.default.contents(atPath: prefix + path) ?? Data())
            if out.last != UInt8(ascii: "\n") { out.append(UInt8(ascii: "\n")) }
        }
        return out
    }

    static var manifestFolders: [URL] {
        let fixtures = root.appendingPathComponent("Tests/CapstanManifestsTests/Fixtures")
        var folders: [URL] = [root.appendingPathComponent("examples/quickstart")]
        for kind in ["valid", "invalid"] {
            let dir = fixtures.appendingPathComponent(kind)
            folders += ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).sorted().map { dir.appendingPathComponent($0) }
        }
        return folders
    }

    @Test func everyManifestFixtureHoldsTheInvariants() {
        let folders = Self.manifestFolders
        #expect(folders.count > 150)
        for folder in folders {
            let seed = Self.manifestSeed(folder)
            #expect(FuzzTarget.manifest.run(seed) == [], "\(folder.lastPathComponent)")
            for file in Self.files(in: folder) where file.pathExtension == "yaml" || file.pathExtension == "yml" {
                #expect(FuzzTarget.manifest.run([UInt8](FileManager.default.contents(atPath: file.path) ?? Data())) == [], "\(file.path)")
            }
        }
    }

    @Test(arguments: [FuzzTarget.webhook, .gatewayHead])
    func everySeedHoldsTheInvariants(_ target: FuzzTarget) throws {
        let seeds = Self.files(in: Self.here.appendingPathComponent("Seeds/\(target.rawValue)"))
        #expect(seeds.count >= 10)
        for seed in seeds {
            #expect(target.run([UInt8](try Data(contentsOf: seed))) == [], "\(seed.lastPathComponent)")
        }
    }

    /// The webhook seeds say in their names what the verdict is; the invariant checks it.
    @Test func webhookSeedsCoverAcceptedAndRejected() throws {
        let names = Self.files(in: Self.here.appendingPathComponent("Seeds/webhook")).map(\.lastPathComponent)
        #expect(names.filter { $0.hasSuffix("-accepted") }.count >= 5)
        #expect(names.filter { $0.hasSuffix("-rejected") }.count >= 5)
    }

    @Test(arguments: FuzzTarget.allCases)
    func everyPastFindingHoldsTheInvariants(_ target: FuzzTarget) throws {
        for input in Self.files(in: Self.here.appendingPathComponent("Regressions/\(target.rawValue)")) {
            #expect(target.run([UInt8](try Data(contentsOf: input))) == [], "\(input.lastPathComponent)")
        }
    }

    /// The invariants can fail: a broken input is caught (the checks are not vacuous).
    @Test func theInvariantsCatchWhatTheyAreFor() {
        // A GitLab token that is not the secret must be rejected; the check sees the verdict.
        #expect(FuzzTarget.webhook.run(Array("\u{01}It's a Secret to Everybody\n{}".utf8)) == [])
        #expect(WebhookFuzz.secret == "It's a Secret to Everybody")
        // Files of a multi-file input are split at the markers.
        let files = ManifestFuzz.files(Array("#@@ capstan.yaml\na: 1\n#@@ ../x.yaml\nb\n#@@ models/m.yaml\nc: 2".utf8))
        #expect(files.keys.sorted() == ["capstan.yaml", "models/m.yaml"])
        #expect(files["models/m.yaml"] == Array("c: 2".utf8))
        #expect(files["capstan.yaml"] == Array("a: 1\n".utf8))
    }
}
