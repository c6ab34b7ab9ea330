import Glibc
import KilnTestSupport
import LinuxSys
import Sandbox

/// The real `kiln-agent` binary serving on a Unix socket on the host: the agent's behaviour
/// without a VM (the guest runs the same code as PID 1 on vsock).
final class HostAgent {
    let process: KilnProcess
    let socketPath: String
    nonisolated(unsafe) static var counter = 0

    init() throws {
        HostAgent.counter += 1
        socketPath = "/tmp/kiln-agent-test-\(getpid())-\(HostAgent.counter).sock"
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
        let fd = try UnixSocket.connect(path: socketPath)
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
