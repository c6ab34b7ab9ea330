import Devices

/// A virtio-net device on a TAP interface, as `--net` describes it:
/// `tap=NAME|auto[,mac=xx:xx:xx:xx:xx:xx][,host=IP/PREFIX,guest=IP]`.
public struct NetSpec: Sendable, Equatable {
    /// The TAP interface to open or create; `nil` lets the kernel pick a free kiln%d.
    public var tap: String?
    public var mac: [UInt8]
    /// IPv4 addresses: the host side of the TAP (with its prefix) and the guest's eth0.
    public var host: (address: String, prefix: Int)?
    public var guest: String?
    /// A network namespace (a bind-mounted namespace file) the jailed VMM joins to open the TAP,
    /// before its jail gives it an empty one: a sandbox network's (Sources/KilnNet). Never saved
    /// in a snapshot; not part of the `--net` text.
    public var netns: String?
    /// The rate limits of what the guest receives and what it sends (docs/net.md, "Rate limits").
    public var rxLimit: RateLimit = .unlimited
    public var txLimit: RateLimit = .unlimited

    public init(tap: String?, mac: [UInt8] = NetSpec.randomMAC(), host: (address: String, prefix: Int)? = nil, guest: String? = nil,
                netns: String? = nil) {
        self.tap = tap; self.mac = mac; self.host = host; self.guest = guest; self.netns = netns
    }

    public static func == (a: NetSpec, b: NetSpec) -> Bool {
        a.tap == b.tap && a.mac == b.mac && a.host?.address == b.host?.address && a.host?.prefix == b.host?.prefix && a.guest == b.guest
            && a.netns == b.netns && a.rxLimit == b.rxLimit && a.txLimit == b.txLimit
    }

    /// A locally administered unicast address (02:...), random so that VMs on one bridge differ.
    public static func randomMAC() -> [UInt8] {
        [0x02, 0x4b] + (0..<4).map { _ in UInt8.random(in: 0...255) }
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case bad(String)
        public var description: String {
            switch self { case .bad(let why): return "--net: \(why) (expected tap=NAME|auto[,mac=xx:xx:xx:xx:xx:xx][,host=IP/PREFIX,guest=IP][,[rx-|tx-]rate=BYTES_PER_S][,[rx-|tx-]ops=N])" }
        }
    }

    public static func parse(_ spec: String) throws(ParseError) -> NetSpec {
        var tap: String??, mac: [UInt8]?, host: (String, Int)?, guest: String?
        var rx = RateLimitOptions(), tx = RateLimitOptions()
        for option in spec.split(separator: ",", omittingEmptySubsequences: false) {
            let kv = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            guard kv.count == 2 else { throw .bad("'\(option)' is not key=value") }
            let value = kv[1]
            switch kv[0] {
            case "tap":
                guard !value.isEmpty, value.utf8.count <= 15, !value.contains("/") else { throw .bad("bad TAP name '\(value)'") }
                tap = .some(value == "auto" ? nil : value)
            case "mac":
                guard let m = parseMAC(value) else { throw .bad("bad MAC address '\(value)'") }
                guard m[0] & 1 == 0 else { throw .bad("MAC address \(value) is a multicast address") }
                mac = m
            case "host":
                let parts = value.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
                guard parts.count == 2, parseIPv4(parts[0]) != nil, let p = Int(parts[1]), (1...30).contains(p) else {
                    throw .bad("host needs IP/PREFIX (prefix 1-30), got '\(value)'")
                }
                host = (parts[0], p)
            case "guest":
                guard parseIPv4(value) != nil else { throw .bad("bad guest address '\(value)'") }
                guest = value
            case let key where RateLimitOptions.keys.contains(key):
                // Without rx- or tx-, a limit applies to each direction (each with a bucket of its own).
                guard rx.take(key, value), tx.take(key, value) else { throw .bad("bad \(key) '\(value)'") }
            case let key where key.hasPrefix("rx-") && RateLimitOptions.keys.contains(String(key.dropFirst(3))):
                guard rx.take(String(key.dropFirst(3)), value) else { throw .bad("bad \(key) '\(value)'") }
            case let key where key.hasPrefix("tx-") && RateLimitOptions.keys.contains(String(key.dropFirst(3))):
                guard tx.take(String(key.dropFirst(3)), value) else { throw .bad("bad \(key) '\(value)'") }
            default:
                throw .bad("unknown option '\(kv[0])'")
            }
        }
        guard let tap else { throw .bad("tap= is required") }
        guard (host == nil) == (guest == nil) else { throw .bad("host= and guest= go together") }
        guard let rxLimit = rx.limit, let txLimit = tx.limit else { throw .bad("a rate limit out of range (sizes from 1 to 2^50, a burst or refill needs its rate or ops)") }
        var spec = NetSpec(tap: tap, mac: mac ?? randomMAC(), host: host.map { (address: $0.0, prefix: $0.1) }, guest: guest)
        spec.rxLimit = rxLimit
        spec.txLimit = txLimit
        return spec
    }

    /// The kernel's IP autoconfiguration (`ip=`, CONFIG_IP_PNP) for the guest's eth0, the host as gateway.
    public var kernelParameter: String? {
        guard let host, let guest else { return nil }
        return "ip=\(guest)::\(host.address):\(NetSpec.netmask(prefix: host.prefix))::eth0:off"
    }

    public var macString: String { mac.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":") }

    static func netmask(prefix: Int) -> String {
        let mask = prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix)
        return (0..<4).map { String((mask >> UInt32(24 - 8 * $0)) & 0xFF) }.joined(separator: ".")
    }

    static func parseMAC(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        return bytes.count == 6 ? bytes : nil
    }

    static func parseIPv4(_ s: String) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        let bytes = parts.compactMap { $0.count <= 3 && $0.allSatisfy(\.isNumber) ? UInt8($0) : nil }
        return bytes.count == 4 ? bytes : nil
    }
}
