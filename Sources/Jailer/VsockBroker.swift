import CSandbox
import Glibc
import LinuxSys
import Synchronization
import VMMProtocol

/// Guest vsock connections to host port P go to the Unix socket `PATH_P`, which the jailed
/// VMM can neither see nor (as its unprivileged user) connect to. The VMM asks the supervisor
/// over the control socket (fd 3, SOCK_SEQPACKET): it sends the port, 4 bytes little-endian;
/// the supervisor connects to `PATH_P` and answers one byte, 0 with the connected descriptor
/// attached or 1 when the connection failed. The VMM names only a port, never a path.
public enum VsockBroker {
    /// Supervisor side: serves one request; false when the VMM closed its end.
    static func serve(_ control: Int32, vsockPath: String) -> Bool {
        let message: (bytes: [UInt8], descriptors: [Int32])
        do { message = try UnixSocket.receiveMessage(control, capacity: 8) } catch { return error.code == EINTR || error.code == EAGAIN }
        let request = message.bytes
        if request.isEmpty { return false }
        guard request.count == 4 else { return true }
        let port = UInt32(request[0]) | UInt32(request[1]) << 8 | UInt32(request[2]) << 16 | UInt32(request[3]) << 24
        if let fd = try? UnixSocket.connect(path: "\(vsockPath)_\(port)") {
            try? UnixSocket.sendMessage(control, [0], descriptors: [fd.raw])
        } else {
            try? UnixSocket.sendMessage(control, [1])
        }
        return true
    }

    /// VMM side: a connector for VirtioVsock that asks the supervisor on `control`.
    public static func connector(control: Int32 = JailSpec.controlFD) -> @Sendable (UInt32) -> Int32? {
        let lock = Mutex(())
        return { port in
            lock.withLock { _ in
                let request = [UInt8((port >> 0) & 0xFF), UInt8((port >> 8) & 0xFF), UInt8((port >> 16) & 0xFF), UInt8(port >> 24)]
                guard (try? UnixSocket.sendMessage(control, request)) != nil,
                      let reply = try? UnixSocket.receiveMessage(control, capacity: 1, maxDescriptors: 1) else { return nil }
                if reply.bytes == [0], let fd = reply.descriptors.first { return fd }
                reply.descriptors.forEach { close($0) }
                return nil
            }
        }
    }
}
