import CapstanFuzz
import Foundation
#if FUZZING
import CFuzzerDriver

/// libFuzzer's callback. (Its own main, linked in beside ours, calls it too.)
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.webhook.runOrTrap(data, size)
    return 0
}
#endif

/// libFuzzer over FuzzTarget.webhook: built with -sanitize=fuzzer,address and -DFUZZING by
/// scripts/fuzz.sh. A plain build replays the files it is given instead.
@main
enum FuzzWebhookMain {
    static func main() {
        #if FUZZING
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
        #else
        exit(FuzzTarget.webhook.replay(Array(CommandLine.arguments.dropFirst())))
        #endif
    }
}
