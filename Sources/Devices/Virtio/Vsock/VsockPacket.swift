/// `struct virtio_vsock_hdr` (virtio 1.x, 5.10.6): 44 bytes, little-endian, no padding.
public struct VsockHeader: Equatable, Sendable {
    public static let size = 44
    public static let hostCID: UInt64 = 2
    public static let typeStream: UInt16 = 1

    public enum Op: UInt16, Sendable {
        case request = 1, response, rst, shutdown, rw, creditUpdate, creditRequest
    }
    /// SHUTDOWN flags: the sender will receive no more (RCV) / send no more (SEND).
    public static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2

    public var srcCID: UInt64 = 0
    public var dstCID: UInt64 = 0
    public var srcPort: UInt32 = 0
    public var dstPort: UInt32 = 0
    public var length: UInt32 = 0
    public var type: UInt16 = VsockHeader.typeStream
    public var op: UInt16 = 0
    public var flags: UInt32 = 0
    public var bufAlloc: UInt32 = 0
    public var fwdCnt: UInt32 = 0

    public init(srcCID: UInt64 = 0, dstCID: UInt64 = 0, srcPort: UInt32 = 0, dstPort: UInt32 = 0, length: UInt32 = 0,
                type: UInt16 = VsockHeader.typeStream, op: Op, flags: UInt32 = 0, bufAlloc: UInt32 = 0, fwdCnt: UInt32 = 0) {
        self.srcCID = srcCID; self.dstCID = dstCID; self.srcPort = srcPort; self.dstPort = dstPort; self.length = length
        self.type = type; self.op = op.rawValue; self.flags = flags; self.bufAlloc = bufAlloc; self.fwdCnt = fwdCnt
    }

    /// Parses the first 44 bytes of `bytes`; nil when there are fewer.
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= VsockHeader.size else { return nil }
        func le<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[offset + $1]) << (8 * $1) }
        }
        srcCID = le(0, UInt64.self); dstCID = le(8, UInt64.self)
        srcPort = le(16, UInt32.self); dstPort = le(20, UInt32.self); length = le(24, UInt32.self)
        type = le(28, UInt16.self); op = le(30, UInt16.self); flags = le(32, UInt32.self)
        bufAlloc = le(36, UInt32.self); fwdCnt = le(40, UInt32.self)
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(VsockHeader.size)
        func put<T: FixedWidthInteger>(_ v: T) { for i in 0..<MemoryLayout<T>.size { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        put(srcCID); put(dstCID); put(srcPort); put(dstPort); put(length)
        put(type); put(op); put(flags); put(bufAlloc); put(fwdCnt)
        return out
    }

    public var knownOp: Op? { Op(rawValue: op) }
}
