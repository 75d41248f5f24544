import Foundation

/// Blocking work (file copies, hashing, synchronous SQLite calls) run on a dispatch queue, so
/// that it never holds a thread of Swift's cooperative pool (two threads on two cores).
enum Blocking {
    static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(with: Result { try work() })
            }
        }
    }
}
