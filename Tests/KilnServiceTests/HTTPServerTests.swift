import Glibc
@testable import KilnService
import Testing

/// The HTTP/1.1 listener under clients that misbehave or come in crowds.
@Suite struct HTTPServerTests {
    static let key = "http-key-1234"

    static let shared = SharedServer { try await TestServer.start(tenants: [Tenant(name: "http", apiKeys: [key])]) }
    var server: TestServer { get async throws { try await Self.shared.get() } }

    func healthy(_ s: TestServer) async throws -> Bool {
        try await s.request("GET", "/v2/sandboxes", key: Self.key).text == "[]"
    }

    @Test func requestsOnOneConnectionAreAnsweredInOrder() async throws {
        let s = try await server
        let port = s.port, key = Self.key
        let statuses = try await RawHTTP.blocking { () throws -> [Int] in
            let fd = try RawHTTP.connect(port: port)
            defer { close(fd) }
            // Pipelined: three requests sent before any answer is read.
            var bytes: [UInt8] = []
            bytes += RawHTTP.encode(method: "GET", path: "/v2/sandboxes", headers: [("x-api-key", key)], body: nil)
            bytes += RawHTTP.encode(method: "GET", path: "/sandboxes/nope", headers: [("x-api-key", key)], body: nil)
            bytes += RawHTTP.encode(method: "POST", path: "/sandboxes", headers: [("x-api-key", key), ("content-type", "application/json")],
                                    body: Array(#"{"templateID": "none"}"#.utf8))
            try RawHTTP.sendAll(fd, bytes)
            var buffer: [UInt8] = []
            return try (0..<3).map { _ in try RawHTTP.readResponse(fd, buffer: &buffer).status }
        }
        #expect(statuses == [200, 404, 404])
    }

    @Test func oversizedHeadersAreRejected() async throws {
        let s = try await server
        let port = s.port
        let outcome = try await RawHTTP.blocking { () -> String in
            let fd = try RawHTTP.connect(port: port)
            defer { close(fd) }
            let head = "GET /health HTTP/1.1\r\nhost: x\r\nx-padding: \(String(repeating: "a", count: 200 << 10))\r\n\r\n"
            do { try RawHTTP.sendAll(fd, Array(head.utf8)) } catch { return "reset while sending" }
            var buffer: [UInt8] = []
            do { return "status \(try RawHTTP.readResponse(fd, buffer: &buffer).status)" } catch { return "closed" }
        }
        #expect(outcome == "status 431", "\(outcome)")
        #expect(try await healthy(s))
    }

    @Test func aMalformedRequestIs400() async throws {
        let s = try await server
        let port = s.port
        let statuses = try await RawHTTP.blocking { () throws -> [Int] in
            try ["GET / HTTP/1.1\r\nbad header line\r\n\r\n", "NOT-HTTP\r\n\r\n",
                 "POST /sandboxes HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"].map { text in
                let fd = try RawHTTP.connect(port: port)
                defer { close(fd) }
                try RawHTTP.sendAll(fd, Array(text.utf8))
                var buffer: [UInt8] = []
                return try RawHTTP.readResponse(fd, buffer: &buffer).status
            }
        }
        // The chunked one is answered 401 (no key) before its body turns out malformed.
        #expect(statuses == [400, 400, 401])
        #expect(try await healthy(s))
    }

    @Test func aClientLeavingMidBodyDoesNotHurtTheNextRequest() async throws {
        let s = try await server
        let port = s.port, key = Self.key
        try await RawHTTP.blocking {
            for _ in 0..<20 {
                let fd = try RawHTTP.connect(port: port)
                let head = "POST /sandboxes HTTP/1.1\r\nhost: x\r\nx-api-key: \(key)\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"templateID\":"
                try RawHTTP.sendAll(fd, Array(head.utf8))
                close(fd)
            }
            // And one that leaves inside a chunked body.
            let fd = try RawHTTP.connect(port: port)
            try RawHTTP.sendAll(fd, Array("POST /sandboxes HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nx-api-key: \(key)\r\n\r\n5\r\n{\"tem".utf8))
            close(fd)
        }
        #expect(try await healthy(s))
        // A connection whose request was answered early (401 before the body) still serves the next one.
        let statuses = try await RawHTTP.blocking { () throws -> [Int] in
            let fd = try RawHTTP.connect(port: port)
            defer { close(fd) }
            var buffer: [UInt8] = []
            try RawHTTP.sendAll(fd, RawHTTP.encode(method: "POST", path: "/sandboxes", headers: [], body: [UInt8](repeating: 32, count: 300_000)))
            let first = try RawHTTP.readResponse(fd, buffer: &buffer).status
            try RawHTTP.sendAll(fd, RawHTTP.encode(method: "GET", path: "/v2/sandboxes", headers: [("x-api-key", key)], body: nil))
            return [first, try RawHTTP.readResponse(fd, buffer: &buffer).status]
        }
        #expect(statuses == [401, 200])
    }

    @Test func aThousandConcurrentRequestsAreAllAnswered() async throws {
        let s = try await server
        let port = s.port, key = Self.key
        let count = 1000
        let statuses = try await RawHTTP.blocking { () throws -> [Int: Int] in
            // All connections open and all requests sent before the first answer is read.
            var fds: [Int32] = []
            defer { fds.forEach { close($0) } }
            for i in 0..<count {
                let fd = try RawHTTP.connect(port: port)
                fds.append(fd)
                let path = i % 2 == 0 ? "/v2/sandboxes" : "/sandboxes/i\(i)"
                try RawHTTP.sendAll(fd, RawHTTP.encode(method: "GET", path: path, headers: [("x-api-key", key)], body: nil))
            }
            var statuses: [Int: Int] = [:]
            for fd in fds {
                var buffer: [UInt8] = []
                statuses[try RawHTTP.readResponse(fd, buffer: &buffer).status, default: 0] += 1
            }
            return statuses
        }
        #expect(statuses == [200: count / 2, 404: count / 2])
        #expect(try await healthy(s))
    }
}
