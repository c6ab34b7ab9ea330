import Glibc
import LinuxSys

/// Why reading a layer or an archive failed: the bytes, not the filesystem it is written to.
public enum TarError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Reading the underlying file failed.
    case io(Errno)
    /// The archive ends inside a header or inside an entry's data (`offset`: bytes of tar read).
    case truncated(offset: Int64)
    /// A header block whose checksum does not match its bytes.
    case badChecksum(offset: Int64)
    /// A header field that is not a number, an unknown magic, a header out of place.
    case badHeader(offset: Int64, String)
    /// A malformed pax extended header record.
    case badPaxHeader(offset: Int64, String)
    /// A pax header, GNU long name or sparse map larger than the reader's limit.
    case metadataTooLarge(offset: Int64, size: Int64, limit: Int)
    /// An entry's contents asked for in memory that exceed the caller's limit.
    case contentsTooLarge(path: String, size: Int64, limit: Int)
    /// A corrupt, truncated or unsupported gzip or zstd stream.
    case compression(String)

    public var description: String {
        switch self {
        case .io(let e): return "read failed: \(e)"
        case .truncated(let offset): return "archive truncated at byte \(offset)"
        case .badChecksum(let offset): return "bad header checksum at byte \(offset)"
        case .badHeader(let offset, let why): return "bad header at byte \(offset): \(why)"
        case .badPaxHeader(let offset, let why): return "bad pax header at byte \(offset): \(why)"
        case .metadataTooLarge(let offset, let size, let limit):
            return "extended header at byte \(offset) is \(size) bytes (limit \(limit))"
        case .contentsTooLarge(let path, let size, let limit): return "\(path) is \(size) bytes (limit \(limit))"
        case .compression(let why): return why
        }
    }
}

/// A stream of bytes: a file, a decompressor over another source, or memory.
/// Classes, so that one source can be handed to a decompressor and the reader in turn.
public protocol ByteSource: AnyObject {
    /// Reads up to `buffer.count` bytes; 0 only at the end of the stream.
    func read(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int
}

/// Reads a file from its start.
public final class FileByteSource: ByteSource {
    private let fd: FileDescriptor

    public init(path: String) throws(TarError) {
        do { fd = try FileDescriptor.open(path, O_RDONLY) } catch { throw .io(error) }
    }

    public init(descriptor: consuming FileDescriptor) { fd = descriptor }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        do { return try fd.read(into: buffer) } catch { throw .io(error) }
    }
}

/// Bytes already in memory (tests, fuzzing, small manifests inside a tar).
public final class MemoryByteSource: ByteSource {
    private let bytes: [UInt8]
    private var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        let n = min(buffer.count, bytes.count - position)
        guard n > 0 else { return 0 }
        bytes.withUnsafeBytes { src in
            buffer.baseAddress!.copyMemory(from: src.baseAddress! + position, byteCount: n)
        }
        position += n
        return n
    }
}
