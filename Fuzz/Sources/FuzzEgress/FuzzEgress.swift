import FuzzSupport
import KilnNet

/// Fuzzes what a guest (and an upstream resolver) hands the sandbox's egress helper
/// (docs/net.md, "Domains"). The first byte picks the parser: a guest's DNS query, a resolver's
/// response, an HTTP request's Host header, a TLS ClientHello's SNI. Whatever parses must
/// round-trip (a query's answer and a response's records read back the same), and a name
/// found is always in normalized form; nothing may trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    switch data[0] % 4 {
    case 0:
        guard let q = DNS.parseQuery(bytes) else { return 0 }
        if let name = q.name, DomainRule.normalize(name) != name { fatalError("query name not normalized: \(name)") }
        let reply = DNS.answer(q, rcode: DNS.nameError, answers: [], limit: q.udpLimit)
        guard let back = DNS.parseResponse(reply, id: q.id, labels: q.labels, type: q.type), back.rcode == DNS.nameError, back.answers.isEmpty else {
            fatalError("an answer to a parsed query does not parse")
        }
    case 1:
        // The response's own question (read as if it were a query's) is the one it must answer.
        var asQuery = bytes
        if asQuery.count > 2 { asQuery[2] &= 0x7F }
        guard let q = DNS.parseQuery(asQuery), let r = DNS.parseResponse(bytes, id: q.id, labels: q.labels, type: q.type) else { return 0 }
        let again = DNS.answer(q, rcode: r.rcode, answers: r.answers)
        if again.count <= 65535 {
            guard let back = DNS.parseResponse(again, id: q.id, labels: q.labels, type: q.type) else { fatalError("re-encoded response does not parse") }
            if back.answers != r.answers && !(again[2] & 0x02 != 0 && back.answers.isEmpty) { fatalError("records changed in a round trip") }
        }
    case 2:
        if case .name(let n) = ProxyPeek.http(bytes), DomainRule.normalize(n) != n { fatalError("Host not normalized: \(n)") }
    default:
        if case .name(let n) = ProxyPeek.tls(bytes), DomainRule.normalize(n) != n { fatalError("SNI not normalized: \(n)") }
    }
    return 0
}

// SwiftPM links an executable's entry point as FuzzEgress_main; hand control to libFuzzer.
@_cdecl("FuzzEgress_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    runFuzzer(argc, argv, fuzz)
}
