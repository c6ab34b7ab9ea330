import Glibc
import LinuxSys

/// Why a guest memory access was refused.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The range [address, address+count) is not entirely inside one region.
    case outOfRange(address: UInt64, count: Int)
    case mapFailed(Errno)
    case regionsOverlap
    case readFailed(Errno)
    /// Writing guest memory out to a file failed (a full disk: ENOSPC).
    case writeFailed(Errno)
    case shortRead(expected: Int, got: Int)

    public var description: String {
        switch self {
        case .outOfRange(let address, let count):
            return "guest range 0x\(String(address, radix: 16))+\(count) is outside guest memory"
        case .mapFailed(let e): return "cannot map guest memory: \(e)"
        case .regionsOverlap: return "guest memory regions overlap"
        case .readFailed(let e): return "cannot read into guest memory: \(e)"
        case .writeFailed(let e): return "cannot write guest memory to its file: \(e)"
        case .shortRead(let expected, let got): return "file ended early: wanted \(expected) bytes, got \(got)"
        }
    }
}

/// One contiguous stretch of guest-physical memory backed by an anonymous mapping.
public struct MemoryRegion: Sendable {
    public let guestBase: UInt64
    public let size: Int
    /// Host virtual address of the mapping, for registering the region with KVM only.
    public let hostAddress: UInt64

    public var guestEnd: UInt64 { guestBase + UInt64(size) }

    func contains(_ address: UInt64, _ count: Int) -> Bool {
        address >= guestBase && address <= guestEnd && count >= 0 && UInt64(count) <= guestEnd - address
    }
}

/// The guest's physical memory. Every access is bounds-checked: an address the
/// guest (or an image) supplies that falls outside memory is an error, never a crash.
/// Shared by the vCPU and device threads; the guest mutates it concurrently, so
/// accessors copy bytes in and out rather than handing out references.
public final class GuestMemory: @unchecked Sendable {
    public let regions: [MemoryRegion]
    /// False when mapped from a snapshot file: then mincore speaks of the page cache, not of what the guest touched.
    let anonymous: Bool

    /// Maps `layout` (guest base, size) pairs; sizes must be page multiples.
    public init(layout: [(base: UInt64, size: Int)]) throws(GuestMemoryError) {
        let sorted = layout.sorted { $0.base < $1.base }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.base + UInt64(a.size) > b.base {
            throw .regionsOverlap
        }
        var mapped: [MemoryRegion] = []
        for entry in sorted {
            let ptr = mmap(nil, entry.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            if ptr == MAP_FAILED || ptr == nil {
                let error = Errno.current("mmap")
                for r in mapped { munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress)), r.size) }
                throw .mapFailed(error)
            }
            mapped.append(MemoryRegion(guestBase: entry.base, size: entry.size,
                                       hostAddress: UInt64(UInt(bitPattern: ptr))))
        }
        regions = mapped
        anonymous = true
    }

    /// Maps regions of the file `fd` privately (copy-on-write): guest writes stay in this process,
    /// and processes mapping the same file share its unwritten pages through the page cache.
    public init(file fd: Int32, layout: [(base: UInt64, size: Int, fileOffset: Int)]) throws(GuestMemoryError) {
        var mapped: [MemoryRegion] = []
        for entry in layout.sorted(by: { $0.base < $1.base }) {
            let ptr = mmap(nil, entry.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, off_t(entry.fileOffset))
            if ptr == MAP_FAILED || ptr == nil {
                let error = Errno.current("mmap")
                for r in mapped { munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress)), r.size) }
                throw .mapFailed(error)
            }
            mapped.append(MemoryRegion(guestBase: entry.base, size: entry.size, hostAddress: UInt64(UInt(bitPattern: ptr))))
        }
        for (a, b) in zip(mapped, mapped.dropFirst()) where a.guestEnd > b.guestBase {
            for r in mapped { munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress)), r.size) }
            throw .regionsOverlap
        }
        regions = mapped
        anonymous = false
    }

    /// Writes every region to `fd` at its offset in `layout order`, leaving holes (sparse, reading as
    /// zeros) for pages never touched or all zero. Returns the bytes actually written.
    public func dump(toFile fd: Int32, offsets: [Int]) throws(GuestMemoryError) -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var written = 0
        for (r, base) in zip(regions, offsets) {
            let start = UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress))!
            let pages = r.size / page
            var resident = [UInt8](repeating: 1, count: pages)
            if anonymous { _ = resident.withUnsafeMutableBufferPointer { mincore(start, r.size, $0.baseAddress) } }
            var run: (from: Int, count: Int)? = nil
            func flush() throws(GuestMemoryError) {
                guard let (from, count) = run else { return }
                run = nil
                var done = 0
                while done < count * page {
                    let n = Glibc.pwrite(fd, start + from * page + done, count * page - done, off_t(base + from * page + done))
                    if n < 0 { if errno == EINTR { continue }; throw .writeFailed(Errno.current("pwrite")) }
                    done += n
                }
                written += done
            }
            for i in 0..<pages {
                // A page never faulted in reads as zero: no need to look at it.
                let keep = resident[i] & 1 != 0 && !isZero(start + i * page, page)
                if keep {
                    if let r0 = run, r0.from + r0.count == i { run = (r0.from, r0.count + 1) }
                    else { try flush(); run = (i, 1) }
                } else {
                    try flush()
                }
            }
            try flush()
        }
        return written
    }

    private func isZero(_ p: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        let words = p.assumingMemoryBound(to: UInt64.self)
        for i in 0..<(count / 8) where words[i] != 0 { return false }
        return true
    }

    deinit {
        for r in regions { munmap(UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress)), r.size) }
    }

    /// Total bytes of guest RAM.
    public var totalSize: Int { regions.reduce(0) { $0 + $1.size } }

    /// Host pointer for [address, address+count), or an error if any byte is outside one region.
    @inline(__always)
    func pointer(_ address: UInt64, _ count: Int) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for r in regions where r.contains(address, count) {
            return UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress + (address - r.guestBase)))!
        }
        throw .outOfRange(address: address, count: count)
    }

    public func contains(_ address: UInt64, count: Int) -> Bool {
        regions.contains { $0.contains(address, count) }
    }

    // MARK: bytes

    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, bytes.count)
        if bytes.count > 0 { p.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }

    public func write(_ bytes: [UInt8], at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, bytes.count)
        bytes.withUnsafeBytes { if $0.count > 0 { p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, buffer.count)
        if buffer.count > 0 { buffer.baseAddress!.copyMemory(from: p, byteCount: buffer.count) }
    }

    public func read(_ count: Int, at address: UInt64) throws(GuestMemoryError) -> [UInt8] {
        let p = try pointer(address, count)
        return [UInt8](UnsafeRawBufferPointer(start: p, count: count))
    }

    public func fill(_ byte: UInt8, count: Int, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, count)
        memset(p, Int32(byte), count)
    }

    // MARK: little-endian integers

    public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, MemoryLayout<T>.size)
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func read<T: FixedWidthInteger>(_: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        let p = try pointer(address, MemoryLayout<T>.size)
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    // MARK: files

    /// Reads `count` bytes of the file `fd` from `offset` straight into guest memory at `address`.
    public func load(fromFile fd: Int32, offset: Int, count: Int, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, count)
        var done = 0
        while done < count {
            let n = Glibc.pread(fd, p + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .readFailed(Errno.current("pread"))
            }
            if n == 0 { throw .shortRead(expected: count, got: done) }
            done += n
        }
    }

    /// Writes `count` bytes of guest memory at `address` to the file `fd` at `offset`.
    public func store(toFile fd: Int32, offset: Int, count: Int, from address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, count)
        var done = 0
        while done < count {
            let n = Glibc.pwrite(fd, p + done, count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw .writeFailed(Errno.current("pwrite"))
            }
            done += n
        }
    }

    /// The resident bytes of guest memory (pages the guest or the loader touched).
    public func residentBytes() -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        var total = 0
        for r in regions {
            let pages = (r.size + page - 1) / page
            var vec = [UInt8](repeating: 0, count: pages)
            let ok = vec.withUnsafeMutableBufferPointer {
                mincore(UnsafeMutableRawPointer(bitPattern: UInt(r.hostAddress)), r.size, $0.baseAddress) == 0
            }
            if ok { total += vec.reduce(0) { $0 + Int($1 & 1) } * page }
        }
        return total
    }
}
