import CapstanCore
import Synchronization

/// Holds the lease a pass runs under: takes it, renews it every quarter of its time to live,
/// checks every second that it is still held, and lets go of it. A lease found lost (taken over
/// after it expired, removed with `capstan unlock --force`) calls `onLost` once; the pass's own
/// writes are refused by the store from then on anyway (they check the fence), so the caller
/// stops the pass there.
///
/// `apply` holds one for its one pass; the controller one per pass.
public final class LeaseKeeper: Sendable {
    /// The lock `apply` and `run` take before changing anything.
    public static let applyLock = "apply"
    /// How long a lease lives without renewal.
    public static let defaultTTL: Int64 = 60_000

    public let store: any StateStore
    public let grant: LeaseGrant
    public let ttl: Int64

    private struct State {
        var lost: ReconcileFailure?
        var onLost: (@Sendable (ReconcileFailure) -> Void)?
        var task: Task<Void, Never>?
        /// Set by `release`: a check still in flight then finds the lease gone, which is not a loss.
        var released = false
    }

    private let state = Mutex(State())

    public var fence: Fence { grant.fence }

    /// Takes the lock `name` for a fresh holder id, waiting up to `waitMilliseconds` for a live
    /// holder to let go.
    public static func acquire(_ store: any StateStore, name: String = LeaseKeeper.applyLock, holder: String, command: String,
                               ttl: Int64 = LeaseKeeper.defaultTTL, waitMilliseconds: Int64) async throws -> LeaseKeeper {
        let grant = try await store.acquireLease(name: name, holder: holder, command: command, ttlMilliseconds: ttl,
                                                 waitMilliseconds: waitMilliseconds)
        return LeaseKeeper(store: store, grant: grant, ttl: ttl)
    }

    init(store: any StateStore, grant: LeaseGrant, ttl: Int64) {
        self.store = store
        self.grant = grant
        self.ttl = ttl
    }

    /// The failure the lease was lost with, if it was.
    public var lost: ReconcileFailure? { state.withLock { $0.lost } }

    /// Called by the pass's fenced store when a write found the lease lost.
    public func reportLost(_ error: any Error) {
        lose(Failures.classify(error))
    }

    /// Starts renewing and checking; `onLost` runs at once if the lease was already found lost.
    public func start(onLost: @escaping @Sendable (ReconcileFailure) -> Void) {
        let store = self.store, fence = self.fence, ttl = self.ttl
        let task = Task { [self] in
            let clock = ContinuousClock()
            var renewed = clock.now
            let fenced = store.fenced(by: fence) { _ in }
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled { return }
                do {
                    if clock.now - renewed >= .milliseconds(ttl / 4) {
                        try await store.renewLease(fence, ttlMilliseconds: ttl)
                        renewed = clock.now
                    } else {
                        try await fenced.checkLease()
                    }
                } catch {
                    let failure = Failures.classify(error)
                    if failure.reason == .leaseLost {
                        self.lose(failure)
                        return
                    }
                    // Tried again in a second; the fence guards the writes meanwhile.
                }
            }
        }
        let already = state.withLock { state -> ReconcileFailure? in
            state.onLost = onLost
            state.task = task
            return state.lost
        }
        if let already { onLost(already) }
    }

    /// Stops renewing and lets go of the lease (unless it was lost: then it is someone else's).
    public func release() async {
        let (task, lost) = state.withLock { state in
            state.released = true
            return (state.task, state.lost)
        }
        task?.cancel()
        // The loop's last check must not run after the row is gone (it would read as a loss).
        await task?.value
        if lost == nil { try? await store.releaseLease(fence) }
    }

    private func lose(_ failure: ReconcileFailure) {
        let handler = state.withLock { state -> (@Sendable (ReconcileFailure) -> Void)? in
            guard state.lost == nil, !state.released else { return nil }
            state.lost = failure
            return state.onLost
        }
        handler?(failure)
    }
}
