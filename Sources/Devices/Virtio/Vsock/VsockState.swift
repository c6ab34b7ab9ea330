/// What a snapshot keeps of the vsock device's connections (docs/snapshot-format.md, `VSCK`), so
/// that a restored guest's open connections go on without a transport reset: each host-initiated
/// one waits, detached, for a new host client's `ATTACH <port>` (docs/vsock.md).
public struct VsockSavedState: Sendable, Equatable {
    public struct Connection: Sendable, Equatable {
        public var hostPort: UInt32
        public var guestPort: UInt32
        public var hostInitiated: Bool
        /// Credit counters (virtio 1.x, 5.10.6.3), free-running as in the device.
        public var txCnt: UInt32, rxCnt: UInt32, fwdCnt: UInt32, advertisedFwdCnt: UInt32
        public var peerBufAlloc: UInt32, peerFwdCnt: UInt32
        public var flags: Flags
        /// Host bytes read from the old host socket and not yet sent to the guest.
        public var toGuest: [UInt8]
        /// Guest bytes the old host socket had not taken (Kiln's own OK line excluded).
        public var toHost: [UInt8]

        public init(hostPort: UInt32, guestPort: UInt32, hostInitiated: Bool, txCnt: UInt32, rxCnt: UInt32, fwdCnt: UInt32,
                    advertisedFwdCnt: UInt32, peerBufAlloc: UInt32, peerFwdCnt: UInt32, flags: Flags,
                    toGuest: [UInt8], toHost: [UInt8]) {
            self.hostPort = hostPort; self.guestPort = guestPort; self.hostInitiated = hostInitiated
            self.txCnt = txCnt; self.rxCnt = rxCnt; self.fwdCnt = fwdCnt; self.advertisedFwdCnt = advertisedFwdCnt
            self.peerBufAlloc = peerBufAlloc; self.peerFwdCnt = peerFwdCnt; self.flags = flags
            self.toGuest = toGuest; self.toHost = toHost
        }
    }

    public struct Flags: OptionSet, Sendable, Equatable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let hostEOF = Flags(rawValue: 1 << 0)
        public static let sentShutdown = Flags(rawValue: 1 << 1)
        public static let guestShutSend = Flags(rawValue: 1 << 2)
        public static let guestShutReceive = Flags(rawValue: 1 << 3)
    }

    /// The CID the guest had: a restore under another CID resets the transport instead.
    public var guestCID: UInt64
    public var nextPort: UInt32
    /// Established connections (both directions); connections still being set up are dropped.
    public var connections: [Connection]
    /// Control packets (44-byte headers) waiting for guest rx buffers.
    public var control: [VsockHeader]

    public init(guestCID: UInt64, nextPort: UInt32, connections: [Connection], control: [VsockHeader]) {
        self.guestCID = guestCID; self.nextPort = nextPort; self.connections = connections; self.control = control
    }
}

extension VsockConnection {
    var saved: VsockSavedState.Connection? {
        guard isOpen, let key else { return nil }
        var flags: VsockSavedState.Flags = []
        if hostEOF { flags.insert(.hostEOF) }
        if sentShutdown { flags.insert(.sentShutdown) }
        if guestShutSend { flags.insert(.guestShutSend) }
        if guestShutReceive { flags.insert(.guestShutReceive) }
        let unsent = Array(pending[pendingStart...])
        return .init(hostPort: key.hostPort, guestPort: key.guestPort, hostInitiated: hostInitiated, txCnt: txCnt, rxCnt: rxCnt,
                     fwdCnt: fwdCnt, advertisedFwdCnt: advertisedFwdCnt, peerBufAlloc: peerBufAlloc, peerFwdCnt: peerFwdCnt,
                     flags: flags, toGuest: staged, toHost: Array(unsent.dropFirst(localPrefix)))
    }

    /// A detached connection carrying a saved one's guest-side state.
    static func restoring(_ s: VsockSavedState.Connection) -> VsockConnection {
        let c = VsockConnection.detached(Key(hostPort: s.hostPort, guestPort: s.guestPort))
        c.txCnt = s.txCnt; c.rxCnt = s.rxCnt; c.fwdCnt = s.fwdCnt; c.advertisedFwdCnt = s.advertisedFwdCnt
        c.peerBufAlloc = s.peerBufAlloc; c.peerFwdCnt = s.peerFwdCnt
        c.hostEOF = s.flags.contains(.hostEOF); c.sentShutdown = s.flags.contains(.sentShutdown)
        c.guestShutSend = s.flags.contains(.guestShutSend); c.guestShutReceive = s.flags.contains(.guestShutReceive)
        c.staged = s.toGuest
        c.pending = s.toHost
        return c
    }
}
