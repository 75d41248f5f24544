import CapstanCore

// The status page reads the one status document (CapstanCore's `StatusDocument`, the same value
// `capstan status --format json` and `GET /api/v1/status` encode) and the audit events, typed.
// These names are the page's own words for its parts.
typealias ModelEntry = StatusDocument.Model
typealias VersionEntry = StatusDocument.Version
typealias DeploymentEntry = StatusDocument.Deployment
typealias BackendEntry = StatusDocument.Backend
typealias ConditionEntry = StatusDocument.Condition
typealias PassEntry = StatusDocument.Pass
typealias LockEntry = StatusDocument.Lock
typealias RolloutEntry = StatusDocument.Rollout
typealias QuarantineEntry = StatusDocument.Quarantined
typealias HistoryEntry = AuditEvent
