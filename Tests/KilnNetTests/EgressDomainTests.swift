import Glibc
import KilnTestSupport
@testable import KilnNet
import LinuxSys
import Synchronization
import Testing

/// Domain rules, the DNS messages and the Host/SNI peek of the egress helper: pure, no root.
@Suite struct EgressDomainTests {
    static func a(_ s: String) -> UInt32 { IPv4Range.parseAddress(s)! }

    @Test func domainRulesParseAndMatch() throws {
        let exact = try #require(DomainRule("Allowed.TEST."))
        #expect(exact.description == "allowed.test" && !exact.wildcard)
        #expect(exact.matches("allowed.test") && !exact.matches("x.allowed.test") && !exact.matches("notallowed.test"))
        let wild = try #require(DomainRule("*.example.com"))
        #expect(wild.matches("api.example.com") && wild.matches("a.b.example.com"))
        #expect(!wild.matches("example.com") && !wild.matches("badexample.com") && !wild.matches("example.com.evil"))
        for bad in ["", "*", "*.", ".", "a..b", "a b", "exa$mple.com", "1.2.3.4", String(repeating: "a", count: 64) + ".com", "*.*.com"] {
            #expect(DomainRule(bad) == nil, "\(bad)")
        }
        #expect(AllowEntry("10.0.0.0/8") == .range(IPv4Range("10.0.0.0/8")!))
        #expect(AllowEntry("pypi.org") == .domain(DomainRule("pypi.org")!))
        #expect(AllowEntry("10.0.0.0/33") == nil)
    }

    @Test func namesAndAnswersFollowThePolicy() {
        let policy = EgressPolicy(internet: false, allow: [IPv4Range("10.9.0.0/16")!], deny: [IPv4Range("203.0.113.0/24")!],
                                  domains: [DomainRule("allowed.test")!])
        let hosts = [Self.a("192.0.2.7")]
        #expect(policy.allowsName("allowed.test") && !policy.allowsName("denied.test"))
        #expect(EgressPolicy(internet: true).allowsName("anything.test"))
        // An allowed name may resolve to the internet, never to private, loopback, metadata, denied or the host.
        #expect(policy.allowsAnswer(Self.a("198.18.0.2"), hostAddresses: hosts))
        for denied in ["127.0.0.1", "10.1.2.3", "169.254.169.254", "192.168.0.1", "203.0.113.5", "192.0.2.7"] {
            #expect(!policy.allowsAnswer(Self.a(denied), hostAddresses: hosts), "\(denied)")
        }
        // ...unless a CIDR allows it explicitly.
        #expect(policy.allowsAnswer(Self.a("10.9.1.1"), hostAddresses: hosts))
        // By address alone, without internet, only the allowed CIDR.
        #expect(policy.allowsAddress(Self.a("10.9.1.1"), hostAddresses: hosts) && !policy.allowsAddress(Self.a("198.18.0.2"), hostAddresses: hosts))
        let text = policy.file(hostAddresses: hosts)
        let back = EgressPolicy.parseFile(text)
        #expect(back?.policy == policy && back?.hostAddresses == hosts)
        #expect(EgressPolicy.parseFile("domain 1.2.3.4\n") == nil && EgressPolicy.parseFile("frob 1\n") == nil)
    }

    @Test func proxyTargetIsTheNamesOwnAddressNeverTheFrontedOne() {
        let policy = EgressPolicy(internet: false, domains: [DomainRule("allowed.test")!])
        let real = Self.a("198.18.0.2"), other = Self.a("198.18.1.2")
        let resolve: (String) -> [UInt32] = { $0 == "allowed.test" ? [real] : [other] }
        // Fronting: an allowed name sent to another address reaches only the name's address.
        #expect(EgressHelper.target(original: other, peek: .name("allowed.test"), policy: policy, hosts: [], resolve: resolve) == real)
        #expect(EgressHelper.target(original: real, peek: .name("allowed.test"), policy: policy, hosts: [], resolve: resolve) == real)
        #expect(EgressHelper.target(original: other, peek: .name("denied.test"), policy: policy, hosts: [], resolve: resolve) == nil)
        #expect(EgressHelper.target(original: real, peek: .none, policy: policy, hosts: [], resolve: resolve) == nil)
        // A name resolving only to a private address (rebinding) goes nowhere.
        #expect(EgressHelper.target(original: other, peek: .name("allowed.test"), policy: policy, hosts: [], resolve: { _ in [Self.a("10.0.0.1")] }) == nil)
        // A CIDR-allowed destination needs no name.
        let cidr = EgressPolicy(internet: false, allow: [IPv4Range("198.18.1.0/24")!], domains: [DomainRule("allowed.test")!])
        #expect(EgressHelper.target(original: other, peek: .none, policy: cidr, hosts: [], resolve: resolve) == other)
    }

    /// A query as a stub resolver sends it, with a compression pointer in an OPT owner-less record.
    static func query(_ name: String, type: UInt16 = DNS.typeA, id: UInt16 = 0x1234) -> [UInt8] {
        DNS.query(id: id, labels: DNS.labels(name), type: type)
    }

    @Test func queriesParseAndAnswersRoundTrip() throws {
        let q = try #require(DNS.parseQuery(Self.query("Allowed.Test")))
        #expect(q.name == "allowed.test" && q.type == DNS.typeA && q.id == 0x1234 && q.recursionDesired && q.udpLimit == 1232)
        let records = [DNS.Record(labels: DNS.labels("allowed.test"), type: DNS.typeCNAME, ttl: 60, data: DNS.encode(DNS.labels("real.test"))),
                       DNS.Record(labels: DNS.labels("real.test"), type: DNS.typeA, ttl: 60, data: [198, 18, 0, 2])]
        let reply = DNS.answer(q, rcode: DNS.noError, answers: records)
        let parsed = try #require(DNS.parseResponse(reply, id: 0x1234, labels: q.labels, type: DNS.typeA))
        #expect(parsed.rcode == DNS.noError && parsed.answers == records && parsed.answers[1].address == Self.a("198.18.0.2"))
        // Too big for the client's UDP limit: no records, TC set.
        let small = DNS.answer(q, rcode: DNS.noError, answers: records, limit: 40)
        #expect(small.count <= 40 && small[2] & 0x02 != 0)
        // A response to another question, or with another id, is not taken.
        #expect(DNS.parseResponse(reply, id: 0x1235, labels: q.labels, type: DNS.typeA) == nil)
        #expect(DNS.parseResponse(reply, id: 0x1234, labels: DNS.labels("other.test"), type: DNS.typeA) == nil)
        // A response is not a query.
        #expect(DNS.parseQuery(reply) == nil)
    }

    @Test func compressedNamesAreFollowedAndLoopsRefused() throws {
        // Header, question allowed.test A IN, one answer whose owner points at the question's name.
        var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]
        m += DNS.encode(DNS.labels("allowed.test")) + [0, 1, 0, 1]
        m += [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 2]
        let r = try #require(DNS.parseResponse(m, id: 0x1234, labels: DNS.labels("allowed.test"), type: DNS.typeA))
        #expect(r.answers.first?.labels == DNS.labels("allowed.test") && r.answers.first?.address == Self.a("198.18.0.2"))
        // A pointer to itself, and one forward, are malformed.
        var loop = m
        loop[30] = 0xC0; loop[31] = 30
        #expect(DNS.parseResponse(loop, id: 0x1234, labels: DNS.labels("allowed.test"), type: DNS.typeA) == nil)
        var forward: [UInt8] = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 14, 0, 1, 0, 1]
        #expect(DNS.parseQuery(forward) == nil)
        forward = Array(forward.prefix(13))
        #expect(DNS.parseQuery(forward) == nil)
        // Every truncation of a valid message is refused, never a trap.
        for n in 0..<m.count { #expect(DNS.parseResponse(Array(m.prefix(n)), id: 0x1234, labels: DNS.labels("allowed.test"), type: DNS.typeA) == nil) }
    }

    /// An upstream resolver on loopback whose UDP answers are cut at 512 bytes (TC, no records)
    /// and whose TCP answers are whole: one question each way, then its threads end (10 s at most).
    final class CuttingUpstream: Sendable {
        let udp: Int32, tcp: Int32, port: UInt16
        let asked = Mutex<[String]>([])

        init(_ records: [DNS.Record]) throws {
            var fds: (Int32, Int32, UInt16)?
            for _ in 0..<20 where fds == nil {
                let u = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0), t = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
                var sa = sockaddr_in()
                sa.sin_family = sa_family_t(AF_INET); sa.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                _ = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(u, $0, length) == 0 && getsockname(u, $0, &length) == 0 } }
                let bound = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(t, $0, length) } } == 0
                if bound && listen(t, 4) == 0 { fds = (u, t, UInt16(bigEndian: sa.sin_port)) } else { close(u); close(t) }
            }
            let (u, t, port) = try #require(fds)
            udp = u; tcp = t; self.port = port
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            for fd in [u, t] { _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size)) }
            _ = try LinuxSys.Thread.spawn(name: "dns-udp") { [self] in
                var buffer = [UInt8](repeating: 0, count: 4096), from = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let n = buffer.withUnsafeMutableBytes { b in withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(u, b.baseAddress, b.count, 0, $0, &length) } } }
                guard n > 0, let q = DNS.parseQuery(Array(buffer[0..<n])) else { return }
                asked.withLock { $0.append("udp") }
                let reply = DNS.answer(q, rcode: DNS.noError, answers: records, limit: 512)
                _ = reply.withUnsafeBytes { r in withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(u, r.baseAddress, r.count, 0, $0, length) } } }
            }
            _ = try LinuxSys.Thread.spawn(name: "dns-tcp") { [self] in
                let c = accept(t, nil, nil)
                guard c >= 0 else { return }
                defer { close(c) }
                guard let prefix = Sockets.readExactly(c, 2), let bytes = Sockets.readExactly(c, Int(prefix[0]) << 8 | Int(prefix[1])),
                      let q = DNS.parseQuery(bytes) else { return }
                asked.withLock { $0.append("tcp") }
                let reply = DNS.answer(q, rcode: DNS.noError, answers: records, limit: 65535)
                _ = Sockets.writeAll(c, [UInt8(reply.count >> 8), UInt8(reply.count & 0xFF)] + reply)
            }
        }
    }

    @Test func aTruncatedUpstreamAnswerIsAskedAgainOverTCP() throws {
        let records = (1...40).map { i in DNS.Record(labels: DNS.labels("many.test"), type: DNS.typeA, ttl: 60, data: [198, 18, 2, UInt8(i)]) }
        let upstream = try CuttingUpstream(records)
        defer { close(upstream.udp); close(upstream.tcp) }
        let r = try #require(EgressHelper.ask(Self.a("127.0.0.1"), port: upstream.port, labels: DNS.labels("many.test"), type: DNS.typeA))
        #expect(!r.truncated && r.answers == records, "all 40 records, from the TCP answer: \(r.answers.count) records, TC \(r.truncated)")
        #expect(upstream.asked.withLock { $0 } == ["udp", "tcp"])
    }

    @Test func hostHeadersAreRead() {
        #expect(ProxyPeek.http(Array("GET / HTTP/1.1\r\nUser-Agent: x\r\nHOST: Allowed.Test:80\r\n\r\n".utf8)) == .name("allowed.test"))
        #expect(ProxyPeek.http(Array("GET / HTTP/1.1\r\nHost: allowed.test\r\n".utf8)) == .incomplete)
        #expect(ProxyPeek.http(Array("GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".utf8)) == .none)
        #expect(ProxyPeek.http(Array("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n".utf8)) == .none)
        #expect(ProxyPeek.http(Array("SSH-2.0-x\r\n\r\n".utf8)) == .none)
        #expect(ProxyPeek.http(Array(repeating: 65, count: ProxyPeek.limit)) == .none)
    }

    static func clientHello(_ sni: String?, record: Int = 1 << 14) -> [UInt8] { TLSClientHello.bytes(sni: sni, record: record) }

    @Test func sniIsReadAcrossRecords() {
        #expect(ProxyPeek.tls(Self.clientHello("Allowed.Test")) == .name("allowed.test"))
        #expect(ProxyPeek.tls(Self.clientHello("allowed.test", record: 20)) == .name("allowed.test"))
        #expect(ProxyPeek.tls(Self.clientHello(nil)) == .none)
        #expect(ProxyPeek.tls(Self.clientHello("bad name")) == .none)
        let whole = Self.clientHello("allowed.test", record: 20)
        for n in 0..<whole.count { #expect(ProxyPeek.tls(Array(whole.prefix(n))) == .incomplete, "\(n)") }
        #expect(ProxyPeek.tls(Array("GET / HTTP/1.1\r\n".utf8)) == .none)
    }

    @Test func rulesetWithDomainsRedirectsWebToTheHelperAndAnswersDNSItself() {
        let policy = EgressPolicy(internet: false, domains: [DomainRule("allowed.test")!])
        let text = policy.ruleset(tap: "kiln-tap", uplink: "kiln-n0", gateway: SandboxNetwork.gatewayAddress,
                                  resolver: IPv4Range.parseAddress("192.0.2.53"), hostAddresses: [])
        #expect(text.contains("tcp dport { 80, 443 } redirect to :\(EgressHelper.proxyPort)"))
        #expect(!text.contains("dnat ip to"), "DNS is not forwarded past the helper")
        #expect(text.contains("ip daddr 100.127.255.1 udp dport 53 accept"))
        let plain = EgressPolicy(internet: true).ruleset(tap: "kiln-tap", uplink: "kiln-n0", gateway: SandboxNetwork.gatewayAddress,
                                                         resolver: IPv4Range.parseAddress("192.0.2.53"), hostAddresses: [])
        #expect(!plain.contains("redirect") && plain.contains("dnat ip to 192.0.2.53"))
    }
}
