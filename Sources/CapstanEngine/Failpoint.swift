import Foundation

/// Named points where a test can have the process killed (`CAPSTAN_FAILPOINT=train.after-start`),
/// to check that the next pass converges whatever moment a crash hits. Costs one comparison when
/// the variable is unset; does nothing unless it names the point exactly.
enum Failpoint {
    static let armed = ProcessInfo.processInfo.environment["CAPSTAN_FAILPOINT"]

    /// The points, in the order a pass meets them (tests iterate over this list).
    static let all = [
        "train.after-journal", "train.after-create-version", "train.after-start", "train.after-exit",
        "train.after-artifact", "train.after-trained", "train.after-finish", "train.after-failed",
        "validate.after-start", "validate.after-command", "validate.before-update", "validate.after-update",
        "alias.before-set", "alias.after-set", "deployment.after-serving",
    ]

    static func hit(_ name: String) {
        guard let armed, armed == name else { return }
        kill(getpid(), SIGKILL)
    }
}
