import Glibc
import NIOCore

/// A streaming reader of a `multipart/form-data` body (RFC 7578): parts one after another, each
/// part's data in chunks, never more than one chunk and a delimiter's length in memory.
final class MultipartReader: @unchecked Sendable {
    struct Part: Sendable {
        var name: String?
        var filename: String?
    }
    enum Failure: Error, CustomStringConvertible {
        case malformed(String)
        var description: String { switch self { case .malformed(let why): "malformed multipart body: \(why)" } }
    }

    /// The body's next chunk, nil at its end (a request's body, or bytes a test or fuzzer feeds).
    let source: () async throws -> ByteBuffer?
    let delimiter: [UInt8]  // CRLF "--" boundary
    var buffer: [UInt8] = []
    var finished = false
    var inPart = false
    static let maxHeaders = 16 << 10

    convenience init(_ request: HTTPRequest, boundary: String) {
        self.init(boundary: boundary) { try await request.nextBodyChunk() }
    }

    init(boundary: String, source: @escaping () async throws -> ByteBuffer?) {
        self.source = source
        delimiter = Array("\r\n--\(boundary)".utf8)
        // The first delimiter may come without the CRLF before it: pretend it had one.
        buffer = Array("\r\n".utf8)
    }

    /// The boundary of a `multipart/form-data; boundary=...` content type.
    static func boundary(of contentType: String) -> String? {
        guard contentType.lowercased().hasPrefix("multipart/form-data") else { return nil }
        for param in contentType.split(separator: ";").dropFirst() {
            let kv = param.split(separator: "=", maxSplits: 1).map { $0.trimmingSpaces }
            if kv.count == 2, kv[0].lowercased() == "boundary" {
                let b = kv[1].hasPrefix("\"") && kv[1].hasSuffix("\"") && kv[1].count >= 2 ? String(kv[1].dropFirst().dropLast()) : kv[1]
                return b.isEmpty || b.utf8.count > 200 ? nil : b
            }
        }
        return nil
    }

    func fill() async throws -> Bool {
        guard let chunk = try await source() else { return false }
        buffer += chunk.readableBytesView
        return true
    }

    func find(_ needle: [UInt8], from: Int = 0) -> Int? {
        guard buffer.count - from >= needle.count else { return nil }
        return buffer.withUnsafeBytes { hay in
            needle.withUnsafeBytes { n in
                // memchr for the first byte, memcmp for the rest (memmem is GNU-only, hidden from Swift).
                let base = hay.baseAddress!
                var at = from
                while hay.count - at >= n.count {
                    guard let p = memchr(base + at, Int32(needle[0]), hay.count - at - n.count + 1) else { return nil }
                    at = base.distance(to: UnsafeRawPointer(p))
                    if memcmp(base + at, n.baseAddress!, n.count) == 0 { return at }
                    at += 1
                }
                return nil
            }
        }
    }

    /// Moves to the next part and returns its headers; nil after the last one.
    func nextPart() async throws -> Part? {
        while inPart { _ = try await nextData() }
        guard !finished else { return nil }
        // Find the delimiter, then either "--" (the end) or CRLF and the part's headers.
        while true {
            if let at = find(delimiter), buffer.count >= at + delimiter.count + 2 {
                let after = at + delimiter.count
                if buffer[after] == UInt8(ascii: "-") && buffer[after + 1] == UInt8(ascii: "-") { finished = true; return nil }
                guard buffer[after] == UInt8(ascii: "\r") && buffer[after + 1] == UInt8(ascii: "\n") else {
                    throw Failure.malformed("a boundary is not followed by CRLF")
                }
                // The delimiter line's CRLF may be the first half of the blank line: a part without headers.
                guard let end = find(Array("\r\n\r\n".utf8), from: after) else {
                    guard buffer.count - after < MultipartReader.maxHeaders else { throw Failure.malformed("part headers too long") }
                    guard try await fill() else { throw Failure.malformed("the body ended inside part headers") }
                    continue
                }
                let headerText = end > after ? String(decoding: buffer[(after + 2)..<end], as: UTF8.self) : ""
                buffer.removeFirst(end + 4)
                inPart = true
                return MultipartReader.parseHeaders(headerText)
            }
            guard buffer.count < MultipartReader.maxHeaders + delimiter.count else { throw Failure.malformed("no boundary where one was expected") }
            guard try await fill() else { throw Failure.malformed("the body ended before the closing boundary") }
        }
    }

    /// The current part's next chunk of data; nil at its end.
    func nextData() async throws -> [UInt8]? {
        guard inPart else { return nil }
        while true {
            if let at = find(delimiter) {
                if at == 0 { inPart = false; return nil }
                let data = Array(buffer[0..<at])
                buffer.removeFirst(at)
                return data
            }
            // Everything but a possible start of the delimiter is data.
            let safe = buffer.count - (delimiter.count - 1)
            if safe >= 64 << 10 {
                let data = Array(buffer[0..<safe])
                buffer.removeFirst(safe)
                return data
            }
            guard try await fill() else { throw Failure.malformed("the body ended inside a part") }
        }
    }

    static func parseHeaders(_ text: String) -> Part {
        var part = Part()
        for line in text.split(separator: "\r\n") {
            let kv = line.split(separator: ":", maxSplits: 1)
            guard kv.count == 2, kv[0].lowercased() == "content-disposition" else { continue }
            for param in kv[1].split(separator: ";").dropFirst() {
                let p = param.split(separator: "=", maxSplits: 1).map { $0.trimmingSpaces }
                guard p.count == 2 else { continue }
                let value = p[1].hasPrefix("\"") && p[1].hasSuffix("\"") && p[1].count >= 2 ? String(p[1].dropFirst().dropLast()) : p[1]
                switch p[0].lowercased() {
                case "name": part.name = value
                case "filename": part.filename = value
                default: break
                }
            }
        }
        return part
    }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}
