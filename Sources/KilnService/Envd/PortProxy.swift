import AgentProtocol
import FoundationEssentials
import Glibc
import NIOCore
import NIOHTTP1
import Sandbox

/// Traffic to a port inside a sandbox (E2B's `sandbox.get_host(port)`: `PORT-SANDBOXID.DOMAIN`),
/// on the service's own listener, routed by the request's Host header (docs/net.md, "Ports in").
/// Each request is carried to 127.0.0.1:PORT in the guest by one agent relay (`PortForward.relay`,
/// the agent's `--forward` mode, over the sandbox's vsock session: no network device needed),
/// sent as HTTP/1.1 with `Connection: close`, and the guest's response is streamed back.
/// A WebSocket upgrade (`upgrade`) goes to the guest's server as it came; when that server
/// switches protocols, its 101 goes back to the client and the relay carries the connection's
/// bytes both ways from then on (`PortTunnel`). An offer of another protocol is ignored. Like E2B's
/// default (`allowPublicTraffic`), a port needs no token: the sandbox id, 20 random characters,
/// is what reaches it.
enum PortProxy {
    /// The largest request body carried (held whole, sent with its length) and response head.
    static let bodyLimit = 64 << 20
    static let headLimit = 64 << 10

    /// `PORT-ID` at the start of a Host header (`8080-iabc...e2b.app`, `8080-iabc...:3000`).
    static func target(host: String) -> (port: UInt16, sandboxID: String)? {
        let label = host.split(separator: ".", maxSplits: 1).first.map { $0.split(separator: ":").first ?? $0 } ?? ""
        guard let dash = label.firstIndex(of: "-") else { return nil }
        let portText = label[..<dash], id = label[label.index(after: dash)...]
        guard (1...5).contains(portText.count), portText.allSatisfy(\.isASCII), portText.allSatisfy(\.isNumber),
              let port = UInt16(portText), port > 0,
              !id.isEmpty, id.count <= 64, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else { return nil }
        return (port, String(id))
    }

    static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length"]

    static func serve(_ request: HTTPRequest, _ response: HTTPResponseWriter, manager: SandboxManager, sandboxID: String,
                      port: UInt16) async throws {
        let sandbox: ServiceSandbox
        do { sandbox = try await manager.portTarget(id: sandboxID) } catch {
            try await refuse(response, HTTPResponseStatus(statusCode: error.status), error.message)
            return
        }
        // A WebSocket upgrade is carried on a connection's first request (`upgrade`): this one came
        // later. An offer of another protocol (h2c) is dropped with the hop-by-hop headers: a
        // server may ignore an upgrade, and the guest's answers in HTTP/1.1.
        if let upgrade = request.header("upgrade"), upgrade.lowercased().contains("websocket") {
            try await refuse(response, .notImplemented, "a WebSocket upgrade is carried to a sandbox port only as a connection's first request")
            return
        }
        var body = try await request.collectBody(limit: bodyLimit)
        var head = "\(request.method.rawValue) \(request.head.uri) HTTP/1.1\r\n"
        for (name, value) in request.head.headers where !hopByHop.contains(name.lowercased()) {
            head += "\(name): \(value)\r\n"
        }
        head += "Content-Length: \(body.readableBytes)\r\nConnection: close\r\n\r\n"
        let relay: RemoteProcess
        do { relay = try await sandbox.agent.exec(PortForward.relay(port)) } catch {
            try await refuse(response, .badGateway, "cannot reach port \(port) in sandbox \(sandbox.id): \(error)")
            return
        }
        try await relay.write(Array(head.utf8) + (body.readBytes(length: body.readableBytes) ?? []))

        var reader = ResponseReader(method: request.method)
        var errors: [UInt8] = []
        var started = false, complete = false
        for await chunk in relay.output {
            // The response is whole: the relay is ended (a server that keeps the connection open
            // despite `Connection: close` must not hold it), and what is left of its output drained.
            if complete { continue }
            guard case .stdout(let bytes) = chunk else {
                if case .stderr(let e) = chunk, errors.count < 4096 { errors += e }
                continue
            }
            let events: [ResponseReader.Event]
            do { events = try reader.feed(bytes) } catch {
                relay.signal(SIGKILL)
                if !started { try await refuse(response, .badGateway, "port \(port) in sandbox \(sandbox.id) answered no HTTP: \(error)") }
                return
            }
            for event in events {
                switch event {
                case .head(let status, let headers):
                    started = true
                    try await response.start(HTTPResponseStatus(statusCode: status), headers: headers)
                case .body(let piece):
                    try await response.write(ByteBuffer(bytes: piece))
                case .end:
                    complete = true
                    relay.signal(SIGKILL)
                case .switching: break // only a reader made `upgrading` reports it
                }
            }
        }
        relay.closeStdin()
        _ = try? await relay.wait()
        if started {
            try await response.end()
        } else {
            let why = String(decoding: errors, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "the connection closed before a response"
            try await refuse(response, .badGateway, "port \(port) in sandbox \(sandbox.id): \(why)")
        }
    }

    /// A WebSocket upgrade request for `port` in the sandbox: the guest server's 101 and a tunnel
    /// on the same relay, or the response it gave instead (or the proxy's own 4xx/5xx).
    static func upgrade(_ head: HTTPRequestHead, manager: SandboxManager, sandboxID: String, port: UInt16) async -> HTTPUpgradeAnswer {
        func refusal(_ status: HTTPResponseStatus, _ message: String) -> HTTPUpgradeAnswer {
            .response(status, headers: [("content-type", "application/json")],
                      body: Array(Connect.encode(ErrorBody(code: Int(status.code), message: message)).readableBytesView))
        }
        let sandbox: ServiceSandbox
        do { sandbox = try await manager.portTarget(id: sandboxID) } catch {
            return refusal(HTTPResponseStatus(statusCode: error.status), error.message)
        }
        // An upgrade request carries no body here: one with a body is not a WebSocket handshake.
        if let length = head.headers.first(name: "content-length"), length != "0" { return refusal(.badRequest, "an upgrade request with a body") }
        if head.headers.contains(name: "transfer-encoding") { return refusal(.badRequest, "an upgrade request with a body") }
        var text = "\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n"
        for (name, value) in head.headers where !hopByHop.contains(name.lowercased()) { text += "\(name): \(value)\r\n" }
        text += "Connection: Upgrade\r\nUpgrade: \(head.headers.first(name: "upgrade") ?? "websocket")\r\n\r\n"
        let relay: RemoteProcess
        do { relay = try await sandbox.agent.exec(PortForward.relay(port)) } catch {
            return refusal(.badGateway, "cannot reach port \(port) in sandbox \(sandbox.id): \(error)")
        }
        do { try await relay.write(Array(text.utf8)) } catch {
            relay.signal(SIGKILL)
            return refusal(.badGateway, "cannot reach port \(port) in sandbox \(sandbox.id): \(error)")
        }

        // The guest server's answer: a 101 makes the tunnel, anything else goes back read whole.
        var output = relay.output.makeAsyncIterator()
        var reader = ResponseReader(method: head.method, upgrading: true)
        var answer: (status: Int, headers: [(String, String)], body: [UInt8])?
        var errors: [UInt8] = [], complete = false
        reading: while let chunk = await output.next() {
            guard case .stdout(let bytes) = chunk else {
                if case .stderr(let e) = chunk, errors.count < 4096 { errors += e }
                continue
            }
            let events: [ResponseReader.Event]
            do { events = try reader.feed(bytes) } catch { break }
            for event in events {
                switch event {
                case .switching(let headers, let rest):
                    return .switching(headers: headers, tunnel: PortTunnel(relay: relay, output: output, early: rest))
                case .head(let status, let headers): answer = (status, headers, [])
                case .body(let piece): answer?.body += piece
                case .end: complete = true
                }
            }
            if complete || (answer?.body.count ?? 0) > bodyLimit { break reading }
        }
        relay.signal(SIGKILL)
        relay.closeStdin()
        _ = try? await relay.wait()
        if let answer {
            return .response(HTTPResponseStatus(statusCode: answer.status), headers: answer.headers, body: answer.body)
        }
        let why = String(decoding: errors, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "no HTTP response to the upgrade"
        return refusal(.badGateway, "port \(port) in sandbox \(sandbox.id): \(why)")
    }

    static func refuse(_ response: HTTPResponseWriter, _ status: HTTPResponseStatus, _ message: String) async throws {
        try await response.respond(status, headers: [("content-type", "application/json")],
                                   body: Connect.encode(ErrorBody(code: Int(status.code), message: message)))
    }
}

/// Reads an HTTP/1.1 response from the guest: its head, then its body by its framing
/// (Content-Length, chunked, or to the end of the connection), dechunked, as pieces to stream on.
/// `upgrading` (the answer to an upgrade request): a 101 ends the reading with `.switching`, its
/// headers and the bytes after its head, which belong to the switched protocol.
struct ResponseReader {
    enum Event: Equatable { case head(Int, [(String, String)]), body([UInt8]), end, switching([(String, String)], rest: [UInt8])
        static func == (a: Event, b: Event) -> Bool {
            switch (a, b) {
            case (.head(let s1, let h1), .head(let s2, let h2)): s1 == s2 && h1.elementsEqual(h2, by: { $0 == $1 })
            case (.switching(let h1, let r1), .switching(let h2, let r2)): r1 == r2 && h1.elementsEqual(h2, by: { $0 == $1 })
            case (.body(let x), .body(let y)): x == y
            case (.end, .end): true
            default: false
            }
        }
    }
    struct Malformed: Error, CustomStringConvertible { var description: String }

    enum State { case head, length(Int), chunkSize, chunkData(Int), chunkDataEnd, trailer, toEnd, done }
    var state = State.head
    var pending: [UInt8] = []
    let method: HTTPMethod
    let upgrading: Bool

    init(method: HTTPMethod, upgrading: Bool = false) { self.method = method; self.upgrading = upgrading }

    mutating func feed(_ bytes: [UInt8]) throws(Malformed) -> [Event] {
        pending += bytes
        var events: [Event] = []
        var progress = true
        while progress {
            progress = false
            switch state {
            case .head:
                guard let end = find([13, 10, 13, 10]) else {
                    if pending.count > PortProxy.headLimit { throw Malformed(description: "a response head over \(PortProxy.headLimit) bytes") }
                    break
                }
                let lines = String(decoding: pending[..<end], as: UTF8.self).components(separatedBy: "\r\n")
                pending.removeFirst(end + 4)
                let status = lines[0].split(separator: " ", maxSplits: 2)
                guard status.count >= 2, status[0].hasPrefix("HTTP/1."), let code = Int(status[1]), (100...599).contains(code) else {
                    throw Malformed(description: "a status line '\(lines[0].prefix(80))'")
                }
                let switching = upgrading && code == 101
                if code < 200 && !switching { progress = true; continue } // 100 Continue and the like: the real head follows
                var headers: [(String, String)] = []
                var length: Int?, chunked = false
                for line in lines.dropFirst() where !line.isEmpty {
                    guard let colon = line.firstIndex(of: ":") else { throw Malformed(description: "a header line '\(line.prefix(80))'") }
                    let name = String(line[..<colon]).trimmingCharacters(in: .whitespaces)
                    let value = String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)
                    switch name.lowercased() {
                    case "content-length":
                        guard let n = Int(value), n >= 0 else { throw Malformed(description: "Content-Length '\(value.prefix(40))'") }
                        length = n
                    case "transfer-encoding": chunked = value.lowercased().contains("chunked")
                    default: if !PortProxy.hopByHop.contains(name.lowercased()) { headers.append((name, value)) }
                    }
                }
                if switching {
                    events.append(.switching(headers, rest: pending))
                    pending = []
                    state = .done
                    break
                }
                events.append(.head(code, headers))
                if method == .HEAD || code == 204 || code == 304 { state = .done; events.append(.end) }
                else if chunked { state = .chunkSize }
                else if let length { state = length == 0 ? .done : .length(length); if length == 0 { events.append(.end) } }
                else { state = .toEnd }
                progress = true
            case .length(let left):
                guard !pending.isEmpty else { break }
                let n = min(left, pending.count)
                events.append(.body(Array(pending[..<n])))
                pending.removeFirst(n)
                state = left - n == 0 ? .done : .length(left - n)
                if left - n == 0 { events.append(.end) }
                progress = true
            case .chunkSize:
                guard let end = find([13, 10]) else {
                    if pending.count > 1024 { throw Malformed(description: "a chunk size line over 1 KiB") }
                    break
                }
                let line = String(decoding: pending[..<end], as: UTF8.self)
                pending.removeFirst(end + 2)
                let hex = line.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
                guard let size = Int(hex, radix: 16), size >= 0 else { throw Malformed(description: "a chunk size '\(line.prefix(40))'") }
                state = size == 0 ? .trailer : .chunkData(size)
                progress = true
            case .chunkData(let left):
                guard !pending.isEmpty else { break }
                let n = min(left, pending.count)
                events.append(.body(Array(pending[..<n])))
                pending.removeFirst(n)
                state = left - n == 0 ? .chunkDataEnd : .chunkData(left - n)
                progress = true
            case .chunkDataEnd:
                guard pending.count >= 2 else { break }
                guard pending[0] == 13, pending[1] == 10 else { throw Malformed(description: "a chunk not ended by CRLF") }
                pending.removeFirst(2)
                state = .chunkSize
                progress = true
            case .trailer:
                guard let end = find([13, 10]) else { break }
                pending.removeFirst(end + 2)
                if end == 0 { state = .done; events.append(.end) }
                progress = true
            case .toEnd:
                guard !pending.isEmpty else { break }
                events.append(.body(pending))
                pending = []
            case .done:
                pending = []
            }
        }
        return events
    }

    func find(_ needle: [UInt8]) -> Int? {
        guard pending.count >= needle.count else { return nil }
        for i in 0...(pending.count - needle.count) where pending[i] == needle[0] && Array(pending[i..<(i + needle.count)]) == needle { return i }
        return nil
    }
}

/// A WebSocket connection to a sandbox port after the guest server's 101: the client's bytes go
/// to the relay's stdin, the relay's output to the client, until the guest server closes (the
/// relay ends) or the client does (its end closes the relay's stdin; a guest server that does
/// not close within `lingerSeconds` after that has its relay ended).
final class PortTunnel: HTTPTunnel, @unchecked Sendable {
    static let lingerSeconds: UInt64 = 30
    let relay: RemoteProcess
    /// Read by `run`'s one output task only, after `upgrade` handed it over.
    private var output: RemoteProcess.Output.Iterator
    let early: [UInt8]

    init(relay: RemoteProcess, output: RemoteProcess.Output.Iterator, early: [UInt8]) {
        self.relay = relay
        self.output = output
        self.early = early
    }

    func cancel() { relay.signal(SIGKILL) }

    private func nextOutput() async -> OutputChunk? { await output.next() }

    func run(inbound: NIOAsyncChannelInboundStream<ByteBuffer>, outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>) async {
        let relay = relay, early = early
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                do {
                    for try await var buffer in inbound {
                        if let bytes = buffer.readBytes(length: buffer.readableBytes), !bytes.isEmpty { try await relay.write(bytes) }
                    }
                } catch {}
                relay.closeStdin()
                try? await Task.sleep(nanoseconds: PortTunnel.lingerSeconds * 1_000_000_000)
                if !Task.isCancelled { relay.signal(SIGKILL) }
            }
            group.addTask {
                var open = true
                if !early.isEmpty { do { try await outbound.write(ByteBuffer(bytes: early)) } catch { open = false } }
                while let chunk = await self.nextOutput() {
                    guard open, case .stdout(let bytes) = chunk else { continue } // drained to the end either way
                    do { try await outbound.write(ByteBuffer(bytes: bytes)) } catch {
                        open = false
                        relay.signal(SIGKILL)
                    }
                }
                outbound.finish()
            }
            // The guest's side ended (or the client's did and the linger passed): the connection closes.
            await group.next()
            group.cancelAll()
        }
        relay.signal(SIGKILL)
        _ = try? await relay.wait()
    }
}
