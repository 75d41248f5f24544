import CapstanServer
@testable import CapstanTestSupport
import Foundation
import Hummingbird
import NIOCore
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Headless Chromium (Debian: `apt-get install chromium`), run as a user would run it against a
/// page served over HTTP. It runs as root here, hence `--no-sandbox`; every run gets a private
/// profile and is killed after `timeout` seconds so that a hang cannot hang the suite.
enum Chromium {
    static func executable() -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let given = environment["CHROMIUM"], FileManager.default.isExecutableFile(atPath: given) { return given }
        let path = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"]
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            for folder in path where FileManager.default.isExecutableFile(atPath: folder + "/" + name) {
                return folder + "/" + name
            }
        }
        return nil
    }

    struct Run {
        var status: Int32
        var stdout: Data
        var stderr: String
        var timedOut: Bool
    }

    /// Runs Chromium headless with `arguments` (after the common ones); output goes to files in
    /// `folder`, which also holds the profile.
    static func run(_ executable: String, _ arguments: [String], in folder: URL, name: String, timeout: Double = 60) async throws -> Run {
        let common = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                      "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                      "--user-data-dir=" + folder.appendingPathComponent("profile-\(name)").path]
        return try await runProcess(executable, common + arguments, in: folder, name: name, timeout: timeout)
    }

    /// Runs a program without blocking a thread, its output in files in `folder`; killed (with its
    /// process group when it leads one) after `timeout` seconds.
    static func runProcess(_ executable: String, _ arguments: [String], in folder: URL, name: String, timeout: Double = 60) async throws -> Run {
        let out = folder.appendingPathComponent("\(name).stdout"), err = folder.appendingPathComponent("\(name).stderr")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let stdout = try FileHandle(forWritingTo: out), stderr = try FileHandle(forWritingTo: err)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        let timedOut = Flag()
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { ended in continuation.resume(returning: ended.terminationStatus) }
            do {
                try process.run()
            } catch {
                continuation.resume(throwing: error)
                return
            }
            let pid = process.processIdentifier
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                // Still there after the timeout: kill it (and its process group when it leads one).
                guard kill(pid, 0) == 0 else { return }
                timedOut.set()
                if getpgid(pid) == pid { kill(-pid, SIGKILL) }
                kill(pid, SIGKILL)
            }
        }
        try stdout.close()
        try stderr.close()
        return Run(status: status, stdout: (try? Data(contentsOf: out)) ?? Data(),
                   stderr: String(decoding: (try? Data(contentsOf: err)) ?? Data(), as: UTF8.self), timedOut: timedOut.isSet)
    }
}

/// The size in a PNG's IHDR chunk, or nil when `data` is not a PNG.
func pngSize(_ data: Data) -> (width: Int, height: Int)? {
    let bytes = [UInt8](data.prefix(24))
    guard bytes.count == 24, bytes[0..<8].elementsEqual([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]),
          bytes[12..<16].elementsEqual(Array("IHDR".utf8)) else { return nil }
    func be32(_ at: Int) -> Int { bytes[at..<at + 4].reduce(0) { $0 << 8 | Int($1) } }
    return (be32(16), be32(20))
}

/// Counts the pixels of each given colour (`rrggbb`) in an 8-bit RGB(A) PNG, with Python's zlib.
/// Prints the number of distinct colours first.
let pngColours = #"""
    import sys, zlib, struct
    from collections import Counter
    d = open(sys.argv[1], 'rb').read()
    w, h = struct.unpack('>II', d[16:24]); depth, kind = d[24], d[25]
    assert depth == 8 and kind in (2, 6), "not 8-bit RGB(A)"
    pos, idat = 8, b''
    while pos < len(d):
        n, = struct.unpack('>I', d[pos:pos+4])
        if d[pos+4:pos+8] == b'IDAT': idat += d[pos+8:pos+8+n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    bpp = 3 if kind == 2 else 4
    stride = w * bpp
    prev, counts, i = bytes(stride), Counter(), 0
    for y in range(h):
        f = raw[i]; line = bytearray(raw[i+1:i+1+stride]); i += 1 + stride
        if f == 1:
            for x in range(bpp, stride): line[x] = (line[x] + line[x-bpp]) & 255
        elif f == 2:
            for x in range(stride): line[x] = (line[x] + prev[x]) & 255
        elif f == 3:
            for x in range(stride): line[x] = (line[x] + (((line[x-bpp] if x >= bpp else 0) + prev[x]) >> 1)) & 255
        elif f == 4:
            for x in range(stride):
                a = line[x-bpp] if x >= bpp else 0; b = prev[x]; c = prev[x-bpp] if x >= bpp else 0
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else (b if pb <= pc else c))) & 255
        for x in range(0, stride, bpp): counts[bytes(line[x:x+3]).hex()] += 1
        prev = bytes(line)
    print(len(counts))
    for colour in sys.argv[2:]: print(counts.get(colour, 0))
    """#

@Suite struct StatusPageBrowserTests {
    @Test func chromiumShowsTheModelsDeploymentsAndPlots() async throws {
        guard let chromium = Chromium.executable() else {
            Issue.record("Chromium is not installed: apt-get install chromium (CI installs it); this test drives it headless")
            return
        }
        let folder = try TempDir()
        let (status, history) = try StatusFixture.rich()
        let (document, events) = try StatusFixture.documents(status, history)
        let html = StatusPage.render(status: document, history: events, context: StatusFixture.context)
        let blank = "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>blank</title></head><body></body></html>"
        try await withHTTPServer({ request in
            let page = request.uri.path == "/" ? html : request.uri.path == "/blank" ? blank : nil
            guard let page else { return Response(status: .notFound) }
            return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: page)))
        }) { port in
            let url = "http://127.0.0.1:\(port)/"

            // The DOM as Chromium parsed it.
            let dump = try await Chromium.run(chromium, ["--dump-dom", url], in: folder.url, name: "dump")
            #expect(!dump.timedOut, "chromium --dump-dom did not finish within 60 s")
            #expect(dump.status == 0, "chromium --dump-dom exited \(dump.status): \(dump.stderr.suffix(2000))")
            let dom = String(decoding: dump.stdout, as: UTF8.self)
            #expect(dom.contains("<article class=\"model\" id=\"model-churn\""), "\(dom.prefix(2000))")
            #expect(dom.contains("<article class=\"model\" id=\"model-fraud\""))
            #expect(dom.contains("<article class=\"deployment\" id=\"deployment-churn-prod\""))
            #expect(dom.contains("<div class=\"traffic\""))
            #expect(dom.contains("data-percent=\"90\"") && dom.contains("data-percent=\"10\""))
            // churn: v1, v2, v5 validated with auc, v3 rejected; fraud: v1, v2 validated with precision.
            #expect(dom.occurrences(of: "<svg class=\"plot\"") == 2)
            #expect(dom.occurrences(of: "<circle class=\"point validated\"") == 5)
            #expect(dom.occurrences(of: "<path class=\"point rejected\"") == 1)
            #expect(dom.occurrences(of: "<tr class=\"event ") == 3)
            // The markup parsed as written: nothing was moved out of place by the parser.
            #expect(dom.occurrences(of: "<article") == html.occurrences(of: "<article"))
            #expect(dom.occurrences(of: "<tr") == html.occurrences(of: "<tr"))

            // What a person sees: a 1280×2400 (the whole fixture page) screenshot that is not blank.
            let screenshot = folder.url.appendingPathComponent("status-page.png")
            let shot = try await Chromium.run(chromium, ["--screenshot=" + screenshot.path, "--window-size=1280,2400", "--hide-scrollbars", url],
                                              in: folder.url, name: "screenshot")
            #expect(!shot.timedOut && shot.status == 0, "chromium --screenshot exited \(shot.status): \(shot.stderr.suffix(2000))")
            let png = try Data(contentsOf: screenshot)
            let size = try #require(pngSize(png), "the screenshot is not a PNG")
            #expect(size.width == 1280 && size.height == 2400)

            let blankShot = folder.url.appendingPathComponent("blank.png")
            _ = try await Chromium.run(chromium, ["--screenshot=" + blankShot.path, "--window-size=1280,2400", "--hide-scrollbars", url + "blank"],
                                       in: folder.url, name: "blank")
            let blankPNG = try Data(contentsOf: blankShot)
            #expect(pngSize(blankPNG)?.width == 1280)
            // A single-colour page compresses to almost nothing; the status page does not.
            #expect(png.count > 8 * blankPNG.count, "screenshot \(png.count) bytes, blank page \(blankPNG.count) bytes")

            // Its pixels: many colours, the traffic bar's blue (--c0) and the plot's green (--ok).
            let colours = try await Chromium.runProcess("/usr/bin/env", ["python3", "-c", pngColours, screenshot.path, "1565c0", "2e7d32"],
                                                        in: folder.url, name: "colours")
            #expect(colours.status == 0, "\(colours.stderr)")
            let counts = String(decoding: colours.stdout, as: UTF8.self).split(separator: "\n").compactMap { Int($0) }
            #expect(counts.count == 3)
            if counts.count == 3 {
                #expect(counts[0] > 50, "only \(counts[0]) colours in the screenshot")
                #expect(counts[1] > 10_000, "the traffic bar's colour covers \(counts[1]) pixels")
                #expect(counts[2] > 100, "the plot's colour covers \(counts[2]) pixels")
            }
            // Kept for a look: copied next to the other test output, and its path printed.
            let kept = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("capstan-status-page.png")
            try? FileManager.default.removeItem(at: kept)
            try FileManager.default.copyItem(at: screenshot, to: kept)
            print("status page screenshot: \(kept.path)")
            Attachment.record(png, named: "status-page.png")
        }
    }
}
