import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox
import Synchronization

/// The real `kiln-agent` binary serving on a Unix socket on the host: the agent's behaviour
/// without a VM (the guest runs the same code as PID 1 on vsock).
final class HostAgent {
    let process: KilnProcess
    let socketPath: String
    /// Suites create agents in parallel: each needs a socket path of its own.
    static let counter = Atomic<Int>(0)

    init() throws {
        let n = HostAgent.counter.add(1, ordering: .relaxed).newValue
        socketPath = "/tmp/kiln-agent-test-\(getpid())-\(n).sock"
        unlink(socketPath)
        let binary = KilnProcess.binary.replacingSuffix("/kiln", with: "/kiln-agent")
        process = try KilnProcess(["--listen", socketPath], executable: binary)
        for _ in 0..<500 where access(socketPath, F_OK) != 0 { usleep(10_000) }
    }

    deinit {
        kill(process.pid, SIGKILL)
        unlink(socketPath)
    }

    func rawConnection() throws -> FileDescriptor {
        // The socket file appears at bind(), a moment before listen(): a connect in between is
        // refused, which a loaded machine (many agents starting at once) does hit.
        var attempt = 0
        let fd: FileDescriptor
        while true {
            do {
                fd = try UnixSocket.connect(path: socketPath)
                break
            } catch {
                attempt += 1
                if attempt >= 500 { throw error }
                usleep(10_000)
            }
        }
        _ = fcntl(fd.raw, F_SETFL, fcntl(fd.raw, F_GETFL) & ~O_NONBLOCK)
        return fd
    }

    func connect() throws -> AgentClient {
        try AgentClient(socket: try rawConnection(), software: "kiln-tests")
    }
}

extension String {
    func replacingSuffix(_ suffix: String, with other: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) + other : self
    }
}

/// Reads until the peer closes or `limit` bytes, with a deadline.
func readAll(_ fd: Int32, seconds: Int = 10) -> [UInt8] {
    var out: [UInt8] = []
    var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    var buf = [UInt8](repeating: 0, count: 65536)
    while poll(&pfd, 1, Int32(seconds * 1000)) > 0 {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        out += buf[0..<n]
    }
    return out
}
