import Glibc
@testable import KilnService
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import Testing

/// WebSocket upgrades on the service's listener, with a handler of the test's own (no sandbox):
/// the handler's 101 and the tunnel after it, with the bytes a client sent behind its request and
/// those the other end had ready; a plain answer instead of the upgrade; a request the handler
/// does not carry; a client gone before the handler decided.
@Suite struct UpgradeTests {
    /// Echoes what the client sends, after `early`; records a cancel.
    final class EchoTunnel: HTTPTunnel {
        let early: [UInt8]
        let cancelled = Atomic<Bool>(false)
        init(early: String) { self.early = Array(early.utf8) }

        func run(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
            do {
                try await outbound.write(ByteBuffer(bytes: early))
                for try await buffer in inbound { try await outbound.write(buffer) }
            } catch {}
            outbound.finish()
        }

        func cancel() { cancelled.store(true, ordering: .releasing) }
    }

    struct Handler: HTTPHandler {
        let slowTunnel = EchoTunnel(early: "")
        func handle(_ request: HTTPRequest, _ response: HTTPResponseWriter) async {
            try? await response.respond(.ok, body: ByteBuffer(string: "plain \(request.path)"))
        }

        func upgrade(_ head: HTTPRequestHead) async -> HTTPUpgradeAnswer? {
            switch head.uri {
            case "/echo": return .switching(headers: [("Sec-WebSocket-Accept", "from-the-handler")], tunnel: EchoTunnel(early: "hello "))
            case "/refuse": return .response(.forbidden, headers: [("content-type", "text/plain")], body: Array("not here".utf8))
            case "/slow":
                try? await Task.sleep(nanoseconds: 500_000_000)
                return .switching(headers: [], tunnel: slowTunnel)
            default: return nil
            }
        }
    }

    static func withServer(_ body: @Sendable (Int, Handler) async throws -> Void) async throws {
        var logger = Logger(label: "kiln.upgrade.test")
        logger.logLevel = .error
        let handler = Handler()
        let (ports, continuation) = AsyncStream<Int>.makeStream()
        let task = Task {
            defer { continuation.finish() }
            try await HTTPServer(host: "127.0.0.1", port: 0, logger: logger).run(handler: handler) { continuation.yield($0.port ?? 0) }
        }
        defer { task.cancel() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        try await body(port, handler)
    }

    static func upgradeRequest(_ path: String) -> String {
        "GET \(path) HTTP/1.1\r\nHost: 8000-isandbox.e2b.app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    }

    /// Reads until `count` bytes are in `buffer` or the server closes; the bytes as text.
    static func read(_ fd: Int32, _ buffer: inout [UInt8], count: Int) -> String {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while buffer.count < count {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            buffer += chunk[0..<n]
        }
        defer { buffer.removeAll() }
        return String(decoding: buffer, as: UTF8.self)
    }

    @Test func anUpgradeSwitchesAndTheTunnelCarriesBothWays() async throws {
        try await Self.withServer { port, _ in
            try await RawHTTP.blocking {
                let fd = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                defer { close(fd) }
                // Bytes right behind the request, before any answer: kept for the tunnel.
                try RawHTTP.sendAll(fd, Array((Self.upgradeRequest("/echo") + "first").utf8))
                var buffer: [UInt8] = []
                let head = try RawHTTP.readResponse(fd, buffer: &buffer)
                #expect(head.status == 101)
                #expect(head.headers["upgrade"] == "websocket" && head.headers["connection"]?.lowercased() == "upgrade", "\(head.headers)")
                #expect(head.headers["sec-websocket-accept"] == "from-the-handler")
                #expect(Self.read(fd, &buffer, count: 11) == "hello first")
                try RawHTTP.sendAll(fd, Array("second".utf8))
                #expect(Self.read(fd, &buffer, count: 6) == "second")
                // The client ends its side: the tunnel ends and the server closes.
                shutdown(fd, Int32(SHUT_WR))
                #expect(Self.read(fd, &buffer, count: 1) == "")
            }
        }
    }

    @Test func aPlainAnswerReplacesTheUpgradeAndOtherRequestsAreOrdinary() async throws {
        try await Self.withServer { port, _ in
            try await RawHTTP.blocking {
                let fd = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                defer { close(fd) }
                try RawHTTP.sendAll(fd, Array(Self.upgradeRequest("/refuse").utf8))
                var buffer: [UInt8] = []
                let refused = try RawHTTP.readResponse(fd, buffer: &buffer)
                #expect(refused.status == 403 && refused.text == "not here" && refused.headers["connection"] == "close")
                #expect(Self.read(fd, &buffer, count: 1) == "", "the connection closes after it")

                // An upgrade the handler does not carry is an ordinary request, and keep-alive goes on.
                let other = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                defer { close(other) }
                try RawHTTP.sendAll(other, Array((Self.upgradeRequest("/other")).utf8))
                #expect(try RawHTTP.readResponse(other, buffer: &buffer).text == "plain /other")
                // Nor is an upgrade to a protocol nobody serves here (curl --http2 offers h2c): the server may ignore it.
                let h2c = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                defer { close(h2c) }
                try RawHTTP.sendAll(h2c, Array("GET /h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n".utf8))
                #expect(try RawHTTP.readResponse(h2c, buffer: &buffer).text == "plain /h2c")
                let plain = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                defer { close(plain) }
                try RawHTTP.sendAll(plain, RawHTTP.encode(method: "GET", path: "/a", headers: [], body: nil)
                                    + RawHTTP.encode(method: "GET", path: "/b", headers: [], body: nil))
                #expect(try RawHTTP.readResponse(plain, buffer: &buffer).text == "plain /a")
                #expect(try RawHTTP.readResponse(plain, buffer: &buffer).text == "plain /b")
            }
        }
    }

    @Test func aClientGoneBeforeTheUpgradeEndsTheTunnel() async throws {
        try await Self.withServer { port, handler in
            try await RawHTTP.blocking {
                let fd = try RawHTTP.connect(port: port, timeoutSeconds: 20)
                try RawHTTP.sendAll(fd, Array(Self.upgradeRequest("/slow").utf8))
                close(fd)
            }
            var waited = 0
            while !handler.slowTunnel.cancelled.load(ordering: .acquiring) && waited < 100 {
                try await Task.sleep(nanoseconds: 50_000_000)
                waited += 1
            }
            let cancelled = handler.slowTunnel.cancelled.load(ordering: .acquiring)
            #expect(cancelled, "the tunnel of a client that left was never ended")
        }
    }
}
