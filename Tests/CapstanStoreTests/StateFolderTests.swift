import CapstanCore
@testable import CapstanStore
@testable import CapstanTestSupport
import Foundation
import GRDB
import Testing

/// The state folder is private, and a file system that is full or read-only is named as such.
@Suite(.serialized) struct StateFolderTests {
    static func mode(_ path: String) throws -> Int {
        try #require((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue)
    }

    /// Under umask 022 (the usual one), which would make files 0644 and folders 0755.
    @Test func theFolderTheDatabaseAndArtifactsArePrivateWhateverTheUmask() async throws {
        let old = umask(0o022)
        defer { umask(old) }
        let temp = try TemporaryDirectory()
        let state = temp.path + "/parent/state"
        let database = try StateDatabase(stateDirectory: state)
        #expect(database.warnings == [])
        try await database.write("test") { db in try insertModel(db, "churn") }
        #expect(try Self.mode(state) == 0o700)
        // A parent created on the way is an ordinary folder.
        #expect(try Self.mode(temp.path + "/parent") == 0o755)
        for file in ["capstan.db", "capstan.db-wal", "capstan.db-shm"] {
            #expect(try Self.mode(state + "/" + file) == 0o600, "\(file)")
        }
        let output = temp.path + "/output"
        try FileManager.default.createDirectory(atPath: output + "/sub", withIntermediateDirectories: true)
        try Data("weights".utf8).write(to: URL(fileURLWithPath: output + "/sub/model.bin"))
        let stored = try await LocalArtifactStore(stateDirectory: state).store(directory: output)
        for folder in [state + "/artifacts", state + "/artifacts/sha256", stored.location, stored.location + "/sub"] {
            #expect(try Self.mode(folder) == 0o700, "\(folder)")
        }
        #expect(try Self.mode(stored.location + "/sub/model.bin") == 0o400)
    }

    @Test func anExistingFolderEveryUserCanReadIsReported() throws {
        let temp = try TemporaryDirectory()
        let open = temp.path + "/open"
        try FileManager.default.createDirectory(atPath: open, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        chmod(open, 0o755)
        let warned = try StateDatabase(stateDirectory: open)
        #expect(warned.warnings == ["the state folder '\(open)' can be read by every user of this machine (mode 755); it holds training logs, metrics and the model registry. Run `chmod o-rwx '\(open)'` (or `chmod 700`) to make it private"])
        // Left as it was: the warning says what to do.
        #expect(try Self.mode(open) == 0o755)
        // Group access is the owner's choice (a volume shared through a group).
        let grouped = temp.path + "/grouped"
        try FileManager.default.createDirectory(atPath: grouped, withIntermediateDirectories: false)
        chmod(grouped, 0o750)
        #expect(try StateDatabase(stateDirectory: grouped).warnings == [])
    }

    @Test func aStateFolderThatIsAFileIsRefused() throws {
        let temp = try TemporaryDirectory()
        let file = try temp.write("state", "not a folder")
        let error = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: file) }
        #expect(error?.message.contains("the state folder '\(file)' is not a folder") == true)
    }

    // MARK: - Full and read-only file systems (real mounts)

    @Test(.enabled(if: TestMount.available, "\(TestMount.unavailable ?? "")"))
    func aReadOnlyStateFolderIsNamedWithItsCause() throws {
        let temp = try TemporaryDirectory()
        let source = temp.path + "/source"
        do {
            let database = try StateDatabase(stateDirectory: source + "/state")
            try database.write("test") { db in try insertModel(db, "churn") }
            try database.close()
        }
        try FileManager.default.createDirectory(atPath: source + "/empty", withIntermediateDirectories: false)
        let view = try TestMount(readOnlyViewOf: source)

        // An existing state database.
        let existing = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: view.path + "/state") }
        #expect(existing?.code == .readOnlyFileSystem, "\(String(describing: existing))")
        #expect(existing?.message.contains("'\(view.path)/state/capstan.db': Read-only file system") == true, "\(existing?.message ?? "")")
        #expect(existing?.message.contains("remount it read-write, or point --state-dir at a writable folder") == true)

        // A folder with no database yet.
        let fresh = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: view.path + "/empty") }
        #expect(fresh?.code == .readOnlyFileSystem)
        #expect(fresh?.message.contains("cannot create the state database '\(view.path)/empty/capstan.db': Read-only file system") == true,
                "\(fresh?.message ?? "")")

        // No state folder yet.
        let missing = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: view.path + "/new/state") }
        #expect(missing?.code == .readOnlyFileSystem)
        #expect(missing?.message.contains("cannot create the state folder '\(view.path)/new/state': Read-only file system") == true,
                "\(missing?.message ?? "")")
    }

    @Test(.enabled(if: TestMount.available, "\(TestMount.unavailable ?? "")"))
    func aFullDiskIsNamedWhenOpeningTakingTheLockAndStoringAnArtifact() async throws {
        // Full before the database exists.
        let full = try TestMount(tmpfsKiB: 256)
        try full.fill()
        let opening = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: full.path + "/state") }
        #expect(opening?.code == .diskFull, "\(String(describing: opening))")
        #expect(opening?.message.contains("'\(full.path)/state/capstan.db': No space left on device") == true, "\(opening?.message ?? "")")
        #expect(opening?.message.contains("The file system of '\(full.path)/state' is full") == true)

        // Full once the database is there: taking the lock writes.
        let mount = try TestMount(tmpfsKiB: 1024)
        let database = try StateDatabase(stateDirectory: mount.path + "/state")
        try mount.fill()
        let lock = StateLock(database: database)
        let locking = #expect(throws: StoreError.self) { try lock.tryAcquire(holder: "h", command: "capstan apply", ttl: 60) }
        #expect(locking?.code == .diskFull, "\(String(describing: locking))")
        #expect(locking?.message.contains("cannot take the lock 'apply' in the state database '\(mount.path)/state/capstan.db': No space left on device") == true,
                "\(locking?.message ?? "")")

        // Storing a training output bigger than what is left.
        let temp = try TemporaryDirectory()
        try temp.write("output/model.bin", garbage(count: 300_000))
        let small = try TestMount(tmpfsKiB: 128)
        let storing = await #expect(throws: StoreError.self) {
            try await LocalArtifactStore(stateDirectory: small.path).store(directory: temp.path + "/output")
        }
        #expect(storing?.code == .diskFull)
        #expect(storing.map { FileSystemFailure.isDiskFull($0) } == true)
        // For the loop, a full disk is transient, whichever write found it.
        for error in [opening, locking, storing] {
            #expect(error?.failure == .transient(.diskFull, error?.message ?? ""), "\(String(describing: error))")
        }
        #expect(storing?.message.contains("cannot store an artifact file at '\(small.path)/artifacts/") == true, "\(storing?.message ?? "")")
        #expect(storing?.message.contains("No space left on device") == true)
        // Nothing half-copied is left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: small.path + "/artifacts") == ["sha256"])
    }
}

@Suite struct LeaseMigrationTests {
    /// A lease row written before generations existed (every schema since v1 has `locks`) is read
    /// after the upgrade with generation 0; the next acquisition gets 1 and the old holder is
    /// fenced out.
    @Test(arguments: StateDatabase.knownMigrations.dropLast())
    func aLeaseFromAnEarlierSchemaIsUpgradedAndTheNextAcquisitionFencesItOut(_ schema: String) throws {
        let temp = try TemporaryDirectory()
        let path = temp.path + "/capstan.db"
        try StateDatabaseTests.writeOldDatabase(at: path, schema: schema)
        let queue = try DatabaseQueue(path: path)
        try queue.write { db in
            try db.execute(sql: """
                INSERT INTO locks (name, holder, host, pid, command, started_at, expires_at)
                VALUES ('apply', 'old-holder', 'elsewhere', 4242, 'capstan apply (old)', 1, 2)
                """)
        }
        try queue.close()
        let lock = StateLock(database: try StateDatabase(stateDirectory: temp.path))
        let old = try #require(try lock.lease(id: "old-holder"))
        #expect(old.generation == 0)
        #expect(old.processStart == nil)
        let acquired = try lock.tryAcquire(holder: "new", command: "capstan apply", ttl: 60)
        #expect(acquired.lease.generation == 1)
        #expect(acquired.tookOver?.holder == "old-holder")
        #expect(throws: StoreError.self) { try lock.check(old.fence) }
    }
}
