/// The binary encoding of the supervisor-VMM messages and the sandbox record
/// (docs/security.md, "Launch configuration"): little-endian integers, a byte for a Bool or an
/// Optional's presence, and length-prefixed (UInt32) strings and arrays. The reader is given
/// bytes that may come from a compromised process or a damaged file, so every length is
/// checked against what is left and against a fixed cap before anything is allocated.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The input ended inside a field.
    case truncated(field: String)
    /// A field holds a value no writer produces (a tag, a Bool byte, a length over its cap).
    case invalid(field: String, why: String)
    /// Bytes are left after the last field.
    case trailingBytes(Int)
    /// The input does not start with the expected magic and version.
    case wrongFormat(expected: String)

    public var description: String {
        switch self {
        case .truncated(let f): "truncated at \(f)"
        case .invalid(let f, let why): "invalid \(f): \(why)"
        case .trailingBytes(let n): "\(n) unexpected bytes after the end"
        case .wrongFormat(let e): "not a \(e)"
        }
    }
}

public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func raw(_ v: [UInt8]) { bytes += v }

    public mutating func data(_ v: [UInt8]) {
        u32(UInt32(v.count))
        bytes += v
    }

    public mutating func string(_ v: String) { data(Array(v.utf8)) }

    public mutating func optional<T>(_ v: T?, _ body: (inout WireWriter, T) -> Void) {
        bool(v != nil)
        if let v { body(&self, v) }
    }

    public mutating func array<T>(_ v: [T], _ body: (inout WireWriter, T) -> Void) {
        u32(UInt32(v.count))
        for item in v { body(&self, item) }
    }
}

public struct WireReader {
    let bytes: [UInt8]
    var offset = 0
    /// The longest string or byte field a reader accepts (paths, command lines).
    public static let maxField = 1 << 16
    /// The most elements an array field may have.
    public static let maxElements = 64

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    mutating func take(_ n: Int, _ field: String) throws(WireError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= remaining else { throw .truncated(field: field) }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    public mutating func u8(_ field: String) throws(WireError) -> UInt8 { try take(1, field).first! }

    public mutating func bool(_ field: String) throws(WireError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let b: throw .invalid(field: field, why: "\(b) is not a Bool")
        }
    }

    public mutating func u32(_ field: String) throws(WireError) -> UInt32 {
        try take(4, field).reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    public mutating func u64(_ field: String) throws(WireError) -> UInt64 {
        try take(8, field).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }

    public mutating func i64(_ field: String) throws(WireError) -> Int64 { Int64(bitPattern: try u64(field)) }

    /// An integer that must lie in `range` (a count of vCPUs, MiB of memory).
    public mutating func int(_ field: String, in range: ClosedRange<Int>) throws(WireError) -> Int {
        let v = try u64(field)
        guard v <= UInt64(Int.max), range.contains(Int(v)) else { throw .invalid(field: field, why: "\(v) is outside \(range)") }
        return Int(v)
    }

    public mutating func raw(_ count: Int, _ field: String) throws(WireError) -> [UInt8] { Array(try take(count, field)) }

    public mutating func data(_ field: String, max: Int = WireReader.maxField) throws(WireError) -> [UInt8] {
        let n = Int(try u32(field))
        guard n <= max else { throw .invalid(field: field, why: "length \(n) is over \(max)") }
        return Array(try take(n, field))
    }

    /// A UTF-8 string without NUL bytes (every string here ends up as a C string: a path, an argument).
    public mutating func string(_ field: String) throws(WireError) -> String {
        let d = try data(field)
        guard !d.contains(0) else { throw .invalid(field: field, why: "contains a NUL byte") }
        guard let s = String(validating: d, as: UTF8.self) else { throw .invalid(field: field, why: "not UTF-8") }
        return s
    }

    /// An absolute path (`/...`).
    public mutating func path(_ field: String) throws(WireError) -> String {
        let s = try string(field)
        guard s.hasPrefix("/") else { throw .invalid(field: field, why: "'\(s)' is not an absolute path") }
        return s
    }

    public mutating func optional<T>(_ field: String, _ body: (inout WireReader) throws(WireError) -> T) throws(WireError) -> T? {
        try bool(field) ? try body(&self) : nil
    }

    public mutating func array<T>(_ field: String, max: Int = WireReader.maxElements,
                                  _ body: (inout WireReader) throws(WireError) -> T) throws(WireError) -> [T] {
        let n = Int(try u32(field))
        guard n <= max else { throw .invalid(field: field, why: "\(n) elements, at most \(max)") }
        var out: [T] = []
        for _ in 0..<n { out.append(try body(&self)) }
        return out
    }

    /// Checks the magic (format name and version) a message starts with.
    public mutating func expect(magic: [UInt8], format: String) throws(WireError) {
        guard remaining >= magic.count, Array(bytes[offset..<offset + magic.count]) == magic else { throw .wrongFormat(expected: format) }
        offset += magic.count
    }

    /// Ends reading: nothing may be left.
    public func finish() throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(remaining) }
    }
}
