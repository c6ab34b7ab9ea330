import Glibc
import LinuxSys

/// `kiln-agent --forward PORT`: the guest end of a port forward (docs/net.md, "Ports in"). The
/// host starts it through Exec (as root: `/proc/1/exe` is only root's to execute), one per
/// connection, and the connection's bytes are its stdin and stdout: it connects to
/// 127.0.0.1:PORT in the guest and copies stdin to the socket and the socket to stdout until the
/// guest side ends. The host's end of stream (stdin closed) half-closes the socket, so a client
/// that shuts its sending side still gets its answer. It is the agent's own binary, so any
/// image serves it, with no `nc` or shell in it.
public enum PortRelay {
    /// Exit status: 0 when the guest side ended the connection, 1 when it could not connect.
    public static func run(port: UInt16) -> Int32 {
        // A side that has gone is a write error here (EPIPE), not a signal.
        signal(SIGPIPE, SIG_IGN)
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return fail("socket: \(Errno.current("socket"))") }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { return fail("cannot connect to 127.0.0.1:\(port) in the guest: \(Errno.current("connect"))") }
        var fds = [pollfd(fd: 0, events: Int16(POLLIN), revents: 0), pollfd(fd: s, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65536)
        var inputOpen = true
        while true {
            fds[0].fd = inputOpen ? 0 : -1
            if poll(&fds, 2, -1) < 0 {
                if errno == EINTR { continue }
                return 1
            }
            if inputOpen && fds[0].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    inputOpen = false
                    shutdown(s, Int32(SHUT_WR))
                } else if !copy(buffer[0..<n], to: s) {
                    return 0
                }
            }
            if fds[1].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(s, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 || !copy(buffer[0..<n], to: 1) { return 0 }
            }
        }
    }

    static func copy(_ bytes: ArraySlice<UInt8>, to fd: Int32) -> Bool {
        var offset = bytes.startIndex
        while offset < bytes.endIndex {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return false }
            offset += written
        }
        return true
    }

    static func fail(_ message: String) -> Int32 {
        writeRaw(2, "kiln-agent --forward: \(message)\n")
        return 1
    }
}
