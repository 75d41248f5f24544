import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The agent's desired state: every endpoint spec it was given, in
/// `<state>/serving/endpoints.json`, rewritten atomically (temporary file, fsync, rename, fsync of
/// the folder) on every change and read at start.
struct EndpointStore: Sendable {
    static let formatVersion = 1

    let path: String

    init(servingDirectory: String) {
        path = servingDirectory + "/endpoints.json"
    }

    private struct Document: Encodable {
        var formatVersion: Int
        var endpoints: [EndpointSpec]
    }

    private struct LoadedDocument: Decodable {
        var formatVersion: Int
        var endpoints: [EndpointSpecDocument]
    }

    /// The saved specs; none when the file does not exist. A damaged file is an error naming it:
    /// the agent never starts over it with nothing.
    func load() throws(ServingAgentError) -> [EndpointSpec] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ServingAgentError(message: "cannot read '\(path)' (\(error.localizedDescription)); fix its permissions, then start the agent again")
        }
        let document: LoadedDocument
        do {
            document = try JSONDecoder().decode(LoadedDocument.self, from: data)
        } catch let error as DecodingError {
            throw damaged(EndpointSpecDocument.describe(error))
        } catch {
            throw damaged("\(error)")
        }
        guard document.formatVersion == Self.formatVersion else {
            throw ServingAgentError(message: "'\(path)' has format version \(document.formatVersion); this agent reads version \(Self.formatVersion). Use the capstan that wrote it")
        }
        var specs: [EndpointSpec] = []
        var names: Set<String> = []
        for item in document.endpoints {
            let spec = item.spec
            let problems = EndpointValidation.problems(spec)
            if !problems.isEmpty { throw damaged("endpoint '\(spec.deployment)': " + problems.joined(separator: "; ")) }
            if !names.insert(spec.deployment).inserted { throw damaged("endpoint '\(spec.deployment)' appears twice") }
            specs.append(spec)
        }
        return specs
    }

    private func damaged(_ detail: String) -> ServingAgentError {
        ServingAgentError(message: "'\(path)' is damaged (\(detail)); the agent will not start over it. "
            + "Fix the file, or move it away to start with no endpoints (the reconciler then applies them again)")
    }

    /// Replaces the file with `specs` (sorted by deployment).
    func save(_ specs: [EndpointSpec]) throws(ServingAgentError) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data: Data
        do {
            data = try encoder.encode(Document(formatVersion: Self.formatVersion, endpoints: specs.sorted { $0.deployment < $1.deployment }))
        } catch {
            throw ServingAgentError(message: "cannot encode the endpoints (\(error))")
        }
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw saveFailure("cannot create '\(temporary)'", errno) }
        var failure: Int32 = 0
        data.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                offset += n
            }
        }
        if failure == 0, fsync(fd) != 0 { failure = errno }
        close(fd)
        if failure != 0 {
            _ = unlink(temporary)
            throw saveFailure("cannot write '\(temporary)'", failure)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            _ = unlink(temporary)
            throw saveFailure("cannot rename '\(temporary)' to '\(path)'", code)
        }
        let dirFD = open(directory, O_RDONLY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }

    private func saveFailure(_ what: String, _ code: Int32) -> ServingAgentError {
        ServingAgentError(message: "\(what) (\(String(cString: strerror(code)))); the change was not applied")
    }
}

/// A failure of the agent itself (its state, its listeners), with a message for people.
public struct ServingAgentError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
