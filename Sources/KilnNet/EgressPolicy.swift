/// What a sandbox may reach (docs/net.md, "Policy"). Enforced by nftables in the sandbox's own
/// network namespace, which the guest cannot touch: the VMM joins it only to open the TAP.
///
/// An address is reachable when an `allow` range holds it; else not when a `deny` range or one
/// of the always-denied ranges holds it; else when `internet` is on. Allow wins over deny (E2B's
/// `allowOut` over `denyOut`), so the always-denied ranges open only by an explicit allow.
public struct EgressPolicy: Sendable, Equatable {
    /// Everything not denied is reachable (`--net`, E2B's `allow_internet_access`).
    public var internet: Bool
    public var allow: [IPv4Range]
    public var deny: [IPv4Range]
    /// Names the guest may reach (docs/net.md, "Domains"): with any, DNS is answered and ports 80
    /// and 443 are proxied by the sandbox's egress helper (`EgressHelper`), which checks them.
    public var domains: [DomainRule]

    public init(internet: Bool = true, allow: [IPv4Range] = [], deny: [IPv4Range] = [], domains: [DomainRule] = []) {
        self.internet = internet; self.allow = allow; self.deny = deny; self.domains = domains
    }

    /// Whether the sandbox gets the egress helper: DNS answered by Kiln, 80 and 443 proxied.
    public var answersNames: Bool { !domains.isEmpty }

    /// Parses `--allow-out`/`--deny-out` values: an IPv4 address or CIDR.
    public static func range(_ text: String) throws(NetworkError) -> IPv4Range {
        guard let r = IPv4Range(text) else { throw .policy("'\(text)' is not an IPv4 address or CIDR (A.B.C.D[/N])") }
        return r
    }

    /// Denied unless allowed by CIDR: this host's own network, link-local (with the cloud
    /// metadata address 169.254.169.254), the private and shared ranges, multicast and reserved.
    /// The host's own addresses are added per sandbox (`SandboxNetwork`).
    public static let alwaysDenied: [IPv4Range] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
    ].map { IPv4Range($0)! }

    /// The nftables ruleset of the sandbox's namespace: NAT out of `uplink`, the policy on what the
    /// guest (behind `tap`) sends, DNS to the gateway forwarded to `resolver`, nothing into the
    /// namespace itself. `hostAddresses` join the always-denied ranges. Before all of it (`guard`,
    /// at the raw priority, ahead of conntrack and NAT) a packet from the guest with any source
    /// but the guest's own address, or IPv6, is dropped: a spoofed source reaches nothing.
    func ruleset(tap: String, uplink: String, gateway: UInt32, resolver: UInt32?, hostAddresses: [UInt32]) -> String {
        func set(_ name: String, _ ranges: [IPv4Range]) -> String {
            let elements = ranges.isEmpty ? "" : " elements = { \(ranges.map(\.description).joined(separator: ", ")) }"
            return "  set \(name) { type ipv4_addr; flags interval; auto-merge;\(elements) }"
        }
        let denied = EgressPolicy.alwaysDenied + hostAddresses.map { IPv4Range(base: $0, prefix: 32) } + deny
        let gw = IPv4Range.format(gateway)
        var dns: [String] = []
        var helper: [String] = []
        if answersNames {
            // The helper answers DNS on the gateway and proxies 80/443 (any destination) by name.
            dns = ["    iifname \"\(tap)\" tcp dport { 80, 443 } redirect to :\(EgressHelper.proxyPort)"]
            helper = ["    iifname \"\(tap)\" ip daddr \(gw) udp dport 53 accept",
                      "    iifname \"\(tap)\" ip daddr \(gw) tcp dport 53 accept",
                      "    iifname \"\(tap)\" ct status dnat tcp dport \(EgressHelper.proxyPort) accept"]
        } else if let resolver {
            let r = IPv4Range.format(resolver)
            dns = ["    iifname \"\(tap)\" ip daddr \(gw) udp dport 53 dnat ip to \(r)",
                   "    iifname \"\(tap)\" ip daddr \(gw) tcp dport 53 dnat ip to \(r)"]
        }
        // Refusals answer (a TCP reset, an ICMP error) so that a denied connection fails at once.
        let refuse = "meta l4proto tcp reject with tcp reset; reject with icmpx type admin-prohibited"
        return """
        table inet \(SandboxNetwork.tableName) {
        \(set("allow", allow))
        \(set("deny", denied))
          chain guard {
            type filter hook prerouting priority raw; policy accept;
            iifname "\(tap)" ip saddr != \(IPv4Range.format(SandboxNetwork.guestAddress)) drop
            iifname "\(tap)" meta nfproto ipv6 drop
          }
          chain prerouting {
            type nat hook prerouting priority dstnat; policy accept;
        \(dns.joined(separator: "\n"))
          }
          chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            oifname "\(uplink)" masquerade
          }
          chain forward {
            type filter hook forward priority filter; policy drop;
            ct state established,related accept
            iifname != "\(tap)" drop
            meta nfproto ipv6 drop
            ct status dnat accept
            ip daddr @allow accept
            ip daddr @deny \(refuse.replacing("; ", with: "\n    ip daddr @deny "))
            \(internet ? "accept" : refuse.replacing("; ", with: "\n    "))
          }
          chain input {
            type filter hook input priority filter; policy accept;
            iifname "lo" accept
            ct state established,related accept
        \(helper.joined(separator: "\n"))
            iifname "\(tap)" \(refuse.replacing("; ", with: "\n    iifname \"\(tap)\" "))
            iifname "\(uplink)" drop
          }
        }

        """
    }
}

public enum NetworkError: Error, Sendable, CustomStringConvertible, Equatable {
    case policy(String)
    case setup(String)
    public var description: String {
        switch self {
        case .policy(let why): "network policy: \(why)"
        case .setup(let why): "sandbox network: \(why)"
        }
    }
}
