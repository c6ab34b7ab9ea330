/// virtio-net feature bits (virtio 1.x, 5.1.3) that Kiln knows.
public enum NetFeature {
    /// The device takes frames with a partial checksum (NEEDS_CSUM) from the driver.
    public static let checksum: UInt64 = 1 << 0
    /// The driver takes frames with a partial checksum from the device.
    public static let guestChecksum: UInt64 = 1 << 1
    public static let mac: UInt64 = 1 << 5
    /// The driver takes TCP segments of up to 64 KiB (IPv4, IPv6, with ECN) from the device.
    public static let guestTSO4: UInt64 = 1 << 7
    public static let guestTSO6: UInt64 = 1 << 8
    public static let guestECN: UInt64 = 1 << 9
    /// The device takes TCP segments of up to 64 KiB from the driver.
    public static let hostTSO4: UInt64 = 1 << 11
    public static let hostTSO6: UInt64 = 1 << 12
    public static let hostECN: UInt64 = 1 << 13
    /// The device may spread one received frame over several receive chains (num_buffers).
    public static let mergeableRXBuffers: UInt64 = 1 << 15
    public static let status: UInt64 = 1 << 16

    /// Every offload Kiln offers when its backend can take them (a TAP with TUNSETOFFLOAD).
    public static let offloads: UInt64 = checksum | guestChecksum | guestTSO4 | guestTSO6 | guestECN
        | hostTSO4 | hostTSO6 | hostECN | mergeableRXBuffers
}

/// The 12-byte header in front of every frame, on both queues and on the TAP (IFF_VNET_HDR
/// with TUNSETVNETHDRSZ 12): struct virtio_net_hdr with num_buffers (virtio 1.x, 5.1.6),
/// little-endian. The same layout both ways, so a checked header crosses unchanged.
public struct NetHeader: Equatable, Sendable {
    public static let size = 12
    public static let needsChecksum: UInt8 = 1
    /// Receive only: the device checked the frame's checksum.
    public static let dataValid: UInt8 = 2
    public static let gsoNone: UInt8 = 0, gsoTCPv4: UInt8 = 1, gsoTCPv6: UInt8 = 4
    /// Or-ed into a TCP gso_type: the segment has ECN's CWR bit set.
    public static let gsoECN: UInt8 = 0x80

    public var flags: UInt8 = 0
    public var gsoType: UInt8 = 0
    /// Ethernet + IP + TCP header length (a hint unless GUEST_HDRLEN, which Kiln does not offer).
    public var headerLength: UInt16 = 0
    /// Payload bytes per segment (the MSS).
    public var gsoSize: UInt16 = 0
    public var checksumStart: UInt16 = 0
    public var checksumOffset: UInt16 = 0
    /// Receive chains this frame spans (1 without MRG_RXBUF); the driver leaves it 0 on transmit.
    public var bufferCount: UInt16 = 0

    public init(flags: UInt8 = 0, gsoType: UInt8 = 0, headerLength: UInt16 = 0, gsoSize: UInt16 = 0,
                checksumStart: UInt16 = 0, checksumOffset: UInt16 = 0, bufferCount: UInt16 = 0) {
        self.flags = flags; self.gsoType = gsoType; self.headerLength = headerLength; self.gsoSize = gsoSize
        self.checksumStart = checksumStart; self.checksumOffset = checksumOffset; self.bufferCount = bufferCount
    }

    /// The header in the first 12 bytes of `bytes` (which must hold at least that many).
    public init(_ bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count >= NetHeader.size)
        func u16(_ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }
        self.init(flags: bytes[0], gsoType: bytes[1], headerLength: u16(2), gsoSize: u16(4),
                  checksumStart: u16(6), checksumOffset: u16(8), bufferCount: u16(10))
    }

    /// Writes the header into the first 12 bytes of `bytes`.
    public func store(into bytes: UnsafeMutableRawBufferPointer) {
        precondition(bytes.count >= NetHeader.size)
        func u16(_ v: UInt16, _ at: Int) { bytes[at] = UInt8(truncatingIfNeeded: v); bytes[at + 1] = UInt8(v >> 8) }
        bytes[0] = flags; bytes[1] = gsoType
        u16(headerLength, 2); u16(gsoSize, 4); u16(checksumStart, 6); u16(checksumOffset, 8); u16(bufferCount, 10)
    }

    public var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: NetHeader.size)
        b.withUnsafeMutableBytes { store(into: $0) }
        return b
    }

    /// What is wrong with a header the driver sent.
    public enum Problem: Error, Equatable, CustomStringConvertible {
        case flags(UInt8)
        case gsoType(UInt8)
        /// The header asks for an offload the driver did not negotiate.
        case notNegotiated(String)
        case segmentationWithoutChecksum
        case zeroSegmentSize
        case headerLength(UInt16, frame: Int)
        case checksumOutsideFrame(start: UInt16, offset: UInt16, frame: Int)

        public var description: String {
            switch self {
            case .flags(let f): return "header flags 0x\(String(f, radix: 16))"
            case .gsoType(let t): return "header gso_type 0x\(String(t, radix: 16))"
            case .notNegotiated(let what): return "header asks for \(what), which the driver did not negotiate"
            case .segmentationWithoutChecksum: return "segmentation offload without NEEDS_CSUM"
            case .zeroSegmentSize: return "segmentation offload with gso_size 0"
            case .headerLength(let h, let n): return "hdr_len \(h) beyond a frame of \(n) bytes"
            case .checksumOutsideFrame(let s, let o, let n): return "checksum at \(s)+\(o) outside a frame of \(n) bytes"
            }
        }
    }

    /// Checks a header the driver put in front of a transmitted frame of `frameLength` bytes
    /// (the header not included) against the negotiated `features`. The kernel checks again
    /// when the frame reaches the TAP; this refuses what no honest driver sends.
    public func checkTransmit(frameLength: Int, features: UInt64) -> Problem? {
        guard flags & ~NetHeader.needsChecksum == 0 else { return .flags(flags) }
        if flags & NetHeader.needsChecksum != 0 {
            guard features & NetFeature.checksum != 0 else { return .notNegotiated("a partial checksum (CSUM)") }
            guard Int(checksumStart) + Int(checksumOffset) + 2 <= frameLength else {
                return .checksumOutsideFrame(start: checksumStart, offset: checksumOffset, frame: frameLength)
            }
        }
        guard gsoType != NetHeader.gsoNone else { return nil }
        switch gsoType & ~NetHeader.gsoECN {
        case NetHeader.gsoTCPv4: guard features & NetFeature.hostTSO4 != 0 else { return .notNegotiated("TCP segmentation over IPv4 (HOST_TSO4)") }
        case NetHeader.gsoTCPv6: guard features & NetFeature.hostTSO6 != 0 else { return .notNegotiated("TCP segmentation over IPv6 (HOST_TSO6)") }
        default: return .gsoType(gsoType)
        }
        if gsoType & NetHeader.gsoECN != 0, features & NetFeature.hostECN == 0 { return .notNegotiated("segmentation with ECN (HOST_ECN)") }
        // virtio 1.x 5.1.6.2.1: a driver asking for segmentation also asks for the checksum.
        guard flags & NetHeader.needsChecksum != 0 else { return .segmentationWithoutChecksum }
        guard gsoSize > 0 else { return .zeroSegmentSize }
        guard Int(headerLength) <= frameLength else { return .headerLength(headerLength, frame: frameLength) }
        return nil
    }

    /// The header to give the driver for a frame the backend (the host kernel) delivered, with
    /// `bufferCount` set; nil when the frame needs an offload the driver did not negotiate (it is
    /// dropped: Kiln does not finish checksums or segment frames itself).
    public func forReceive(features: UInt64, bufferCount: UInt16) -> NetHeader? {
        var h = self
        let checksums = features & NetFeature.guestChecksum != 0
        if h.flags & NetHeader.needsChecksum != 0 && !checksums { return nil }
        // Anything else the backend set is dropped; DATA_VALID only means something with GUEST_CSUM.
        h.flags &= checksums ? NetHeader.needsChecksum | NetHeader.dataValid : 0
        if h.gsoType != NetHeader.gsoNone {
            switch h.gsoType & ~NetHeader.gsoECN {
            case NetHeader.gsoTCPv4: guard features & NetFeature.guestTSO4 != 0 else { return nil }
            case NetHeader.gsoTCPv6: guard features & NetFeature.guestTSO6 != 0 else { return nil }
            default: return nil
            }
            if h.gsoType & NetHeader.gsoECN != 0, features & NetFeature.guestECN == 0 { return nil }
        } else {
            h.gsoSize = 0; h.headerLength = 0
        }
        if h.flags & NetHeader.needsChecksum == 0 { h.checksumStart = 0; h.checksumOffset = 0 }
        h.bufferCount = bufferCount
        return h
    }
}
