import Foundation
import Synchronization
import Testing
@testable import CapstanController

/// The controller loop's wake-up: deadlines, nudges and shutdown, and that none is ever lost.
@Suite struct WakeupTests {
    /// Waits, but gives up (cancelling the wait) after `seconds`; nil when it had to give up. A
    /// lost timeout never returns; a slow one can take seconds while other suites keep the
    /// cooperative threads busy, hence the minute.
    func wait(_ wakeup: Wakeup, until deadline: ContinuousClock.Instant, giveUpAfter seconds: Int = 60) async -> Wakeup.Reason? {
        await withTaskGroup(of: Wakeup.Reason?.self) { group in
            group.addTask { await wakeup.wait(until: deadline) }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// A timeout is never lost: the timer starts only once the waiter is registered. It used to
    /// start first; when it fired before the registration (a deadline already due, a thread
    /// preempted), the timeout went nowhere and the controller slept until the next webhook
    /// (seen in CI as a canary that stopped advancing). The sleep here returns at once and checks
    /// that the waiter is already there. (A lost timeout hangs the wait: the time limit fails it.)
    @Test(.timeLimit(.minutes(1)))
    func theTimerStartsOnlyOnceTheWaiterIsRegistered() async {
        let early = Atomic<Int>(0)
        let current = Mutex<Wakeup?>(nil)
        let wakeup = Wakeup(sleep: { _ in
            if current.withLock({ $0 })?.isWaiting != true { early.add(1, ordering: .relaxed) }
        })
        current.withLock { $0 = wakeup }
        let clock = ContinuousClock()
        for round in 0..<10000 {
            let reason = await wakeup.wait(until: clock.now + .seconds(60))
            #expect(reason == .timeout, "round \(round): \(reason)")
            if reason != .timeout { break }
        }
        #expect(early.load(ordering: .relaxed) == 0, "timers started before their waiter: \(early.load(ordering: .relaxed))")
        current.withLock { $0 = nil }
    }

    /// A deadline already due times out at once.
    @Test(.timeLimit(.minutes(1)))
    func aDueDeadlineTimesOut() async {
        let wakeup = Wakeup()
        let clock = ContinuousClock()
        for round in 0..<500 {
            let reason = await wakeup.wait(until: clock.now - .milliseconds(1))
            #expect(reason == .timeout, "round \(round): \(reason)")
            if reason != .timeout { break }
        }
    }

    @Test func aNudgeWakesTheWaiterAndNudgesWhileNobodyWaitsCoalesce() async throws {
        let wakeup = Wakeup()
        let clock = ContinuousClock()
        async let woken = wait(wakeup, until: clock.now + .seconds(60))
        try await Task.sleep(for: .milliseconds(100))
        wakeup.nudge("github webhook")
        #expect(await woken == .nudged("github webhook"))

        wakeup.nudge("api")
        wakeup.nudge("github webhook")
        wakeup.nudge("api")
        #expect(await wait(wakeup, until: clock.now + .seconds(60)) == .nudged("api, github webhook"))
        // Taken: the next wait times out.
        #expect(await wait(wakeup, until: clock.now + .milliseconds(50)) == .timeout)
    }

    @Test func shutdownWakesTheWaiterAndEveryLaterWait() async throws {
        let wakeup = Wakeup()
        let clock = ContinuousClock()
        async let woken = wait(wakeup, until: clock.now + .seconds(60))
        try await Task.sleep(for: .milliseconds(100))
        wakeup.shutdown()
        #expect(await woken == .shutdown)
        wakeup.nudge("api")
        #expect(await wait(wakeup, until: clock.now + .seconds(60)) == .shutdown)
    }
}
