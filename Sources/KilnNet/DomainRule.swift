/// A domain an egress policy allows (`--allow-out example.com`, `--allow-out '*.example.com'`).
/// `example.com` matches that name only; `*.example.com` matches every name below it (not the
/// name itself, as in E2B and TLS wildcards; allow both for both). Names are compared in ASCII
/// lower case without a trailing dot.
public struct DomainRule: Sendable, Hashable, CustomStringConvertible {
    /// The name, or for a wildcard the name below which every name matches.
    public let name: String
    public let wildcard: Bool

    /// Parses a rule; nil unless it is a host name (labels of letters, digits, `-` and `_`,
    /// 1-63 bytes each, 253 in all) or `*.` and one. An IPv4 address is not a domain.
    public init?(_ text: String) {
        var body = Substring(text)
        let wildcard = body.hasPrefix("*.")
        if wildcard { body = body.dropFirst(2) }
        guard let name = DomainRule.normalize(body), IPv4Range.parseAddress(name) == nil else { return nil }
        self.name = name
        self.wildcard = wildcard
    }

    public var description: String { wildcard ? "*." + name : name }

    /// Whether `host` (already normalized) is allowed by this rule.
    public func matches(_ host: String) -> Bool {
        if !wildcard { return host == name }
        return host.utf8.count > name.utf8.count + 1 && host.hasSuffix("." + name)
    }

    /// A host name in the form rules compare (lower case, no trailing dot), or nil when it is not
    /// a valid one. Used on everything a guest sends (DNS questions, Host headers, SNI).
    public static func normalize<S: StringProtocol>(_ text: S) -> String? {
        var bytes = Array(text.utf8)
        if bytes.last == UInt8(ascii: ".") { bytes.removeLast() }
        guard !bytes.isEmpty, bytes.count <= 253 else { return nil }
        var label = 0
        for i in bytes.indices {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): bytes[i] = b + 32; label += 1
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"): label += 1
            case UInt8(ascii: "."):
                guard label > 0 else { return nil }
                label = 0
            default: return nil
            }
            guard label <= 63 else { return nil }
        }
        guard label > 0 else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// One `--allow-out` value: an address range or a domain.
public enum AllowEntry: Sendable, Equatable {
    case range(IPv4Range)
    case domain(DomainRule)

    /// Parses an `--allow-out` value: `A.B.C.D[/N]`, `NAME` or `*.NAME`.
    public init?(_ text: String) {
        if let r = IPv4Range(text) { self = .range(r) } else if let d = DomainRule(text) { self = .domain(d) } else { return nil }
    }
}

extension EgressPolicy {
    /// Whether the guest may reach `host` by name (a DNS question, a Host header, an SNI):
    /// with `internet` every name, else those a domain rule allows.
    public func allowsName(_ host: String) -> Bool {
        internet || domains.contains { $0.matches(host) }
    }

    /// Whether the guest may reach `address` by address alone (as the nftables rules decide).
    public func allowsAddress(_ address: UInt32, hostAddresses: [UInt32]) -> Bool {
        if allow.contains(where: { $0.contains(address) }) { return true }
        if isDenied(address, hostAddresses: hostAddresses) { return false }
        return internet
    }

    /// Whether an address an allowed name resolved to may be handed to the guest and dialled:
    /// not denied (DNS rebinding to loopback, private, link-local or the host is refused) unless
    /// a CIDR rule allows it explicitly.
    public func allowsAnswer(_ address: UInt32, hostAddresses: [UInt32]) -> Bool {
        allow.contains(where: { $0.contains(address) }) || !isDenied(address, hostAddresses: hostAddresses)
    }

    func isDenied(_ address: UInt32, hostAddresses: [UInt32]) -> Bool {
        hostAddresses.contains(address) || (EgressPolicy.alwaysDenied + deny).contains { $0.contains(address) }
    }

    /// The policy file the egress helper reads (and re-reads on SIGHUP), one entry a line:
    /// `internet 0|1`, `allow CIDR`, `deny CIDR`, `domain NAME|*.NAME`, `host A.B.C.D`.
    public func file(hostAddresses: [UInt32]) -> String {
        var lines = ["internet \(internet ? 1 : 0)"]
        lines += allow.map { "allow \($0)" } + deny.map { "deny \($0)" } + domains.map { "domain \($0)" }
        lines += hostAddresses.map { "host \(IPv4Range.format($0))" }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Reads `file(hostAddresses:)`'s text back; nil on any line it does not know.
    public static func parseFile(_ text: String) -> (policy: EgressPolicy, hostAddresses: [UInt32])? {
        var policy = EgressPolicy(internet: false)
        var hosts: [UInt32] = []
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard f.count == 2 else { return nil }
            switch f[0] {
            case "internet": guard f[1] == "0" || f[1] == "1" else { return nil }; policy.internet = f[1] == "1"
            case "allow": guard let r = IPv4Range(f[1]) else { return nil }; policy.allow.append(r)
            case "deny": guard let r = IPv4Range(f[1]) else { return nil }; policy.deny.append(r)
            case "domain": guard let d = DomainRule(f[1]) else { return nil }; policy.domains.append(d)
            case "host": guard let a = IPv4Range.parseAddress(f[1]) else { return nil }; hosts.append(a)
            default: return nil
            }
        }
        return (policy, hosts)
    }
}
