/// An IPv4 address range (`10.0.0.0/8`; a bare address is a /32), as policies and pools name them.
public struct IPv4Range: Sendable, Hashable, CustomStringConvertible {
    /// The network address, host bits cleared.
    public let base: UInt32
    public let prefix: Int

    public init(base: UInt32, prefix: Int) {
        precondition((0...32).contains(prefix))
        self.prefix = prefix
        self.base = base & IPv4Range.mask(prefix)
    }

    /// Parses `A.B.C.D` or `A.B.C.D/N`; host bits below the prefix are ignored, as nft does.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let address = IPv4Range.parseAddress(String(parts[0])) else { return nil }
        var prefix = 32
        if parts.count == 2 {
            guard parts[1].count <= 2, parts[1].allSatisfy(\.isNumber), let p = Int(parts[1]), (0...32).contains(p) else { return nil }
            prefix = p
        }
        self.init(base: address, prefix: prefix)
    }

    public var description: String { prefix == 32 ? IPv4Range.format(base) : "\(IPv4Range.format(base))/\(prefix)" }

    public func contains(_ address: UInt32) -> Bool { address & IPv4Range.mask(prefix) == base }

    public func overlaps(_ other: IPv4Range) -> Bool {
        let p = min(prefix, other.prefix)
        return base & IPv4Range.mask(p) == other.base & IPv4Range.mask(p)
    }

    public static func mask(_ prefix: Int) -> UInt32 { prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix) }

    public static func parseAddress(_ s: String) -> UInt32? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy(\.isNumber), let byte = UInt8(part) else { return nil }
            value = value << 8 | UInt32(byte)
        }
        return value
    }

    public static func format(_ a: UInt32) -> String {
        "\(a >> 24).\(a >> 16 & 0xFF).\(a >> 8 & 0xFF).\(a & 0xFF)"
    }
}
