import FoundationEssentials
import NIOCore
import NIOHTTP1

/// An envd RPC's error: a Connect code (connectrpc.com's protocol reference, "Error codes") and a message.
struct EnvdError: Error, Sendable, CustomStringConvertible {
    enum Code: String, Sendable {
        case canceled, unknown, invalidArgument = "invalid_argument", deadlineExceeded = "deadline_exceeded"
        case notFound = "not_found", alreadyExists = "already_exists", permissionDenied = "permission_denied"
        case resourceExhausted = "resource_exhausted", failedPrecondition = "failed_precondition", aborted
        case outOfRange = "out_of_range", unimplemented, `internal`, unavailable, dataLoss = "data_loss"
        case unauthenticated

        /// The HTTP status a unary response carries for this code.
        var httpStatus: Int {
            switch self {
            case .canceled: 499
            case .invalidArgument, .failedPrecondition, .outOfRange: 400
            case .deadlineExceeded: 504
            case .notFound: 404
            case .alreadyExists, .aborted: 409
            case .permissionDenied: 403
            case .resourceExhausted: 429
            case .unimplemented: 501
            case .unavailable: 503
            case .unauthenticated: 401
            case .unknown, .internal, .dataLoss: 500
            }
        }
    }
    var code: Code
    var message: String
    init(_ code: Code, _ message: String) { self.code = code; self.message = message }
    var description: String { "\(code.rawValue): \(message)" }

    /// A guest errno as the closest Connect code.
    static func from(errno e: Int32, _ message: String) -> EnvdError {
        switch e {
        case 2: EnvdError(.notFound, message)          // ENOENT
        case 17: EnvdError(.alreadyExists, message)    // EEXIST
        case 1, 13, 30: EnvdError(.permissionDenied, message) // EPERM, EACCES, EROFS
        case 20, 21, 22, 36, 39: EnvdError(.invalidArgument, message) // ENOTDIR, EISDIR, EINVAL, ENAMETOOLONG, ENOTEMPTY
        case 28: EnvdError(.resourceExhausted, message) // ENOSPC
        default: EnvdError(.internal, message)
        }
    }
}

/// The Connect protocol over HTTP/1.1 with the JSON codec, as the E2B SDK speaks it: unary calls
/// are a JSON body each way (`application/json`); streaming calls carry envelopes (one flag byte,
/// a big-endian u32 length, the JSON message) and end with an end-of-stream envelope (flag 0x02).
enum Connect {
    static let maxMessage = 4 << 20
    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }()

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: ByteBuffer) throws(EnvdError) -> T {
        let data = Data(bytes.readableBytesView)
        do { return try JSONDecoder().decode(T.self, from: data.isEmpty ? Data("{}".utf8) : data) } catch {
            throw EnvdError(.invalidArgument, "malformed request: \(JSONErrors.describe(error))")
        }
    }

    static func encode<T: Encodable>(_ value: T) -> ByteBuffer {
        ByteBuffer(bytes: (try? encoder.encode(value)) ?? Data("{}".utf8))
    }

    /// Whether a request is the streaming form (`application/connect+json`).
    static func isStreaming(_ request: HTTPRequest) -> Bool {
        (request.header("content-type") ?? "").lowercased().hasPrefix("application/connect+")
    }

    static func checkCodec(_ request: HTTPRequest) throws(EnvdError) {
        let type = (request.header("content-type") ?? "").lowercased().split(separator: ";").first.map(String.init) ?? ""
        guard type == "application/json" || type == "application/connect+json" else {
            throw EnvdError(.unimplemented, "Kiln's envd speaks the Connect protocol's JSON codec only (content-type \(type.isEmpty ? "missing" : type))")
        }
    }

    static func envelope(_ payload: ByteBuffer, flags: UInt8 = 0) -> ByteBuffer {
        var b = ByteBuffer()
        b.writeInteger(flags)
        b.writeInteger(UInt32(payload.readableBytes))
        var p = payload
        b.writeBuffer(&p)
        return b
    }

    /// Reads one enveloped message from a streaming request body; nil at the body's end.
    final class EnvelopeReader: @unchecked Sendable {
        /// The body's next chunk, nil at its end (a request's body, or bytes a test or fuzzer feeds).
        let source: () async throws -> ByteBuffer?
        var buffer = ByteBuffer()
        convenience init(_ request: HTTPRequest) { self.init { try await request.nextBodyChunk() } }
        init(source: @escaping () async throws -> ByteBuffer?) { self.source = source }

        func next() async throws -> ByteBuffer? {
            while true {
                if buffer.readableBytes >= 5 {
                    let flags: UInt8 = buffer.getInteger(at: buffer.readerIndex)!
                    let length = Int(buffer.getInteger(at: buffer.readerIndex + 1, as: UInt32.self)!)
                    guard length <= Connect.maxMessage else { throw EnvdError(.resourceExhausted, "a message of \(length) bytes is over the limit of \(Connect.maxMessage)") }
                    guard flags & 0x01 == 0 else { throw EnvdError(.unimplemented, "compressed messages are not accepted") }
                    if buffer.readableBytes >= 5 + length {
                        buffer.moveReaderIndex(forwardBy: 5)
                        let message = buffer.readSlice(length: length)!
                        if flags & 0x02 != 0 { return nil } // the client's end of stream
                        return message
                    }
                }
                guard var chunk = try await source() else {
                    guard buffer.readableBytes == 0 else { throw EnvdError(.invalidArgument, "the request ended inside a message") }
                    return nil
                }
                buffer.writeBuffer(&chunk)
            }
        }
    }

    /// A unary answer.
    static func respond<T: Encodable>(_ response: HTTPResponseWriter, _ value: T) async throws {
        try await response.respond(.ok, headers: [("content-type", "application/json")], body: encode(value))
    }

    /// A unary call: the request's JSON body to `body`, its answer or error back as JSON.
    static func unary<T: Encodable>(_ request: HTTPRequest, _ response: HTTPResponseWriter, _ body: (ByteBuffer) async throws -> T) async throws {
        do {
            try checkCodec(request)
            let bytes = try await request.collectBody(limit: maxMessage)
            try await respond(response, try await body(bytes))
        } catch let e as EnvdError {
            try await respond(response, error: e)
        } catch let e as HTTPError {
            try await respond(response, error: EnvdError(e.status.code == 413 ? .resourceExhausted : .invalidArgument, e.message))
        }
    }

    static func respond(_ response: HTTPResponseWriter, error: EnvdError) async throws {
        struct Body: Encodable { var code: String; var message: String }
        try await response.respond(HTTPResponseStatus(statusCode: error.code.httpStatus),
                                   headers: [("content-type", "application/json")],
                                   body: encode(Body(code: error.code.rawValue, message: error.message)))
    }

    /// A server stream: `start`, then `send` each message, then `finish` (with an error or none).
    final class Stream: @unchecked Sendable {
        let response: HTTPResponseWriter
        init(_ response: HTTPResponseWriter) { self.response = response }

        func start() async throws {
            try await response.start(.ok, headers: [("content-type", "application/connect+json")])
        }

        func send<T: Encodable>(_ value: T) async throws {
            try await response.write(Connect.envelope(Connect.encode(value)))
        }

        func finish(_ error: EnvdError? = nil) async throws {
            struct End: Encodable {
                struct E: Encodable { var code: String; var message: String }
                var error: E?
            }
            let end = End(error: error.map { End.E(code: $0.code.rawValue, message: $0.message) })
            try await response.write(Connect.envelope(Connect.encode(end), flags: 0x02))
            try await response.end()
        }
    }
}

/// proto3's JSON form of integers: a number or a string holding one.
struct FlexInt: Codable, Sendable, Equatable {
    var value: Int64
    init(_ v: Int64) { value = v }
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Int64.self) { value = v; return }
        let s = try c.decode(String.self)
        guard let v = Int64(s) else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "'\(s)' is not an integer") }
        value = v
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value)
    }
}

/// proto3's JSON form of `bytes`: base64.
struct Base64Bytes: Codable, Sendable {
    var bytes: [UInt8]
    init(_ b: [UInt8]) { bytes = b }
    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        let s = try c.decode(String.self)
        // proto3 JSON accepts both the standard and the URL-safe alphabet, padded or not.
        var t = s.replacing("-", with: "+").replacing("_", with: "/")
        while t.utf8.count % 4 != 0 { t += "=" }
        guard let d = Data(base64Encoded: t) else { throw DecodingError.dataCorruptedError(in: c, debugDescription: "not base64") }
        bytes = Array(d)
    }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(Data(bytes).base64EncodedString())
    }
}
