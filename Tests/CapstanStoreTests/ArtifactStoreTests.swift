import CapstanCore
@testable import CapstanStore
import Foundation
import Testing

@Suite struct ArtifactStoreTests {
    /// A training output: a file, an executable, a nested file and an empty folder.
    func makeOutput(in temp: TemporaryDirectory, at relative: String = "output") throws -> String {
        try temp.write("\(relative)/model.bin", garbage(count: 3000))
        try temp.write("\(relative)/predict.sh", "#!/bin/sh\necho hi\n", mode: 0o755)
        try temp.write("\(relative)/meta/config.json", #"{"lr": 0.1}"#)
        try FileManager.default.createDirectory(atPath: temp.path + "/\(relative)/empty", withIntermediateDirectories: true)
        return temp.path + "/" + relative
    }

    func contents(_ path: String) throws -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: path))?.sorted() ?? []
    }

    @Test func storingTheSameOutputTwiceKeepsOneCopy() async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let first = try await store.store(directory: try makeOutput(in: temp))
        // The same contents elsewhere have the same address.
        let second = try await store.store(directory: try makeOutput(in: temp, at: "elsewhere/output"))

        #expect(first == second)
        #expect(first.digest.hasPrefix("sha256:") && first.digest.count == 7 + 64)
        #expect(first.location == temp.path + "/state/artifacts/sha256/" + first.digest.dropFirst(7))
        #expect(try contents(temp.path + "/state/artifacts/sha256") == [String(first.digest.dropFirst(7))])
        // No temporary folder is left next to `sha256`.
        #expect(try contents(temp.path + "/state/artifacts") == ["sha256"])

        // The copy is complete, keeps the execute bit, and is read-only.
        #expect(try contents(first.location) == ["empty", "meta", "model.bin", "predict.sh"])
        #expect(try fileBytes(first.location + "/model.bin") == garbage(count: 3000))
        #expect(try fileBytes(first.location + "/meta/config.json") == Data(#"{"lr": 0.1}"#.utf8))
        let mode = { (name: String) in
            try (FileManager.default.attributesOfItem(atPath: first.location + "/" + name)[.posixPermissions] as? NSNumber)?.intValue
        }
        // Read-only and private: 0500 / 0400 whatever the umask, folders 0700.
        #expect(try mode("predict.sh") == 0o500)
        #expect(try mode("model.bin") == 0o400)
        #expect(try mode("meta") == 0o700)
        #expect(try mode("") == 0o700)

        try store.verify(digest: first.digest)
        #expect(try await store.open(digest: first.digest) == first.location)
    }

    enum Variation: String, CaseIterable, CustomTestStringConvertible {
        case contents, executableBit, fileName, emptyFolder
        var testDescription: String { rawValue }
    }

    @Test(arguments: Variation.allCases)
    func theDigestCoversContentsModesAndNames(_ variation: Variation) async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let output = try makeOutput(in: temp)
        let original = try await store.store(directory: output)
        switch variation {
        case .contents: try temp.write("output/meta/config.json", #"{"lr": 0.2}"#)
        case .executableBit: try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: output + "/model.bin")
        case .fileName: try FileManager.default.moveItem(atPath: output + "/model.bin", toPath: output + "/model2.bin")
        case .emptyFolder: try FileManager.default.removeItem(atPath: output + "/empty")
        }
        let changed = try await store.store(directory: output)
        #expect(changed.digest != original.digest)
        #expect(try contents(temp.path + "/state/artifacts/sha256").count == 2)
    }

    enum Tampering: String, CaseIterable, CustomTestStringConvertible {
        case rewriteFile, addFile, removeFile, makeExecutable, addSymlink
        var testDescription: String { rawValue }
    }

    @Test(arguments: Tampering.allCases)
    func anArtifactChangedInPlaceIsRefused(_ tampering: Tampering) async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let stored = try await store.store(directory: try makeOutput(in: temp))
        let fm = FileManager.default
        switch tampering {
        case .rewriteFile:
            try fm.setAttributes([.posixPermissions: 0o644], ofItemAtPath: stored.location + "/model.bin")
            var bytes = try fileBytes(stored.location + "/model.bin")
            bytes[100] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: stored.location + "/model.bin"))
        case .addFile: try Data("x".utf8).write(to: URL(fileURLWithPath: stored.location + "/empty/extra"))
        case .removeFile: try fm.removeItem(atPath: stored.location + "/meta/config.json")
        case .makeExecutable: try fm.setAttributes([.posixPermissions: 0o555], ofItemAtPath: stored.location + "/model.bin")
        case .addSymlink: try fm.createSymbolicLink(atPath: stored.location + "/link", withDestinationPath: "model.bin")
        }
        let error = #expect(throws: StoreError.self) { try store.verify(digest: stored.digest) }
        #expect(error?.code == .artifactModified)
        #expect(error?.message.contains("artifact \(stored.digest) at '\(stored.location)' was changed after it was stored") == true)
        let openError = await #expect(throws: StoreError.self) { try await store.open(digest: stored.digest) }
        #expect(openError?.code == .artifactModified)
    }

    @Test func aSymlinkInTheOutputIsRefusedAndNothingIsStored() async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let output = try makeOutput(in: temp)
        try FileManager.default.createSymbolicLink(atPath: output + "/meta/weights", withDestinationPath: "../model.bin")
        let error = await #expect(throws: StoreError.self) { try await store.store(directory: output) }
        #expect(error?.code == .unsupportedEntry)
        #expect(error?.message.contains("'\(output)/meta/weights' is a symlink") == true)
        #expect(try contents(temp.path + "/state/artifacts/sha256") == [])
        #expect(try contents(temp.path + "/state/artifacts").allSatisfy { !$0.hasPrefix(".tmp-") })
    }

    /// An output folder replaced by a symlink (to a folder full of files) stores nothing: the
    /// link's target is not the training's output.
    @Test func anOutputFolderThatIsASymlinkIsRefused() async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let elsewhere = try makeOutput(in: temp, at: "elsewhere")
        try FileManager.default.createSymbolicLink(atPath: temp.path + "/output", withDestinationPath: elsewhere)
        let error = await #expect(throws: StoreError.self) { try await store.store(directory: temp.path + "/output") }
        #expect(error?.code == .unsupportedEntry)
        #expect(error?.message.contains("training output '\(temp.path)/output' is a symlink, not a folder") == true,
                "\(String(describing: error))")
        #expect(try contents(temp.path + "/state/artifacts/sha256") == [])
    }

    /// Output names come from the step: one that holds a secret is refused (names are kept in
    /// the state folder), and no message quotes the secret or a raw control character.
    @Test func anOutputNameHoldingASecretIsRefusedAndNeverQuoted() async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let secret = "canary-in-a-name"
        let scrubber = SecretScrubber(secrets: [secret])
        let output = try makeOutput(in: temp)
        try temp.write("output/meta/weights-\(secret).bin", "w")
        let error = await #expect(throws: StoreError.self) { try await store.store(directory: output, scrubber: scrubber) }
        #expect(error?.code == .unsupportedEntry)
        #expect(error?.message.contains("'\(output)/meta/weights-[secret].bin' has the value of a secret in its name") == true,
                "\(String(describing: error))")
        #expect(error.map { !"\($0)".contains(secret) && !$0.path.contains(secret) } == true)
        #expect(try contents(temp.path + "/state/artifacts/sha256") == [])

        let other = try makeOutput(in: temp, at: "other")
        try FileManager.default.createSymbolicLink(atPath: other + "/\(secret)\nlink", withDestinationPath: "model.bin")
        let link = await #expect(throws: StoreError.self) { try await store.store(directory: other, scrubber: SecretScrubber(secrets: ["unrelated"])) }
        #expect(link?.message.contains("'\(other)/\(secret)\\nlink' is a symlink") == true, "\(String(describing: link))")
    }

    /// A copy that fails halfway (here: the copy's paths grow past PATH_MAX while the source's
    /// do not, which fails even for root) leaves no temporary folder behind.
    @Test func aFailedCopyLeavesNoTemporaryFolder() async throws {
        let temp = try TemporaryDirectory()
        let long = String(repeating: "d", count: 200)
        // The state folder's path is much longer than the output's.
        let stateDir = temp.path + "/\(long)/\(long)/\(long)"
        let store = LocalArtifactStore(stateDirectory: stateDir)
        try temp.write("o/first.bin", "first")
        // A file whose full path stays under PATH_MAX (4096) here but not inside the store.
        var folders: [String] = []
        while (temp.path + "/o/" + folders.joined(separator: "/")).utf8.count < 3800 {
            folders.append(long)
        }
        try temp.write("o/" + folders.joined(separator: "/") + "/deep.bin", "deep")

        let error = await #expect(throws: StoreError.self) { try await store.store(directory: temp.path + "/o") }
        #expect(error?.code == .fileSystem)
        #expect(try contents(stateDir + "/artifacts") == ["sha256"])
        #expect(try contents(stateDir + "/artifacts/sha256") == [])
    }

    @Test(arguments: ["sha256:../../etc", "sha256:" + String(repeating: "A", count: 64), "md5:abc", ""])
    func aMalformedDigestIsRefused(_ digest: String) async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path)
        let error = await #expect(throws: StoreError.self) { try await store.open(digest: digest) }
        #expect(error?.code == .invalidDigest)
    }

    @Test func aMissingArtifactIsReported() throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path)
        let digest = "sha256:" + String(repeating: "0", count: 64)
        let error = #expect(throws: StoreError.self) { try store.verify(digest: digest) }
        #expect(error?.code == .artifactMissing)
    }

    /// A process killed while it stored an output leaves its temporary copy; the next store
    /// removes the copies of processes that are gone, and leaves a live one's alone.
    @Test func halfMadeCopiesOfGoneProcessesAreRemoved() async throws {
        let temp = try TemporaryDirectory()
        let store = LocalArtifactStore(stateDirectory: temp.path + "/state")
        let exited = Process()
        exited.executableURL = URL(fileURLWithPath: "/bin/true")
        try exited.run()
        exited.waitUntilExit()
        let dead = temp.path + "/state/artifacts/.tmp-\(exited.processIdentifier)-42"
        let live = temp.path + "/state/artifacts/.tmp-\(getppid())-7"
        try temp.write("state/artifacts/.tmp-\(exited.processIdentifier)-42/part.bin", garbage(count: 100))
        try temp.write("state/artifacts/.tmp-\(getppid())-7/part.bin", garbage(count: 100))
        _ = try await store.store(directory: try makeOutput(in: temp))
        #expect(!FileManager.default.fileExists(atPath: dead))
        #expect(FileManager.default.fileExists(atPath: live))
    }
}
