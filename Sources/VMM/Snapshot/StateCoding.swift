/// Little-endian encoding for the snapshot state file (docs/snapshot-format.md).
struct StateWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    mutating func u16(_ v: UInt16) { int(v) }
    mutating func u32(_ v: UInt32) { int(v) }
    mutating func u64(_ v: UInt64) { int(v) }
    private mutating func int<T: FixedWidthInteger>(_ v: T) {
        for i in 0..<MemoryLayout<T>.size { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) }
    }
    /// u32 length, then the bytes.
    mutating func blob(_ b: [UInt8]) { u32(UInt32(b.count)); bytes += b }
    mutating func optionalBlob(_ b: [UInt8]?) { bool(b != nil); if let b { blob(b) } }
    mutating func string(_ s: String) { blob(Array(s.utf8)) }

    /// A section: 4-byte ASCII tag, u32 length, payload.
    mutating func section(_ tag: String, _ body: (inout StateWriter) -> Void) {
        var inner = StateWriter()
        body(&inner)
        bytes += Array(tag.utf8.prefix(4))
        u32(UInt32(inner.bytes.count))
        bytes += inner.bytes
    }
}

struct StateReader {
    let bytes: [UInt8]
    var position = 0
    /// What is being read, for the error message.
    let what: String

    struct Truncated: Error { let what: String }

    init(_ bytes: [UInt8], what: String) { self.bytes = bytes; self.what = what }

    var atEnd: Bool { position >= bytes.count }

    mutating func take(_ n: Int) throws(Truncated) -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - position else { throw Truncated(what: what) }
        defer { position += n }
        return bytes[position..<(position + n)]
    }
    private mutating func int<T: FixedWidthInteger>(_: T.Type) throws(Truncated) -> T {
        let s = try take(MemoryLayout<T>.size)
        return s.enumerated().reduce(T(0)) { $0 | T($1.element) << (8 * $1.offset) }
    }
    mutating func u8() throws(Truncated) -> UInt8 { try int(UInt8.self) }
    mutating func bool() throws(Truncated) -> Bool { try u8() != 0 }
    mutating func u16() throws(Truncated) -> UInt16 { try int(UInt16.self) }
    mutating func u32() throws(Truncated) -> UInt32 { try int(UInt32.self) }
    mutating func u64() throws(Truncated) -> UInt64 { try int(UInt64.self) }
    /// A u32 element count, refused when `elementSize`-byte elements could not fit in what is left.
    mutating func count(elementSize: Int) throws(Truncated) -> Int {
        let n = Int(try u32())
        guard n <= (bytes.count - position) / max(1, elementSize) else { throw Truncated(what: what) }
        return n
    }
    mutating func blob() throws(Truncated) -> [UInt8] { Array(try take(Int(try u32()))) }
    mutating func optionalBlob() throws(Truncated) -> [UInt8]? { try bool() ? try blob() : nil }
    mutating func string() throws(Truncated) -> String { String(decoding: try blob(), as: UTF8.self) }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum(_ bytes: some Collection<UInt8>, seed: UInt32 = 0) -> UInt32 {
        var c = ~seed
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }
}
