import LinuxSys

/// One stream between a guest port and a host Unix socket, with its credit accounting
/// (virtio 1.x, 5.10.6.3). All counters wrap, as the spec's free-running u32 counters do.
final class VsockConnection {
    enum State: Equatable {
        /// A host client connected to the listener; its `CONNECT <port>` line is not complete yet.
        case awaitingConnect
        /// REQUEST sent to the guest; waiting for RESPONSE or RST.
        case connecting
        case established
        /// Restored from a snapshot: open on the guest's side, waiting for a host client's
        /// `ATTACH <port>` (docs/vsock.md). Guest packets are accounted for; nothing reaches a socket.
        case detached
    }

    struct Key: Hashable {
        let hostPort: UInt32
        let guestPort: UInt32
    }

    let fd: FileDescriptor
    var state: State
    var key: Key?
    /// Opened by a host client (CONNECT), not by the guest: only these survive a restore.
    var hostInitiated = false

    // host -> guest
    /// Read from the host socket, not yet sent to the guest. Never more than the guest's credit allowed.
    var staged: [UInt8] = []
    var hostEOF = false
    var sentShutdown = false
    /// Payload bytes sent to the guest.
    var txCnt: UInt32 = 0
    var peerBufAlloc: UInt32 = 0
    var peerFwdCnt: UInt32 = 0
    var inReadyList = false

    // guest -> host
    /// Bytes for the host socket that it has not taken yet; the first `localPrefix` are Kiln's own (the OK line).
    var pending: [UInt8] = []
    var pendingStart = 0
    var localPrefix = 0
    /// Payload bytes received from the guest, and those the host socket has taken.
    var rxCnt: UInt32 = 0
    var fwdCnt: UInt32 = 0
    /// The fwd_cnt the guest last saw from us.
    var advertisedFwdCnt: UInt32 = 0
    var creditUpdateQueued = false
    var guestShutSend = false
    var guestShutReceive = false
    var hostSendShut = false
    /// What the event loop currently wakes us for.
    var interest = (readable: true, writable: false)

    /// Bytes accepted for the handshake line before the client is dropped.
    static let connectLineLimit = 64

    init(fd: consuming FileDescriptor, state: State, key: Key? = nil) {
        self.fd = fd
        self.state = state
        self.key = key
    }

    /// A detached connection has no socket yet: -1 (its closing is a harmless EBADF).
    static func detached(_ key: Key) -> VsockConnection {
        let c = VsockConnection(fd: FileDescriptor(owning: -1), state: .detached, key: key)
        c.hostInitiated = true
        c.interest = (false, false)
        return c
    }

    var raw: Int32 { fd.raw }
    /// Established on the guest's side (data and credit flow), whether or not a host socket is attached.
    var isOpen: Bool { state == .established || state == .detached }
    var pendingCount: Int { pending.count - pendingStart }

    /// How many more payload bytes the guest can take now.
    var peerCredit: UInt32 {
        let inFlight = txCnt &- peerFwdCnt
        return inFlight > peerBufAlloc ? 0 : peerBufAlloc - inFlight
    }

    /// Guest payload bytes waiting for the host socket (what counts against our buf_alloc).
    var unforwarded: UInt32 { rxCnt &- fwdCnt }

    /// Takes over a detached connection's guest-side state (this is the client that attached to it).
    func adopt(_ d: VsockConnection) {
        key = d.key; hostInitiated = true; state = .established
        staged = d.staged; inReadyList = d.inReadyList; hostEOF = d.hostEOF; sentShutdown = d.sentShutdown; txCnt = d.txCnt
        peerBufAlloc = d.peerBufAlloc; peerFwdCnt = d.peerFwdCnt
        pending = Array(d.pending[d.pendingStart...]); pendingStart = 0; localPrefix = 0
        rxCnt = d.rxCnt; fwdCnt = d.fwdCnt; advertisedFwdCnt = d.advertisedFwdCnt; creditUpdateQueued = d.creditUpdateQueued
        guestShutSend = d.guestShutSend; guestShutReceive = d.guestShutReceive
        hostSendShut = false // the new socket has not been shut yet, whatever the old one saw
    }

    func takePending(_ n: Int) {
        let own = min(n, localPrefix)
        localPrefix -= own
        fwdCnt &+= UInt32(n - own)
        pendingStart += n
        if pendingStart == pending.count { pending.removeAll(keepingCapacity: true); pendingStart = 0 }
        else if pendingStart > 65536 && pendingStart * 2 > pending.count { pending.removeFirst(pendingStart); pendingStart = 0 }
    }
}
