import CLinux
import Glibc

/// An owned file descriptor, closed when it goes out of scope.
public struct FileDescriptor: ~Copyable, Sendable {
    public let raw: Int32

    public init(owning raw: Int32) { self.raw = raw }

    deinit { _ = Glibc.close(raw) }

    /// Closes now and reports the error, if any.
    public consuming func close() throws(Errno) {
        let fd = raw
        discard self
        if Glibc.close(fd) == -1 { throw Errno.current("close") }
    }

    /// Gives up ownership without closing.
    public consuming func release() -> Int32 {
        let fd = raw
        discard self
        return fd
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(Errno) -> FileDescriptor {
        let fd = try retrying("open \(path)") { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return FileDescriptor(owning: fd)
    }

    public func ioctl(_ request: UInt, _ arg: UnsafeMutableRawPointer?) -> Int32 {
        kiln_ioctl_ptr(raw, request, arg)
    }

    public func ioctl(_ request: UInt, value: UInt = 0) -> Int32 {
        kiln_ioctl_int(raw, request, value)
    }

    /// Reads up to `buffer.count` bytes; 0 means end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try retrying("read") { Glibc.read(raw, buffer.baseAddress, buffer.count) }
    }

    /// Writes all of `bytes`, looping over short writes.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        var offset = 0
        while offset < bytes.count {
            let n = try retrying("write") { Glibc.write(raw, bytes.baseAddress! + offset, bytes.count - offset) }
            offset += n
        }
    }

    public func pread(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(Errno) -> Int {
        try retrying("pread") { Glibc.pread(raw, buffer.baseAddress, buffer.count, off_t(offset)) }
    }

    public func size() throws(Errno) -> Int {
        var st = stat()
        _ = try once("fstat") { fstat(raw, &st) }
        return Int(st.st_size)
    }
}

/// Writes a whole string to a raw descriptor, ignoring errors (for diagnostics).
public func writeRaw(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n <= 0 {
                if n == -1 && errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}
