/// The stable code of each kind of manifest problem. Codes never change meaning once released;
/// tools may match on them. Documented in docs/diagnostics.md.
public enum DiagnosticCode: String, Sendable, Codable, CaseIterable {
    // Files and YAML
    case fileUnreadable = "file-unreadable"
    case fileTooLarge = "file-too-large"
    case notUTF8 = "not-utf8"
    case yamlSyntax = "yaml-syntax"
    case duplicateKey = "duplicate-key"
    case emptyDocument = "empty-document"
    case tooManyDocuments = "too-many-documents"
    case aliasExpansion = "alias-expansion"
    case nestingTooDeep = "nesting-too-deep"

    // Repository content that is not read
    case symlinkEscapesRepository = "symlink-escapes-repository"
    case brokenSymlink = "broken-symlink"
    case symlinkInPath = "symlink-in-path"
    case notARegularFile = "not-a-regular-file"
    case unsafeFileName = "unsafe-file-name"
    case submoduleNotRead = "submodule-not-read"

    // Shape
    case unknownAPIVersion = "unknown-api-version"
    case unknownKind = "unknown-kind"
    case unknownField = "unknown-field"
    case wrongType = "wrong-type"
    case missingField = "missing-field"
    case invalidEnum = "invalid-enum"
    case invalidDuration = "invalid-duration"
    case invalidBoolean = "invalid-boolean"
    case invalidValue = "invalid-value"
    case invalidName = "invalid-name"
    case duplicateObject = "duplicate-object"
    case misplacedConfig = "misplaced-config"

    // References
    case unknownModel = "unknown-model"
    case undeclaredAlias = "undeclared-alias"
    case invalidAliasTarget = "invalid-alias-target"
    case versionOrAlias = "version-or-alias"
    /// A setting a registry-only model (no `spec.train`) cannot have.
    case registryOnlyUnsupported = "registry-only-unsupported"

    // Paths
    case emptyPath = "empty-path"
    case pathEscapesRepository = "path-escapes-repository"
    case pathOutsideDataRoots = "path-outside-data-roots"
    case pathNotFound = "path-not-found"

    // Commands
    case emptyCommand = "empty-command"
    case commandLooksLikeShell = "command-looks-like-shell"

    // Rollouts and gates
    case canaryWeights = "canary-weights"
    case gateBounds = "gate-bounds"
    case unknownGateMetric = "unknown-gate-metric"

    // Secrets
    case invalidEnvName = "invalid-env-name"
    case credentialInEnv = "credential-in-env"
}
