/// What the egress proxy reads from the first bytes a guest sends on port 80 or 443, to learn
/// the name it wants: the HTTP/1.x `Host` header (RFC 9112 section 3.2) or the TLS ClientHello's
/// `server_name` extension (RFC 8446 section 4.1.2, RFC 6066 section 3). Bounds-checked, no
/// Foundation; fuzzed (Fuzz/Sources/FuzzEgress).
public enum ProxyPeek: Sendable, Equatable {
    /// Not enough bytes yet to decide.
    case incomplete
    /// The name, normalized (DomainRule.normalize).
    case name(String)
    /// No name in these bytes (not HTTP/TLS, no Host/SNI, or a malformed one).
    case none

    /// The most the proxy reads before deciding: a ClientHello with large key shares fits.
    public static let limit = 16 << 10

    /// The Host header of an HTTP/1.x request, once its header block is complete.
    public static func http(_ bytes: [UInt8]) -> ProxyPeek {
        let window = bytes.prefix(limit)
        // The header block ends at the first empty line.
        var end: Int?
        if window.count >= 4 {
            for i in 0...(window.count - 4) where window[i] == 13 && window[i + 1] == 10 && window[i + 2] == 13 && window[i + 3] == 10 {
                end = i; break
            }
        }
        guard let end else { return bytes.count >= limit ? .none : .incomplete }
        let lines = split(Array(window[0..<end]))
        guard let request = lines.first, request.count >= 3, contains(request, Array(" HTTP/1.".utf8)) else { return .none }
        var host: String?
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { continue }
            let field = line[..<colon].map { (0x41...0x5A).contains($0) ? $0 + 32 : $0 }
            guard field == Array("host".utf8) else { continue }
            // Two Host headers are a malformed request (RFC 9112 section 3.2): refuse it.
            guard host == nil else { return .none }
            var value = Array(line[(colon + 1)...])
            while value.first == 32 || value.first == 9 { value.removeFirst() }
            while value.last == 32 || value.last == 9 { value.removeLast() }
            // host[:port]; a bracketed IPv6 literal is not a name.
            if let c = value.lastIndex(of: UInt8(ascii: ":")) {
                let port = value[(c + 1)...]
                guard port.allSatisfy({ (0x30...0x39).contains($0) }) else { return .none }
                value = Array(value[..<c])
            }
            host = String(decoding: value, as: UTF8.self)
        }
        guard let host, let name = DomainRule.normalize(host) else { return .none }
        return .name(name)
    }

    /// The SNI host name of a TLS ClientHello (which may span several handshake records).
    public static func tls(_ bytes: [UInt8]) -> ProxyPeek {
        // Gather the handshake layer from consecutive handshake records (type 22).
        var handshake: [UInt8] = []
        var at = 0
        while handshake.count < 4 || handshake.count < 4 + (Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])) {
            guard bytes.count >= at + 5 else { return bytes.count >= limit ? .none : .incomplete }
            guard bytes[at] == 22, bytes[at + 1] == 3 else { return .none }
            let length = Int(bytes[at + 3]) << 8 | Int(bytes[at + 4])
            guard length > 0, length <= 1 << 14 else { return .none }
            guard bytes.count >= at + 5 + length else { return at + 5 + length > limit ? .none : .incomplete }
            handshake += bytes[(at + 5)..<(at + 5 + length)]
            at += 5 + length
            if handshake.count >= 4 && handshake[0] != 1 { return .none }
            if handshake.count >= 4 && (Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])) > limit { return .none }
        }
        let bodyLength = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
        return clientHello(Array(handshake[4..<(4 + bodyLength)]))
    }

    static func clientHello(_ b: [UInt8]) -> ProxyPeek {
        var r = DNS.Reader(b)
        // legacy_version, random, legacy_session_id, cipher_suites, legacy_compression_methods.
        guard r.take(2 + 32) != nil, let sid = r.u8(), r.take(Int(sid)) != nil,
              let suites = r.u16(), r.take(Int(suites)) != nil, let methods = r.u8(), r.take(Int(methods)) != nil else { return .none }
        guard let total = r.u16(), let extensions = r.take(Int(total)) else { return .none }
        var e = DNS.Reader(extensions)
        while e.at < extensions.count {
            guard let type = e.u16(), let length = e.u16(), let data = e.take(Int(length)) else { return .none }
            guard type == 0 else { continue }
            var s = DNS.Reader(data)
            guard let listLength = s.u16(), let list = s.take(Int(listLength)) else { return .none }
            var l = DNS.Reader(list)
            while l.at < list.count {
                guard let kind = l.u8(), let n = l.u16(), let name = l.take(Int(n)) else { return .none }
                // host_name (0) is the only kind defined; a name must not end with a dot (RFC 6066).
                guard kind == 0 else { continue }
                guard name.last != UInt8(ascii: "."), let host = DomainRule.normalize(String(decoding: name, as: UTF8.self)) else { return .none }
                return .name(host)
            }
            return .none
        }
        return .none
    }

    static func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var lines: [ArraySlice<UInt8>] = [], start = 0
        for i in bytes.indices where bytes[i] == 10 {
            var end = i
            if end > start && bytes[end - 1] == 13 { end -= 1 }
            lines.append(bytes[start..<end]); start = i + 1
        }
        lines.append(bytes[start...])
        return lines
    }

    static func contains(_ hay: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
        guard hay.count >= needle.count else { return false }
        var i = hay.startIndex
        while i + needle.count <= hay.endIndex {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }
}
