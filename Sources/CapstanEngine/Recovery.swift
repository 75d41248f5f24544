import CapstanCore
import Foundation

/// Closes what an earlier, killed pass left `started` in the journal (DESIGN.md §4, step 5).
///
/// - An interrupted training: the processes of its run (its process group, only when they
///   carry that run's marker) are stopped and its working folder removed; the version it was
///   training stays `training` and the planner trains it again. The audit events it did not get
///   to record (the version's creation, the end of its training, its failure) are recorded now.
/// - An interrupted validation command: its processes are stopped, its folder removed.
/// - A registry change: the registry is checked; a change that was made gets the audit event it
///   was missing.
/// - Changes of the serving layer are left to the deployment phase, which can see it.
///
/// Every entry is then closed as interrupted, with an `interrupted` event.
struct Recovery {
    let context: EngineContext

    var registry: any Registry { context.registry }

    /// Returns a line per entry closed, for people.
    func recover() async throws -> [String] {
        var notes: [String] = []
        for entry in try await context.store.unfinishedJournal() where entry.operation != .deploy {
            var note = "recovered an interrupted \(entry.operation.rawValue) of \(entry.subject) (journal entry \(entry.id))"
            var missed: [AuditEvent] = []
            switch entry.record {
            case .training(let run)?:
                if let pgid = run.processGroup,
                   context.runner.stopLeftovers(processGroup: pgid, marker: (name: runMarker, value: run.run)) {
                    note += "; stopped its leftover training processes (process group \(pgid))"
                }
                if let model = entry.subject.model {
                    if let trained = run.trained, run.version == nil, let registryRun = run.registryRun {
                        // Trained, but its registration failed: registered now, without training
                        // again. A registry still failing fails the pass and keeps the entry.
                        let claim = TrainingClaim(model: model, fingerprint: run.fingerprint, attempt: run.attempt, run: registryRun)
                        let local = await context.artifacts.holds(digest: trained.artifactDigest)
                            ? try await context.artifacts.open(digest: trained.artifactDigest) : nil
                        let version = try await registry.finishTraining(claim, trained, directory: local)
                        missed.append(Training.trainedEvent(context, name: model, number: version.number, commit: run.commit,
                                                            artifact: trained.artifactDigest, metrics: trained.metrics,
                                                            reason: "registered after an interrupted pass, without training again"))
                        note += "; registered v\(version.number) from the training it had finished"
                    } else {
                        missed += try await missedTrainingEvents(model: model, run)
                    }
                }
            case .validationCommand(let step)?:
                if let pgid = step.processGroup,
                   context.runner.stopLeftovers(processGroup: pgid, marker: (name: runMarker, value: step.run)) {
                    note += "; stopped its leftover validation processes (process group \(pgid))"
                }
                if let model = entry.subject.model {
                    StepWorkspace(workFolder: context.workFolder, model: model, version: step.version, label: "validate").clean()
                }
            case .registryChange(let change, let event)?:
                if try await happened(change) {
                    var late = event
                    late.reason += " (recorded after an interrupted pass)"
                    missed.append(late)
                    note += "; the change had been made"
                }
            case .servingChange?:
                continue
            case nil:
                note += "; it was written by another version of Capstan and is closed without acting on it"
            }
            var changes = StateChanges("close journal entry \(entry.id)")
            for event in missed { changes.record(event) }
            changes.failJournal(entry.id, JournalClosing(interrupted: true))
            changes.record(context.event(entry.subject, .interrupted, commit: nil, reason: note))
            try await context.commit(changes)
            notes.append(note)
        }
        return notes
    }

    /// The audit events an interrupted training did not get to record: its version's creation
    /// (journaled with the number, unless the crash came first), its end of training, its failure.
    func missedTrainingEvents(model: String, _ run: TrainingRun) async throws -> [AuditEvent] {
        // Its working folder is of no further use (named by the fingerprint before a number).
        StepWorkspace(workFolder: context.workFolder, model: model, training: nil, fingerprint: run.fingerprint, attempt: run.attempt).clean()
        guard let version = try await registry.version(of: model, fingerprint: run.fingerprint) else { return [] }
        var events: [AuditEvent] = []
        let object = ObjectRef.version(model: model, number: version.number)
        if run.version == nil {
            // The crash came before the version was journaled with its event.
            if run.resumes == nil {
                events.append(context.event(object, .createVersion, commit: run.commit,
                                            after: .map(["status": .string("training"), "fingerprint": .string(run.fingerprint)]),
                                            reason: "recorded after an interrupted pass"))
            } else if version.attempts >= run.attempt {
                // A retry or a resumed run that had claimed the version (its attempt counted).
                events.append(context.event(object, .retrainVersion, commit: run.commit,
                                            after: .map(["status": .string("training"), "fingerprint": .string(run.fingerprint),
                                                         "attempt": .int(Int64(run.attempt))]),
                                            reason: "recorded after an interrupted pass"))
            }
        }
        if version.status == .trained, let artifact = version.artifactDigest {
            events.append(Training.trainedEvent(context, name: model, number: version.number, commit: run.commit, artifact: artifact,
                                                metrics: version.metrics, reason: "recorded after an interrupted pass"))
        }
        // The failure was journaled before the version was marked failed.
        if version.status == .failed, var event = run.failure {
            event.reason += " (recorded after an interrupted pass)"
            events.append(event)
        }
        // Its working folder is of no further use.
        StepWorkspace(workFolder: context.workFolder, model: model, training: version.number, fingerprint: run.fingerprint,
                      attempt: run.attempt).clean()
        return events
    }

    /// Whether the registry change of an interrupted journal entry was made.
    func happened(_ change: RegistryChange) async throws -> Bool {
        switch change {
        case .registerModel(let model):
            return try await registry.model(named: model) != nil
        case .validate(let model, let n):
            let status = try await registry.version(of: model, number: n)?.status
            return status == .validated || status == .rejected
        case .moveAlias(let model, let alias, let to):
            return try await registry.resolveAlias(alias, of: model) == to
        case .deleteAlias(let model, let alias):
            return try await registry.resolveAlias(alias, of: model) == nil
        case .archiveVersions(let model, let numbers):
            for n in numbers where try await registry.version(of: model, number: n)?.archivedAt == nil {
                return false
            }
            return true
        }
    }
}
