import CapstanCore
import CapstanManifests
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// A remote to fetch from: a bare repository at `<dir>/served/models.git` (what `git daemon`
/// serves), a work repository that pushes to it, and a state directory for mirrors.
final class RemoteFixture {
    let dir: TempDir
    let work: GitRepo
    let served: URL
    let stateDirectory: String
    /// The first commit, pushed to `main` of the served repository.
    let first: String

    init() throws {
        dir = try TempDir()
        served = dir.sub("served/models.git")
        _ = try GitRepo(at: served, bare: true)
        work = try GitRepo(at: dir.sub("work"))
        try Manifests.write(into: work)
        first = try work.commit("first")
        try work.push(to: served.path)
        stateDirectory = dir.sub("state").path
    }

    /// Commits `files` in the work repository and pushes `main`; returns the commit id.
    @discardableResult
    func pushCommit(_ message: String, files: [String: String]) throws -> String {
        let id = try work.commit(message, files: files)
        try work.push(to: served.path)
        return id
    }

    var fileURL: String { "file://" + served.path }

    func source(_ url: String, timeout: TimeInterval = 20, credentials: GitCredentials = GitCredentials(environment: [:])) -> GitSource {
        GitSource(location: .remote(url: url),
                  options: GitSourceOptions(stateDirectory: stateDirectory, credentials: credentials, fetchTimeout: timeout))
    }

    /// The mirror folders (`*.git`) and anything else left in `<state>/sources`.
    var sourcesEntries: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: stateDirectory + "/sources")) ?? []).sorted()
    }
}

/// Runs `body`, which must fail with a `GitSourceError`, and returns that error.
func gitSourceError<T>(sourceLocation: Testing.SourceLocation = #_sourceLocation,
                       _ body: () async throws -> T) async -> GitSourceError? {
    do {
        let value = try await body()
        Issue.record("expected a GitSourceError, got \(value)", sourceLocation: sourceLocation)
    } catch let error as GitSourceError {
        return error
    } catch {
        Issue.record("expected a GitSourceError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Opens a local repository in place.
func openLocal(_ path: String) async throws -> OpenedRepository {
    try await GitSource(location: .local(path: path), options: GitSourceOptions(stateDirectory: path + "-unused-state")).open()
}

/// Loads the desired state of `ref` through a `GitManifestSource`.
func loadCommit(_ opened: OpenedRepository, _ ref: String?, cache: ParseCache? = nil, displayPrefix: String = "",
                keepFields: Bool = false) async throws -> (LoadResult, GitManifestSource) {
    let revision = try await opened.resolve(ref)
    let source = try await GitManifestSource(repository: opened.repository, revision: revision,
                                             repositoryName: opened.location.description)
    let loader = ManifestLoader(source: source, displayPrefix: displayPrefix, decoder: ManifestDecoder(keepFields: keepFields),
                                cache: cache)
    return (try await loader.load(), source)
}

extension Diagnostic {
    /// `SEVERITY CODE FILE:LINE:COL`, as the fixture corpus writes them.
    var summary: String { "\(severity.rawValue) \(code.rawValue) \(location.file):\(location.line):\(location.column)" }
}
