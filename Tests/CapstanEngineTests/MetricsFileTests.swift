import Foundation
import Testing
@testable import CapstanEngine
@testable import CapstanTestSupport

/// The metrics file as steps write it: real files in a temporary folder, FIFOs and devices
/// included.
struct MetricsFileTests {
    let secret = "canary-5ecret-value"
    var scrubber: SecretScrubber { SecretScrubber(secrets: [secret]) }

    func read(_ text: String, required: Bool = false) throws -> [String: Double] {
        let dir = try TempDir()
        let path = dir.path + "/metrics.json"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        return try MetricsFile.read(path, required: required, scrubber: scrubber)
    }

    func failure(_ text: String) throws -> MetricsFileError {
        do {
            let metrics = try read(text)
            Issue.record("accepted \(text.debugDescription) as \(metrics)")
            throw CancellationError()
        } catch let error as MetricsFileError {
            #expect(!error.message.contains(secret), "\(error.message)")
            #expect(!error.message.contains("\n") && !error.message.contains("\0"), "\(error.message.debugDescription)")
            return error
        }
    }

    @Test func numbersAreRead() throws {
        #expect(try read(#"{"accuracy": 0.93, "loss/train": 1, "p95_ms": -2.5e1}"#) == ["accuracy": 0.93, "loss/train": 1, "p95_ms": -25])
        #expect(try read("\u{FEFF}{}") == [:])
        #expect(try read(#"{"a\u0062c": 1}"#) == ["abc": 1])
    }

    @Test func aMissingFileIsNoMetricsUnlessRequired() throws {
        let dir = try TempDir()
        #expect(try MetricsFile.read(dir.path + "/metrics.json", required: false, scrubber: scrubber) == [:])
        let error = #expect(throws: MetricsFileError.self) { try MetricsFile.read(dir.path + "/metrics.json", required: true, scrubber: scrubber) }
        #expect(error?.code == .missing)
        #expect(error?.message.contains("'\(dir.path)/metrics.json' (CAPSTAN_METRICS_FILE) does not exist") == true, "\(String(describing: error))")
    }

    @Test(arguments: [
        (#"{"a\u0000b": 1}"#, MetricsFileError.Code.invalidName, #"metric named 'a\0b', which is not a metric name: it contains '\0' (a control character)"#),
        (#"{"a\nb": 1}"#, .invalidName, #"metric named 'a\nb'"#),
        (#"{"": 1}"#, .invalidName, "metric named '', which is not a metric name: it is empty"),
        ("{\"\(String(repeating: "m", count: 129))\": 1}", .invalidName, "it is 129 characters long; the limit is 128"),
        (#"{"auc:roc": 1}"#, .invalidName, "it contains ':'"),
        (#"{"accuracy": 0.9, "loss": 1, "accuracy": 0.1}"#, .duplicateName, "has metric 'accuracy' more than once; write each metric once"),
        (#"{"acc": 0.9, "a\u0063c": 0.1}"#, .duplicateName, "has metric 'acc' more than once"),
        (#"{"x": "0.9"}"#, .notANumber, #"metric 'x' in the metrics file"#),
        (#"{"x": "0.9"}"#, .notANumber, #"is the string "0.9", not a number; write it without quotes"#),
        (#"{"x": "high"}"#, .notANumber, #"is the string "high", not a number; metrics must be numbers"#),
        (#"{"x": true}"#, .notANumber, "is true, not a number"),
        (#"{"x": null}"#, .notANumber, "is null, not a number"),
        (#"{"x": {"y": 1}}"#, .notANumber, "is an object, not a number"),
        (#"{"x": [1]}"#, .notANumber, "is a list, not a number"),
        ("accuracy: high", .notAnObject, "is not a JSON object of numbers (it starts with 'accuracy: high')"),
        ("[1, 2]", .notAnObject, "is not a JSON object of numbers"),
        ("", .notAnObject, "(it is empty)"),
        ("line one\nline two", .notAnObject, #"(it starts with 'line one\nline two')"#),
    ])
    func badMetricsAreRefusedWithTheReason(_ text: String, _ code: MetricsFileError.Code, _ expected: String) throws {
        let error = try failure(text)
        #expect(error.code == code)
        #expect(error.message.contains(expected), "\(error.message)")
        #expect(error.message.contains("/metrics.json'"), "\(error.message)")
    }

    /// A secret in any text of the file is never quoted: in the text of a file that is not JSON
    /// (also where the quote is cut through the secret), in a string value, in a key.
    @Test func secretsInTheFileAreNeverQuoted() throws {
        for start in 70...82 {
            let text = String(repeating: "x", count: start) + secret + " not json"
            let error = try failure(text)
            #expect(error.code == .notAnObject)
            for length in 3...secret.count {
                #expect(!error.message.contains(secret.prefix(length)), "\(start): \(error.message)")
            }
        }
        let value = try failure("{\"token\": \"\(secret)\"}")
        #expect(value.message.contains(#"is the string "[secret]", not a number"#), "\(value.message)")
        let key = try failure("{\"\(secret)\": 1}")
        #expect(key.code == .secretInName)
        #expect(key.message.contains("metric named '[secret]', which holds the value of a secret"), "\(key.message)")
        let escapedKey = try failure("{\"\\u0063anary-5ecret-value\": 1}")
        #expect(escapedKey.code == .secretInName)
        let badKey = try failure("{\"\(secret) x\": 1}")
        #expect(badKey.code == .secretInName)
    }

    /// A FIFO is refused without being opened for a blocking read (the test would hang), a
    /// device or a symlink without being read.
    @Test func specialFilesAreRefusedWithoutReadingThem() throws {
        let dir = try TempDir()
        let fifo = dir.path + "/fifo.json"
        #expect(mkfifo(fifo, 0o644) == 0)
        let f = #expect(throws: MetricsFileError.self) { try MetricsFile.read(fifo, required: false, scrubber: scrubber) }
        #expect(f?.code == .notARegularFile)
        #expect(f?.message.contains("'\(fifo)' is a FIFO (named pipe), not a regular file; write a JSON object of numbers into the file itself") == true,
                "\(String(describing: f))")

        let link = dir.path + "/zero.json"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: "/dev/zero")
        let l = #expect(throws: MetricsFileError.self) { try MetricsFile.read(link, required: false, scrubber: scrubber) }
        #expect(l?.message.contains("'\(link)' is a symlink, not a regular file") == true, "\(String(describing: l))")

        let device = #expect(throws: MetricsFileError.self) { try MetricsFile.read("/dev/zero", required: false, scrubber: scrubber) }
        #expect(device?.message.contains("'/dev/zero' is a character device, not a regular file") == true, "\(String(describing: device))")

        let folder = #expect(throws: MetricsFileError.self) { try MetricsFile.read(dir.path, required: false, scrubber: scrubber) }
        #expect(folder?.message.contains("is a folder, not a regular file") == true)
    }

    @Test func aFileOverOneMebibyteIsRefused() throws {
        let error = try failure("{\"a\": 1" + String(repeating: " ", count: 1 << 20) + "}")
        #expect(error.code == .tooLarge)
        #expect(error.message.contains("is larger than the 1 MiB allowed"), "\(error.message)")
    }
}
