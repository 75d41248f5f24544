#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Process groups left behind by an earlier run of Capstan (found through the journal after a
/// crash). Every step runs as the leader of its own group, so the group id is the pid recorded by
/// `StepRunner.run`'s `started` callback. Linux only: members are found through `/proc`.
public enum ProcessGroups {
    /// Whether group `pgid` has a member that is not a zombie. Zombies are ignored: they cannot
    /// run, and in a container whose init does not reap orphans they linger forever.
    public static func isAlive(_ pgid: Int32) -> Bool {
        guard pgid > 1 else { return false }
        guard let processes = processTable() else {
            // No /proc: probe the group; EPERM means it exists but belongs to someone else.
            return sendToGroup(pgid, 0) == 0 || errno == EPERM
        }
        return processes.contains { $0.group == pgid && !$0.isZombie }
    }

    /// Sends SIGKILL to group `pgid`, but only when one of its live members carries
    /// `environmentMarker` (`NAME=value`, read from `/proc/<pid>/environ`), so that a group id
    /// recycled by somebody else's processes is never killed. With a nil marker the check is
    /// skipped; pass nil only for a group this process started itself.
    ///
    /// Returns true when the signal was sent; false when the group has no live member, no member
    /// carries the marker, or the signal could not be sent. Never kills this process's own group.
    @discardableResult
    public static func kill(_ pgid: Int32, environmentMarker: (name: String, value: String)?) -> Bool {
        guard pgid > 1, pgid != getpgrp() else { return false }
        if let marker = environmentMarker {
            guard let processes = processTable() else { return false }
            let entry = Array("\(marker.name)=\(marker.value)".utf8)
            let marked = processes.contains { process in
                process.group == pgid && !process.isZombie && environment(of: process.pid).contains(entry)
            }
            guard marked else { return false }
        } else {
            guard isAlive(pgid) else { return false }
        }
        return sendToGroup(pgid, SIGKILL) == 0
    }

    // MARK: - /proc

    struct ProcessEntry: Hashable {
        var pid: Int32
        var group: Int32
        var isZombie: Bool
    }

    /// Every process in `/proc` with its group, or nil when `/proc` cannot be read.
    static func processTable() -> [ProcessEntry]? {
        guard let directory = opendir("/proc") else { return nil }
        defer { closedir(directory) }
        var entries: [ProcessEntry] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard let pid = Int32(name), let stat = readFile("/proc/\(pid)/stat"),
                  let parsed = parseStat(stat) else { continue }
            entries.append(ProcessEntry(pid: pid, group: parsed.group, isZombie: parsed.state == "Z" || parsed.state == "X"))
        }
        return entries
    }

    /// State (field 3) and process group (field 5) from the text of `/proc/<pid>/stat`. The
    /// command name (field 2) is in parentheses and may itself contain spaces and parentheses,
    /// so the fields are counted from the last `)`.
    static func parseStat(_ bytes: [UInt8]) -> (state: Character, group: Int32)? {
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = bytes[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count >= 3, let state = fields[0].first,
              let group = Int32(String(decoding: fields[2], as: UTF8.self)) else { return nil }
        return (Character(Unicode.Scalar(state)), group)
    }

    /// The `NAME=value` entries of a process's initial environment; empty when unreadable
    /// (another user's process, or it has exited).
    static func environment(of pid: Int32) -> [[UInt8]] {
        guard let bytes = readFile("/proc/\(pid)/environ") else { return [] }
        return bytes.split(separator: 0).map(Array.init)
    }

    /// Reads a whole file (`/proc` files report size 0, so read until end of file).
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { return result }
            result.append(contentsOf: buffer[..<n])
        }
    }
}

/// `kill(-pgid, signal)`; at file scope because `ProcessGroups.kill` hides the C function inside
/// the enum.
func sendToGroup(_ pgid: Int32, _ signal: Int32) -> Int32 {
    precondition(pgid > 1, "refusing to signal process group \(pgid)")
    return kill(-pgid, signal)
}
