import FoundationEssentials
import Glibc
import KilnService
import LinuxSys

/// A deliberately plain HTTP/1.1 client over a blocking loopback socket, so that tests control
/// every byte (oversized heads, bodies cut short, many connections at once). Its calls block:
/// the async wrappers run them on `RawHTTP.io`, never on Swift Concurrency's few pool threads,
/// which the server under test needs.
enum RawHTTP {
    static let io = BlockingExecutor(threads: 8)

    struct Response: Sendable {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }

        func json<T: Decodable>(_ type: T.Type) throws -> T { try JSONDecoder().decode(T.self, from: Data(body)) }
    }

    struct Failure: Error, CustomStringConvertible { let description: String }

    /// A connected socket with a receive and send deadline.
    static func connect(port: Int, timeoutSeconds: Int = 60) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: \(errno)") }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = in_addr_t(0x7f00_0001).bigEndian
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { let e = errno; close(fd); throw Failure(description: "connect 127.0.0.1:\(port): errno \(e)") }
        return fd
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw Failure(description: "send: errno \(errno)") }
            offset += n
        }
    }

    /// The request's bytes: a head with Host and Content-Length (when there is a body), then the body.
    static func encode(method: String, path: String, headers: [(String, String)], body: [UInt8]?) -> [UInt8] {
        var head = "\(method) \(path) HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        if let body, !headers.contains(where: { $0.0.lowercased() == "content-length" }) { head += "content-length: \(body.count)\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (body ?? [])
    }

    /// Reads one response from `fd` (Content-Length or chunked body); the connection stays usable.
    static func readResponse(_ fd: Int32, buffer: inout [UInt8]) throws -> Response {
        func fill() throws {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 { if errno == EINTR { return }; throw Failure(description: "recv: errno \(errno)") }
            if n == 0 { throw Failure(description: "the server closed the connection (\(buffer.count) bytes unread)") }
            buffer += chunk[0..<n]
        }
        func find(_ needle: [UInt8], from: Int = 0) -> Int? {
            guard buffer.count >= needle.count + from else { return nil }
            for i in from...(buffer.count - needle.count) where buffer[i] == needle[0] && Array(buffer[i..<(i + needle.count)]) == needle { return i }
            return nil
        }
        let crlf = Array("\r\n".utf8)
        var headEnd = find(Array("\r\n\r\n".utf8))
        while headEnd == nil { try fill(); headEnd = find(Array("\r\n\r\n".utf8)) }
        let lines = String(decoding: buffer[0..<headEnd!], as: UTF8.self).split(separator: "\r\n")
        let statusParts = lines.first?.split(separator: " ") ?? []
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw Failure(description: "bad status line \(lines.first ?? "")") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = String(line[line.index(after: colon)...].drop { $0 == " " })
        }
        buffer.removeFirst(headEnd! + 4)
        var body: [UInt8] = []
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while true {
                var lineEnd = find(crlf)
                while lineEnd == nil { try fill(); lineEnd = find(crlf) }
                let sizeText = String(decoding: buffer[0..<lineEnd!], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(sizeText, radix: 16) else { throw Failure(description: "bad chunk size '\(sizeText)'") }
                buffer.removeFirst(lineEnd! + 2)
                while buffer.count < size + 2 { try fill() }
                body += buffer[0..<size]
                buffer.removeFirst(size + 2)
                if size == 0 { break }
            }
        } else {
            let length = Int(headers["content-length"] ?? "0") ?? 0
            while buffer.count < length { try fill() }
            body = Array(buffer[0..<length])
            buffer.removeFirst(length)
        }
        return Response(status: status, headers: headers, body: body)
    }

    /// One request on a connection of its own.
    static func requestBlocking(port: Int, _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) throws -> Response {
        let fd = try connect(port: port)
        defer { close(fd) }
        try sendAll(fd, encode(method: method, path: path, headers: headers, body: body))
        var buffer: [UInt8] = []
        return try readResponse(fd, buffer: &buffer)
    }

    static func request(port: Int, _ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil) async throws -> Response {
        try await io.run { try requestBlocking(port: port, method, path, headers: headers, body: body) }
    }

    /// Runs blocking socket work on `io`.
    static func blocking<T: Sendable>(_ body: @Sendable @escaping () throws -> T) async throws -> T {
        try await io.run { try body() }
    }
}
