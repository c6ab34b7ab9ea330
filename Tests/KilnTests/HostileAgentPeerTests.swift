import AgentProtocol
import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Testing

/// The host's agent client against a peer that breaks the protocol on purpose, as a root process
/// in the guest can (it may stand in for the agent on any vsock stream the host opens): the
/// host gives up at a deadline or ends the session with a protocol error, and never buffers more
/// than the credit it gave. The peer is a socket pair's far end; no VM.
@Suite(.blocking) struct HostileAgentPeerTests {
    /// A socket pair: the client's end and the hostile peer's.
    static func pair() throws -> (client: Int32, peer: Int32) {
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0)
        return (fds[0], fds[1])
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, $0.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            done += n
        }
    }

    /// Reads frames from the host until `until` says stop or the connection ends; returns them.
    static func readFrames(_ fd: Int32, until: (Frame) -> Bool = { _ in false }) -> [Frame] {
        var decoder = FrameDecoder(from: .host)
        var frames: [Frame] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            while let frame = try? decoder.next() {
                frames.append(frame)
                if until(frame) { return frames }
            }
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return frames }
            decoder.feed(buffer[0..<n])
        }
    }

    /// A connected client whose peer, on a thread of its own, answers the Hello and then does
    /// what `then` says (the client's init waits for the answer, so the peer cannot run here).
    static func client(then: @escaping @Sendable (Int32) -> Void) throws -> (AgentClient, peer: Int32, thread: LinuxSys.Thread) {
        let (client, peer) = try pair()
        let thread = try LinuxSys.Thread.spawn(name: "hostile-peer") {
            _ = readFrames(peer) { if case .hello = $0.message { true } else { false } }
            write(peer, (try? Frame(stream: 0, .helloAck(HelloAck(software: "hostile", capabilities: Capabilities(rawValue: 0)))).encoded()) ?? [])
            then(peer)
        }
        return (try AgentClient(socket: FileDescriptor(owning: client), handshakeTimeout: 10), peer, thread)
    }

    @Test func aPeerThatNeverAnswersTheHandshakeIsGivenUpAtTheDeadline() throws {
        let (client, peer) = try Self.pair()
        defer { close(peer) }
        do {
            _ = try AgentClient(socket: FileDescriptor(owning: client), handshakeTimeout: 1)
            Issue.record("a handshake nobody answered succeeded")
        } catch {
            #expect("\(error)" == "the agent did not answer the handshake within 1 s")
        }
    }

    /// A peer that answers the Hello and then nothing: a ping fails at its deadline, and the
    /// session is left open (the caller decides what a silent guest means).
    @Test func aPingThePeerNeverAnswersFailsAtItsDeadline() async throws {
        let (agent, peer, thread) = try Self.client { _ in }
        defer { close(peer) }
        thread.join()
        do {
            _ = try await agent.ping(timeout: 0.5)
            Issue.record("a ping nobody answered succeeded")
        } catch {
            #expect("\(error)" == "the agent did not answer a ping within 1 s")
        }
        #expect(agent.isQuiescent)
        #expect(agent.idleMark() == nil, "an unanswered ping leaves the session off a frame boundary")
    }

    /// A frame header announcing 4 GiB: refused at the header, without waiting for the payload.
    @Test func aFrameLongerThanOneMebibyteEndsTheSessionAtItsHeader() async throws {
        let (agent, peer, thread) = try Self.client { peer in
            HostileAgentPeerTests.write(peer, [0xF0, 0xFF, 0xFF, 0xFF, MessageType.pong.rawValue, 0, 0, 0, 0, 0, 0, 0])
        }
        defer { close(peer) }
        thread.join()
        do {
            _ = try await agent.ping()
            Issue.record("a ping was answered by an oversized frame")
        } catch AgentClientError.protocolError(.oversized(let length, let limit)) {
            #expect(length == 0xFFFF_FFF0 && limit == Wire.maxPayload)
        }
        // The host told the peer why, then closed its end.
        let told = Self.readFrames(peer)
        #expect(told.contains { if case .protocolError(let code, _) = $0.message { code == ProtocolError.oversized(length: 0, limit: 0).code } else { false } },
                "\(told.map(\.message))")
    }

    /// Output past the 1 MiB window the host granted (the consumer reads nothing): the session
    /// ends with a flow-control error instead of the host buffering whatever the peer sends.
    @Test func outputBeyondItsCreditEndsTheSessionInsteadOfGrowingTheHost() async throws {
        let (agent, peer, flood) = try Self.client { peer in
            let exec = HostileAgentPeerTests.readFrames(peer) { if case .exec = $0.message { true } else { false } }
            guard let stream = exec.last?.stream else { return }
            HostileAgentPeerTests.write(peer, (try? Frame(stream: stream, .started(pid: 42)).encoded()) ?? [])
            let chunk = [UInt8](repeating: UInt8(ascii: "x"), count: 512 << 10)
            for _ in 0..<3 { HostileAgentPeerTests.write(peer, (try? Frame(stream: stream, .stdout(chunk)).encoded()) ?? []) }
        }
        let process = try await agent.exec(Exec(argv: ["/bin/yes"], environment: []))
        flood.join()
        do {
            _ = try await process.wait()
            Issue.record("the peer's overrun went unnoticed")
        } catch AgentClientError.protocolError(.flowControl) {}
        let told = Self.readFrames(peer)
        #expect(told.contains { if case .protocolError(let code, _) = $0.message { code == ProtocolError.flowControl(stream: 0).code } else { false } },
                "\(told.map(\.message))")
    }
}
