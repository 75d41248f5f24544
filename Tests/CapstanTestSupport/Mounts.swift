import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file system mounted for one test: a small tmpfs (a disk that fills up for real: ENOSPC) or a
/// read-only bind mount of a folder (EROFS, which root cannot bypass the way it bypasses mode
/// bits). Needs root and mount(8); CI runs as root on a Debian 12 machine, where both work. Where
/// the system refuses, `TestMount.unavailable` says why and the tests that need a mount are
/// skipped with that reason. Unmounted (lazily, so open files cannot keep it) on deinit.
final class TestMount {
    /// The mount point.
    let path: String
    private let base: String

    /// Why mounting is not possible here, nil when it is (tried once, with a 64 KiB tmpfs).
    static let unavailable: String? = {
        guard getuid() == 0 else { return "mounting a small file system needs root (tests run as uid \(getuid()))" }
        do {
            _ = try TestMount(tmpfsKiB: 64)
            return nil
        } catch {
            return "cannot mount a tmpfs here: \(error)"
        }
    }()

    static var available: Bool { unavailable == nil }

    /// A tmpfs of `kib` KiB.
    init(tmpfsKiB kib: Int) throws {
        base = try Self.makeBase()
        path = base + "/mnt"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Self.mount(["-t", "tmpfs", "-o", "size=\(kib)k,mode=0755", "tmpfs", path], base: base)
    }

    /// `source` again at another path, read-only.
    init(readOnlyViewOf source: String) throws {
        base = try Self.makeBase()
        path = base + "/mnt"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        try Self.mount(["--bind", source, path], base: base)
        do {
            // util-linux before 2.27 ignores `ro` on the bind itself: remount.
            try Self.mount(["-o", "remount,bind,ro", path], base: base)
        } catch {
            _ = try? Shell.run("umount", ["-l", path])
            try? FileManager.default.removeItem(atPath: base)
            throw error
        }
        if access(path, W_OK) == 0, FileManager.default.createFile(atPath: path + "/.probe", contents: Data()) {
            unlink(path + "/.probe")
            _ = try? Shell.run("umount", ["-l", path])
            try? FileManager.default.removeItem(atPath: base)
            throw FixtureError("the bind mount of \(source) at \(path) is still writable")
        }
    }

    deinit {
        _ = try? Shell.run("umount", ["-l", path])
        try? FileManager.default.removeItem(atPath: base)
    }

    /// Fills the file system with one file until it is full, leaving at most `bytes` free.
    func fill(leaving bytes: Int = 0) throws {
        let file = path + "/.filler-\(UUID().uuidString)"
        let fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { throw FixtureError("cannot create \(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0x5A, count: 4096)
        while freeBytes() > bytes {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, min($0.count, max(1, freeBytes() - bytes))) }
            if n <= 0 { break }
        }
    }

    /// Bytes free for writing.
    func freeBytes() -> Int {
        var info = statvfs()
        guard statvfs(path, &info) == 0 else { return 0 }
        return Int(info.f_bavail) * Int(info.f_frsize)
    }

    private static func makeBase() throws -> String {
        let base = URL(fileURLWithPath: NSTemporaryDirectory()).resolvingSymlinksInPath()
            .appendingPathComponent("capstan-mount-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        return base
    }

    private static func mount(_ arguments: [String], base: String) throws {
        let result = try Shell.run("mount", arguments)
        guard result.status == 0 else {
            try? FileManager.default.removeItem(atPath: base)
            throw FixtureError("mount \(arguments.joined(separator: " ")) failed (\(result.status)): \(result.stderr)")
        }
    }
}
