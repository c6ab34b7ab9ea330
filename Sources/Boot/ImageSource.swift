import Glibc
import GuestMemory
import LinuxSys

/// Random access to a kernel or initrd image without reading it all into the VMM's memory.
public protocol ImageSource: Sendable {
    var size: Int { get }
    var name: String { get }
    /// Exactly `count` bytes at `offset`, or `.truncated` if the image is shorter.
    func bytes(at offset: Int, count: Int) throws(BootError) -> [UInt8]
    /// Copies `count` bytes at `offset` into guest memory at `address`.
    func copy(at offset: Int, count: Int, into memory: GuestMemory, address: UInt64) throws(BootError)
}

extension ImageSource {
    func checkRange(_ offset: Int, _ count: Int, _ what: String) throws(BootError) {
        guard offset >= 0, count >= 0, offset <= size, count <= size - offset else {
            throw .truncated("\(what) at offset \(offset)+\(count) lies beyond the end of \(name) (\(size) bytes)")
        }
    }
}

/// An image held in memory (tests, fuzzing).
public struct ByteImage: ImageSource {
    public let data: [UInt8]
    public let name: String
    public init(_ data: [UInt8], name: String = "image") { self.data = data; self.name = name }
    public var size: Int { data.count }

    public func bytes(at offset: Int, count: Int) throws(BootError) -> [UInt8] {
        try checkRange(offset, count, "read")
        return Array(data[offset..<offset + count])
    }

    public func copy(at offset: Int, count: Int, into memory: GuestMemory, address: UInt64) throws(BootError) {
        try checkRange(offset, count, "segment")
        let result: Result<Void, GuestMemoryError> = data.withUnsafeBytes { raw in
            Result { () throws(GuestMemoryError) in
                try memory.write(UnsafeRawBufferPointer(rebasing: raw[offset..<offset + count]), at: address)
            }
        }
        if case .failure(let error) = result { throw .placing(name, error) }
    }
}

/// An image read from a file with pread, straight into guest memory.
public final class FileImage: ImageSource, @unchecked Sendable {
    let fd: Int32
    public let size: Int
    public let name: String

    public init(path: String) throws(BootError) {
        let raw = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if raw < 0 { throw .io(path, Errno.current("open")) }
        var st = stat()
        if fstat(raw, &st) != 0 {
            let e = Errno.current("fstat")
            Glibc.close(raw)
            throw .io(path, e)
        }
        if (st.st_mode & S_IFMT) != S_IFREG {
            Glibc.close(raw)
            throw .io(path, Errno(EISDIR, call: "not a regular file"))
        }
        fd = raw
        size = Int(st.st_size)
        name = path
    }

    deinit { Glibc.close(fd) }

    public func bytes(at offset: Int, count: Int) throws(BootError) -> [UInt8] {
        try checkRange(offset, count, "read")
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + done, count - done, off_t(offset + done)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw .io(name, Errno.current("pread"))
            }
            if n == 0 { throw .truncated("\(name) shrank while being read") }
            done += n
        }
        return out
    }

    public func copy(at offset: Int, count: Int, into memory: GuestMemory, address: UInt64) throws(BootError) {
        try checkRange(offset, count, "segment")
        var failure: GuestMemoryError?
        do { try memory.load(fromFile: fd, offset: offset, count: count, at: address) } catch { failure = error }
        if let failure { throw .placing(name, failure) }
    }
}

/// Little-endian field access on a byte array, bounds-checked.
struct Bytes {
    let data: [UInt8]
    let what: String

    func u8(_ o: Int) throws(BootError) -> UInt8 {
        guard o >= 0, o < data.count else { throw .truncated("\(what) field at \(o)") }
        return data[o]
    }

    func le<T: FixedWidthInteger>(_ o: Int, _: T.Type = T.self) throws(BootError) -> T {
        let n = MemoryLayout<T>.size
        guard o >= 0, o <= data.count - n else { throw .truncated("\(what) field at \(o)") }
        var v: T = 0
        for i in 0..<n { v |= T(data[o + i]) << (8 * i) }
        return v
    }
}
