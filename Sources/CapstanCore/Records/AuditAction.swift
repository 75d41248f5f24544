/// What an audit event records. The raw values are the stored form (and what `capstan history`
/// and notifications show); never renamed once released.
public enum AuditAction: String, Hashable, Sendable, Codable, CaseIterable {
    // Models and versions.
    case register
    case update
    case createVersion = "create-version"
    case retrainVersion = "retrain-version"
    /// A training started for a fingerprint that has no version yet (a registry that numbers
    /// versions when it registers them: MLflow).
    case startTraining = "start-training"
    case trained
    case trainingFailed = "training-failed"
    case validated
    case rejected
    case moveAlias = "move-alias"
    case deleteAlias = "delete-alias"
    case archiveVersions = "archive-versions"
    /// A version registered outside Capstan: the digest of its files, once downloaded.
    case recordArtifact = "record-artifact"
    /// A version registered with `capstan register` (files and metrics made elsewhere).
    case registerVersion = "register-version"
    /// A step or change that a stopped or killed pass left unfinished.
    case interrupted
    // Deployments.
    case createEndpoint = "create-endpoint"
    case startRollout = "start-rollout"
    case advanceRollout = "advance-rollout"
    case promote
    case rollback
    case abortRollout = "abort-rollout"
    case scale
    case retireEndpoint = "retire-endpoint"
    case revertDrift = "revert-drift"
    case adoptDrift = "adopt-drift"

    /// The audit action of a deployment plan entry's action, for those that change an endpoint.
    public init?(deployment action: PlanAction) {
        switch action {
        case .createEndpoint: self = .createEndpoint
        case .startRollout: self = .startRollout
        case .advanceRollout: self = .advanceRollout
        case .promote: self = .promote
        case .rollback: self = .rollback
        case .abortRollout: self = .abortRollout
        case .scale: self = .scale
        case .retireEndpoint: self = .retireEndpoint
        case .revertDrift: self = .revertDrift
        case .adoptDrift: self = .adoptDrift
        default: return nil
        }
    }
}
