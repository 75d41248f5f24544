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
    }

    static var networkTimeoutMilliseconds: Int {
        Int(capstan_git_stream_timeout_ms())
    }
}
