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

    /// Connect, read and write timeout for network operations, in milliseconds.
    static func setNetworkTimeout(milliseconds: Int) {
        ensureInitialized()
        capstan_git_stream_set_timeout_ms(Int32(clamping: milliseconds))
    }

    static var networkTimeoutMilliseconds: Int {
        Int(capstan_git_stream_timeout_ms())
    }
}
