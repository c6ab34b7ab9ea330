import AgentProtocol
import Glibc
import LinuxSys
import Synchronization

/// `kiln run -p HOSTPORT:GUESTPORT` (docs/net.md, "Ports in"): a TCP listener on the host's
/// 127.0.0.1:HOSTPORT whose connections reach 127.0.0.1:GUESTPORT inside the guest over the agent's
/// vsock session, so it works without any network device. Each connection is relayed by one guest
/// process, the agent's own binary in its relay mode (`/proc/1/exe --forward GUESTPORT`,
/// PortRelay), started through Exec, its stdin and stdout the connection's two directions with
/// the agent protocol's credit as flow control: no new message type, and no program the image
/// must have (the cost is one guest process per connection).
public final class PortForward: Sendable {
    public struct Mapping: Sendable, Equatable, CustomStringConvertible {
        public var hostPort: UInt16
        public var guestPort: UInt16
        public init(hostPort: UInt16, guestPort: UInt16) { self.hostPort = hostPort; self.guestPort = guestPort }

        /// `HOSTPORT:GUESTPORT`, or `PORT` for the same on both sides; ports 1-65535.
        public static func parse(_ text: String) -> Mapping? {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count) else { return nil }
            let ports = parts.compactMap { $0.allSatisfy(\.isNumber) && !$0.isEmpty ? UInt16($0) : nil }
            guard ports.count == parts.count, ports.allSatisfy({ $0 > 0 }) else { return nil }
            return Mapping(hostPort: ports[0], guestPort: ports.last!)
        }

        public var description: String { "127.0.0.1:\(hostPort) -> guest 127.0.0.1:\(guestPort)" }
    }

    public let mapping: Mapping
    let listener: Int32
    let stopped = StopFlag()

    /// The relay in the guest: the agent's binary (PID 1's, whatever the image has), run as root,
    /// the only user who may execute another's `/proc/PID/exe`.
    public static func relay(_ port: UInt16) -> Exec {
        Exec(argv: ["/proc/1/exe", "--forward", "\(port)"], environment: [])
    }

    /// Binds 127.0.0.1:HOSTPORT now (so that it can be done before `kiln run` confines itself:
    /// afterwards only `accept` is left to it) and starts serving connections into `sandbox`.
    public init(_ mapping: Mapping, sandbox: Sandbox) throws(SandboxError) {
        self.mapping = mapping
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .setup("-p \(mapping.hostPort): socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = mapping.hostPort.bigEndian
        a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, Glibc.listen(fd, 16) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw .setup("-p \(mapping.hostPort): cannot listen on 127.0.0.1:\(mapping.hostPort): \(String(cString: strerror(e)))")
        }
        listener = fd
        let agent = sandbox.agent, stopped = self.stopped
        do {
            _ = try LinuxSys.Thread.spawn(name: "kiln-port-\(mapping.hostPort)") {
                while !stopped.value.load(ordering: .acquiring) {
                    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&p, 1, 500) >= 0 || errno == EINTR else { break }
                    guard p.revents & Int16(POLLIN) != 0 else { continue }
                    // Nonblocking (UnixSocket.accept: accept4, which the supervisor's seccomp
                    // policy allows, unlike fcntl): the relay polls before each read and write.
                    guard let accepted = try? UnixSocket.accept(fd) else { continue }
                    let c = accepted.release()
                    Task { await PortForward.relay(c, to: mapping.guestPort, agent: agent) }
                }
                Glibc.close(fd)
            }
        } catch {
            Glibc.close(fd)
            throw .setup("-p: cannot start a thread: \(error)")
        }
    }

    /// Stops accepting (connections already relayed go on until either side ends).
    public func stop() { stopped.value.store(true, ordering: .releasing) }

    static func relay(_ connection: Int32, to port: UInt16, agent: AgentClient) async {
        let process: RemoteProcess
        do { process = try await agent.exec(relay(port)) } catch {
            Glibc.close(connection)
            return
        }
        // Host to guest: a thread reads the connection; its end of stream closes the relay's stdin.
        let (chunks, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingOldest(4))
        guard (try? LinuxSys.Thread.spawn(name: "kiln-port-in") {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                var p = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, -1) < 0 && errno != EINTR { break }
                let n = buffer.withUnsafeMutableBytes { Glibc.read(connection, $0.baseAddress, $0.count) }
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if n <= 0 { break }
                while case .dropped = continuation.yield(Array(buffer[0..<n])) { usleep(1000) }
            }
            continuation.finish()
        }) != nil else {
            process.closeStdin()
            Glibc.close(connection)
            return
        }
        let input = Task {
            for await chunk in chunks { try? await process.write(chunk) }
            process.closeStdin()
        }
        // Guest to host: the relay's stdout; its end (the guest side closed) ends the connection.
        for await chunk in process.output {
            if case .stdout(let bytes) = chunk, !writeAll(connection, bytes) { break }
        }
        _ = try? await process.wait()
        Glibc.shutdown(connection, Int32(SHUT_RDWR))
        // The input task ends once the reader thread has seen the end of stream: the descriptor is
        // no longer read, and may be closed.
        _ = await input.value
        Glibc.close(connection)
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EAGAIN {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, 1000)
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }
}

final class StopFlag: Sendable {
    let value = Atomic<Bool>(false)
}
