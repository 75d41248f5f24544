import Foundation

/// A fuzz target: bytes in, the invariants that failed out (empty when all held). The libFuzzer
/// executables (`FuzzManifest`, `FuzzWebhook`, `FuzzGatewayHead`, built by scripts/fuzz.sh)
/// stop on the first violation, which libFuzzer keeps as a crashing input; `CapstanFuzzTests`
/// runs every seed and every regression input through the same function.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case manifest
    case webhook
    case gatewayHead = "gateway-head"

    public func run(_ bytes: [UInt8]) -> [String] {
        switch self {
        case .manifest: return ManifestFuzz.run(bytes)
        case .webhook: return WebhookFuzz.run(bytes)
        case .gatewayHead: return GatewayHeadFuzz.run(bytes)
        }
    }

    /// For a libFuzzer callback: runs the input and traps on a violation (libFuzzer records the
    /// input as a crash).
    public func runOrTrap(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
        let violations = run(bytes)
        if !violations.isEmpty {
            FileHandle.standardError.write(Data(("invariant violated (\(rawValue)):\n" + violations.joined(separator: "\n") + "\n").utf8))
            fatalError("fuzz invariant violated")
        }
    }

    /// Without libFuzzer (a plain build): runs each file given (or each file in each folder
    /// given) once and reports violations; exit status 1 when any. Reproduces a finding under a
    /// debugger with `swift run FuzzManifest path/to/crash-…`.
    public func replay(_ arguments: [String]) -> Int32 {
        var files: [String] = []
        for argument in arguments where !argument.hasPrefix("-") {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else { continue }
            if isDirectory.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []
                files += names.sorted().map { argument + "/" + $0 }
            } else {
                files.append(argument)
            }
        }
        if files.isEmpty {
            print("usage: \(CommandLine.arguments.first ?? "fuzz") FILE|FOLDER… (this build has no libFuzzer: scripts/fuzz.sh builds one)")
            return 64
        }
        var failed = 0
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            let violations = run([UInt8](data))
            if !violations.isEmpty {
                failed += 1
                print("\(file): " + violations.joined(separator: "; "))
            }
        }
        print("\(rawValue): \(files.count) inputs, \(failed) with violations")
        return failed == 0 ? 0 : 1
    }
}

/// Runs async work to completion from a synchronous caller (the libFuzzer callback, which is
/// never on the cooperative pool).
func runBlocking<T: Sendable>(_ operation: @escaping @Sendable () async -> T) -> T {
    let box = ResultBox<T>()
    let done = DispatchSemaphore(value: 0)
    Task {
        box.value = await operation()
        done.signal()
    }
    done.wait()
    return box.value!
}

/// Written once by the task, read after the semaphore: the semaphore orders the two.
private final class ResultBox<T>: @unchecked Sendable {
    var value: T?
}
