/// A minimal TLS 1.3 ClientHello (RFC 8446 section 4.1.2) with an SNI, for the egress proxy's
/// tests: enough for the proxy to read the name and a server to answer (with an alert).
public enum TLSClientHello {
    /// The handshake in records of at most `record` bytes; no SNI extension when `sni` is nil.
    public static func bytes(sni: String?, record: Int = 1 << 14) -> [UInt8] {
        func u16(_ n: Int) -> [UInt8] { [UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)] }
        // supported_versions: TLS 1.3, ahead of the SNI so that the parser must skip one extension.
        var extensions: [UInt8] = [0x00, 0x2B] + u16(3) + [2, 3, 4]
        if let sni {
            let entry: [UInt8] = [0] + u16(sni.utf8.count) + Array(sni.utf8)
            extensions += [0, 0] + u16(entry.count + 2) + u16(entry.count) + entry
        }
        var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [0] + u16(2) + [0x13, 0x01] + [1, 0]
        body += u16(extensions.count) + extensions
        let handshake: [UInt8] = [1, 0] + u16(body.count) + body
        var out: [UInt8] = [], at = 0
        while at < handshake.count {
            let piece = handshake[at..<min(at + record, handshake.count)]
            out += [22, 3, 1] + u16(piece.count) + piece
            at += record
        }
        return out
    }
}
