import CapstanSystem
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The state folder's files are private to the user running Capstan: they hold training logs,
/// metrics and the registry. The folder is created 0700 and what Capstan writes in it 0600 (0700
/// for folders), whatever the umask; an existing folder that other users can enter is reported.
public enum StateFolder {
    /// Mode of the state folder and of the folders Capstan creates in it.
    public static let folderMode: mode_t = PrivateFiles.folderMode
    /// Mode of the files Capstan creates in it (the database, logs).
    public static let fileMode: mode_t = PrivateFiles.fileMode

    /// Creates `path` when missing (its missing parents with the usual mode, the folder itself
    /// 0700). Returns warnings for people: an existing folder that every user of the machine may
    /// read or enter (its "other" permission bits are set). Throws a `StoreError` naming the cause (full disk, read-only, permission).
    @discardableResult
    public static func prepare(_ path: String) throws -> [String] {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else {
                throw StoreError(code: .fileSystem,
                                 message: "the state folder '\(path)' is not a folder; point --state-dir at a folder (it is created when missing)",
                                 path: path)
            }
            // Group access is the owner's choice (a container volume shared with an fsGroup, an
            // operators' group); access for every other user is not.
            return PrivateFiles.exposure(of: path, holding: "training logs, metrics and the model registry").map { [$0] } ?? []
        }
        try makeFolder(path, mode: folderMode, what: "create the state folder")
        return []
    }

    /// Creates `path` and its missing parents: the parents with `parentsMode` (by default 0777
    /// less the umask, like `mkdir -p`), `path` itself with `mode` (`PrivateFiles.makeFolder`),
    /// its failure as a `StoreError` that names the cause and what to do.
    public static func makeFolder(_ path: String, mode: mode_t = folderMode, parentsMode: mode_t = 0o777,
                                  what: String = "create the folder") throws {
        do {
            try PrivateFiles.makeFolder(path, mode: mode, parentsMode: parentsMode, what: what)
        } catch {
            let parent = (error.path as NSString).deletingLastPathComponent
            throw FileSystemFailure.error(what, path: path, folder: parent.isEmpty ? "/" : parent, errno: error.errno)
        }
    }

    /// Creates the empty file `path` with mode 0600 when it does not exist, so that a program that
    /// opens it next (SQLite, which also gives its `-wal` and `-shm` files the database's mode)
    /// does not create it with the umask's mode.
    static func createPrivateFile(_ path: String, what: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, fileMode)
        if fd >= 0 {
            fchmod(fd, fileMode)
            close(fd)
            return
        }
        let code = systemErrno()
        if code == EEXIST { return }
        throw FileSystemFailure.error(what, path: path, folder: (path as NSString).deletingLastPathComponent, errno: code)
    }

    /// Runs `body` holding an exclusive `flock` on the folder `path`, so that two processes
    /// opening a fresh state folder at once never inspect, create or migrate the database at the
    /// same time. Waits up to `timeout` seconds for another process to finish.
    static func exclusively<T>(_ path: String, timeout: TimeInterval = 60, _ body: () throws -> T) throws -> T {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            throw FileSystemFailure.error("open the state folder", path: path, folder: path, errno: systemErrno())
        }
        defer { close(fd) }
        let deadline = Date().addingTimeInterval(timeout)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = systemErrno()
            guard code == EWOULDBLOCK || code == EINTR else {
                throw FileSystemFailure.error("lock the state folder", path: path, folder: path, errno: code)
            }
            if Date() >= deadline {
                throw StoreError(code: .locked,
                                 message: "another Capstan process has been opening the state folder '\(path)' for \(Int(timeout))s (it holds a lock on the folder while it checks and upgrades capstan.db); wait for it to finish, or stop it",
                                 path: path)
            }
            usleep(10_000)
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }
}
