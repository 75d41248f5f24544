import AsyncHTTPClient
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// Words for why an HTTP call got no answer.
enum ConnectionFailure {
    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return "connect timeout"
            case .deadlineExceeded: return "timed out"
            case .readTimeout: return "read timeout"
            case .remoteConnectionClosed: return "connection closed before a response"
            case .cancelled: return "cancelled"
            default: return e.description
            }
        }
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return describe(first.error) }
            return e.description
        }
        if let e = error as? IOError {
            switch e.errnoCode {
            case ECONNREFUSED: return "connection refused"
            case ECONNRESET: return "connection reset"
            case ETIMEDOUT: return "timed out"
            case EPIPE: return "connection closed"
            default: return e.description
            }
        }
        if let e = error as? ChannelError {
            switch e {
            case .connectTimeout: return "connect timeout"
            case .ioOnClosedChannel, .eof, .alreadyClosed, .outputClosed: return "connection closed before a response"
            default: return "\(e)"
            }
        }
        if let e = error as? HTTPParserError {
            return "the answer is not valid HTTP/1.1 (\(e))"
        }
        let text = "\(error)"
        if text.contains("ECONNREFUSED") || text.lowercased().contains("connection refused") { return "connection refused" }
        return text
    }
}
