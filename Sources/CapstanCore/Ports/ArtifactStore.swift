/// Where the outputs of trainings are kept, by content: the embedded registry's content-addressed
/// folder in the state directory; the MLflow artifact store when the registry is MLflow.
public protocol ArtifactStore: Sendable {
    /// Stores the folder a training wrote and returns its digest and where it is kept. Refuses
    /// symlinks and special files, and names that hold a secret of `scrubber` (names are kept);
    /// what it quotes in errors is scrubbed. A full disk is a classified `.diskFull` failure.
    func store(directory: String, scrubber: SecretScrubber) async throws -> StoredArtifact

    /// A local folder holding the artifact `digest`, checked against the digest (an artifact
    /// changed in place is refused, never used).
    func open(digest: String) async throws -> String

    /// Whether the store has a folder for `digest` (not checked against it: `open` does that).
    func holds(digest: String) async -> Bool
}

public struct StoredArtifact: Hashable, Sendable {
    /// `sha256:<64 hex digits>` over the folder's canonical listing (docs/state.md).
    public var digest: String
    /// Where it is kept (a path, or a URI).
    public var location: String

    public init(digest: String, location: String) {
        self.digest = digest
        self.location = location
    }
}
