@testable import CapstanServer
@testable import CapstanTestSupport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// A flag set from one task and read from another.
final class Flag: Sendable {
    private let state = Mutex(false)
    var isSet: Bool { state.withLock { $0 } }
    func set() { state.withLock { $0 = true } }
}

/// Runs `notifier` in a ServiceGroup while `body` runs. `body` gets `stop`: graceful shutdown,
/// then true once `run()` has returned (false if it has not within 15 s: the group is then
/// cancelled, so a broken notifier cannot hang the suite).
func withRunningNotifier<T: Sendable>(_ notifier: Notifier, _ body: (_ stop: @escaping @Sendable () async -> Bool) async throws -> T) async throws -> T {
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [notifier], logger: quietLogger))
    let finished = Flag()
    let stop: @Sendable () async -> Bool = {
        await group.triggerGracefulShutdown()
        return await eventually(seconds: 15) { finished.isSet }
    }
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask {
            defer { finished.set() }
            try await group.run()
        }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(stop))
        } catch {
            result = .failure(error)
        }
        if await !stop() { tasks.cancelAll() }
        try await tasks.waitForAll()
        return try result.get()
    }
}

/// Short delays so that retries happen within a test.
func fastConfiguration(attempts: Int = 5) -> NotifierConfiguration {
    var configuration = NotifierConfiguration()
    configuration.maxAttempts = attempts
    configuration.initialBackoff = .milliseconds(10)
    configuration.maxBackoff = .milliseconds(40)
    configuration.requestTimeout = .seconds(5)
    configuration.drainTimeout = .milliseconds(500)
    return configuration
}

let validated = NotificationEvent(
    kind: .versionValidated, model: "churn", version: 7, commit: "abc1234def5678abc1234def5678abc1234def56",
    message: "churn v7 validated (auc 0.91)", at: Date(timeIntervalSince1970: 1_795_810_500.125))

func event(_ n: Int) -> NotificationEvent {
    NotificationEvent(kind: .aliasMoved, model: "churn", version: n, alias: "champion", commit: "0123456789abcdef",
                      message: "churn: champion moved to v\(n)", at: Date(timeIntervalSince1970: 1_795_810_500 + Double(n)))
}

@Suite struct NotificationPayloadTests {
    @Test func theGenericBodyIsFormatVersionAndTheEvent() throws {
        let body = String(decoding: NotificationPayload.json(validated), as: UTF8.self)
        #expect(body == #"{"event":{"at":"2026-11-27T20:15:00.125Z","commit":"abc1234def5678abc1234def5678abc1234def56","kind":"version.validated","message":"churn v7 validated (auc 0.91)","model":"churn","version":7},"format_version":1}"#)
        struct Body: Decodable { var format_version: Int; var event: NotificationEvent }
        let decoded = try JSONDecoder().decode(Body.self, from: Data(body.utf8))
        #expect(decoded.format_version == 1)
        #expect(decoded.event == validated)
    }

    @Test func eventsRoundTripWithEveryKind() throws {
        for kind in NotificationEvent.Kind.allCases {
            let original = NotificationEvent(kind: kind, deployment: "churn-prod", message: "m", at: Date(timeIntervalSince1970: 1_800_000_000.5))
            let data = try JSONEncoder().encode(original)
            #expect(try JSONDecoder().decode(NotificationEvent.self, from: data) == original)
        }
        #expect(NotificationEvent.Kind.allCases.map(\.rawValue) == [
            "version.validated", "version.rejected", "alias.moved", "rollout.started", "rollout.promoted", "rollout.rolled_back", "pass.failed",
        ])
    }

    @Test func theSlackLineHasTheEmojiMessageAndShortCommit() {
        #expect(NotificationPayload.slackText(validated) == ":white_check_mark: churn v7 validated (auc 0.91) at abc1234")
        let failed = NotificationEvent(kind: .passFailed, commit: "feedface00", message: "The pass failed: <!channel> & models/x.yaml is invalid.")
        #expect(NotificationPayload.slackText(failed) == ":rotating_light: The pass failed: &lt;!channel&gt; &amp; models/x.yaml is invalid at feedfac")
        #expect(String(decoding: NotificationPayload.slack(validated), as: UTF8.self)
                == #"{"text":":white_check_mark: churn v7 validated (auc 0.91) at abc1234"}"#)
    }

    @Test func aTargetIsDescribedByItsNameAndHostOnly() throws {
        let target = NotificationTarget(name: "SLACK_URL", url: "https://hooks.slack.com/services/T0SECRET/B0SECRET/XXSECRETXX", format: .slack)
        var dumped = ""
        dump(target, to: &dumped)
        for text in ["\(target)", String(reflecting: target), dumped] {
            #expect(!text.contains("SECRET"), "\(text)")
            #expect(text.contains("SLACK_URL") && text.contains("hooks.slack.com"), "\(text)")
        }
        try target.validate()
        let bad = NotificationTarget(name: "HOOK", url: "hooks.example.com/SECRET", format: .json)
        #expect(throws: NotificationTargetError.self) { try bad.validate() }
        do {
            try bad.validate()
        } catch {
            #expect(!"\(error)".contains("SECRET"))
            #expect("\(error)".contains("HOOK"))
        }
    }
}

@Suite struct NotifierTests {
    @Test func deliversBothFormatsWithTheExactShape() async throws {
        let generic = Receiver(), slack = Receiver()
        let logs = LogCapture()
        try await generic.serve { genericBase in
            try await slack.serve { slackBase in
                let notifier = Notifier(targets: [
                    NotificationTarget(name: "CAPSTAN_HOOK", url: genericBase + "/hooks/capstan", format: .json),
                    NotificationTarget(name: "CAPSTAN_SLACK", url: slackBase + "/services/T000/B000/XXXX", format: .slack),
                ], configuration: fastConfiguration(), logger: logs.logger)
                try await withRunningNotifier(notifier) { _ in
                    notifier.send([validated, event(8)])
                    #expect(await eventually { generic.received.count == 2 && slack.received.count == 2 })
                }
            }
        }
        let json = generic.received
        #expect(json.map(\.method) == ["POST", "POST"])
        #expect(json.map(\.path) == ["/hooks/capstan", "/hooks/capstan"])
        #expect(json.allSatisfy { $0.contentType == "application/json" })
        #expect(json.first?.text == #"{"event":{"at":"2026-11-27T20:15:00.125Z","commit":"abc1234def5678abc1234def5678abc1234def56","kind":"version.validated","message":"churn v7 validated (auc 0.91)","model":"churn","version":7},"format_version":1}"#)
        let second = try #require(try JSONSerialization.jsonObject(with: json[1].body) as? [String: Any])
        #expect(Set(second.keys) == ["format_version", "event"])
        #expect(second["format_version"] as? Int == 1)
        let fields = try #require(second["event"] as? [String: Any])
        #expect(Set(fields.keys) == ["kind", "model", "version", "alias", "commit", "message", "at"])
        #expect(fields["kind"] as? String == "alias.moved")
        #expect(fields["alias"] as? String == "champion")
        #expect(fields["version"] as? Int == 8)

        #expect(slack.received.map(\.path) == ["/services/T000/B000/XXXX", "/services/T000/B000/XXXX"])
        #expect(slack.received.map(\.text) == [
            #"{"text":":white_check_mark: churn v7 validated (auc 0.91) at abc1234"}"#,
            #"{"text":":arrow_right: churn: champion moved to v8 at 0123456"}"#,
        ])
        #expect(logs.lines.allSatisfy { $0.level < .warning }, "\(logs.lines.map(\.rendered))")
    }

    @Test(arguments: [[500, 500], [429, 503], [502, 500]])
    func retriableAnswersAreRetriedInOrder(failures: [Int]) async throws {
        let receiver = Receiver(script: failures)
        let logs = LogCapture()
        try await receiver.serve { base in
            let notifier = Notifier(targets: [NotificationTarget(name: "HOOK", url: base + "/hook", format: .json)],
                                    configuration: fastConfiguration(attempts: 3), logger: logs.logger)
            try await withRunningNotifier(notifier) { _ in
                notifier.send([event(1), event(2)])
                #expect(await eventually { receiver.received.count == 4 })
            }
        }
        // Three attempts for the first event (two failures, then 200), then the second one.
        #expect(receiver.received.map(\.eventMessage) == [
            "churn: champion moved to v1", "churn: champion moved to v1", "churn: champion moved to v1", "churn: champion moved to v2",
        ])
        let retries = logs.lines(containing: "retrying")
        #expect(retries.count == 2)
        #expect(retries.map { $0.metadata["attempt"] } == ["1", "2"])
        #expect(retries.allSatisfy { $0.metadata["target"] == "HOOK" && $0.metadata["kind"] == "alias.moved" && $0.metadata["host"] == "127.0.0.1" })
        #expect(logs.lines.filter { $0.level >= .error }.isEmpty)
    }

    @Test func aClientErrorIsNotRetried() async throws {
        let receiver = Receiver(script: [400])
        let logs = LogCapture()
        try await receiver.serve { base in
            let notifier = Notifier(targets: [NotificationTarget(name: "HOOK", url: base + "/hook", format: .json)],
                                    configuration: fastConfiguration(), logger: logs.logger)
            try await withRunningNotifier(notifier) { _ in
                notifier.send([event(1), event(2)])
                // Delivery is in order: once event 2 is in, event 1 is done with.
                #expect(await eventually { receiver.received.count == 2 })
            }
        }
        #expect(receiver.received.map(\.eventMessage) == ["churn: champion moved to v1", "churn: champion moved to v2"])
        let refused = logs.lines(containing: "refused")
        #expect(refused.count == 1)
        #expect(refused.first?.metadata["status"] == "400")
        #expect(refused.first?.metadata["answer"] == "no: status 400")
        #expect(logs.lines(containing: "retrying").isEmpty)
    }

    @Test func aHangingReceiverHoldsUpNeitherSendNorOtherTargets() async throws {
        let silent = try SilentListener()
        let receiver = Receiver()
        let logs = LogCapture()
        try await receiver.serve { base in
            var configuration = fastConfiguration()
            configuration.requestTimeout = .seconds(60)
            let notifier = Notifier(targets: [
                NotificationTarget(name: "STUCK", url: "http://127.0.0.1:\(silent.port)/hook", format: .json),
                NotificationTarget(name: "GOOD", url: base + "/hook", format: .slack),
            ], configuration: configuration, logger: logs.logger)
            try await withRunningNotifier(notifier) { stop in
                // send returns at once, every time, although the first target never answers.
                for n in 1...20 { notifier.send([event(n)]) }
                #expect(await eventually { receiver.received.count == 20 })
                #expect(receiver.received.map(\.eventMessage) == (1...20).map { ":arrow_right: churn: champion moved to v\($0) at 0123456" })
                // Shutdown does not wait for the stuck request beyond the drain time.
                #expect(await stop())
            }
        }
        let stuck = logs.lines.filter { $0.metadata["target"] == "STUCK" }
        #expect(stuck.contains { $0.message.contains("not delivered") || $0.message.contains("not sent") }, "\(logs.lines.map(\.rendered))")
    }

    @Test func aRefusedConnectionIsRetriedThenGivenUpWithoutTheSecretInTheLogs() async throws {
        let port = try refusedPort()
        let logs = LogCapture()
        let url = "http://127.0.0.1:\(port)/services/T0SECRET/B0SECRET/XXXXSECRETXXXX?token=QUERYSECRET"
        let notifier = Notifier(targets: [NotificationTarget(name: "CAPSTAN_SLACK_URL", url: url, format: .slack)],
                                configuration: fastConfiguration(attempts: 3), logger: logs.logger)
        try await withRunningNotifier(notifier) { _ in
            notifier.send([validated])
            #expect(await eventually { !logs.lines(containing: "giving up").isEmpty })
        }
        let lines = logs.lines
        #expect(lines.filter { $0.message.contains("retrying") }.count == 2)
        let givenUp = try #require(logs.lines(containing: "giving up").first)
        #expect(givenUp.level == .error)
        #expect(givenUp.metadata["target"] == "CAPSTAN_SLACK_URL")
        #expect(givenUp.metadata["host"] == "127.0.0.1")
        #expect(givenUp.metadata["attempt"] == "3")
        #expect(givenUp.metadata["error"] == "connection refused", "\(givenUp.rendered)")
        for line in lines {
            #expect(!line.rendered.contains("SECRET"), "\(line.rendered)")
            #expect(!line.rendered.contains("/services"), "\(line.rendered)")
        }
    }

    @Test func gracefulShutdownWhileRetryingEndsPromptly() async throws {
        let port = try refusedPort()
        let logs = LogCapture()
        var configuration = NotifierConfiguration()
        configuration.maxAttempts = 100
        configuration.initialBackoff = .seconds(300)
        configuration.maxBackoff = .seconds(300)
        configuration.drainTimeout = .seconds(2)
        let notifier = Notifier(targets: [NotificationTarget(name: "HOOK", url: "http://127.0.0.1:\(port)/hook", format: .json)],
                                configuration: configuration, logger: logs.logger)
        try await withRunningNotifier(notifier) { stop in
            notifier.send([event(1), event(2)])
            #expect(await eventually { !logs.lines(containing: "retrying").isEmpty })
            // The notifier sleeps 300 s before its next attempt; shutdown does not wait for it.
            #expect(await stop())
        }
        #expect(logs.lines(containing: "retrying").count == 1)
        #expect(logs.lines(containing: "shutting down").count == 2, "\(logs.lines.map(\.rendered))")
        // Events sent after the notifier stopped are dropped with a warning, not queued.
        notifier.send([event(3)])
        #expect(logs.lines(containing: "notifier stopped").count == 1)
    }

    @Test func backoffDoublesUpToTheCapAndHonoursRetryAfter() {
        var configuration = NotifierConfiguration()
        configuration.initialBackoff = .seconds(1)
        configuration.maxBackoff = .seconds(10)
        let notifier = Notifier(targets: [], configuration: configuration, logger: quietLogger)
        #expect((1...6).map { notifier.backoff(after: $0, retryAfter: nil) } == [.seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(10), .seconds(10)])
        #expect(notifier.backoff(after: 1, retryAfter: .seconds(5)) == .seconds(5))
        #expect(notifier.backoff(after: 3, retryAfter: .seconds(2)) == .seconds(4))
        #expect(notifier.backoff(after: 1, retryAfter: .seconds(3600)) == .seconds(10))
        let defaults = NotifierConfiguration()
        #expect(defaults.queueLimit == 1000 && defaults.requestTimeout == .seconds(10) && defaults.initialBackoff == .seconds(1))
    }

    @Test func aNotifierRunsOnce() async throws {
        let receiver = Receiver()
        try await receiver.serve { base in
            let notifier = Notifier(targets: [NotificationTarget(name: "HOOK", url: base + "/hook", format: .json)],
                                    configuration: fastConfiguration(), logger: quietLogger)
            try await withRunningNotifier(notifier) { _ in
                notifier.send([event(1)])
                // Delivered: the service group's run() is under way.
                #expect(await eventually { receiver.received.count == 1 })
                await #expect(throws: NotifierError.self) { try await notifier.run() }
            }
        }
    }

    @Test func aFullQueueDropsTheOldestWithAWarning() async throws {
        let receiver = Receiver()
        let logs = LogCapture()
        try await receiver.serve { base in
            var configuration = fastConfiguration()
            configuration.queueLimit = 2
            let notifier = Notifier(targets: [NotificationTarget(name: "HOOK", url: base + "/hook", format: .json)],
                                    configuration: configuration, logger: logs.logger)
            // Not running yet: events wait in the queue.
            notifier.send((1...5).map(event))
            let dropped = logs.lines(containing: "queue full")
            #expect(dropped.count == 3)
            #expect(dropped.map { $0.metadata["version"] } == ["1", "2", "3"])
            #expect(dropped.allSatisfy { $0.level == .warning })
            try await withRunningNotifier(notifier) { _ in
                #expect(await eventually { receiver.received.count == 2 })
            }
        }
        #expect(receiver.received.map(\.eventMessage) == ["churn: champion moved to v4", "churn: champion moved to v5"])
    }
}
