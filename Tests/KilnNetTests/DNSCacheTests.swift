import Glibc
@testable import KilnNet
import LinuxSys
import Synchronization
import Testing

/// The egress helper's DNS cache: what it keeps and for how long (a clock of the test's own), and
/// the helper's answers asking upstream once for a name asked twice, with the policy applied to
/// the kept answer as it stands when asked.
@Suite struct DNSCacheTests {
    final class Clock: Sendable {
        let now = Mutex<Double>(1000)
        func advance(_ s: Double) { now.withLock { $0 += s } }
        var read: @Sendable () -> Double { { [self] in now.withLock { $0 } } }
    }

    static func record(_ name: String, ttl: UInt32, _ last: UInt8) -> DNS.Record {
        DNS.Record(labels: DNS.labels(name), type: DNS.typeA, ttl: ttl, data: [198, 18, 0, last])
    }
    static func response(_ rcode: UInt8, _ answers: [DNS.Record], truncated: Bool = false) -> DNS.Response {
        DNS.Response(id: 7, rcode: rcode, truncated: truncated, answers: answers)
    }

    @Test func answersAreKeptForTheirTTLWithTheTTLsLowered() {
        let clock = Clock()
        let cache = DNSCache(clock: clock.read)
        let name = DNS.labels("pkg.example.test")
        cache.store(labels: name, type: DNS.typeA, Self.response(DNS.noError, [Self.record("pkg.example.test", ttl: 60, 1),
                                                                              Self.record("pkg.example.test", ttl: 90, 2)]))
        clock.advance(10)
        // Names compare in any case, as DNS does.
        let hit = cache.lookup(labels: DNS.labels("PKG.Example.test"), type: DNS.typeA)
        #expect(hit?.answers.map(\.ttl) == [50, 80])
        #expect(hit?.answers.compactMap(\.address) == [0xC612_0001, 0xC612_0002])
        #expect(cache.lookup(labels: name, type: DNS.typeTXT) == nil, "another type is another question")
        clock.advance(50)
        #expect(cache.lookup(labels: name, type: DNS.typeA) == nil, "gone at the smallest TTL")

        // A long TTL is kept five minutes at most.
        cache.store(labels: name, type: DNS.typeA, Self.response(DNS.noError, [Self.record("pkg.example.test", ttl: 86400, 1)]))
        clock.advance(Double(DNSCache.maxTTL) - 1)
        #expect(cache.lookup(labels: name, type: DNS.typeA)?.answers.first?.ttl == 86400 - DNSCache.maxTTL + 1)
        clock.advance(2)
        #expect(cache.lookup(labels: name, type: DNS.typeA) == nil)
    }

    @Test func failuresTruncatedAndZeroTTLAnswersAreNotKeptAndNamesThatDoNotExistBriefly() {
        let clock = Clock()
        let cache = DNSCache(clock: clock.read)
        let name = DNS.labels("x.test")
        cache.store(labels: name, type: DNS.typeA, Self.response(DNS.serverFailure, []))
        cache.store(labels: DNS.labels("y.test"), type: DNS.typeA, Self.response(DNS.noError, [Self.record("y.test", ttl: 60, 1)], truncated: true))
        cache.store(labels: DNS.labels("z.test"), type: DNS.typeA, Self.response(DNS.noError, [Self.record("z.test", ttl: 0, 1)]))
        #expect(cache.count == 0)
        cache.store(labels: name, type: DNS.typeA, Self.response(DNS.nameError, []))
        #expect(cache.lookup(labels: name, type: DNS.typeA)?.rcode == DNS.nameError)
        clock.advance(Double(DNSCache.negativeTTL))
        #expect(cache.lookup(labels: name, type: DNS.typeA) == nil)
    }

    @Test func aFullCachePushesOutWhatExpiresFirst() {
        let clock = Clock()
        let cache = DNSCache(capacity: 2, clock: clock.read)
        for (name, ttl) in [("a.test", UInt32(100)), ("b.test", 10), ("c.test", 50)] {
            cache.store(labels: DNS.labels(name), type: DNS.typeA, Self.response(DNS.noError, [Self.record(name, ttl: ttl, 1)]))
        }
        #expect(cache.count == 2)
        #expect(cache.lookup(labels: DNS.labels("b.test"), type: DNS.typeA) == nil)
        #expect(cache.lookup(labels: DNS.labels("a.test"), type: DNS.typeA) != nil && cache.lookup(labels: DNS.labels("c.test"), type: DNS.typeA) != nil)
    }

    /// An upstream on loopback that answers every A question with `records` and counts them.
    final class CountingUpstream: Sendable {
        let fd: Int32, port: UInt16
        let questions = Atomic<Int>(0)
        init(_ records: @escaping @Sendable (DNS.Query) -> [DNS.Record]) throws {
            let u = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET); sa.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(u, $0, length) == 0 && getsockname(u, $0, &length) == 0 } }
            try #require(ok)
            fd = u
            port = UInt16(bigEndian: sa.sin_port)
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = try LinuxSys.Thread.spawn(name: "dns-count") { [self] in
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    var from = sockaddr_in(), length = socklen_t(MemoryLayout<sockaddr_in>.size)
                    let n = buffer.withUnsafeMutableBytes { b in withUnsafeMutablePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, b.baseAddress, b.count, 0, $0, &length) } } }
                    guard n > 0 else { return }
                    guard let q = DNS.parseQuery(Array(buffer[0..<n])) else { continue }
                    questions.add(1, ordering: .relaxed)
                    let reply = DNS.answer(q, rcode: DNS.noError, answers: records(q), limit: 1232)
                    _ = reply.withUnsafeBytes { r in withUnsafePointer(to: &from) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, r.baseAddress, r.count, 0, $0, length) } } }
                }
            }
        }
    }

    @Test func theHelperAsksUpstreamOnceForANameAskedTwiceAndAppliesTheCurrentPolicy() throws {
        let upstream = try CountingUpstream { q in
            [DNS.Record(labels: q.labels, type: DNS.typeA, ttl: 60, data: [198, 18, 0, 9]),
             DNS.Record(labels: q.labels, type: DNS.typeA, ttl: 60, data: [10, 0, 0, 9])] // private: never passed on
        }
        defer { close(upstream.fd) }
        let rule = try #require(DomainRule("pkg.example.test"))
        let state = EgressHelper.State(EgressPolicy(internet: false, domains: [rule]), hosts: [],
                                       resolver: IPv4Range.parseAddress("127.0.0.1"), resolverPort: upstream.port)
        func ask(_ name: String) -> DNS.Response? {
            let query = DNS.query(id: 0x4242, labels: DNS.labels(name), type: DNS.typeA)
            return EgressHelper.answer(query, state, udp: true).flatMap { DNS.parseResponse($0, id: 0x4242, labels: DNS.labels(name), type: DNS.typeA) }
        }
        #expect(ask("pkg.example.test")?.answers.compactMap(\.address) == [0xC612_0009])
        #expect(ask("pkg.example.test")?.answers.compactMap(\.address) == [0xC612_0009])
        #expect(upstream.questions.load(ordering: .relaxed) == 1, "the second question came from the cache")
        // The proxy's own lookup of the name (Host/SNI) is the same question.
        #expect(EgressHelper.resolve("pkg.example.test", state, state.snapshot.policy, []) == [0xC612_0009])
        #expect(upstream.questions.load(ordering: .relaxed) == 1)

        // The policy changes: the kept answer is judged by the new one.
        state.current.withLock { $0.policy = EgressPolicy(internet: false, deny: [IPv4Range("198.18.0.0/15")!], domains: [rule]) }
        #expect(ask("pkg.example.test")?.rcode == DNS.refused, "every address of the name is now denied")
        state.current.withLock { $0.policy = EgressPolicy(internet: false, domains: []) }
        #expect(ask("pkg.example.test")?.rcode == DNS.nameError, "the name is no longer allowed")
        #expect(upstream.questions.load(ordering: .relaxed) == 1)
    }
}
