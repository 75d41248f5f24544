import Synchronization

/// Wakes the loop: a nudge, a deadline, or shutdown. Nudges that arrive while nobody waits are
/// kept (coalesced) for the next wait.
public final class Wakeup: Sendable {
    public enum Reason: Equatable, Sendable {
        case nudged(String)
        case timeout
        case shutdown
    }

    private struct State {
        var pending: [String] = []
        var shutdown = false
        var waiter: (id: UInt64, continuation: CheckedContinuation<Reason, Never>)?
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())
    private let sleep: @Sendable (ContinuousClock.Instant) async -> Void

    /// `sleep` waits until a deadline (tests replace it to see when timers start).
    public init(sleep: @escaping @Sendable (ContinuousClock.Instant) async -> Void = { try? await Task.sleep(until: $0, clock: .continuous) }) {
        self.sleep = sleep
    }

    /// Someone is waiting.
    public var isWaiting: Bool { state.withLock { $0.waiter != nil } }

    public func nudge(_ why: String) {
        let waiter = state.withLock { state -> CheckedContinuation<Reason, Never>? in
            guard let waiter = state.waiter else {
                if !state.pending.contains(why) { state.pending.append(why) }
                return nil
            }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume(returning: .nudged(why))
    }

    public func shutdown() {
        let waiter = state.withLock { state -> CheckedContinuation<Reason, Never>? in
            state.shutdown = true
            defer { state.waiter = nil }
            return state.waiter?.continuation
        }
        waiter?.resume(returning: .shutdown)
    }

    /// Returns at the first nudge (or one kept from before), at shutdown, or at `deadline`.
    public func wait(until deadline: ContinuousClock.Instant) async -> Reason {
        let id = state.withLock { state -> UInt64 in
            state.nextID += 1
            return state.nextID
        }
        let timer = Mutex<Task<Void, Never>?>(nil)
        defer { timer.withLock { $0?.cancel() } }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Reason, Never>) in
                let immediate = state.withLock { state -> Reason? in
                    if state.shutdown { return .shutdown }
                    if !state.pending.isEmpty { return .nudged(state.pending.removeAll().joined(separator: ", ")) }
                    state.waiter = (id, continuation)
                    return nil
                }
                if let immediate {
                    continuation.resume(returning: immediate)
                    return
                }
                // The timer starts only once the waiter is registered: started before, a deadline
                // that is already due (or a waiting task slow to get a thread) fired into nothing,
                // and the loop slept until the next nudge.
                timer.withLock {
                    $0 = Task {
                        await self.sleep(deadline)
                        guard !Task.isCancelled else { return }
                        self.fire(id, .timeout)
                    }
                }
            }
        } onCancel: {
            self.fire(id, .shutdown)
        }
    }

    private func fire(_ id: UInt64, _ reason: Reason) {
        let waiter = state.withLock { state -> CheckedContinuation<Reason, Never>? in
            guard let waiter = state.waiter, waiter.id == id else { return nil }
            state.waiter = nil
            return waiter.continuation
        }
        waiter?.resume(returning: reason)
    }
}

extension Array {
    /// Empties the array, returning what it held.
    fileprivate mutating func removeAll() -> [Element] {
        defer { self = [] }
        return self
    }
}
