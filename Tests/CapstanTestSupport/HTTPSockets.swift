import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One connection driven byte by byte (blocking sockets on a thread of its own): what a server
/// sends, and whether it closed the connection, for answers that must be complete and end.
enum RawSocket {
    struct Exchange: Sendable {
        /// Everything received, as UTF-8 text.
        var text: String
        /// The server closed the connection (else the wait ended at the timeout).
        var closed: Bool

        /// The status code of the first answer.
        var status: Int? { Int(text.split(separator: " ", maxSplits: 2).dropFirst().first ?? "") }

        /// The header fields of the first answer, names lowercased; a repeated name keeps its
        /// values in order.
        var headers: [String: [String]] {
            guard let end = text.range(of: "\r\n\r\n") else { return [:] }
            var out: [String: [String]] = [:]
            for line in text[..<end.lowerBound].components(separatedBy: "\r\n").dropFirst() {
                guard let colon = line.firstIndex(of: ":") else { continue }
                out[line[..<colon].lowercased(), default: []].append(line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            }
            return out
        }

        /// What follows the first answer's head.
        var body: String {
            guard let end = text.range(of: "\r\n\r\n") else { return "" }
            return String(text[end.upperBound...])
        }
    }

    /// Connects to `host:port`, sends `request` (then `more` after a pause, when given), and
    /// reads until the server closes or `timeout` seconds pass without it.
    static func exchange(port: Int, host: String = "127.0.0.1", _ request: String, more: String? = nil,
                         timeout: Double = 10) async -> Exchange {
        await withCheckedContinuation { continuation in
            let thread = Thread {
                continuation.resume(returning: blockingExchange(host: host, port: port, request: Array(request.utf8),
                                                                more: more.map { Array($0.utf8) }, timeout: timeout))
            }
            thread.start()
        }
    }

    private static func blockingExchange(host: String, port: Int, request: [UInt8], more: [UInt8]?, timeout: Double) -> Exchange {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let info = list else {
            return Exchange(text: "cannot resolve \(host)", closed: false)
        }
        defer { freeaddrinfo(list) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { return Exchange(text: "no socket", closed: false) }
        defer { close(fd) }
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            return Exchange(text: "cannot connect: \(String(cString: strerror(errno)))", closed: false)
        }
        func send(_ bytes: [UInt8]) {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return }
                offset += n
            }
        }
        send(request)
        if let more {
            usleep(200_000)
            send(more)
        }
        let deadline = Date().addingTimeInterval(timeout)
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return Exchange(text: String(decoding: received, as: UTF8.self), closed: false) }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32(left * 1000))
            if ready <= 0 { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { return Exchange(text: String(decoding: received, as: UTF8.self), closed: true) }
            if n < 0 {
                if errno == EINTR { continue }
                // A reset ends the connection too.
                return Exchange(text: String(decoding: received, as: UTF8.self), closed: true)
            }
            received += buffer[0..<n]
        }
    }
}
