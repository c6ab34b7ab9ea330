import Glibc
import LinuxSys
import Synchronization

/// A private, throw-away copy-on-write layer over a disk image: written sectors go to an unnamed
/// temporary file (O_TMPFILE, so nothing remains however Kiln ends) and are read back from there;
/// all others come from the image, which is never written. One image serves many sandboxes.
public final class WriteLayer: Sendable {
    let fd: Int32
    /// One bit per 512-byte sector: set once the sector lives in the layer.
    private let written: Mutex<[UInt64]>

    /// Creates the layer's file in `directory` for an image of `sectors` sectors.
    public init(sectors: UInt64, directory: String = WriteLayer.defaultDirectory) throws(Errno) {
        let raw = Glibc.open(directory, WriteLayer.tmpfile | O_RDWR | O_CLOEXEC, 0o600)
        guard raw >= 0 else { throw Errno.current("create a write layer in \(directory)") }
        guard ftruncate(raw, off_t(sectors) * off_t(VirtioBlock.sectorSize)) == 0 else {
            let e = Errno.current("size the write layer")
            Glibc.close(raw)
            throw e
        }
        fd = raw
        written = Mutex([UInt64](repeating: 0, count: Int((sectors + 63) / 64)))
    }

    deinit { Glibc.close(fd) }

    /// O_TMPFILE (__O_TMPFILE | O_DIRECTORY on x86-64), which Glibc does not export to Swift.
    static let tmpfile: Int32 = 0o20_000_000 | O_DIRECTORY

    public static var defaultDirectory: String {
        if let p = getenv("KILN_LAYER_DIR") { return String(cString: p) }
        return "/var/tmp"
    }

    /// Splits `count` sectors from `sector` into runs that live in the same place:
    /// (first sector, sector count, in the layer?).
    func runs(sector: UInt64, count: UInt64) -> [(sector: UInt64, count: UInt64, inLayer: Bool)] {
        written.withLock { bits in
            var out: [(UInt64, UInt64, Bool)] = []
            var s = sector
            let end = sector + count
            while s < end {
                let inLayer = WriteLayer.bit(bits, s)
                var e = s + 1
                while e < end && WriteLayer.bit(bits, e) == inLayer { e += 1 }
                out.append((s, e - s, inLayer))
                s = e
            }
            return out
        }
    }

    func markWritten(sector: UInt64, count: UInt64) {
        written.withLock { bits in
            for s in sector..<(sector + count) { bits[Int(s / 64)] |= 1 << (s % 64) }
        }
    }

    /// Sectors held by the layer (what this sandbox has written).
    public var writtenSectors: Int { written.withLock { $0.reduce(0) { $0 + $1.nonzeroBitCount } } }

    /// The written-sector bitmap (bit s of word s/64), for a snapshot.
    public var bitmap: [UInt64] { written.withLock { $0 } }

    /// Copies the written sectors into a new sparse file at `path` (a snapshot's copy of the layer).
    public func save(to path: String) throws(Errno) {
        let out = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw Errno.current("create \(path)") }
        defer { Glibc.close(out) }
        try save(toDescriptor: out)
    }

    /// The same into an open, empty file (a jailed VMM's supervisor creates it).
    public func save(toDescriptor out: Int32) throws(Errno) {
        let bits = bitmap
        guard ftruncate(out, off_t(bits.count * 64 * VirtioBlock.sectorSize)) == 0 else { throw Errno.current("size the layer file") }
        try WriteLayer.copyRuns(bits, from: fd, to: out)
    }

    /// Fills this (fresh) layer with the sectors a snapshot saved: a clone starts from the
    /// snapshot's disk contents and writes on privately from there.
    public func restore(from path: String, bitmap bits: [UInt64]) throws(Errno) {
        let count = written.withLock { $0.count }
        guard bits.count == count else { throw Errno(EINVAL, call: "restore \(path): the layer is for another disk size") }
        let source = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard source >= 0 else { throw Errno.current("open \(path)") }
        defer { Glibc.close(source) }
        try WriteLayer.copyRuns(bits, from: source, to: fd)
        written.withLock { $0 = bits }
    }

    /// Copies each run of set sectors from `source` to `target` at the same offsets.
    static func copyRuns(_ bits: [UInt64], from source: Int32, to target: Int32) throws(Errno) {
        let total = UInt64(bits.count * 64)
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var s: UInt64 = 0
        while s < total {
            guard bit(bits, s) else { s += 1; continue }
            var e = s + 1
            while e < total && bit(bits, e) { e += 1 }
            var offset = Int(s) * VirtioBlock.sectorSize
            let end = Int(e) * VirtioBlock.sectorSize
            while offset < end {
                let want = min(buffer.count, end - offset)
                let n = buffer.withUnsafeMutableBytes { Glibc.pread(source, $0.baseAddress, want, off_t(offset)) }
                if n < 0 { if errno == EINTR { continue }; throw Errno.current("pread") }
                if n == 0 { throw Errno(EIO, call: "pread: the layer file is short") }
                var done = 0
                while done < n {
                    let w = buffer.withUnsafeBytes { Glibc.pwrite(target, $0.baseAddress! + done, n - done, off_t(offset + done)) }
                    if w < 0 { if errno == EINTR { continue }; throw Errno.current("pwrite") }
                    done += w
                }
                offset += n
            }
            s = e
        }
    }

    static func bit(_ bits: [UInt64], _ s: UInt64) -> Bool { bits[Int(s / 64)] & (1 << (s % 64)) != 0 }
}
