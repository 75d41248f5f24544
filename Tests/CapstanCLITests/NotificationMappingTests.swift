import CapstanCore
import CapstanServer
import CapstanStore
import Foundation
import Testing
@testable import CapstanCLI

/// What the controller tells notification targets, from a pass's audit events.
@Suite struct NotificationMappingTests {
    func event(_ object: String, _ action: AuditAction, before: ParamValue? = nil, after: ParamValue? = nil, reason: String = "why") -> AuditEvent {
        AuditEvent(at: 1_795_800_000_000, actor: "capstan run (vm)", host: "vm", commit: "4f07bd39a7068a7a",
                   object: ObjectRef(object)!, action: action, before: before, after: after, reason: reason, id: 1)
    }

    @Test func versionsAliasesAndRolloutsBecomeEvents() throws {
        let rollback = PlanEntry(id: "d1", action: .rollback, kind: .deployment, name: "churn-prod", reason: "v3 failed its analysis",
                                 dependsOn: [], detail: .deployment(DeploymentDetail(model: "churn", from: 2, to: 3, backends: nil, rollout: nil)))
        let events = NotificationMapping.events(from: [
            event("model/churn", .register),
            event("model/churn/v3", .trained),
            event("model/churn/v3", .validated, reason: "3 gates passed"),
            event("model/churn/v4", .rejected, reason: "accuracy >= 0.9 (accuracy = 0.5)"),
            event("model/churn/alias/champion", .moveAlias, before: .int(2), after: .int(3)),
            event("deployment/churn-prod", .startRollout, before: .int(2)),
            event("deployment/churn-prod", .advanceRollout),
            event("deployment/churn-prod", .rollback, reason: "v3 failed its analysis"),
        ], deployments: [rollback], passFailure: nil, commit: "4f07bd39a7068a7a")
        #expect(events.map(\.kind) == [.versionValidated, .versionRejected, .aliasMoved, .rolloutStarted, .rolloutRolledBack])
        #expect(events[0].model == "churn" && events[0].version == 3 && events[0].message == "churn v3 validated: 3 gates passed")
        #expect(events[1].version == 4)
        #expect(events[2].alias == "champion" && events[2].version == 3 && events[2].message == "churn@champion: v2 → v3")
        #expect(events[3].deployment == "churn-prod" && events[3].model == nil)
        #expect(events[4].deployment == "churn-prod" && events[4].model == "churn" && events[4].version == 3)
        #expect(events.allSatisfy { $0.commit == "4f07bd39a7068a7a" })
        // The failures carry their class and reason; the rest carry none.
        #expect(events[1].failureClass == "terminal" && events[1].reason == "GateFailed")
        #expect(events[4].failureClass == "terminal" && events[4].reason == "RolledBack")
        #expect([0, 2, 3].allSatisfy { events[$0].failureClass == nil && events[$0].reason == nil })
    }

    @Test func aFailedPassIsAnEvent() {
        let events = NotificationMapping.events(from: [], passFailure: "1 error in the manifests", commit: "abcdef0123")
        #expect(events.count == 1)
        #expect(events.first?.kind == .passFailed)
        #expect(events.first?.message == "the pass at abcdef0 failed: 1 error in the manifests")
    }
}
