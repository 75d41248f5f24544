import AsyncHTTPClient
import Foundation
import NIOCore
import _NIOFileSystem

// Artifacts through the tracking server's proxy (`mlflow server --serve-artifacts`, the default):
// `PUT`/`GET /api/2.0/mlflow-artifacts/artifacts/<path>` and `GET …/artifacts?path=<folder>`.

/// A place in the server's artifact proxy: the path below `/api/2.0/mlflow-artifacts/artifacts/`,
/// such as `1/<run id>/artifacts/model`. Its `uri` (`mlflow-artifacts:/1/<run>/artifacts/model`)
/// is what `createModelVersion(source:)` takes.
public struct MLflowArtifactLocation: Hashable, Sendable, CustomStringConvertible {
    /// Relative, `/`-separated, without `.`/`..` or empty parts.
    public let path: String

    /// A run's `artifact_uri` (`mlflow-artifacts:/1/<run>/artifacts`). Other schemes (`s3://`,
    /// a local path) mean the server does not proxy this run's artifacts: an error that says so.
    public init(artifactURI: String) throws(MLflowArtifactPathError) {
        guard artifactURI.hasPrefix("mlflow-artifacts:") else { throw .notProxied(artifactURI) }
        var rest = artifactURI.dropFirst("mlflow-artifacts:".count)
        if rest.hasPrefix("//") {
            // mlflow-artifacts://host:port/path names a server; only an empty authority is the same server.
            rest = rest.dropFirst(2)
            guard rest.hasPrefix("/") else { throw .otherServer(artifactURI) }
        }
        while rest.hasPrefix("/") { rest = rest.dropFirst() }
        let path = String(rest)
        guard MLflowArtifactPath.components(path) != nil else { throw .unsafe(path) }
        self.path = path
    }

    /// A path below the proxy's root (checked: no `..`, no empty parts, not absolute).
    public init(proxyPath: String) throws(MLflowArtifactPathError) {
        guard MLflowArtifactPath.components(proxyPath) != nil else { throw .unsafe(proxyPath) }
        path = proxyPath
    }

    private init(checked: String) { path = checked }

    /// The location of `relative` (a checked relative path) below this one.
    public func appending(_ relative: String) throws(MLflowArtifactPathError) -> MLflowArtifactLocation {
        guard MLflowArtifactPath.components(relative) != nil else { throw .unsafe(relative) }
        return MLflowArtifactLocation(checked: path + "/" + relative)
    }

    /// `mlflow-artifacts:/<path>`.
    public var uri: String { "mlflow-artifacts:/" + path }

    public var description: String { uri }
}

/// An artifact location or name that cannot be used.
public enum MLflowArtifactPathError: Error, Sendable, Equatable, CustomStringConvertible {
    case notProxied(String)
    case otherServer(String)
    case unsafe(String)

    public var description: String {
        switch self {
        case .notProxied(let uri):
            return "the artifact location '\(uri)' is not served by the tracking server's artifact proxy; start `mlflow server` with --serve-artifacts (the default) and an --artifacts-destination"
        case .otherServer(let uri):
            return "the artifact location '\(uri)' names another server; Capstan uploads and downloads only through the configured server"
        case .unsafe(let path):
            return "'\(path)' is not a safe relative artifact path (absolute, empty parts, '.', '..', a backslash or a control character)"
        }
    }
}

/// The rule for artifact paths, both those Capstan sends and those a server lists.
enum MLflowArtifactPath {
    /// The parts of a safe relative path, or nil: not empty, not absolute, no empty, `.` or `..`
    /// part, no backslash (a separator elsewhere), no NUL or other control character.
    static func components(_ path: String) -> [String]? {
        guard !path.isEmpty, !path.hasPrefix("/") else { return nil }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        for part in parts {
            if part.isEmpty || part == "." || part == ".." { return nil }
            if part.unicodeScalars.contains(where: { $0 == "\\" || $0.value < 0x20 || $0.value == 0x7F }) { return nil }
        }
        return parts
    }

    /// Why the artifact proxy would refuse or rename a file at `path`, or nil. Besides the rule
    /// above, MLflow refuses `#` and URL-decodes names, so `a%41` would be stored as `aA`.
    static func uploadProblem(_ path: String) -> String? {
        guard components(path) != nil else { return "a backslash, a control character or an empty, '.' or '..' part" }
        if path.contains("#") { return "MLflow refuses '#' in artifact paths" }
        let scalars = Array(path.unicodeScalars)
        for (i, c) in scalars.enumerated() where c == "%" && i + 2 < scalars.count {
            if scalars[i + 1].properties.isASCIIHexDigit && scalars[i + 2].properties.isASCIIHexDigit {
                return "MLflow decodes '%' followed by two hex digits, so it would store the file under another name"
            }
        }
        return nil
    }

    /// The path with each part percent-encoded, for a URL.
    static func escaped(_ path: String) -> String {
        path.split(separator: "/").map { MLflowClient.escape(String($0)) }.joined(separator: "/")
    }
}

extension MLflowClient {
    /// The URL of a file or folder in the artifact proxy.
    func artifactURL(_ location: MLflowArtifactLocation) -> String {
        server + "/api/2.0/mlflow-artifacts/artifacts/" + MLflowArtifactPath.escaped(location.path)
    }

    // MARK: Upload

    /// Uploads every file below `folder` to `location`, one streamed `PUT` per file, in path
    /// order. Returns what was uploaded (paths relative to `folder`, sizes). The folder may hold
    /// only files and folders (a symlink or a special file is an error before anything is sent);
    /// MLflow keeps files only, so empty folders do not come back on download. A folder without
    /// any file is an error.
    @discardableResult
    public func uploadArtifacts(from source: String, to location: MLflowArtifactLocation) async throws -> [MLflowArtifactFile] {
        let folder = Self.withoutTrailingSlashes(source)
        let operation = "upload '\(folder)' to \(location)"
        let files = try localFiles(in: folder, operation: operation)
        guard !files.isEmpty else {
            throw MLflowError(kind: .localFiles, server: server, operation: operation, message: "the folder holds no file",
                              hint: "MLflow stores files only; write at least one file into the output folder")
        }
        for file in files {
            let target: MLflowArtifactLocation
            do {
                target = try location.appending(file.path)
            } catch {
                throw MLflowError(kind: .localFiles, server: server, operation: operation, message: error.description)
            }
            try await uploadArtifact(file: folder + "/" + file.path, to: target)
        }
        return files
    }

    /// Uploads one file to `location` (the file's own path in the proxy), streaming its bytes.
    public func uploadArtifact(file: String, to location: MLflowArtifactLocation) async throws {
        let operation = "upload '\(file)' to \(location)"
        let started = ContinuousClock.now
        let deadline = started.advanced(by: configuration.transferTimeout)
        let status: Int
        do {
            status = try await FileSystem.shared.withFileHandle(forReadingAt: FilePath(file)) { handle in
                let size = try await handle.info().size
                let body = HTTPClientRequest.Body.stream(handle.readChunks(in: 0..<size, chunkLength: .kibibytes(256)), length: .known(size))
                let request = makeRequest(.PUT, url: artifactURL(location), body: body, contentType: "application/octet-stream")
                let response = try await http.execute(request, deadline: NIODeadline.now() + .nanoseconds(configuration.transferTimeout.nanosecondsClamped))
                let limit = configuration.maxResponseBytes
                let answer = try await Self.within(deadline) { try await response.body.collect(upTo: limit) }
                let code = Int(response.status.code)
                if !(200..<300).contains(code) {
                    throw failure(Answer(status: code, headers: response.headers, body: answer), operation: operation)
                }
                return code
            }
        } catch let error as FileSystemError {
            throw MLflowError(kind: .localFiles, server: server, operation: operation, message: "the file cannot be read",
                              cause: "\(error.code): \(error.message)")
        } catch let error as HTTPClientError where error == .bodyLengthMismatch {
            throw MLflowError(kind: .localFiles, server: server, operation: operation,
                              message: "the file changed size while it was being uploaded", hint: "upload it again once nothing writes to it")
        } catch {
            throw transportFailure(error, operation: operation, transfer: true)
        }
        log(.PUT, artifactURL(location), status, since: started)
    }

    static func withoutTrailingSlashes(_ path: String) -> String {
        var path = path
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        return path
    }

    /// The files below `folder` (relative paths, sizes), sorted; refuses symlinks and special files.
    func localFiles(in folder: String, operation: String) throws -> [MLflowArtifactFile] {
        let fm = FileManager.default
        func fail(_ message: String, _ hint: String? = nil) -> MLflowError {
            MLflowError(kind: .localFiles, server: server, operation: operation, message: message, hint: hint)
        }
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: folder, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw fail("'\(folder)' is not a folder")
        }
        var out: [MLflowArtifactFile] = []
        func walk(_ relative: String) throws {
            let full = relative.isEmpty ? folder : folder + "/" + relative
            let names: [String]
            do {
                names = try fm.contentsOfDirectory(atPath: full)
            } catch {
                throw fail("'\(full)' cannot be listed (\(error.localizedDescription))")
            }
            for name in names.sorted() {
                let path = relative.isEmpty ? name : relative + "/" + name
                let attributes: [FileAttributeKey: Any]
                do {
                    attributes = try fm.attributesOfItem(atPath: folder + "/" + path)
                } catch {
                    throw fail("'\(folder)/\(path)' cannot be read (\(error.localizedDescription))")
                }
                switch attributes[.type] as? FileAttributeType {
                case .typeDirectory?:
                    try walk(path)
                case .typeRegular?:
                    if let problem = MLflowArtifactPath.uploadProblem(path) {
                        throw fail("'\(folder)/\(path)' has a name MLflow cannot store: \(problem)", "rename it")
                    }
                    out.append(MLflowArtifactFile(path: path, isDirectory: false, size: (attributes[.size] as? NSNumber)?.int64Value ?? 0))
                case .typeSymbolicLink?:
                    throw fail("'\(folder)/\(path)' is a symlink; artifacts may hold only files and folders", "copy the file it points to instead")
                default:
                    throw fail("'\(folder)/\(path)' is not a regular file or a folder; artifacts may hold only files and folders")
                }
            }
        }
        try walk("")
        return out.sorted { $0.path < $1.path }
    }

    // MARK: List

    /// The entries directly in `location` (names relative to it). A location with nothing is `[]`.
    public func listArtifacts(at location: MLflowArtifactLocation) async throws -> [MLflowArtifactFile] {
        struct Answer: Decodable { var files: [MLflowArtifactFile]? }
        let operation = "list artifacts at \(location)"
        let url = server + "/api/2.0/mlflow-artifacts/artifacts" + Self.queryString([("path", location.path)])
        let answer = try await exchange(.GET, url: url, body: nil, contentType: nil, operation: operation)
        return try decode(Answer.self, answer, operation: operation).files ?? []
    }

    /// Every file below `location`, with paths relative to it, checked: a name that is absolute,
    /// holds `..`, an empty part, a backslash or a control character, or that repeats, is refused
    /// (`.badResponse`) — a server must not make Capstan write outside the destination.
    public func listArtifactsRecursively(at location: MLflowArtifactLocation) async throws -> [MLflowArtifactFile] {
        let operation = "list artifacts at \(location)"
        var files: [MLflowArtifactFile] = []
        var seen: Set<String> = []
        var folders: [String] = [""]
        while let relative = folders.popLast() {
            let here = relative.isEmpty ? location : try location.appending(relative)
            for entry in try await listArtifacts(at: here) {
                guard MLflowArtifactPath.components(entry.path) != nil else {
                    throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                      message: "the listing of \(here) holds the unsafe name '\(clean(entry.path))'; nothing was downloaded",
                                      hint: "the server (or something in front of it) answers with paths that leave the artifact folder: check it")
                }
                let path = relative.isEmpty ? entry.path : relative + "/" + entry.path
                guard seen.insert(path).inserted else {
                    throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                      message: "the listing names '\(clean(path))' twice", hint: "check the artifact store behind the server")
                }
                guard files.count + folders.count < Self.maxArtifactEntries else {
                    throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                      message: "more than \(Self.maxArtifactEntries) entries", hint: "is this the folder of one model?")
                }
                if entry.isDirectory {
                    folders.append(path)
                } else {
                    guard entry.size >= 0 else {
                        throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                          message: "the listing gives '\(clean(path))' a negative size")
                    }
                    files.append(MLflowArtifactFile(path: path, isDirectory: false, size: entry.size))
                }
            }
        }
        return files.sorted { $0.path < $1.path }
    }

    static let maxArtifactEntries = 100_000

    // MARK: Download

    /// Downloads every file below `location` into `folder`, which must not exist yet (its parent
    /// must). Files are written into a sibling staging folder, each checked against the size the
    /// listing gave, and the staging folder becomes `folder` only when all are complete: on any
    /// error nothing is left behind. Returns the files (paths relative to `folder`, sizes).
    @discardableResult
    public func downloadArtifacts(from location: MLflowArtifactLocation, into destination: String) async throws -> [MLflowArtifactFile] {
        let folder = Self.withoutTrailingSlashes(destination)
        let operation = "download \(location) into '\(folder)'"
        let fm = FileManager.default
        func local(_ message: String, _ hint: String? = nil) -> MLflowError {
            MLflowError(kind: .localFiles, server: server, operation: operation, message: message, hint: hint)
        }
        guard !fm.fileExists(atPath: folder) else { throw local("'\(folder)' already exists", "download into a new folder") }
        let parent = (folder as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: parent.isEmpty ? "." : parent, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw local("the parent folder of '\(folder)' does not exist")
        }
        let files = try await listArtifactsRecursively(at: location)
        guard !files.isEmpty else {
            throw MLflowError(kind: .notFound, server: server, operation: operation, message: "there are no artifacts at \(location)",
                              hint: "the version's files were never uploaded, or were deleted from the artifact store")
        }
        let total = files.reduce(Int64(0)) { $0 + $1.size }
        guard total <= configuration.maxDownloadBytes else {
            throw MLflowError(kind: .badResponse, server: server, operation: operation,
                              message: "the artifacts add up to \(total) bytes, more than the limit of \(configuration.maxDownloadBytes)")
        }
        let staging = folder + ".partial-" + UUID().uuidString
        do {
            try fm.createDirectory(atPath: staging, withIntermediateDirectories: false)
        } catch {
            throw local("cannot create '\(staging)' (\(error.localizedDescription))")
        }
        do {
            for file in files {
                let target = staging + "/" + file.path
                let directory = (target as NSString).deletingLastPathComponent
                do {
                    try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
                } catch {
                    throw local("cannot create '\(directory)' (\(error.localizedDescription))")
                }
                try await downloadArtifact(at: location.appending(file.path), into: target, expectedSize: file.size, operation: operation)
            }
            do {
                try fm.moveItem(atPath: staging, toPath: folder)
            } catch {
                throw local("cannot move the downloaded files into '\(folder)' (\(error.localizedDescription))")
            }
        } catch {
            try? fm.removeItem(atPath: staging)
            throw error
        }
        return files
    }

    /// Streams one file into `target` (a new file), checking that exactly `expectedSize` bytes come.
    func downloadArtifact(at location: MLflowArtifactLocation, into target: String, expectedSize: Int64, operation: String) async throws {
        let started = ContinuousClock.now
        let deadline = started.advanced(by: configuration.transferTimeout)
        let request = makeRequest(.GET, url: artifactURL(location), body: nil, contentType: nil, accept: "*/*")
        let written: Int64
        let status: Int
        do {
            let response = try await http.execute(request, deadline: NIODeadline.now() + .nanoseconds(configuration.transferTimeout.nanosecondsClamped))
            status = Int(response.status.code)
            guard (200..<300).contains(status) else {
                let limit = configuration.maxResponseBytes
                let body = try await Self.within(deadline) { try await response.body.collect(upTo: limit) }
                throw failure(Answer(status: status, headers: response.headers, body: body), operation: operation + " (file \(location.path))")
            }
            let server = self.server
            written = try await Self.within(deadline) {
                try await FileSystem.shared.withFileHandle(forWritingAt: FilePath(target), options: .newFile(replaceExisting: false)) { handle in
                    try await handle.withBufferedWriter { writer in
                        var count: Int64 = 0
                        for try await chunk in response.body {
                            count += Int64(chunk.readableBytes)
                            guard count <= expectedSize else {
                                throw MLflowError(kind: .badResponse, server: server, operation: operation,
                                                  message: "'\(location.path)' is longer than the \(expectedSize) bytes its listing gives",
                                                  hint: "the file changed on the server, or something in between alters it; download again")
                            }
                            _ = try await writer.write(contentsOf: chunk)
                        }
                        return count
                    }
                }
            }
        } catch let error as FileSystemError {
            throw MLflowError(kind: .localFiles, server: server, operation: operation, message: "'\(target)' cannot be written",
                              cause: "\(error.code): \(error.message)")
        } catch {
            throw transportFailure(error, operation: operation, transfer: true)
        }
        log(.GET, artifactURL(location), status, since: started)
        guard written == expectedSize else {
            throw MLflowError(kind: .badResponse, server: server, operation: operation,
                              message: "'\(location.path)' has \(written) bytes, but its listing gives \(expectedSize)",
                              hint: "the file changed on the server, or something in between alters it; download again")
        }
    }
}
