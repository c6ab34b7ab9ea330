import Glibc
import LinuxSys
import VMM

/// A restored sandbox's way back to its agent: the vsock connection the snapshot kept.
extension Sandbox {
    /// The agent of a restored VM. The guest kept the connection the snapshot's host had open
    /// (docs/vsock.md, "Snapshots"): with the session recorded (`AgentSession`) the new client
    /// attaches to it and speaks at once, with no new connection or handshake in the guest.
    /// Without one (a snapshot of a busy session) the kept connection is attached and closed, so
    /// the agent ends that session as a reset would, and a new connection is made as after a boot;
    /// also when the VM kept no connection.
    static func resumeAgent(_ host: any VMHost, directory: String, console: Int32, timeout: Double,
                            session: AgentSession?) async throws(SandboxError) -> Sandbox {
        let deadline = monotonicSeconds() + timeout
        var pause: UInt64 = 500_000
        attaching: while host.ended == nil && monotonicSeconds() < deadline {
            switch attachToGuest(directory + "/vsock.sock", port: agentPort) {
            case .notListening:
                // The VMM (a jailed one is a new process) has not created the socket yet.
                try? await Task.sleep(nanoseconds: pause)
                pause = min(pause * 2, 50_000_000)
            case .nothingKept:
                break attaching
            case .attached(let socket):
                guard let session else { break attaching } // the socket closes here: the old session ends
                do {
                    let client = try AgentClient(resuming: socket, session: session)
                    BootTrace.mark("agent-ready")
                    return Sandbox(agent: client, directory: directory, host: host, consoleFD: console)
                } catch {
                    host.stop()
                    cleanUp(directory, console)
                    throw .agent(error)
                }
            }
        }
        return try await launch(host, directory: directory, console: console, timeout: max(1, deadline - monotonicSeconds()))
    }

    enum Attach: ~Copyable {
        case notListening, nothingKept
        case attached(FileDescriptor)
    }

    /// `ATTACH <port>` (docs/vsock.md): takes over the guest connection a snapshot kept.
    static func attachToGuest(_ path: String, port: Int) -> Attach {
        guard let fd = try? UnixSocket.connect(path: path) else { return .notListening }
        _ = fcntl(fd.raw, F_SETFL, fcntl(fd.raw, F_GETFL) & ~O_NONBLOCK)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let request = Array("ATTACH \(port)\n".utf8)
        guard request.withUnsafeBytes({ Glibc.send(fd.raw, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else {
            return .nothingKept
        }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while line.count < 64 {
            let n = Glibc.read(fd.raw, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n != 1 { return .nothingKept }
            if byte == UInt8(ascii: "\n") { break }
            line.append(byte)
        }
        guard line.starts(with: Array("OK ".utf8)) else { return .nothingKept }
        timeout = timeval(tv_sec: 0, tv_usec: 0)
        _ = setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return .attached(fd)
    }
}
