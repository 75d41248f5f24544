import CCapstanGitStream
import CLibGit2

/// Process-wide libgit2 set-up, done once: library init and Capstan's timeout-aware socket stream.
enum LibGit2 {
    private static let setUp: Void = {
        git_libgit2_init()
        _ = capstan_git_stream_install()
    }()

    static func ensureInitialized() {
        _ = setUp
    }

    /// Connect, read and write timeout, and the overall deadline, for the network operations
    /// that the calling thread runs next (until `clearNetworkDeadline`).
    static func setNetworkTimeout(milliseconds: Int) {
        ensureInitialized()
        capstan_git_stream_set_timeout_ms(Int32(clamping: milliseconds))
        capstan_git_stream_set_deadline_ms(Int64(milliseconds))
    }

    static func clearNetworkDeadline() {
        capstan_git_stream_clear_deadline()
        capstan_git_stream_reset_endpoints()
    }

    /// Forgets where the calling thread connected, and any pin (before a network operation).
    static func resetEndpoints() {
        ensureInitialized()
        capstan_git_stream_reset_endpoints()
    }

    /// Host and port of the calling thread's most recent connection, and a count that changes
    /// with each new connection; nil before the first.
    static func lastConnection() -> (endpoint: NetworkEndpoint, count: UInt64)? {
        var host = [CChar](repeating: 0, count: 257), port = [CChar](repeating: 0, count: 17)
        let count = capstan_git_stream_last_connection(&host, host.count, &port, port.count)
        let endpoint = NetworkEndpoint(host: text(host), port: text(port))
        return count == 0 || endpoint.host.isEmpty ? nil : (endpoint, UInt64(count))
    }

    /// The calling thread connects only to `endpoint` until the next reset.
    static func pin(_ endpoint: NetworkEndpoint) {
        _ = capstan_git_stream_pin(endpoint.host, endpoint.port)
    }

    /// The connection the pin refused since the last reset, if any.
    static func refusedConnection() -> NetworkEndpoint? {
        var host = [CChar](repeating: 0, count: 257), port = [CChar](repeating: 0, count: 17)
        guard capstan_git_stream_refused(&host, host.count, &port, port.count) != 0 else { return nil }
        return NetworkEndpoint(host: text(host), port: text(port))
    }

    /// A NUL-terminated C buffer as text.
    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static var networkTimeoutMilliseconds: Int {
        Int(capstan_git_stream_timeout_ms())
    }
}

/// A host and a port as the socket stream sees them (`127.0.0.1`, `::1`, `github.com`; `443`).
struct NetworkEndpoint: Equatable {
    var host: String
    var port: String

    func matches(_ other: NetworkEndpoint) -> Bool {
        host.lowercased() == other.host.lowercased() && port == other.port
    }
}
