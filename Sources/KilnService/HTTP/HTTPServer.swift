import LinuxSys
import Logging
import Synchronization
import NIOCore
import NIOHTTP1
import NIOPosix

/// One HTTP/1.1 request as a handler sees it: the head, and the body read on demand (so that an
/// upload streams to the guest instead of being held whole).
public final class HTTPRequest: @unchecked Sendable {
    public let head: HTTPRequestHead
    public let path: String
    public let query: [String: String]
    private var iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator
    private(set) var bodyFinished = false
    /// The body did not parse or the client left inside it: the connection cannot carry another request.
    private(set) var bodyFailed = false

    /// `bodyless`: the request's parts were read already (an upgrade request NIO did not upgrade): its body is empty.
    init(head: HTTPRequestHead, iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator, bodyless: Bool = false) {
        self.head = head
        self.iterator = iterator
        bodyFinished = bodyless
        (path, query) = HTTPRequest.split(head.uri)
    }

    public var method: HTTPMethod { head.method }
    public func header(_ name: String) -> String? { head.headers.first(name: name) }

    /// The next piece of the body; nil at its end.
    public func nextBodyChunk() async throws -> ByteBuffer? {
        guard !bodyFinished else { return nil }
        while let part = try await nextPart() {
            switch part {
            case .body(let buffer): return buffer
            case .end: bodyFinished = true; return nil
            case .head: throw HTTPError(.badRequest, "a request head arrived inside a body")
            }
        }
        bodyFinished = true
        bodyFailed = true
        throw HTTPError(.badRequest, "the client closed the connection inside the request body")
    }

    private func nextPart() async throws(HTTPError) -> HTTPServerRequestPart? {
        do { return try await iterator.next() } catch {
            bodyFinished = true
            bodyFailed = true
            throw HTTPError(.badRequest, "the request body is malformed or cut short: \(error)")
        }
    }

    /// The whole body, refused past `limit` bytes (413).
    public func collectBody(limit: Int) async throws -> ByteBuffer {
        var all = ByteBuffer()
        while var chunk = try await nextBodyChunk() {
            guard all.readableBytes + chunk.readableBytes <= limit else {
                throw HTTPError(.payloadTooLarge, "the request body is larger than \(limit) bytes")
            }
            all.writeBuffer(&chunk)
        }
        return all
    }

    /// Reads and drops what is left of the body, so that the connection can carry the next request.
    func drain() async throws {
        while try await nextBodyChunk() != nil {}
    }

    /// Hands the iterator back to the connection loop.
    func takeIterator() -> NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator { iterator }

    static func split(_ uri: String) -> (String, [String: String]) {
        guard let q = uri.firstIndex(of: "?") else { return (percentDecode(uri), [:]) }
        var query: [String: String] = [:]
        for pair in uri[uri.index(after: q)...].split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(String(kv[0]), plusIsSpace: true)
            let value = kv.count > 1 ? percentDecode(String(kv[1]), plusIsSpace: true) : ""
            query[key] = query[key].map { $0 + "," + value } ?? value
        }
        return (percentDecode(String(uri[..<q])), query)
    }

    /// Percent-decoding; a malformed escape is kept as it is.
    static func percentDecode(_ s: String, plusIsSpace: Bool = false) -> String {
        var out: [UInt8] = []
        let bytes = Array(s.utf8)
        var i = 0
        func hex(_ b: UInt8) -> UInt8? {
            switch b {
            case 48...57: b - 48
            case 65...70: b - 55
            case 97...102: b - 87
            default: nil
            }
        }
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "%"), i + 2 < bytes.count, let h = hex(bytes[i + 1]), let l = hex(bytes[i + 2]) {
                out.append(h << 4 | l); i += 3
            } else if plusIsSpace && bytes[i] == UInt8(ascii: "+") {
                out.append(32); i += 1
            } else {
                out.append(bytes[i]); i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// An error a handler answers with before it has started its response.
public struct HTTPError: Error, Sendable {
    public var status: HTTPResponseStatus
    public var message: String
    public init(_ status: HTTPResponseStatus, _ message: String) {
        self.status = status
        self.message = message
    }
}

/// Writes one response: a head, then either one body or a stream of chunks. Writes wait while the
/// client does not read (back-pressure reaches the producer), and fail once it has gone.
public final class HTTPResponseWriter: @unchecked Sendable {
    let outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    let keepAlive: Bool
    private(set) var headSent = false
    private(set) var ended = false
    private var streaming = false

    init(outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, keepAlive: Bool) {
        self.outbound = outbound
        self.keepAlive = keepAlive
    }

    /// A complete response with `body`.
    public func respond(_ status: HTTPResponseStatus, headers: [(String, String)] = [], body: ByteBuffer? = nil) async throws {
        var h = HTTPHeaders(headers)
        h.replaceOrAdd(name: "content-length", value: "\(body?.readableBytes ?? 0)")
        if !keepAlive { h.replaceOrAdd(name: "connection", value: "close") }
        headSent = true
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: h)))
        if let body, body.readableBytes > 0 { try await outbound.write(.body(.byteBuffer(body))) }
        try await outbound.write(.end(nil))
        ended = true
    }

    /// Starts a chunked response; follow with `write` and `end`.
    public func start(_ status: HTTPResponseStatus, headers: [(String, String)] = []) async throws {
        var h = HTTPHeaders(headers)
        h.replaceOrAdd(name: "transfer-encoding", value: "chunked")
        if !keepAlive { h.replaceOrAdd(name: "connection", value: "close") }
        headSent = true
        streaming = true
        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: status, headers: h)))
    }

    public func write(_ chunk: ByteBuffer) async throws {
        guard chunk.readableBytes > 0 else { return }
        try await outbound.write(.body(.byteBuffer(chunk)))
    }

    public func end() async throws {
        guard !ended else { return }
        ended = true
        try await outbound.write(.end(nil))
    }
}

/// What serves requests: the service's router.
public protocol HTTPHandler: Sendable {
    func handle(_ request: HTTPRequest, _ response: HTTPResponseWriter) async
    /// A WebSocket upgrade request (the first request on its connection): how to answer it, or
    /// nil when this handler does not carry it (the request is then handled as any other).
    func upgrade(_ head: HTTPRequestHead) async -> HTTPUpgradeAnswer?
}

extension HTTPHandler {
    public func upgrade(_ head: HTTPRequestHead) async -> HTTPUpgradeAnswer? { nil }
}

/// How an upgrade request is answered.
public enum HTTPUpgradeAnswer: Sendable {
    /// 101 Switching Protocols with these headers besides Connection and Upgrade; then `tunnel`
    /// carries the connection's bytes.
    case switching(headers: [(String, String)], tunnel: any HTTPTunnel)
    /// A plain response instead (the other end refused the upgrade, or there is none); the
    /// connection closes after it.
    case response(HTTPResponseStatus, headers: [(String, String)], body: [UInt8])
}

/// The other end of an upgraded connection.
public protocol HTTPTunnel: Sendable {
    /// Carries the client's bytes (`inbound`) to the other end and its bytes to the client
    /// (`outbound`) until either side ends.
    func run(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async
    /// The client went away before the upgrade finished: end the other side.
    func cancel()
}

/// The listener: HTTP/1.1 with keep-alive, one task per connection, requests on a connection
/// handled in order.
public struct HTTPServer: Sendable {
    public let host: String
    public let port: Int
    let logger: Logger

    public init(host: String, port: Int, logger: Logger) {
        self.host = host
        self.port = port
        self.logger = logger
    }

    /// Binds and calls `ready` with the bound address, then serves until the task is cancelled.
    /// Connections and handlers run on `BlockingExecutor.service`.
    public func run(handler: some HTTPHandler, ready: @Sendable (SocketAddress) -> Void) async throws {
        try await withTaskExecutorPreference(BlockingExecutor.service) { try await listen(handler: handler, ready: ready) }
    }

    private func listen(handler: some HTTPHandler, ready: @Sendable (SocketAddress) -> Void) async throws {
        let pending = PendingUpgrades()
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrades = NIOTypedHTTPServerUpgradeConfiguration<Connection>(
                        upgraders: [WebSocketUpgrader(handler: handler, pending: pending)],
                        notUpgradingCompletionHandler: { channel in
                            channel.eventLoop.makeCompletedFuture {
                                // NIO's upgrade handler passes on the parts of a request without an Upgrade
                                // header; those of one with it that did not upgrade are gone: its head, kept
                                // by FirstRequest, is handled as it is (or the handler's answer to it sent).
                                let first = try channel.pipeline.syncOperations.handler(type: FirstRequest.self).head
                                let refused = pending.takeRefusal(channel)
                                let opening: Opening? = if let refused { .answered(refused) }
                                    else if let first, first.headers.contains(name: "upgrade") { .swallowed(first) } else { nil }
                                return .http(try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                                    wrappingChannelSynchronously: channel,
                                    configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 16))
                                ), opening: opening)
                            }
                        })
                    var configuration = NIOUpgradableHTTPServerPipelineConfiguration(upgradeConfiguration: upgrades)
                    // Parse errors are answered in `serve` (and, before the first request, by
                    // FirstRequest): NIO's error handler would answer them too, a second response
                    // after ours when a client leaves mid-body (an assertion in debug builds).
                    configuration.enableErrorHandling = false
                    let connection = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
                    let upgrader = try channel.pipeline.syncOperations.handler(type: NIOTypedHTTPServerUpgradeHandler<Connection>.self)
                    try channel.pipeline.syncOperations.addHandler(FirstRequest(), position: .before(upgrader))
                    return connection
                }
            }
        if let address = server.channel.localAddress { ready(address) }
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { connections in
                for try await connection in connections {
                    group.addTask {
                        switch try? await connection.get() {
                        case .http(let channel, let opening)?: await serve(channel, opening: opening, handler: handler)
                        case .tunnel(let channel, let tunnel)?:
                            do {
                                try await channel.executeThenClose { inbound, outbound in await tunnel.run(inbound: inbound, outbound: outbound) }
                            } catch {
                                logger.debug("upgraded connection ended: \(error)")
                            }
                        case nil: break // closed before its first request was read whole
                        }
                    }
                }
            }
        }
    }

    func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, opening: Opening?,
               handler: some HTTPHandler) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                // A first request that asked for an upgrade and did not get one: the handler's
                // answer to it, or the handler on it as on any request. NIO's decoder reads
                // nothing after an upgrade request, so the connection ends after it.
                switch opening {
                case .answered(.response(let status, let headers, let body))?:
                    try await HTTPResponseWriter(outbound: outbound, keepAlive: false).respond(status, headers: headers, body: ByteBuffer(bytes: body))
                    return
                case .swallowed(let head)?:
                    await handler.handle(HTTPRequest(head: head, iterator: iterator, bodyless: true), HTTPResponseWriter(outbound: outbound, keepAlive: false))
                    return
                case .answered(.switching)?, nil: break
                }
                while true {
                    let part: HTTPServerRequestPart?
                    do { part = try await iterator.next() } catch let error as HTTPParserError {
                        // A request head that does not parse: answered, then the connection closes.
                        let status: HTTPResponseStatus = if case .headerOverflow = error { .requestHeaderFieldsTooLarge } else { .badRequest }
                        try await outbound.write(.head(HTTPResponseHead(version: .http1_1, status: status,
                                                                        headers: ["connection": "close", "content-length": "0"])))
                        try await outbound.write(.end(nil))
                        return
                    }
                    guard let part else { return }
                    guard case .head(let head) = part else { continue }
                    let request = HTTPRequest(head: head, iterator: iterator)
                    // NIO's decoder stops after a request with an Upgrade header (a later one than the first here).
                    let keepAlive = head.isKeepAlive && !head.headers.contains(name: "upgrade")
                    let response = HTTPResponseWriter(outbound: outbound, keepAlive: keepAlive)
                    await handler.handle(request, response)
                    if !response.ended || request.bodyFailed { return } // a response or a body cut short: the connection cannot go on
                    if !keepAlive { return }
                    try await request.drain()
                    iterator = request.takeIterator()
                }
            }
        } catch {
            logger.debug("connection ended: \(error)")
        }
    }
}

/// What a connection became once its first request was read: HTTP (with what is left to do about
/// a first request that asked for an upgrade and got none), or a tunnel after a 101.
enum Connection: Sendable {
    case http(NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, opening: Opening?)
    case tunnel(NIOAsyncChannel<ByteBuffer, ByteBuffer>, any HTTPTunnel)
}

/// A first request that asked for an upgrade and was not upgraded: the handler's answer to it, or
/// its head for the handler (NIO's upgrade handler does not pass such a request on).
enum Opening: Sendable {
    case answered(HTTPUpgradeAnswer)
    case swallowed(HTTPRequestHead)
}

/// What the upgrader decided for a connection, between NIO's calls: the tunnel a 101 goes on
/// with, or the plain response that replaces it.
final class PendingUpgrades: Sendable {
    private let tunnels = Mutex<[ObjectIdentifier: any HTTPTunnel]>([:])
    private let refusals = Mutex<[ObjectIdentifier: HTTPUpgradeAnswer]>([:])

    func keep(_ tunnel: any HTTPTunnel, for channel: Channel) {
        tunnels.withLock { $0[ObjectIdentifier(channel)] = tunnel }
        // A client gone before the 101 went out: its tunnel never runs, so it is ended here.
        channel.closeFuture.whenComplete { [self] _ in takeTunnel(channel)?.cancel() }
    }
    func takeTunnel(_ channel: Channel) -> (any HTTPTunnel)? { tunnels.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
    func refuse(_ answer: HTTPUpgradeAnswer, for channel: Channel) {
        refusals.withLock { $0[ObjectIdentifier(channel)] = answer }
        // Gone with its channel, answered or not (no entry outlives it for another at its address).
        channel.closeFuture.whenComplete { [self] _ in _ = takeRefusal(channel) }
    }
    func takeRefusal(_ channel: Channel) -> HTTPUpgradeAnswer? { refusals.withLock { $0.removeValue(forKey: ObjectIdentifier(channel)) } }
}

/// WebSocket upgrades, decided by the handler (`HTTPHandler.upgrade`): its 101 headers, or a
/// plain response kept for `serve`. The WebSocket protocol itself is the other end's: Kiln
/// carries the bytes.
struct WebSocketUpgrader<Handler: HTTPHandler>: NIOTypedHTTPServerProtocolUpgrader {
    typealias UpgradeResult = Connection
    let supportedProtocol = "websocket"
    let requiredUpgradeHeaders: [String] = []
    let handler: Handler
    let pending: PendingUpgrades

    struct NotCarried: Error {}

    func buildUpgradeResponse(channel: Channel, upgradeRequest: HTTPRequestHead,
                              initialResponseHeaders: HTTPHeaders) -> EventLoopFuture<HTTPHeaders> {
        let promise = channel.eventLoop.makePromise(of: HTTPHeaders.self)
        let handler = handler, pending = pending
        promise.completeWithTask {
            switch await handler.upgrade(upgradeRequest) {
            case .switching(let headers, let tunnel)?:
                var all = initialResponseHeaders
                for (name, value) in headers { all.add(name: name, value: value) }
                pending.keep(tunnel, for: channel)
                return all
            case let answer?:
                pending.refuse(answer, for: channel)
                throw NotCarried()
            case nil:
                throw NotCarried()
            }
        }
        return promise.futureResult
    }

    func upgrade(channel: Channel, upgradeRequest: HTTPRequestHead) -> EventLoopFuture<Connection> {
        channel.eventLoop.makeCompletedFuture {
            guard let tunnel = pending.takeTunnel(channel) else { throw NotCarried() }
            return .tunnel(try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel), tunnel)
        }
    }
}

/// Sits in front of NIO's upgrade handler: keeps the connection's first request head (NIO's
/// handler drops the parts of an upgrade request it does not upgrade), and answers a first
/// request that does not parse (before the first request NIO's upgrade handler holds the
/// connection and nothing reads its errors, so the client would wait for an answer that never
/// comes; later ones reach `serve`). Only the first read is looked into: after an upgrade, what
/// passes through is the tunnel's bytes.
final class FirstRequest: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private(set) var head: HTTPRequestHead?
    private var seen = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !seen {
            seen = true
            if case .head(let h) = unwrapInboundIn(data) { head = h } // before an upgrade, every read is a request part
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !seen, let parse = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        seen = true
        let status: HTTPResponseStatus = if case .headerOverflow = parse { .requestHeaderFieldsTooLarge } else { .badRequest }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status,
                                                            headers: ["connection": "close", "content-length": "0"]))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
