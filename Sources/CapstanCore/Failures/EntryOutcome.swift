/// How one plan entry ended.
public enum EntryOutcome: Hashable, Sendable {
    case done(String)
    /// Not run: a dependency did not succeed, or there was nothing left to do.
    case skipped(String)
    /// Failed, with what the loop does next.
    case failed(ReconcileFailure)

    public var succeeded: Bool {
        if case .done = self { return true }
        return false
    }

    /// Failed, whatever the class: its dependents do not run and the pass did not converge.
    public var isFailure: Bool { failure != nil }

    public var failure: ReconcileFailure? {
        if case .failed(let f) = self { return f }
        return nil
    }

    public var message: String {
        switch self {
        case .done(let m), .skipped(let m): return m
        case .failed(let f): return f.message
        }
    }

    /// The same outcome with every secret of `scrubber` replaced in its message.
    public func scrubbed(_ scrubber: SecretScrubber) -> EntryOutcome {
        guard !scrubber.isEmpty else { return self }
        switch self {
        case .done(let m): return .done(scrubber.scrub(m))
        case .skipped(let m): return .skipped(scrubber.scrub(m))
        case .failed(var f):
            f.message = scrubber.scrub(f.message)
            return .failed(f)
        }
    }
}

/// What a pass reports while it runs (the CLI prints it; the controller logs it).
public enum PassEvent: Sendable {
    case started(PlanEntry)
    /// An entry ended; `version` is the version it concerned, when known (a new version's
    /// number is known once it is created).
    case finished(PlanEntry, EntryOutcome, version: Int?)
    /// A line of a step's output, already prefixed (`[churn v3] …`).
    case output(String)
    /// What recovery closed of a killed pass (a journal entry), for people.
    case recovered(String)
    /// Something people should know (a force-push followed, a mirror cloned again).
    case note(String)
    /// Something that went wrong without failing an entry (the audit log could not be written).
    case warning(String)
    /// The plan the pass is about to carry out (its model entries; deployments follow).
    case planned(Plan)
    /// The deployment entries, decided once the registry changes are done.
    case deploymentPlan([PlanEntry])
}
