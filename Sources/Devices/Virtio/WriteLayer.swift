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

    static func bit(_ bits: [UInt64], _ s: UInt64) -> Bool { bits[Int(s / 64)] & (1 << (s % 64)) != 0 }
}
