/// A violation of the wire format or of the protocol's rules. Each case has a stable wire code
/// so that the side that finds it can send it (`frame`) before closing, and the other side can
/// report it.
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case badMagic(UInt32)
    case incompatibleVersion(local: Version, peer: Version)
    case unknownType(UInt8)
    case oversized(length: Int, limit: Int)
    case truncated(MessageType)
    case invalidUTF8(MessageType)
    case trailingBytes(MessageType, count: Int)
    case reservedBits(MessageType)
    case invalidValue(MessageType, field: String)
    case wrongStream(MessageType, stream: UInt32)
    /// A type the other side may not send, or one that the protocol's state does not allow now.
    case unexpected(MessageType)
    case flowControl(stream: UInt32)
    case streamInUse(UInt32)
    /// The connection ended after this many bytes of a frame header (a cut inside a payload is `.truncated`).
    case endedInsideHeader(count: Int)
    /// The peer sent ProtocolError with this code and text.
    case remote(code: UInt16, message: String)

    public var code: UInt16 {
        switch self {
        case .badMagic: 1
        case .incompatibleVersion: 2
        case .unknownType: 3
        case .oversized: 4
        case .truncated: 5
        case .invalidUTF8: 6
        case .trailingBytes: 7
        case .reservedBits: 8
        case .invalidValue: 9
        case .wrongStream: 10
        case .unexpected: 11
        case .flowControl: 12
        case .streamInUse: 13
        case .endedInsideHeader: 14
        case .remote(let code, _): code
        }
    }

    public var description: String {
        switch self {
        case .badMagic(let m):
            "bad magic 0x\(String(m, radix: 16)) (expected 0x\(String(Wire.magic, radix: 16)), \"KILN\"): not a Kiln agent"
        case .incompatibleVersion(let local, let peer):
            "incompatible agent protocol: this side speaks \(local), the peer \(peer); rebuild the guest image with this Kiln's agent"
        case .unknownType(let t): "unknown message type 0x\(String(t, radix: 16))"
        case .oversized(let length, let limit): "frame payload of \(length) bytes exceeds the limit of \(limit)"
        case .truncated(let t): "\(t) frame ends inside a field"
        case .invalidUTF8(let t): "\(t) frame has a string that is not valid UTF-8"
        case .trailingBytes(let t, let n): "\(t) frame has \(n) bytes after its last field"
        case .reservedBits(let t): "\(t) frame has nonzero reserved bits"
        case .invalidValue(let t, let field): "\(t) frame has an invalid \(field)"
        case .wrongStream(let t, let s): "\(t) frame on stream \(s)"
        case .unexpected(let t): "unexpected \(t) frame"
        case .flowControl(let s): "stream \(s) sent data beyond its credit"
        case .streamInUse(let s): "stream \(s) is already open"
        case .endedInsideHeader(let n): "connection ended after \(n) bytes of a frame header"
        case .remote(let code, let message): "peer reported protocol error \(code): \(message)"
        }
    }

    /// The frame to send before closing the connection.
    public var frame: Frame {
        Frame(stream: 0, .protocolError(code: code, message: description))
    }
}

/// The version checks of the handshake, the same on both sides.
public enum Handshake {
    /// The agent's answer to a Hello, or the error it sends instead (and then closes).
    public static func answer(_ hello: Hello, software: String, capabilities: Capabilities,
                              local: Version = Wire.version) throws(ProtocolError) -> HelloAck {
        guard hello.version.major == local.major else {
            throw .incompatibleVersion(local: local, peer: hello.version)
        }
        return HelloAck(version: local, software: software, capabilities: capabilities)
    }

    /// The host's check of the agent's HelloAck; returns the version the session speaks.
    public static func accept(_ ack: HelloAck, local: Version = Wire.version) throws(ProtocolError) -> Version {
        guard ack.version.major == local.major else {
            throw .incompatibleVersion(local: local, peer: ack.version)
        }
        return Version(major: local.major, minor: min(local.minor, ack.version.minor))
    }
}
