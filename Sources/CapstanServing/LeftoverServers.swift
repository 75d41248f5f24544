import CapstanSystem
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Model servers that a killed agent left running. An agent stops its servers when it shuts down,
/// but one killed with SIGKILL (or by the OOM killer) cannot: its servers, each in a process group
/// of its own, go on holding their ports and memory. So each agent records itself in
/// `<state>/serving/agent.json` (pid, process start time, boot id) and gives each server the
/// variable `CAPSTAN_AGENT_ID=<boot id>`; the next agent on the same state folder, finding that
/// the recorded agent is gone (no such pid, a zombie, or a pid now used by another process), stops
/// every process that carries the recorded id. A random 128-bit id never matches a stranger.
enum LeftoverServers {
    /// The variable each model server gets.
    static let marker = "CAPSTAN_AGENT_ID"

    struct Record: Codable, Equatable {
        var pid: Int64
        var processStart: Int64?
        var bootID: String

        enum CodingKeys: String, CodingKey {
            case pid
            case processStart = "process_start"
            case bootID = "boot_id"
        }
    }

    /// One server stopped, for the agent's log.
    struct Stopped: Equatable {
        var pid: Int32
        var deployment: String
        var version: Int
    }

    static func recordPath(servingDirectory: String) -> String { servingDirectory + "/agent.json" }

    /// Stops what the agent recorded in `servingDirectory` left running, when that agent is gone,
    /// then records this one (`bootID`, this process). Returns the servers stopped and the pid of
    /// the agent that left them.
    static func takeOver(servingDirectory: String, bootID: String) -> (stopped: [Stopped], previousAgent: Int64?) {
        let path = recordPath(servingDirectory: servingDirectory)
        var stopped: [Stopped] = []
        var previous: Int64?
        if let data = FileManager.default.contents(atPath: path),
           let record = try? JSONDecoder().decode(Record.self, from: data), record.bootID != bootID {
            let gone: Bool
            if record.pid == Int64(getpid()) {
                // An earlier agent of this very process (tests): it stopped its servers itself.
                gone = false
            } else if case .gone = LocalProcess.liveness(pid: record.pid, startTime: record.processStart) {
                gone = true
            } else {
                gone = false
            }
            if gone {
                previous = record.pid
                stopped = stop(bootID: record.bootID)
            }
        }
        let record = Record(pid: Int64(getpid()), processStart: LocalProcess.currentStartTime, bootID: bootID)
        if let data = try? JSONEncoder().encode(record) {
            let temporary = path + ".tmp-\(getpid())"
            if FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) {
                _ = rename(temporary, path)
            }
        }
        return (stopped, previous)
    }

    /// Forgets this agent's record (after a clean shutdown, its servers are stopped).
    static func release(servingDirectory: String, bootID: String) {
        let path = recordPath(servingDirectory: servingDirectory)
        guard let data = FileManager.default.contents(atPath: path),
              let record = try? JSONDecoder().decode(Record.self, from: data), record.bootID == bootID else { return }
        unlink(path)
    }

    /// SIGKILL to every process whose environment has `CAPSTAN_AGENT_ID=<bootID>` (and to its
    /// process group when it leads one, as a model server does).
    static func stop(bootID: String) -> [Stopped] {
        let wanted = "\(marker)=\(bootID)"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var stopped: [Stopped] = []
        for entry in entries {
            guard let pid = Int32(entry), pid > 1, pid != getpid(),
                  let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            let variables = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard variables.contains(wanted) else { continue }
            func value(_ name: String) -> String? {
                variables.first { $0.hasPrefix(name + "=") }.map { String($0.dropFirst(name.count + 1)) }
            }
            if getpgid(pid) == pid { _ = kill(-pid, SIGKILL) }
            _ = kill(pid, SIGKILL)
            stopped.append(Stopped(pid: pid, deployment: value("CAPSTAN_DEPLOYMENT") ?? "?",
                                   version: value("CAPSTAN_VERSION").flatMap { Int($0) } ?? 0))
        }
        return stopped
    }
}
