import CLinux
import Glibc

/// A Linux eventfd: a counter that one thread signals and another waits on,
/// or that KVM reads and writes directly (irqfd, ioeventfd).
public struct EventFD: ~Copyable, Sendable {
    public let fd: FileDescriptor
    public var raw: Int32 { fd.raw }

    public init(nonBlocking: Bool = false) throws(Errno) {
        let flags = Int32(EFD_CLOEXEC) | (nonBlocking ? Int32(EFD_NONBLOCK) : 0)
        let raw = try once("eventfd") { eventfd(0, flags) }
        fd = FileDescriptor(owning: raw)
    }

    /// Hands the descriptor to an owner that keeps it as a plain number (and closes it).
    public consuming func release() -> Int32 { fd.release() }

    public func signal(_ value: UInt64 = 1) {
        var value = value
        while Glibc.write(fd.raw, &value, 8) == -1 && errno == EINTR {}
    }

    /// Returns the counter and resets it (blocks when zero unless non-blocking).
    @discardableResult
    public func wait() -> UInt64 {
        var value: UInt64 = 0
        while Glibc.read(fd.raw, &value, 8) == -1 && errno == EINTR {}
        return value
    }
}
