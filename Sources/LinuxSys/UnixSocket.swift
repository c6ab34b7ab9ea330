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
