#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The log files of model servers: `<state>/serving/logs/<deployment>-v<N>-r<i>.log`, appended to
/// by the server itself (its stdout and stderr), kept under `limit` bytes by rotating to `.1`.
///
/// A running server holds its log open, so rotation copies the file to `.1` and truncates it in
/// place (the server writes with O_APPEND and continues at the new end); a few lines written
/// between the copy and the truncation can be lost.
enum ServerLogs {
    static let defaultLimit: Int64 = 10 * 1024 * 1024

    static func path(directory: String, deployment: String, version: Int, replica: Int) -> String {
        "\(directory)/\(deployment)-v\(version)-r\(replica).log"
    }

    static func size(_ path: String) -> Int64? {
        var info = stat()
        return stat(path, &info) == 0 ? Int64(info.st_size) : nil
    }

    /// Before a start: a log at the limit is moved to `.1`.
    static func rotateBeforeStart(_ path: String, limit: Int64) {
        guard let size = size(path), size >= limit else { return }
        _ = rename(path, path + ".1")
    }

    /// While the server runs: copy to `.1`, truncate in place.
    static func rotateIfNeeded(_ path: String, limit: Int64) {
        guard let size = size(path), size >= limit else { return }
        let source = open(path, O_RDONLY | O_CLOEXEC)
        guard source >= 0 else { return }
        defer { close(source) }
        let temporary = path + ".1.tmp"
        let target = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard target >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var ok = true
        while ok {
            let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            if n <= 0 { ok = n == 0; break }
            let written = buffer.withUnsafeBytes { write(target, $0.baseAddress, n) }
            if written != n { ok = false }
        }
        close(target)
        guard ok, rename(temporary, path + ".1") == 0 else {
            _ = unlink(temporary)
            return
        }
        _ = truncate(path, 0)
    }

    /// The last non-empty line of the log (at most 300 characters), for error messages.
    static func lastLine(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0 else { return nil }
        let count = Int(min(size, 4096))
        _ = lseek(fd, off_t(size) - off_t(count), SEEK_SET)
        var buffer = [UInt8](repeating: 0, count: count)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, count) }
        guard n > 0 else { return nil }
        let text = String(decoding: buffer[0..<n], as: UTF8.self)
        guard let line = text.split(whereSeparator: \.isNewline).last(where: { !$0.allSatisfy(\.isWhitespace) }) else { return nil }
        let trimmed = line.trimmingCharacters(in: " \t\r")
        return trimmed.count > 300 ? "…" + String(trimmed.suffix(300)) : trimmed
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = self[...]
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}
