import CLinux
import Glibc

/// Non-blocking, close-on-exec Unix stream sockets, as raw descriptors for an epoll loop.
public enum UnixSocket {
    /// The longest path a `sockaddr_un` holds (its 108 bytes less the terminating NUL).
    public static let maxPathLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    static var streamFlags: Int32 { Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue) }

    /// Creates a socket file at `path` and listens on it. Fails if `path` exists.
    public static func listen(path: String, backlog: Int32 = 64) throws(Errno) -> FileDescriptor {
        let fd = FileDescriptor(owning: try once("socket") { socket(AF_UNIX, streamFlags, 0) })
        let address = try Address(path)
        _ = try once("bind \(path)") { address.with { bind(fd.raw, $0, $1) } }
        _ = try once("listen \(path)") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    /// Accepts one pending connection, non-blocking; nil when none is waiting.
    public static func accept(_ listener: Int32) throws(Errno) -> FileDescriptor? {
        while true {
            let fd = kiln_accept_nonblocking(listener)
            if fd >= 0 { return FileDescriptor(owning: fd) }
            switch errno {
            case EINTR: continue
            case EAGAIN, ECONNABORTED: return nil
            default: throw Errno.current("accept")
            }
        }
    }

    /// Connects a non-blocking socket to the listener at `path`. A Unix connect completes
    /// at once or fails (EAGAIN when the listener's backlog is full).
    public static func connect(path: String) throws(Errno) -> FileDescriptor {
        let fd = FileDescriptor(owning: try once("socket") { socket(AF_UNIX, streamFlags, 0) })
        let address = try Address(path)
        _ = try retrying("connect \(path)") { address.with { Glibc.connect(fd.raw, $0, $1) } }
        return fd
    }

    static var messageFlags: Int32 { Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) }

    /// A listening SOCK_SEQPACKET socket at `path` (blocking, close-on-exec): one record per
    /// message, with descriptors attached (a jailed VMM's command socket). Fails if `path` exists.
    public static func listenMessages(path: String, backlog: Int32 = 8) throws(Errno) -> FileDescriptor {
        let fd = FileDescriptor(owning: try once("socket") { socket(AF_UNIX, messageFlags, 0) })
        let address = try Address(path)
        _ = try once("bind \(path)") { address.with { bind(fd.raw, $0, $1) } }
        _ = try once("listen \(path)") { Glibc.listen(fd.raw, backlog) }
        return fd
    }

    /// Connects a blocking SOCK_SEQPACKET socket to the listener at `path`; `nonBlocking`, one
    /// that fails with EAGAIN instead of waiting when the listener's backlog is full.
    public static func connectMessages(path: String, nonBlocking: Bool = false) throws(Errno) -> FileDescriptor {
        let flags = messageFlags | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = FileDescriptor(owning: try once("socket") { socket(AF_UNIX, flags, 0) })
        let address = try Address(path)
        _ = try retrying("connect \(path)") { address.with { Glibc.connect(fd.raw, $0, $1) } }
        return fd
    }

    /// Sends without raising SIGPIPE; returns the bytes taken, 0 when the socket is full.
    public static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(Errno) -> Int {
        guard bytes.count > 0 else { return 0 }
        while true {
            let n = Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL))
            if n >= 0 { return n }
            switch errno {
            case EINTR: continue
            case EAGAIN: return 0
            default: throw Errno.current("send")
            }
        }
    }

    /// Receives up to `buffer.count` bytes; nil when nothing is waiting, 0 at end of stream.
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int? {
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            switch errno {
            case EINTR: continue
            case EAGAIN: return nil
            default: throw Errno.current("recv")
            }
        }
    }

    /// Sends one message (on a SOCK_SEQPACKET socket: one record) with `descriptors` attached
    /// (SCM_RIGHTS, at most 16); the caller keeps its own copies of them.
    public static func sendMessage(_ fd: Int32, _ bytes: [UInt8], descriptors: [Int32] = []) throws(Errno) {
        let ok = bytes.withUnsafeBytes { b in
            descriptors.withUnsafeBufferPointer { kiln_send_fds(fd, b.baseAddress, b.count, $0.baseAddress, Int32($0.count)) }
        }
        guard ok == 0 else { throw Errno.current("sendmsg") }
    }

    /// Receives one message of at most `capacity` bytes with up to `maxDescriptors` descriptors,
    /// which the caller then owns (close-on-exec; extra ones are closed). Empty bytes and no
    /// descriptors: the peer closed its end.
    public static func receiveMessage(_ fd: Int32, capacity: Int, maxDescriptors: Int = 0) throws(Errno) -> (bytes: [UInt8], descriptors: [Int32]) {
        var buffer = [UInt8](repeating: 0, count: max(capacity, 1))
        var fds = [Int32](repeating: -1, count: max(maxDescriptors, 1))
        var count: Int32 = 0
        let n = buffer.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { kiln_recv_fds(fd, b.baseAddress, capacity, $0.baseAddress, Int32(maxDescriptors), &count) }
        }
        guard n >= 0 else { throw Errno.current("recvmsg") }
        return (Array(buffer[0..<n]), Array(fds[0..<Int(count)]))
    }

    /// Shuts the sending direction (the peer reads end of stream); errors are ignored.
    public static func shutdownSending(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// A filled-in `sockaddr_un` for `path`.
    struct Address {
        var storage = sockaddr_un()
        let length: socklen_t

        init(_ path: String) throws(Errno) {
            let bytes = Array(path.utf8)
            guard !bytes.isEmpty, bytes.count <= UnixSocket.maxPathLength else { throw Errno(ENAMETOOLONG, call: "socket path \(path)") }
            storage.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &storage.sun_path) { raw in raw.copyBytes(from: bytes) }
            length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + 1)
        }

        func with<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
            var copy = storage
            return withUnsafePointer(to: &copy) { p in p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
        }
    }
}
