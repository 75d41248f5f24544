import CapstanCore
import Foundation

/// A fresh temporary folder, removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("capstan-store-test-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Writes `bytes` to `relative`, creating folders, with the given permissions.
    @discardableResult
    func write(_ relative: String, _ bytes: Data, mode: Int = 0o644) throws -> String {
        let file = (path as NSString).appendingPathComponent(relative)
        try FileManager.default.createDirectory(atPath: (file as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        try bytes.write(to: URL(fileURLWithPath: file))
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: file)
        return file
    }

    @discardableResult
    func write(_ relative: String, _ text: String, mode: Int = 0o644) throws -> String {
        try write(relative, Data(text.utf8), mode: mode)
    }
}

func fileBytes(_ path: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: path))
}

/// Deterministic pseudo-random bytes (a fixed-seed xorshift), so failures reproduce.
func garbage(count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> Data {
    var state = seed
    var bytes = Data(capacity: count)
    for _ in 0..<count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        bytes.append(UInt8(truncatingIfNeeded: state))
    }
    return bytes
}

// MARK: - Records

/// Typed records as the engine writes them.
enum Samples {
    /// A whole second: an audit event inside a journal record is encoded with its time to the
    /// second (the form of `capstan history --format json`).
    static let time: Int64 = 1_700_000_000_000

    static func event(_ object: ObjectRef, _ action: AuditAction, at: Int64 = time, after: ParamValue? = nil) -> AuditEvent {
        AuditEvent(at: at, actor: "capstan apply", host: "host-a", commit: "abc123", object: object, action: action,
                   after: after, reason: "commit abc123 changed \(object)")
    }

    static let rollout = RolloutState(deployment: "churn-api", model: "churn", from: 2, to: 3, phase: .starting, step: 0,
                                      stepStartedAt: time, startedAt: time, specHash: "h1")

    /// One record of every kind, each registry change and each way a serving change leaves the
    /// endpoint's weights.
    static let journalRecords: [(String, JournalRecord, ObjectRef)] = [
        ("training, started", .training(TrainingRun(fingerprint: "f1", commit: "c1", run: "run-1", attempt: 1)), .model("churn")),
        ("training, claimed and running",
         .training(TrainingRun(fingerprint: "f1", commit: "c1", run: "run-1", attempt: 2, version: 3, resumes: 3, processGroup: 4242,
                               failure: event(.version(model: "churn", number: 3), .trainingFailed, after: .string("exit 1")))),
         .model("churn")),
        ("validation command", .validationCommand(StepRun(version: 3, run: "run-2", processGroup: 77)), .model("churn")),
        ("register model", .registryChange(.registerModel(model: "churn"), event: event(.model("churn"), .register)), .model("churn")),
        ("validate", .registryChange(.validate(model: "churn", version: 3), event: event(.version(model: "churn", number: 3), .validated)),
         .model("churn")),
        ("move alias", .registryChange(.moveAlias(model: "churn", alias: "champion", to: 3),
                                       event: event(.alias(model: "churn", alias: "champion"), .moveAlias, after: .int(3))),
         .model("churn")),
        ("delete alias", .registryChange(.deleteAlias(model: "churn", alias: "old"),
                                         event: event(.alias(model: "churn", alias: "old"), .deleteAlias)), .model("churn")),
        ("archive versions", .registryChange(.archiveVersions(model: "churn", versions: [1, 2]),
                                             event: event(.model("churn"), .archiveVersions, after: .list([.int(1), .int(2)]))),
         .model("churn")),
        ("serving change, weights set",
         .servingChange(ServingChange(deployment: "churn-api", model: "churn",
                                      applied: .set([BackendWeight(version: 2, weight: 90, replicas: 1), BackendWeight(version: 3, weight: 10, replicas: 1)]),
                                      rollout: rollout, quarantine: nil,
                                      event: event(.deployment("churn-api"), .startRollout, after: .map(["to": .int(3)])))),
         .deployment("churn-api")),
        ("serving change, kept, quarantined",
         .servingChange(ServingChange(deployment: "churn-api", model: "churn", applied: .keep, rollout: nil,
                                      quarantine: Quarantine(deployment: "churn-api", version: 3, specHash: "h1", reason: "error rate", at: time),
                                      event: event(.deployment("churn-api"), .rollback))),
         .deployment("churn-api")),
        ("serving change, removed",
         .servingChange(ServingChange(deployment: "churn-api", model: "churn", applied: .remove, rollout: nil, quarantine: nil,
                                      event: event(.deployment("churn-api"), .retireEndpoint))),
         .deployment("churn-api")),
    ]
}
