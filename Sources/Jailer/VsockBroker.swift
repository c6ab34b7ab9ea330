import CSandbox
import Glibc
import LinuxSys
import Synchronization

/// Guest vsock connections to host port P go to the Unix socket `PATH_P`, which the jailed
/// VMM can neither see nor (as its unprivileged user) connect to. The VMM asks the supervisor
/// over the control socket (fd 3, SOCK_SEQPACKET): it sends the port, 4 bytes little-endian;
/// the supervisor connects to `PATH_P` and answers one byte, 0 with the connected descriptor
/// attached or 1 when the connection failed. The VMM names only a port, never a path.
public enum VsockBroker {
    /// Supervisor side: serves one request; false when the VMM closed its end.
    static func serve(_ control: Int32, vsockPath: String) -> Bool {
        var request = [UInt8](repeating: 0, count: 8)
        var received: Int32 = -1
        let n = kiln_recv_with_fd(control, &request, request.count, &received)
        if received >= 0 { close(received) } // the VMM never sends descriptors
        if n <= 0 { return n < 0 && (errno == EINTR || errno == EAGAIN) }
        guard n == 4 else { return true }
        let port = UInt32(request[0]) | UInt32(request[1]) << 8 | UInt32(request[2]) << 16 | UInt32(request[3]) << 24
        if let fd = try? UnixSocket.connect(path: "\(vsockPath)_\(port)") {
            var ok: UInt8 = 0
            _ = kiln_send_with_fd(control, &ok, 1, fd.raw)
        } else {
            var failed: UInt8 = 1
            _ = kiln_send_with_fd(control, &failed, 1, -1)
        }
        return true
    }

    /// VMM side: a connector for VirtioVsock that asks the supervisor on `control`.
    public static func connector(control: Int32 = JailSpec.controlFD) -> @Sendable (UInt32) -> Int32? {
        let lock = Mutex(())
        return { port in
            lock.withLock { _ in
                var request = [UInt8((port >> 0) & 0xFF), UInt8((port >> 8) & 0xFF), UInt8((port >> 16) & 0xFF), UInt8(port >> 24)]
                guard kiln_send_with_fd(control, &request, 4, -1) == 0 else { return nil }
                var reply: UInt8 = 1
                var fd: Int32 = -1
                let n = kiln_recv_with_fd(control, &reply, 1, &fd)
                if n == 1 && reply == 0 && fd >= 0 { return fd }
                if fd >= 0 { close(fd) }
                return nil
            }
        }
    }
}
