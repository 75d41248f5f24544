import CapstanFuzz
import Foundation
#if FUZZING
import CFuzzerDriver

/// libFuzzer's callback. (Its own main, linked in beside ours, calls it too.)
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.manifest.runOrTrap(data, size)
    return 0
}
#endif

/// libFuzzer over FuzzTarget.manifest: built with -sanitize=fuzzer,address and -DFUZZING by
/// scripts/fuzz.sh. A plain build replays the files it is given instead.
@main
enum FuzzManifestMain {
    static func main() {
        #if FUZZING
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOneInput(data, size) })
        #else
        exit(FuzzTarget.manifest.replay(Array(CommandLine.arguments.dropFirst())))
        #endif
    }
}
