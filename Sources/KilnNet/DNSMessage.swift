/// The few DNS messages the egress helper reads and writes (RFC 1035 section 4; EDNS(0) from
/// RFC 6891 for the size a client accepts). Every read is bounds-checked; a malformed message is
/// nil, never a trap. No Foundation: this is fuzzed (Fuzz/Sources/FuzzEgress).
public enum DNS {
    public static let typeA: UInt16 = 1, typeCNAME: UInt16 = 5, typeTXT: UInt16 = 16, typeOPT: UInt16 = 41, classIN: UInt16 = 1
    public static let noError: UInt8 = 0, formatError: UInt8 = 1, serverFailure: UInt8 = 2, nameError: UInt8 = 3, refused: UInt8 = 5

    /// A client's question: one, as every resolver sends.
    public struct Query: Sendable, Equatable {
        public var id: UInt16
        /// Recursion desired, echoed in the answer.
        public var recursionDesired: Bool
        /// Normalized (DomainRule.normalize); nil when the name is not a host name.
        public var name: String?
        /// The question's name as labels, exactly as sent (echoed in the answer).
        public var labels: [[UInt8]]
        public var type: UInt16
        public var qclass: UInt16
        /// The UDP payload the client accepts (512, or its EDNS OPT record's, at most 4096).
        public var udpLimit: Int
    }

    /// One answer record Kiln passes on: A (4 bytes of data), CNAME (a name) or TXT (raw).
    public struct Record: Sendable, Equatable {
        public var labels: [[UInt8]]
        public var type: UInt16
        public var ttl: UInt32
        /// A: the address; CNAME: the target's labels, encoded uncompressed on output; TXT: as read.
        public var data: [UInt8]
        public var address: UInt32? {
            guard type == DNS.typeA, data.count == 4 else { return nil }
            return UInt32(data[0]) << 24 | UInt32(data[1]) << 16 | UInt32(data[2]) << 8 | UInt32(data[3])
        }
    }

    public struct Response: Sendable, Equatable {
        public var id: UInt16
        public var rcode: UInt8
        public var truncated: Bool
        /// The answer section's A, CNAME and TXT records of class IN; the others are dropped.
        public var answers: [Record]
    }

    // MARK: Reading

    /// A bounds-checked reader over a message (names may point anywhere in it).
    struct Reader {
        let bytes: [UInt8]
        var at = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        mutating func u8() -> UInt8? { guard at < bytes.count else { return nil }; defer { at += 1 }; return bytes[at] }
        mutating func u16() -> UInt16? { guard let a = u8(), let b = u8() else { return nil }; return UInt16(a) << 8 | UInt16(b) }
        mutating func u32() -> UInt32? { guard let a = u16(), let b = u16() else { return nil }; return UInt32(a) << 16 | UInt32(b) }
        mutating func take(_ n: Int) -> [UInt8]? {
            guard n >= 0, n <= bytes.count - at else { return nil }
            defer { at += n }
            return Array(bytes[at..<at + n])
        }

        /// A name at the cursor, following compression pointers (RFC 1035 4.1.4) backwards only,
        /// so that a loop cannot be built; at most 255 bytes in all.
        mutating func name() -> [[UInt8]]? {
            var labels: [[UInt8]] = [], total = 1
            var cursor = at, jumped = false, limit = bytes.count
            while true {
                guard cursor < bytes.count else { return nil }
                let length = Int(bytes[cursor])
                switch length & 0xC0 {
                case 0:
                    if length == 0 {
                        if !jumped { at = cursor + 1 }
                        return labels
                    }
                    guard cursor + 1 + length <= bytes.count else { return nil }
                    total += length + 1
                    guard total <= 255 else { return nil }
                    labels.append(Array(bytes[cursor + 1..<cursor + 1 + length]))
                    cursor += 1 + length
                case 0xC0:
                    guard cursor + 1 < bytes.count else { return nil }
                    let target = (length & 0x3F) << 8 | Int(bytes[cursor + 1])
                    // Strictly before the pointer and before any earlier target: no loops.
                    guard target < cursor, target < limit else { return nil }
                    if !jumped { at = cursor + 2 }
                    jumped = true
                    limit = target
                    cursor = target
                default: return nil
                }
            }
        }
    }

    /// The header: id, flags, four counts.
    struct Header { var id: UInt16, flags: UInt16, qd: UInt16, an: UInt16, ns: UInt16, ar: UInt16 }

    static func header(_ r: inout Reader) -> Header? {
        guard let id = r.u16(), let flags = r.u16(), let qd = r.u16(), let an = r.u16(), let ns = r.u16(), let ar = r.u16() else { return nil }
        return Header(id: id, flags: flags, qd: qd, an: an, ns: ns, ar: ar)
    }

    /// A standard query (QR 0, opcode 0) with one question; nil otherwise.
    public static func parseQuery(_ bytes: [UInt8]) -> Query? {
        var r = Reader(bytes)
        guard let h = header(&r), h.flags & 0x8000 == 0, (h.flags >> 11) & 0xF == 0, h.qd == 1,
              let labels = r.name(), let type = r.u16(), let qclass = r.u16() else { return nil }
        var limit = 512
        // An OPT record in the additional section says how much UDP the client takes.
        if h.an == 0 && h.ns == 0 && h.ar >= 1 {
            for _ in 0..<min(Int(h.ar), 8) {
                guard let owner = r.name(), let rtype = r.u16(), let rclass = r.u16(), r.u32() != nil, let length = r.u16(),
                      r.take(Int(length)) != nil else { break }
                if rtype == typeOPT && owner.isEmpty { limit = min(max(Int(rclass), 512), 4096) }
            }
        }
        let text = labels.map { String(decoding: $0, as: UTF8.self) }.joined(separator: ".")
        let valid = labels.allSatisfy { !$0.contains(UInt8(ascii: ".")) }
        return Query(id: h.id, recursionDesired: h.flags & 0x0100 != 0, name: valid ? DomainRule.normalize(text) : nil,
                     labels: labels, type: type, qclass: qclass, udpLimit: limit)
    }

    /// An upstream resolver's response (QR 1) to the question `query` asked with `id`; nil when
    /// it is malformed or answers something else.
    public static func parseResponse(_ bytes: [UInt8], id: UInt16, labels: [[UInt8]], type: UInt16) -> Response? {
        var r = Reader(bytes)
        guard let h = header(&r), h.id == id, h.flags & 0x8000 != 0, h.qd == 1,
              let qname = r.name(), let qtype = r.u16(), r.u16() != nil,
              qtype == type, lower(qname) == lower(labels) else { return nil }
        var answers: [Record] = []
        for _ in 0..<Int(h.an) {
            guard let owner = r.name(), let rtype = r.u16(), let rclass = r.u16(), let ttl = r.u32(), let length = r.u16() else { return nil }
            let start = r.at
            guard let data = r.take(Int(length)) else { return nil }
            guard rclass == classIN else { continue }
            switch rtype {
            case typeA where length == 4:
                answers.append(Record(labels: owner, type: rtype, ttl: ttl, data: data))
            case typeCNAME:
                var inner = r
                inner.at = start
                guard let target = inner.name(), inner.at == start + Int(length) else { return nil }
                answers.append(Record(labels: owner, type: rtype, ttl: ttl, data: encode(target)))
            case typeTXT:
                answers.append(Record(labels: owner, type: rtype, ttl: ttl, data: data))
            default: continue
            }
        }
        return Response(id: h.id, rcode: UInt8(h.flags & 0xF), truncated: h.flags & 0x0200 != 0, answers: answers)
    }

    static func lower(_ labels: [[UInt8]]) -> [[UInt8]] {
        labels.map { $0.map { (0x41...0x5A).contains($0) ? $0 + 32 : $0 } }
    }

    // MARK: Writing

    /// A name as uncompressed labels.
    static func encode(_ labels: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for l in labels { out.append(UInt8(l.count)); out += l }
        out.append(0)
        return out
    }

    static func put16(_ out: inout [UInt8], _ v: UInt16) { out.append(UInt8(v >> 8)); out.append(UInt8(v & 0xFF)) }
    static func put32(_ out: inout [UInt8], _ v: UInt32) { put16(&out, UInt16(v >> 16)); put16(&out, UInt16(v & 0xFFFF)) }

    /// The labels of a normalized host name.
    public static func labels(_ name: String) -> [[UInt8]] {
        name.split(separator: ".").map { Array($0.utf8) }
    }

    /// A recursive query for `labels`/`type` with an OPT record offering 1232 bytes (the
    /// DNS flag day's size, which avoids fragments).
    public static func query(id: UInt16, labels: [[UInt8]], type: UInt16) -> [UInt8] {
        var out: [UInt8] = []
        put16(&out, id); put16(&out, 0x0100); put16(&out, 1); put16(&out, 0); put16(&out, 0); put16(&out, 1)
        out += encode(labels); put16(&out, type); put16(&out, classIN)
        out.append(0); put16(&out, typeOPT); put16(&out, 1232); put32(&out, 0); put16(&out, 0)
        return out
    }

    /// The answer to `query`: `rcode` and `answers`, at most `limit` bytes (records that do not
    /// fit are left out and TC set, so that the client asks again over TCP).
    public static func answer(_ query: Query, rcode: UInt8, answers: [Record], limit: Int = 65535) -> [UInt8] {
        func build(_ records: [Record], truncated: Bool) -> [UInt8] {
            var out: [UInt8] = []
            // QR, the client's opcode (0) and RD, RA; TC when cut.
            let flags: UInt16 = 0x8080 | (query.recursionDesired ? 0x0100 : 0) | (truncated ? 0x0200 : 0) | UInt16(rcode & 0xF)
            put16(&out, query.id); put16(&out, flags); put16(&out, 1); put16(&out, UInt16(records.count)); put16(&out, 0); put16(&out, 0)
            out += encode(query.labels); put16(&out, query.type); put16(&out, query.qclass)
            for rec in records {
                out += encode(rec.labels); put16(&out, rec.type); put16(&out, classIN); put32(&out, rec.ttl)
                put16(&out, UInt16(rec.data.count)); out += rec.data
            }
            return out
        }
        let full = build(answers, truncated: false)
        if full.count <= limit { return full }
        return build([], truncated: true)
    }
}
